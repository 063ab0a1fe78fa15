"""A run that dies before its checkpoint is resumed without merchants paying twice: the
resumed run asks for the same releases (same federation id, round and request), and every
merchant answers with what it released before, from its locked ledger file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import server.app as server_app
from client.state import load_state
from server.app import ARTIFACT, run_federation
from server.config import FederationConfig
from synth_models.synthesizer import TabularSynthesizer
from tests.server.test_marginal_rounds import _task_identity, grid_for  # noqa: F401

ROWS = (1200, 1500)
TINY = {"generator_hidden": [16], "discriminator_hidden": [16], "noise_dim": 8}


@pytest.fixture
def merchants(tmp_path: Path) -> Path:
    from simulations.datasets import load_dataset

    pizza = load_dataset("pizzaplace")
    data = tmp_path / "merchants"
    data.mkdir()
    start = 0
    for i, rows in enumerate(ROWS):
        pizza.table.iloc[start : start + rows].to_csv(data / f"merchant-{i}.csv", index=False)
        start += rows
    (tmp_path / "metadata.json").write_text(json.dumps(pizza.metadata))
    return data


def config(tmp_path: Path, **overrides) -> FederationConfig:
    return FederationConfig(
        epsilon=1.0,
        delta=1e-5,
        metadata_path=str(tmp_path / "metadata.json"),
        table_name="orders",
        run_dir=str(tmp_path / "run"),
        min_nodes=len(ROWS),
        audit=False,
        **overrides,
    )


def spent(state_dir: Path) -> dict[str, tuple[float, int]]:
    states = {
        f"merchant-{i}": load_state(
            f"merchant-{i}", node_state=None, path=state_dir / f"merchant-{i}.json"
        )
        for i in range(len(ROWS))
    }
    return {m: (s.epsilon, sum(r.steps for r in s.ledger.records)) for m, s in states.items()}


def die_at_first_checkpoint(monkeypatch) -> None:
    def crash(*args, **kwargs):
        raise RuntimeError("killed before the checkpoint")

    monkeypatch.setattr(server_app, "_save_checkpoint", crash)


@pytest.mark.parametrize(
    "overrides",
    [
        {"model": "marginal"},
        {
            "model": "gan",
            "num_rounds": 1,
            "local_epochs": 1,
            "batch_size": 200,
            "warm_start_share": 0.0,
            "model_options": TINY,
        },
    ],
    ids=["marginal", "gan"],
)
def test_a_resumed_run_gets_the_same_releases_at_no_new_cost(
    merchants, tmp_path, monkeypatch, overrides
):
    state = tmp_path / "state"
    with monkeypatch.context() as patch:
        die_at_first_checkpoint(patch)
        with pytest.raises(RuntimeError, match="killed"):
            run_federation(grid_for(merchants, state, len(ROWS)), config(tmp_path, **overrides))
    after_crash = spent(state)
    assert all(eps > 0 for eps, _ in after_crash.values())
    # The resumed run (a new run, new node states: only the ledger files remain) finishes...
    grid = grid_for(merchants, state, len(ROWS))
    artifact = run_federation(grid, config(tmp_path, resume=True, **overrides))
    assert TabularSynthesizer.load(artifact).epsilon_spent <= 1.0 + 1e-9
    # ... and every merchant paid once: same epsilon, same steps as before the crash.
    assert spent(state) == after_crash
    assert (tmp_path / "run" / ARTIFACT).exists()


def test_a_changed_request_for_the_same_round_is_not_replayed(
    merchants, tmp_path, monkeypatch, caplog
):
    """Replay answers only the very same request: a server that asks something else for the
    same round (here another budget split) gets no earlier release back; it is a new release,
    which these spent ledgers refuse."""
    from server.schema_round import FederationError

    state = tmp_path / "state"
    with monkeypatch.context() as patch:
        die_at_first_checkpoint(patch)
        with pytest.raises(RuntimeError):
            run_federation(grid_for(merchants, state, len(ROWS)), config(tmp_path))
    before = spent(state)
    resumed = config(tmp_path, resume=True, statistics_share=0.2)
    with pytest.raises(FederationError, match="0 merchant"):
        run_federation(grid_for(merchants, state, len(ROWS)), resumed)
    assert "budget-exhausted" in caplog.text
    assert spent(state) == before
