"""The synthesizer artifact on disk: a folder with ``synthesizer.json`` and ``weights.pt``.

``synthesizer.json`` is plain JSON anyone can read (encoder, metadata, privacy ledgers,
versions, the SHA-256 of the weights). ``weights.pt`` holds tensors only. Loading checks the
hash before reading the weights, then reads them with ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain containers: no code from the file ever runs.
Saving writes a new folder beside the old one and swaps them, so a crash leaves a whole artifact.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

FORMAT = "fedsynth-synthesizer/1"
MANIFEST, WEIGHTS = "synthesizer.json", "weights.pt"


class ArtifactError(ValueError):
    """An artifact that is missing, corrupt, tampered with, or of an unknown format."""


def save_artifact(
    path: str | os.PathLike, *, manifest: dict, weights: dict[str, torch.Tensor]
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in weights.items()}, buffer)
    blob = buffer.getvalue()
    full = {"format": FORMAT, **manifest, "weights_sha256": hashlib.sha256(blob).hexdigest()}
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; an artifact is meant to be shared
    try:
        (staging / WEIGHTS).write_bytes(blob)
        (staging / MANIFEST).write_text(json.dumps(full, indent=1, default=_json_default))
        for item in staging.iterdir():
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())
        if path.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, retired / path.name)
            os.replace(staging, path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return path


def load_artifact(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: not a synthesizer artifact folder")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path}: {MANIFEST} is missing") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path / MANIFEST}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{path}: unknown artifact format {found!r}, expected {FORMAT!r}")
    try:
        blob = (path / WEIGHTS).read_bytes()
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path}: {WEIGHTS} is missing") from exc
    if hashlib.sha256(blob).hexdigest() != manifest.get("weights_sha256"):
        raise ArtifactError(
            f"{path / WEIGHTS}: SHA-256 does not match {MANIFEST}; the artifact was modified "
            "or corrupted and is not loaded"
        )
    try:
        weights = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    except Exception as exc:  # the safe unpickler refuses anything but tensors
        raise ArtifactError(f"{path / WEIGHTS}: refused to load ({exc})") from exc
    if not isinstance(weights, dict) or not all(
        isinstance(v, torch.Tensor) for v in weights.values()
    ):
        raise ArtifactError(f"{path / WEIGHTS}: expected a mapping of names to tensors")
    return manifest, weights


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
