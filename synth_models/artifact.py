"""The synthesizer artifact on disk: a folder with ``synthesizer.json`` and ``weights.pt``.

``synthesizer.json`` is plain JSON anyone can read (encoder, metadata, privacy ledgers,
versions, the SHA-256 of the weights). ``weights.pt`` holds tensors only. Loading checks the
hash before reading the weights, then reads them with ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain containers: no code from the file ever runs.

An artifact is read as hostile input: only regular files (no symlinks, FIFOs or devices) of
at most :data:`MAX_MANIFEST_BYTES` / :data:`MAX_WEIGHTS_BYTES`, JSON nested at most
:data:`MAX_JSON_DEPTH` deep, an uncompressed torch archive, finite weights. Whatever is
refused raises :class:`ArtifactError` naming the file and the limit.

On disk, ``save_artifact(<dir>/<name>)`` writes each save into a new version folder
``<dir>/.<name>.v<N>/`` (staged as ``.<name>.tmp-*`` and renamed when complete) and then
points the symlink ``<dir>/<name> -> .<name>.v<N>`` at it with one atomic ``os.replace``, so
``<dir>/<name>`` is a whole artifact at every instant, old or new. The last
:data:`KEEP_VERSIONS` versions are kept (a reader that resolved the link just before a swap
still finds its folder); older ones and leftovers of killed saves are removed by the next
save. A plain folder ``<dir>/<name>`` (the format before versions) still loads, and the first
save over it swaps it for the link atomically (``renameat2(RENAME_EXCHANGE)`` on Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path

import torch

from privacy.claims import sign_manifest

try:  # POSIX only; without it concurrent saves into one folder are not serialized
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

FORMAT = "fedsynth-synthesizer/1"
MANIFEST, WEIGHTS = "synthesizer.json", "weights.pt"
MAX_MANIFEST_BYTES = 16 * 2**20  # synthesizer.json
MAX_WEIGHTS_BYTES = 2**30  # weights.pt, and the tensors' bytes inside it
MAX_JSON_DEPTH = 64  # arrays and objects nested in synthesizer.json (a real one: under 10)
KEEP_VERSIONS = 2  # complete versions kept after a save: the current one and the one before


class ArtifactError(ValueError):
    """An artifact that is missing, corrupt, tampered with, over a limit, or of an unknown
    format; or weights that must not be saved."""


# -- saving -------------------------------------------------------------------------------------


def save_artifact(
    path: str | os.PathLike,
    *,
    manifest: dict,
    weights: dict[str, torch.Tensor],
    signing_key=None,
) -> Path:
    """Write a new version of the artifact at ``path`` and point ``path`` at it atomically.
    With ``signing_key`` (``privacy.claims``) the manifest gets a ``signatures`` block: that
    key's signature over the canonical JSON of everything else, the weights' SHA-256 included.
    Raises :class:`ArtifactError`, writing nothing, if a weight is not finite or a file would
    be over its limit."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    _check_finite(tensors, f"{path}: refusing to save")
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    blob = buffer.getvalue()
    if len(blob) > MAX_WEIGHTS_BYTES:
        raise ArtifactError(
            f"{path}: refusing to save {WEIGHTS} of {len(blob)} bytes, over the limit of "
            f"{MAX_WEIGHTS_BYTES} (MAX_WEIGHTS_BYTES)"
        )
    full = {"format": FORMAT, **manifest, "weights_sha256": hashlib.sha256(blob).hexdigest()}
    if signing_key is not None:
        full = sign_manifest(json.loads(json.dumps(full, default=_json_default)), signing_key)
    text = json.dumps(full, indent=1, default=_json_default).encode("utf-8")
    if len(text) > MAX_MANIFEST_BYTES:
        raise ArtifactError(
            f"{path}: refusing to save {MANIFEST} of {len(text)} bytes, over the limit of "
            f"{MAX_MANIFEST_BYTES} (MAX_MANIFEST_BYTES)"
        )
    _check_depth(full, f"{path}: refusing to save {MANIFEST}")
    parent, name = path.parent, path.name
    parent.mkdir(parents=True, exist_ok=True)
    with _locked(parent):
        _clean(parent, name, keep=set(_versions(parent, name).values()))  # killed saves' leftovers
        legacy = path.is_dir() and not path.is_symlink()
        number = max(_versions(parent, name), default=0) + 1
        if legacy:  # the plain folder becomes version `number`, the new one `number + 1`
            number += 1
        version = _version_name(name, number)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
        try:
            staging.chmod(0o755)  # mkdtemp makes it private; an artifact is meant to be shared
            _write_synced(staging / WEIGHTS, blob)
            _write_synced(staging / MANIFEST, text)
            _fsync_dir(staging)
            os.rename(staging, parent / version)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        _fsync_dir(parent)
        link = parent / f".{name}.tmp-{secrets.token_hex(6)}"
        os.symlink(version, link)
        try:
            if legacy:
                _swap_legacy(path, link, parent / _version_name(name, number - 1))
            else:
                os.replace(link, path)  # atomic: readers see the old link or the new one
        finally:
            if os.path.lexists(link):
                os.unlink(link)
        _fsync_dir(parent)
        keep = sorted(_versions(parent, name))[-KEEP_VERSIONS:]
        _clean(parent, name, keep={_version_name(name, n) for n in keep} | {version})
    return path


def _swap_legacy(path: Path, link: Path, retired: Path) -> None:
    """Replace the plain folder ``path`` by the symlink ``link``; the folder moves to
    ``retired``. Atomic where the kernel exchanges two names; otherwise two renames, between
    which :func:`load_artifact` finds the newest version without the link."""
    if _exchange(link, path):
        os.rename(link, retired)  # `link` now names the old folder
    else:
        os.rename(path, retired)
        os.replace(link, path)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two names atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _locked(parent: Path):
    """One save at a time per folder (a killed save's lock goes with its process), so that
    cleaning never removes another save's staging folder."""
    fd = None
    if fcntl is not None:
        try:
            fd = os.open(parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _version_name(name: str, number: int) -> str:
    return f".{name}.v{number}"


def _versions(parent: Path, name: str) -> dict[int, str]:
    """Complete versions of ``name`` in ``parent`` (a version folder is renamed into place
    only when complete): number -> folder name."""
    pattern = re.compile(rf"\.{re.escape(name)}\.v([0-9]+)")
    found = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(parent):
            match = pattern.fullmatch(entry.name)
            if match and entry.is_dir(follow_symlinks=False):
                found[int(match.group(1))] = entry.name
    return found


def _pointer_target(path: Path) -> str | None:
    """The version folder name ``path`` links to, if it is this module's link."""
    try:
        target = os.readlink(path)
    except OSError:
        return None
    pattern = re.compile(rf"\.{re.escape(path.name)}\.v[0-9]+")
    return target if pattern.fullmatch(target) else None


def _clean(parent: Path, name: str, *, keep: set[str]) -> None:
    """Remove ``name``'s versions not in ``keep`` and leftovers of killed saves: staging
    folders and links (``.<name>.tmp-*``) and the old format's ``.<name>.XXXXXXXX`` and
    ``.<name>.old.XXXXXXXX`` folders."""
    escaped = re.escape(name)
    patterns = [
        re.compile(rf"\.{escaped}\.v[0-9]+"),
        re.compile(rf"\.{escaped}\.tmp-[A-Za-z0-9_]+"),
        re.compile(rf"\.{escaped}\.(?:old\.)?[a-z0-9_]{{8}}"),
    ]
    try:
        entries = list(os.scandir(parent))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name in keep or not any(p.fullmatch(entry.name) for p in patterns):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


# -- loading ------------------------------------------------------------------------------------


def load_artifact(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """The manifest and weights of the artifact at ``path`` (a link to its newest version, or
    a plain folder). Raises :class:`ArtifactError` for anything missing, changed or hostile."""
    path = Path(path)
    folder = _artifact_folder(path)
    try:
        dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise ArtifactError(f"{path}: not a synthesizer artifact folder ({exc})") from exc
    try:
        text = _read_regular(dir_fd, folder, MANIFEST, MAX_MANIFEST_BYTES, "MAX_MANIFEST_BYTES")
        manifest = _parse_manifest(text, folder / MANIFEST)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise ArtifactError(f"{path}: unknown artifact format {found!r}, expected {FORMAT!r}")
        blob = _read_regular(dir_fd, folder, WEIGHTS, MAX_WEIGHTS_BYTES, "MAX_WEIGHTS_BYTES")
    finally:
        os.close(dir_fd)
    where = folder / WEIGHTS
    if hashlib.sha256(blob).hexdigest() != manifest.get("weights_sha256"):
        raise ArtifactError(
            f"{where}: SHA-256 does not match {MANIFEST}; the artifact was modified "
            "or corrupted and is not loaded"
        )
    _check_archive(blob, where)
    try:
        weights = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    except Exception as exc:  # the safe unpickler refuses anything but tensors
        raise ArtifactError(f"{where}: refused to load ({exc})") from exc
    if not isinstance(weights, dict) or not all(
        isinstance(v, torch.Tensor) for v in weights.values()
    ):
        raise ArtifactError(f"{where}: expected a mapping of names to tensors")
    _check_finite(weights, f"{where}: refused to load")
    return manifest, weights


def _artifact_folder(path: Path) -> Path:
    """The folder holding the files: this module's link resolved to its version folder (which
    must be a real folder), any other path as it is; if ``path`` is absent, the newest
    complete version (the instant of a non-atomic swap of an old-format folder)."""
    target = _pointer_target(path)
    if target is not None:
        folder = path.parent / target
        try:
            mode = os.lstat(folder).st_mode
        except OSError:
            mode = 0
        if not stat.S_ISDIR(mode):
            raise ArtifactError(f"{path}: links to {target}, which is not a version folder")
        return folder
    if not os.path.lexists(path):
        versions = _versions(path.parent, path.name)
        if versions:
            return path.parent / versions[max(versions)]
    if not path.is_dir():
        raise ArtifactError(f"{path}: not a synthesizer artifact folder")
    return path


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _read_regular(dir_fd: int, folder: Path, name: str, limit: int, limit_name: str) -> bytes:
    """The bytes of the regular file ``name`` in ``dir_fd``, at most ``limit`` of them: a
    symlink, FIFO or device is refused before it is opened, and the read stops at the limit
    even if the file grows meanwhile."""
    where = folder / name
    try:
        before = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError as exc:
        raise ArtifactError(f"{folder}: {name} is missing") from exc
    if not stat.S_ISREG(before.st_mode):
        raise ArtifactError(
            f"{where}: {_file_kind(before.st_mode)}, not a regular file; refusing to read it"
        )
    too_big = f"over the limit of {limit} bytes ({limit_name})"
    if before.st_size > limit:
        raise ArtifactError(f"{where}: {before.st_size} bytes, {too_big}")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(name, flags | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)
    except OSError as exc:
        raise ArtifactError(f"{where}: cannot be opened as a regular file ({exc})") from exc
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (
            before.st_dev,
            before.st_ino,
        ):
            raise ArtifactError(f"{where}: replaced while being opened; refusing to read it")
        parts, total = [], 0
        first = min(after.st_size, limit) + 1
        while total <= limit:
            chunk = os.read(fd, first if not parts else min(2**20, limit + 1 - total))
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > limit:
        raise ArtifactError(f"{where}: grew to over {limit} bytes while read, {too_big}")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _parse_manifest(data: bytes, where: Path):
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{where}: not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise ArtifactError(
            f"{where}: JSON nested deeper than the limit of {MAX_JSON_DEPTH} (MAX_JSON_DEPTH)"
        ) from exc
    _check_depth(value, str(where))
    return value


def _check_depth(value, where: str) -> None:
    """Arrays and objects nested at most :data:`MAX_JSON_DEPTH` deep (walked without
    recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise ArtifactError(
                f"{where}: JSON nested deeper than the limit of {MAX_JSON_DEPTH} (MAX_JSON_DEPTH)"
            )
        stack.extend((child, depth + 1) for child in children)


def _check_archive(blob: bytes, where: Path) -> None:
    """A torch zip archive of uncompressed entries (as ``torch.save`` writes them), so that
    what ``torch.load`` reads is no more than the bounded file itself."""
    try:
        entries = zipfile.ZipFile(io.BytesIO(blob)).infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArtifactError(f"{where}: not a torch zip archive ({exc})") from exc
    total = 0
    for info in entries:
        if info.compress_type != zipfile.ZIP_STORED:
            raise ArtifactError(
                f"{where}: entry {info.filename!r} is compressed; torch.save writes none"
            )
        total += info.file_size
    if total > MAX_WEIGHTS_BYTES:
        raise ArtifactError(
            f"{where}: entries of {total} bytes, over the limit of {MAX_WEIGHTS_BYTES} bytes "
            "(MAX_WEIGHTS_BYTES)"
        )


def _check_finite(weights: dict[str, torch.Tensor], context: str) -> None:
    for key, value in weights.items():
        if (value.is_floating_point() or value.is_complex()) and not bool(
            torch.isfinite(value).all()
        ):
            raise ArtifactError(f"{context}: weight {key!r} has non-finite values (NaN or inf)")


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
