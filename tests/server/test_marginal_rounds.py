"""The marginal model's federation through the real ClientApp, in process.

A stand-in Grid hands each message to the merchants' ClientApp (handlers, reply guard, merchant
functions, ledgers in node state) as a SuperNode would, without Flower's simulation engine:
schema round, selection, measurement, fit, checkpoint. Three merchants hold pizzaplace rows,
a fourth a table without the ``price`` column; one run also has a merchant whose budget was
spent by an earlier run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, Metadata, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import server.schema_round as schema_round_module
from client.app import make_client_app
from client.state import MerchantState, save_state
from privacy.ledger import MechanismRecord, PrivacyLedger
from privacy.statistics import merge_statistics
from server.app import ARTIFACT, run_federation
from server.config import FederationConfig
from server.marginal_rounds import release_problem, run_marginal_rounds
from server.schema_round import FederationError, schema_round, statistics_problem
from simulations.datasets import load_dataset
from synth_models.federation import DOCUMENT_KEY, MARGINALS, STATISTICS, dumps, loads
from synth_models.marginal_model import MarginalModel
from synth_models.marginals import MEASUREMENT_LABEL, SELECTION_LABEL
from synth_models.synthesizer import TabularSynthesizer

BUDGET, DELTA = 1.0, 1e-5
ROWS = (1500, 2000, 2500)


class InProcessGrid:
    """``get_node_ids`` and ``send_and_receive`` over ClientApps called directly."""

    def __init__(self, app, contexts: dict[int, Context]) -> None:
        self.app, self.contexts, self.sent = app, contexts, []

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for i, message in enumerate(messages):
            node = message.metadata.dst_node_id
            metadata = Metadata(
                run_id=1,
                message_id=f"m-{len(self.sent)}-{i}",
                src_node_id=1,
                dst_node_id=node,
                reply_to_message_id="",
                group_id="1",
                created_at=time.time(),
                ttl=3600.0,
                message_type=message.metadata.message_type,
            )
            self.sent.append(message.metadata.message_type)
            replies.append(
                self.app(Message(metadata=metadata, content=message.content), self.contexts[node])
            )
        return replies


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """Outside a run Flower has no task identity; server messages need one."""
    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture(scope="module")
def pizza():
    return load_dataset("pizzaplace")


@pytest.fixture
def merchants(pizza, tmp_path: Path) -> Path:
    data = tmp_path / "merchants"
    data.mkdir()
    table = pizza.table.sample(sum(ROWS) + 300, random_state=0).reset_index(drop=True)
    start = 0
    for i, rows in enumerate(ROWS):
        table.iloc[start : start + rows].to_csv(data / f"merchant-{i}.csv", index=False)
        start += rows
    bad = table.iloc[start:].drop(columns=["price"])
    bad.to_csv(data / f"merchant-{len(ROWS)}.csv", index=False)
    (tmp_path / "metadata.json").write_text(json.dumps(pizza.metadata))
    return data


def grid_for(data: Path, state_dir: Path, merchants: int) -> InProcessGrid:
    app = make_client_app(data_dir=str(data), state_dir=str(state_dir), holdout_fraction=0.2)
    contexts = {
        100 + i: Context(
            run_id=1,
            node_id=100 + i,
            node_config={"partition-id": i, "num-partitions": merchants},
            state=RecordDict(),
            run_config={},
        )
        for i in range(merchants)
    }
    return InProcessGrid(app, contexts)


def config(tmp_path: Path, **overrides) -> FederationConfig:
    return FederationConfig(
        model="marginal",
        epsilon=BUDGET,
        delta=DELTA,
        metadata_path=str(tmp_path / "metadata.json"),
        table_name="orders",
        run_dir=str(tmp_path / "run"),
        min_nodes=4,
        audit=False,
        **overrides,
    )


def test_federation_fits_checkpoints_and_reports_the_bad_merchant(
    pizza, merchants: Path, tmp_path: Path
) -> None:
    grid = grid_for(merchants, tmp_path / "state", 4)
    artifact = run_federation(grid, config(tmp_path))
    assert artifact == tmp_path / "run" / ARTIFACT
    # selection goes to every node, measurement only to those that answered the selection
    assert grid.sent == ["query.statistics"] * 4 + ["query.marginals"] * (4 + 3)
    synth = TabularSynthesizer.load(artifact)
    assert synth.model == "marginal"
    names = [d.name for d in synth.model_.domains]
    tree = {(names[a], names[b]) for a, b in synth.model_.tree}
    assert ("name", "type") in tree
    sample = synth.sample(2000, seed=0)
    assert list(sample.columns) == list(pizza.table.columns)
    # every good merchant's ledger: statistics, selection, measurement, at the budget
    assert sorted(synth.ledgers_) == [f"merchant-{i}" for i in range(len(ROWS))]
    for ledger in synth.ledgers_.values():
        assert [r.label for r in ledger.records][1:] == [SELECTION_LABEL, MEASUREMENT_LABEL]
        assert BUDGET * 0.995 <= ledger.epsilon() <= BUDGET
    log = [
        json.loads(line)
        for line in (tmp_path / "run" / "rounds.jsonl").read_text().split("\n")
        if line
    ]
    assert [e["round"] for e in log] == [0, 1, 2]
    assert [e.get("phase") for e in log] == [None, "selection", "measurement"]
    bad = log[0]["merchants"]["merchant-3"]
    assert bad["state"] == "failed" and "price" in bad["reason"]
    good = {f"merchant-{i}" for i in range(len(ROWS))}
    assert log[1]["merchants"]["merchant-3"]["state"] == "failed"
    assert set(log[2]["merchants"]) == good
    for entry in log[1:]:
        assert all(entry["merchants"][m]["state"] == "ok" for m in good)
        assert BUDGET * 0.5 < entry["epsilon"] <= BUDGET
    # resuming a finished marginal federation sends nothing more
    again = grid_for(merchants, tmp_path / "state", 4)
    run_federation(again, config(tmp_path, resume=True))
    assert again.sent == []


def test_a_refusing_merchant_is_left_out_and_the_rest_go_on(
    pizza, merchants: Path, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    spent = PrivacyLedger(epsilon_budget=BUDGET, delta=DELTA, owner="merchant-2")
    spent.record(MechanismRecord("dp-sgd", 0.5, 0.1, 400))  # an earlier run spent it all
    save_state(
        MerchantState(merchant="merchant-2", ledger=spent, dp_rows=2500.0),
        node_state=None,
        path=state_dir / "merchant-2.json",
    )
    grid = grid_for(merchants, state_dir, 3)
    schema = pizza.schema()
    ledgers, owners = {}, {}
    encoder, _, outcome = schema_round(
        grid,
        schema=schema,
        document={"epsilon": BUDGET, "delta": DELTA, "statistics_share": 0.1, "seed": 0},
        min_replies=1,
        min_nodes=3,
        timeout=60,
        ledgers=ledgers,
        owners=owners,
    )
    assert outcome["merchant-2"]["state"] == "refused"
    rounds = run_marginal_rounds(
        grid,
        encoder=encoder,
        model=MarginalModel(encoder),
        document={"model_options": {}, "epsilon": BUDGET, "delta": DELTA, "seed": 0},
        min_replies=1,
        min_nodes=3,
        timeout=60,
        ledgers=ledgers,
        owners=owners,
    )
    selection = rounds.round_log[0]["merchants"]
    assert selection["merchant-2"]["state"] == "refused"
    assert {m for m, r in selection.items() if r["state"] == "ok"} == {"merchant-0", "merchant-1"}
    assert set(rounds.round_log[1]["merchants"]) == {"merchant-0", "merchant-1"}
    assert len(rounds.tree) == len(encoder.transforms) - 1
    with pytest.raises(FederationError, match="at least 3"):
        run_marginal_rounds(
            grid,
            encoder=encoder,
            model=MarginalModel(encoder),
            document={"model_options": {}, "epsilon": BUDGET, "delta": DELTA, "seed": 1},
            min_replies=3,
            min_nodes=3,
            timeout=60,
            ledgers={},
            owners=owners,
        )


class PoisoningGrid(InProcessGrid):
    """An in-process grid where one node's replies of one kind are altered on the way (a
    merchant that sends NaN, or whoever holds its key)."""

    def __init__(self, grid: InProcessGrid, node: int, record: str, poison) -> None:
        super().__init__(grid.app, grid.contexts)
        self.node, self.record, self.poison = node, record, poison

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        for reply in replies:
            records = reply.content.config_records
            if reply.metadata.src_node_id == self.node and self.record in records:
                document = loads(str(records[self.record][DOCUMENT_KEY]))
                self.poison(document)
                records[self.record][DOCUMENT_KEY] = dumps(document)
        return replies


def _schema_round(grid, pizza):
    return schema_round(
        grid,
        schema=pizza.schema(),
        document={"epsilon": BUDGET, "delta": DELTA, "statistics_share": 0.1, "seed": 0},
        min_replies=1,
        min_nodes=3,
        timeout=60,
        ledgers={},
        owners={},
    )


def test_statistics_with_nan_fail_their_merchant_before_the_sum(
    pizza, merchants: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    def poison(document):
        column = next(iter(document["columns"].values()))
        column["counts"][0] = float("nan")

    grid = PoisoningGrid(grid_for(merchants, tmp_path / "state", 3), 101, STATISTICS, poison)
    seen = []

    def merge(parts):
        seen.extend(parts)
        return merge_statistics(parts)

    monkeypatch.setattr(schema_round_module, "merge_statistics", merge)
    _, merged, outcome = _schema_round(grid, pizza)
    assert outcome["merchant-1"]["state"] == "failed"
    assert outcome["merchant-1"]["reason"].startswith("statistics rejected: non-finite")
    assert "merchant-1" in caplog.text
    assert {m for m, r in outcome.items() if r["state"] == "ok"} == {"merchant-0", "merchant-2"}
    assert len(seen) == 2 and merged.contributors == 2
    assert statistics_problem(merged) is None
    # A non-finite row count is rejected the same way.
    grid.poison = lambda document: document.update(row_count=float("inf"))
    _, _, outcome = _schema_round(grid, pizza)
    assert outcome["merchant-1"]["reason"] == "statistics rejected: non-finite row count"


def test_marginals_with_nan_fail_their_merchant_before_the_sum(
    pizza, merchants: Path, tmp_path: Path
) -> None:
    def poison(document):
        if document.get("tables"):
            document["tables"][0] = np.full(document["shapes"][0], np.nan).tolist()

    clean = grid_for(merchants, tmp_path / "state", 3)
    ledgers, owners = {}, {}
    encoder, _, _ = schema_round(
        clean,
        schema=pizza.schema(),
        document={"epsilon": BUDGET, "delta": DELTA, "statistics_share": 0.1, "seed": 0},
        min_replies=1,
        min_nodes=3,
        timeout=60,
        ledgers=ledgers,
        owners=owners,
    )
    grid = PoisoningGrid(clean, 101, MARGINALS, poison)
    rounds = run_marginal_rounds(
        grid,
        encoder=encoder,
        model=MarginalModel(encoder),
        document={"model_options": {}, "epsilon": BUDGET, "delta": DELTA, "seed": 0},
        min_replies=1,
        min_nodes=3,
        timeout=60,
        ledgers=ledgers,
        owners=owners,
    )
    selection = rounds.round_log[0]["merchants"]
    assert selection["merchant-1"] == {
        "state": "failed",
        "reason": "marginals rejected: non-finite counts",
    }
    assert set(rounds.round_log[1]["merchants"]) == {"merchant-0", "merchant-2"}
    for release, _ in rounds.releases.values():
        assert release.contributors == 2 and release_problem(release) is None
    assert len(rounds.tree) == len(encoder.transforms) - 1
