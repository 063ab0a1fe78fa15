"""The real apps on Flower's deployment engine: 1 SuperLink + 3 SuperNodes on 127.0.0.1."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from simulations.deploy import local, processes

pytestmark = pytest.mark.slow

TINY = {
    "model": "vae",
    "model-options": '{"hidden": [32, 32], "latent_dim": 8}',
    "batch-size": 100,
    "local-epochs": 1,
    "audit": False,
    # The warm start's marginal rounds go through the same apps and are tested in simulation
    # (tests/simulations/test_federation.py); here the rounds are the training rounds only.
    "warm-start-share": 0.0,
}


def _binaries_present() -> bool:
    return all((local.BIN / name).exists() for name in ("flower-superlink", "flower-supernode"))


needs_flower = pytest.mark.skipif(
    not _binaries_present(), reason="Flower deployment CLIs not installed"
)


def _ledger_on_disk(path: Path) -> list[dict]:
    return json.loads(path.read_text())["ledger"]["records"]


@needs_flower
@pytest.mark.parametrize("insecure", [True, False], ids=["insecure", "tls-and-auth"])
def test_local_deployment_trains_and_keeps_ledgers(tmp_path, insecure):
    """Both with the warm SuperExec (what the localhost script uses); Flower's own SuperExec
    runs the same apps in `python -m simulations.benchmarks.deployment` ("cold")."""
    settings = local.DeploymentSettings(
        merchants=3,
        rounds=2,
        out=tmp_path / "run",
        insecure=insecure,
        rows_per_merchant=300,
        run_config=TINY,
        startup_timeout=60,
        run_timeout=300,
    )
    result = local.run_local_deployment(settings)

    from synth_models.synthesizer import TabularSynthesizer

    synth = TabularSynthesizer.load(result.artifact)
    sample = synth.sample(50, seed=0)
    assert len(sample) == 50
    assert set(synth.ledgers_) == {"merchant-0", "merchant-1", "merchant-2"}
    for merchant, path in result.state_paths.items():
        on_disk = json.loads(path.read_text())["ledger"]
        assert on_disk is not None, merchant
        assert synth.ledgers_[merchant].state_dict()["records"] == on_disk["records"], merchant
    assert len(result.rounds_seconds) == 2
    # Nothing left running: every process group the module started is gone.
    assert result.pids
    assert not [pgid for pgid in result.pids if processes.group_alive(pgid)]


def test_commands_bind_localhost_and_quote_node_config():
    config = {"data-path": "/a b/m.csv", "merchant-id": "merchant-0", "holdout-fraction": 0.2}
    argv = local.supernode_command(9000, 9001, config, tls=None)
    assert argv[argv.index("--superlink") + 1] == "127.0.0.1:9000"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--insecure" in argv
    assert argv[argv.index("--node-config") + 1] == (
        'data-path="/a b/m.csv" merchant-id="merchant-0" holdout-fraction=0.2'
    )
    link = local.superlink_command(9000, None, Path("/tmp/x.db"))
    assert link[link.index("--host") + 1] == "127.0.0.1"
    assert link[link.index("--port") + 1] == "9000"


def _wait_exit(proc, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return proc.poll()


@needs_flower
def test_unregistered_supernodes_are_refused(tmp_path):
    run_dir = tmp_path / "run"
    config = {"data-path": str(tmp_path / "none.csv"), "merchant-id": "x"}
    federation = local.LocalFederation(run_dir, tls=True, auth=True, startup_timeout=60, warm=False)
    with federation:
        federation.start_merchant("registered", config)
        # A key the operator never registered, and no key at all.
        intruder = federation.start_merchant("intruder", config, register=False)
        argv = local.supernode_command(federation.port, local.free_port(), config, federation.tls)
        keyless = federation.processes.start("keyless", argv)
        assert _wait_exit(intruder, 60) not in (None, 0)
        assert _wait_exit(keyless, 60) not in (None, 0)
        assert federation.processes.procs["registered"].poll() is None
        listed = federation.flwr("supernode", "list", local.CONNECTION, "--format", "json")
    assert listed.returncode == 0, listed.stderr
    nodes = json.loads(listed.stdout[listed.stdout.index("{") :])["nodes"]
    assert len(nodes) == 1  # only the registered merchant's key is known to the SuperLink
    logs = run_dir / "logs"
    assert "Failed to activate SuperNode" in (logs / "intruder.log").read_text()
    assert "must be registered" in (logs / "keyless.log").read_text()


@needs_flower
def test_killed_supernode_rejoins_and_its_ledger_keeps_counting(tmp_path):
    """Merchant 2's SuperNode is killed when round 1 reaches it; the run goes on with the other
    two. The server then stops (after round 1 of 2); a new run resumes from the checkpoint with
    merchant 2 restarted, and merchant 2's ledger continues from what its file had."""
    settings = local.DeploymentSettings(
        merchants=3,
        rounds=2,
        out=tmp_path / "run",
        rows_per_merchant=300,
        run_config={**TINY, "min-nodes": 2, "round-timeout": 120.0, "stop-after-round": 1},
    )
    run_dir = settings.out.resolve()
    data_paths, metadata, dataset = local.prepare_data(settings, run_dir)
    first = local.write_run_config(settings, run_dir, metadata, dataset)
    resumed = run_dir / "resume.toml"
    config = {**tomllib.loads(first.read_text()), "resume": True, "stop-after-round": 0}
    resumed.write_text(tomli_w.dumps(config))
    victim = "merchant-2"
    victim_log = run_dir / "logs" / f"{victim}.log"

    with local.LocalFederation(run_dir, tls=True, auth=True, startup_timeout=60) as federation:
        for i, path in enumerate(data_paths):
            name = f"merchant-{i}"
            node = local.merchant_config(
                run_dir, name, path, 0.2, metadata=metadata, run_config=settings.run_config
            )
            federation.start_merchant(name, node)

        def kill_in_round_one() -> None:
            alive = victim in federation.processes.procs
            if alive and "Receiving: train" in victim_log.read_text():
                federation.kill(victim)

        federation.run(first, timeout=400, watch=kill_in_round_one)
        assert victim not in federation.processes.procs, "merchant 2 was never killed"
        local.check_finished(run_dir, 1)
        state_path = Path(str(federation.merchants[victim]["state-path"]))
        before = _ledger_on_disk(state_path)
        assert [r["label"] for r in before] == ["encoder-statistics"]  # killed before training

        federation.start_merchant(victim)  # same key, config and state file
        federation.run(resumed, timeout=400)

    artifact = local.check_finished(run_dir, 2)
    from synth_models.synthesizer import TabularSynthesizer

    synth = TabularSynthesizer.load(artifact)
    after = _ledger_on_disk(state_path)
    assert after[: len(before)] == before and len(after) > len(before)
    assert synth.ledgers_[victim].state_dict()["records"] == after
    assert synth.ledgers_[victim].epsilon() <= 1.0 + 1e-9
    lines = (run_dir / "rounds.jsonl").read_text().splitlines()
    rounds = {r["round"]: r["merchants"] for r in map(json.loads, lines) if r.get("round")}
    assert sorted(rounds) == [1, 2]

    def trained(number: int) -> list[str]:
        return sorted(m for m, result in rounds[number].items() if result["state"] == "ok")

    assert trained(1) == ["merchant-0", "merchant-1"]
    assert rounds[1][victim]["state"] == "failed"  # named, though the SuperLink answered for it
    assert trained(2) == ["merchant-0", "merchant-1", victim]
