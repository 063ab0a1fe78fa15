"""The saved synthesizer: round trip, tamper detection, no code execution, hostile artifacts
(symlinks, FIFOs, oversize files, deep JSON, huge declared models, non-finite weights), versioned
crash-safe saves (killed at random points)."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import pickle
import random
import resource
import shutil
import signal
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from synth_models.artifact import (
    FORMAT,
    KEEP_VERSIONS,
    MANIFEST,
    MAX_JSON_DEPTH,
    MAX_MANIFEST_BYTES,
    MAX_WEIGHTS_BYTES,
    WEIGHTS,
    ArtifactError,
    load_artifact,
    save_artifact,
)
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
    # a link to the new version; the version before is kept; no stray temp folders
    assert os.readlink(path) == ".model.v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.v1", ".model.v2", "model"]
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


WEIGHTS_EXAMPLE = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "n": torch.tensor(3)}


def test_versions_are_kept_and_leftovers_cleaned(tmp_path: Path) -> None:
    path = tmp_path / "model"
    for note in range(4):
        save_artifact(path, manifest={"note": note}, weights=WEIGHTS_EXAMPLE)
    assert os.readlink(path) == ".model.v4"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.v3", ".model.v4", "model"]
    assert KEEP_VERSIONS == 2
    # leftovers of killed saves (this format's and the old one's), and others' files
    (tmp_path / ".model.tmp-abc123").mkdir()
    (tmp_path / ".model.tmp-abc123" / WEIGHTS).write_bytes(b"half")
    os.symlink(".model.v3", tmp_path / ".model.tmp-0a1b2c")
    (tmp_path / ".model.old.ab_cd123" / "model").mkdir(parents=True)
    (tmp_path / ".model.x1y2z3w4").mkdir()
    keep = [".model2.v1", ".modelx.tmp-1", "other", ".model.v1.bak"]
    for name in keep:
        (tmp_path / name).mkdir()
    save_artifact(path, manifest={"note": 4}, weights=WEIGHTS_EXAMPLE)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".model.v4", ".model.v5", "model", *keep]
    )
    manifest, weights = load_artifact(path)
    assert manifest["note"] == 4 and torch.equal(weights["w"], WEIGHTS_EXAMPLE["w"])


def test_old_format_folder_loads_and_is_replaced_by_the_link(
    fitted: TabularSynthesizer, saved: Path, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    shutil.copytree(saved.resolve(), old)  # a plain folder, as saved before versions
    assert old.is_dir() and not old.is_symlink()
    assert TabularSynthesizer.load(old).encoder_.to_dict() == fitted.encoder_.to_dict()
    fitted.save(old, note="new")
    assert os.readlink(old) == ".old.v2"
    assert load_artifact(old)[0]["note"] == "new"
    assert "note" not in load_artifact(tmp_path / ".old.v1")[0]  # the old folder, kept


def test_absent_link_falls_back_to_the_newest_version(tmp_path: Path) -> None:
    path = tmp_path / "model"
    for note in range(2):
        save_artifact(path, manifest={"note": note}, weights=WEIGHTS_EXAMPLE)
    os.unlink(path)  # the instant between two renames where renameat2 is unsupported
    assert load_artifact(path)[0]["note"] == 1


def _save_forever(path: Path, weights: dict, started, base: int) -> None:
    started.set()
    note = base
    while True:
        note += 1
        save_artifact(path, manifest={"note": note}, weights=weights)


def test_killed_saves_always_leave_a_loadable_artifact(tmp_path: Path) -> None:
    rng = random.Random(0)
    weights = {"w": torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))}
    path = tmp_path / "model"
    template = tmp_path / "template"  # an old-format folder, to kill its first save too
    save_artifact(tmp_path / "t", manifest={"note": "old"}, weights=weights)
    shutil.copytree((tmp_path / "t").resolve(), template)
    start = time.perf_counter()
    save_artifact(path, manifest={"note": 0}, weights=weights)
    save_time = time.perf_counter() - start
    context = multiprocessing.get_context("fork")
    notes, began = set(), time.monotonic()
    for kill in range(60):
        if kill % 6 == 5:  # start over from an old-format folder
            for entry in tmp_path.iterdir():
                if entry.name == "model" or entry.name.startswith(".model."):
                    shutil.rmtree(entry) if not entry.is_symlink() else entry.unlink()
            shutil.copytree(template, path)
        started = context.Event()
        base = 1000 * (kill + 1)  # this child's notes
        process = context.Process(target=_save_forever, args=(path, weights, started, base))
        process.start()
        assert started.wait(10)
        time.sleep(rng.uniform(0, min(3 * save_time, 0.2)))
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        manifest, loaded = load_artifact(path)  # the old or the new version, never neither
        assert torch.equal(loaded["w"], weights["w"])
        notes.add(manifest["note"])
        if isinstance(manifest["note"], int) and manifest["note"] >= 1000:
            assert manifest["note"] // 1000 <= kill + 1  # this child's save or an earlier one
    assert len(notes) > 10  # saves completed between kills: the kills fell at many points
    save_artifact(path, manifest={"note": "final"}, weights=weights)
    assert load_artifact(path)[0]["note"] == "final"
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".model."))
    assert not [n for n in names if not n.startswith(".model.v")], names  # no staging left
    assert len(names) <= KEEP_VERSIONS
    assert time.monotonic() - began < 30


# -- hostile artifacts --------------------------------------------------------------------------


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


def _bounded(fn, *, timeout: int = 10, headroom: int = 2**30) -> tuple[str, str, int]:
    """``fn()`` in a forked child with its address space capped at what it has plus
    ``headroom`` and an alarm after ``timeout`` s: (exception name or "ok", message, growth of
    its peak resident memory in bytes)."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def target() -> None:
        def on_alarm(*_):
            raise TimeoutError(f"still running after {timeout} s")

        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(timeout)
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + headroom, hard))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            fn()
            result = ("ok", "")
        except BaseException as exc:
            result = (type(exc).__name__, str(exc))
        signal.alarm(0)
        growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
        send.send((*result, growth))

    process = context.Process(target=target)
    process.start()
    send.close()
    try:
        if not receive.poll(timeout + 20):
            pytest.fail("the load did not finish")
        return receive.recv()
    finally:
        if process.is_alive():
            process.kill()
        process.join()


def _refused(fn, match: str) -> str:
    kind, message, growth = _bounded(fn)
    assert kind == "ArtifactError", (kind, message)
    assert match in message, message
    assert growth < 200 * 2**20, growth
    return message


def test_symlinked_weights_are_refused(saved: Path) -> None:
    (saved / WEIGHTS).unlink()
    os.symlink("/dev/zero", saved / WEIGHTS)
    message = _refused(lambda: load_artifact(saved), "a symlink, not a regular file")
    assert WEIGHTS in message


def test_symlinked_manifest_is_refused(saved: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes((saved / MANIFEST).read_bytes())
    (saved / MANIFEST).unlink()
    os.symlink(elsewhere, saved / MANIFEST)
    assert MANIFEST in _refused(lambda: load_artifact(saved), "a symlink, not a regular file")


def test_fifo_weights_are_refused_without_hanging(saved: Path) -> None:
    (saved / WEIGHTS).unlink()
    os.mkfifo(saved / WEIGHTS)
    assert WEIGHTS in _refused(lambda: TabularSynthesizer.load(saved), "a FIFO")


def test_fifo_manifest_is_refused_without_hanging(saved: Path) -> None:
    (saved / MANIFEST).unlink()
    os.mkfifo(saved / MANIFEST)
    assert MANIFEST in _refused(lambda: TabularSynthesizer.load(saved), "a FIFO")


def test_oversize_weights_are_refused(saved: Path) -> None:
    os.truncate(saved / WEIGHTS, MAX_WEIGHTS_BYTES + 1)  # sparse: no disk used
    _refused(lambda: load_artifact(saved), "MAX_WEIGHTS_BYTES")


def test_oversize_manifest_is_refused(saved: Path) -> None:
    os.truncate(saved / MANIFEST, MAX_MANIFEST_BYTES + 1)
    _refused(lambda: load_artifact(saved), "MAX_MANIFEST_BYTES")


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
def test_deep_json_is_refused(saved: Path, depth: int) -> None:
    text = f'{{"format": "{FORMAT}", "x": ' + "[" * depth + "]" * depth + "}"
    (saved / MANIFEST).write_text(text)
    _refused(lambda: load_artifact(saved), "MAX_JSON_DEPTH")


def test_real_manifest_is_well_under_the_depth_limit(saved: Path) -> None:
    def depth(value) -> int:
        if isinstance(value, dict):
            value = list(value.values())
        return 1 + max(map(depth, value), default=0) if isinstance(value, list) else 0

    assert depth(json.loads((saved / MANIFEST).read_text())) <= MAX_JSON_DEPTH // 4


def test_huge_declared_model_is_refused_before_allocating(fitted: TabularSynthesizer, saved: Path):
    options = json.loads((saved / MANIFEST).read_text())["model_options"]
    for key in ("hidden", "generator_hidden", "discriminator_hidden"):
        if key in options:
            options[key] = [20000, 20000]
    _rewrite_manifest(saved, model_options=options)
    _refused(lambda: TabularSynthesizer.load(saved), "MAX_PARAMETERS")


def test_too_many_layers_are_refused(saved: Path) -> None:
    options = json.loads((saved / MANIFEST).read_text())["model_options"]
    key = "hidden" if "hidden" in options else "generator_hidden"
    options[key] = [1] * 100_000
    _rewrite_manifest(saved, model_options=options)
    _refused(lambda: TabularSynthesizer.load(saved), "MAX_LAYERS")


def _replace_weights(path: Path, weights: dict) -> None:
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    blob = buffer.getvalue()
    (path / WEIGHTS).write_bytes(blob)
    _rewrite_manifest(path, weights_sha256=hashlib.sha256(blob).hexdigest())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_not_loaded(saved: Path, bad: float) -> None:
    _, weights = load_artifact(saved)
    key = next(k for k, v in weights.items() if v.is_floating_point() and v.numel())
    weights[key] = weights[key].clone().reshape(-1)
    weights[key][0] = bad
    weights[key] = weights[key].reshape(load_artifact(saved)[1][key].shape)
    _replace_weights(saved, weights)
    with pytest.raises(ArtifactError, match="non-finite") as caught:
        TabularSynthesizer.load(saved)
    assert key in str(caught.value)


def test_non_finite_weights_are_not_saved(fitted: TabularSynthesizer, tmp_path: Path) -> None:
    nan = torch.tensor([1.0, float("nan")])
    with pytest.raises(ArtifactError, match=r"refusing to save.*'w'.*non-finite"):
        save_artifact(tmp_path / "a", manifest={}, weights={"w": nan})
    broken = fit(fitted.model)
    with torch.no_grad():
        next(broken.model_.parameters()).fill_(float("inf"))
    with pytest.raises(ArtifactError, match="non-finite"):
        broken.save(tmp_path / "b")
    assert list(tmp_path.iterdir()) == []  # nothing written, no staging left


def test_compressed_archive_is_refused(saved: Path, tmp_path: Path) -> None:
    original = zipfile.ZipFile(saved / WEIGHTS)
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for info in original.infolist():
            out.writestr(info.filename, original.read(info.filename))
    blob = packed.getvalue()
    (saved / WEIGHTS).write_bytes(blob)
    _rewrite_manifest(saved, weights_sha256=hashlib.sha256(blob).hexdigest())
    with pytest.raises(ArtifactError, match="compressed"):
        load_artifact(saved)


# -- signed privacy claims (privacy/claims.py) ------------------------------------------------


def test_an_unsigned_artifact_loads_and_is_marked_unsigned(saved: Path) -> None:
    manifest = json.loads((saved / MANIFEST).read_text())
    assert "signatures" not in manifest  # what every artifact before signing looked like
    loaded = TabularSynthesizer.load(saved)
    assert loaded.verification.status == "unsigned"
    assert loaded.verification.ledgers["local"].status == "unsigned"


def test_a_signed_artifact_verifies_and_a_tampered_one_is_refused(
    fitted: TabularSynthesizer, tmp_path: Path
) -> None:
    from privacy.claims import generate_key

    path = fitted.save(tmp_path / "signed", signing_key=generate_key())
    loaded = TabularSynthesizer.load(path)
    assert loaded.verification.status == "unsigned"  # a central fit's ledger is not signed
    assert loaded.verification.server == "verified" and not loaded.verification.problems
    folder = path.resolve()
    manifest = json.loads((folder / MANIFEST).read_text())
    for record in manifest["privacy"]["ledgers"]["local"]["records"]:
        record["noise_multiplier"] *= 1000
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="do not verify"):
        TabularSynthesizer.load(path)
    marked = TabularSynthesizer.load(path, allow_unverified=True)
    assert marked.verification.status == "failed"
    assert marked.epsilon_spent < 0.01  # what the forged ledger says, now marked as such
