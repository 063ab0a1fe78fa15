"""The real apps on Flower's deployment engine: 1 SuperLink + 3 SuperNodes on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.deploy import local

pytestmark = pytest.mark.slow

TINY = {
    "model": "vae",
    "model-options": '{"hidden": [32, 32], "latent_dim": 8}',
    "batch-size": 100,
    "local-epochs": 1,
    "audit": False,
}


def _binaries_present() -> bool:
    return all((local._BIN / name).exists() for name in ("flower-superlink", "flower-supernode"))


@pytest.mark.skipif(not _binaries_present(), reason="Flower deployment CLIs not installed")
@pytest.mark.parametrize("insecure", [True, False], ids=["insecure", "tls"])
def test_local_deployment_trains_and_keeps_ledgers(tmp_path, insecure):
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
    assert not [pgid for pgid in result.pids if local.group_alive(pgid)]


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
