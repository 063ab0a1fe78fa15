"""The saved synthesizer: round trip, tamper detection, no code execution, atomic replace."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from synth_models.artifact import MANIFEST, WEIGHTS, ArtifactError, load_artifact
from synth_models.synthesizer import TabularSynthesizer, effective_model_options
from synth_models.training import TrainingConfig

METADATA = {
    "tables": {
        "shop": {
            "columns": {
                "store": {"sdtype": "categorical", "range_values": ["north", "south", "east"]},
                "paid": {"sdtype": "boolean"},
                "amount": {"sdtype": "numerical"},
                "items": {
                    "sdtype": "numerical",
                    "range_min": 1,
                    "range_max": 9,
                    "decimal_places": 0,
                },
            }
        }
    }
}
OPTIONS = {
    "gan": {"noise_dim": 8, "generator_hidden": [32], "discriminator_hidden": [32]},
    "vae": {"latent_dim": 8, "hidden": [32]},
}


def small_frame(n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "store": rng.choice(["north", "south", "east"], n).astype(object),
            "paid": rng.random(n) < 0.7,
            "amount": rng.gamma(2.0, 20.0, n).round(2),
            "items": rng.integers(1, 10, n),
        }
    )


def fit(model: str, seed: int = 0) -> TabularSynthesizer:
    synth = TabularSynthesizer(
        METADATA,
        model=model,
        epsilon=5.0,
        delta=1e-5,
        training=TrainingConfig(epochs=1, batch_size=100),
        model_options=OPTIONS[model],
        seed=seed,
    )
    return synth.fit(small_frame())


@pytest.fixture(scope="module", params=["gan", "vae"])
def fitted(request) -> TabularSynthesizer:
    return fit(request.param)


@pytest.fixture
def saved(fitted: TabularSynthesizer, tmp_path: Path) -> Path:
    return fitted.save(tmp_path / "model")


def _rewrite_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(changes)
    (path / MANIFEST).write_text(json.dumps(manifest))


# -- round trip ---------------------------------------------------------------------------------


def test_round_trip_gives_identical_samples(fitted: TabularSynthesizer, saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == sorted([MANIFEST, WEIGHTS])
    loaded = TabularSynthesizer.load(saved)
    pd.testing.assert_frame_equal(loaded.sample(200, seed=3), fitted.sample(200, seed=3))
    assert not loaded.sample(50, seed=4).equals(loaded.sample(50, seed=3))
    assert loaded.epsilon_spent == pytest.approx(fitted.epsilon_spent)
    assert loaded.epsilon_spent <= 5.0
    assert loaded.encoder_.to_dict() == fitted.encoder_.to_dict()
    assert loaded.ledgers_["local"].records == fitted.ledgers_["local"].records


def test_manifest_is_plain_json(fitted: TabularSynthesizer, saved: Path) -> None:
    manifest = json.loads((saved / MANIFEST).read_text())
    assert manifest["format"] == "fedsynth-synthesizer/1"
    assert manifest["model"] == fitted.model
    assert manifest["weights_sha256"] == hashlib.sha256((saved / WEIGHTS).read_bytes()).hexdigest()
    assert manifest["privacy"]["epsilon"] == pytest.approx(fitted.epsilon_spent)
    assert manifest["privacy"]["delta"] == 1e-5
    assert set(manifest["versions"]) >= {"torch", "opacus"}
    # every network option is written out, so a later change of defaults rebuilds this network
    defaults = effective_model_options(fitted.model)
    assert set(manifest["model_options"]) == set(defaults)
    assert manifest["model_options"] == {**defaults, **json.loads(json.dumps(fitted.model_options))}


# -- tampering ----------------------------------------------------------------------------------


def test_flipped_byte_is_detected(saved: Path) -> None:
    blob = bytearray((saved / WEIGHTS).read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (saved / WEIGHTS).write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="SHA-256"):
        TabularSynthesizer.load(saved)


class _Payload:
    """Unpickling this would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_not_executed(saved: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"generator.net.0.fc.weight": _Payload(marker)}, buffer)
    blob = buffer.getvalue()
    # the payload is armed: an ordinary unpickler would run it
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(_Payload(armed))).close()
    assert armed.exists()

    (saved / WEIGHTS).write_bytes(blob)
    _rewrite_manifest(saved, weights_sha256=hashlib.sha256(blob).hexdigest())
    with pytest.raises(ArtifactError, match="refused to load"):
        TabularSynthesizer.load(saved)
    assert not marker.exists()


def test_non_tensor_weights_are_refused(saved: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"a": [1, 2, 3]}, buffer)  # allowed by weights_only, but not a tensor
    blob = buffer.getvalue()
    (saved / WEIGHTS).write_bytes(blob)
    _rewrite_manifest(saved, weights_sha256=hashlib.sha256(blob).hexdigest())
    with pytest.raises(ArtifactError, match="tensors"):
        load_artifact(saved)


def test_weights_of_another_model_are_inconsistent(saved: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"layer.weight": torch.zeros(2, 2)}, buffer)
    blob = buffer.getvalue()
    (saved / WEIGHTS).write_bytes(blob)
    _rewrite_manifest(saved, weights_sha256=hashlib.sha256(blob).hexdigest())
    with pytest.raises(ArtifactError, match="inconsistent"):
        TabularSynthesizer.load(saved)


def test_unknown_format(saved: Path) -> None:
    _rewrite_manifest(saved, format="fedsynth-synthesizer/99")
    with pytest.raises(ArtifactError, match="unknown artifact format"):
        TabularSynthesizer.load(saved)
    manifest = json.loads((saved / MANIFEST).read_text())
    del manifest["format"]
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="unknown artifact format"):
        TabularSynthesizer.load(saved)
    (saved / MANIFEST).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="unknown artifact format"):
        TabularSynthesizer.load(saved)


def test_missing_manifest(saved: Path) -> None:
    (saved / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        TabularSynthesizer.load(saved)


def test_missing_weights(saved: Path) -> None:
    (saved / WEIGHTS).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        TabularSynthesizer.load(saved)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b""])
def test_invalid_json(saved: Path, content: bytes) -> None:
    (saved / MANIFEST).write_bytes(content)
    with pytest.raises(ArtifactError, match="not valid JSON"):
        TabularSynthesizer.load(saved)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a synthesizer artifact folder"):
        TabularSynthesizer.load(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="not a synthesizer artifact folder"):
        TabularSynthesizer.load(tmp_path / "file")


# -- saving -------------------------------------------------------------------------------------


def test_save_over_existing_artifact(fitted: TabularSynthesizer, tmp_path: Path) -> None:
    path = tmp_path / "model"
    fitted.save(path, note="first")
    (path / "leftover.txt").write_text("from an older save")
    fitted.save(path, note="second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no stray temp folders
    assert sorted(p.name for p in path.iterdir()) == sorted([MANIFEST, WEIGHTS])
    manifest, _ = load_artifact(path)
    assert manifest["note"] == "second"
    pd.testing.assert_frame_equal(
        TabularSynthesizer.load(path).sample(100, seed=0), fitted.sample(100, seed=0)
    )


def test_save_before_fit_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        TabularSynthesizer(METADATA).save(tmp_path / "model")
    assert not (tmp_path / "model").exists()
