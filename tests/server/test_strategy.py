"""MerchantFedAvg and sort_replies on hand-built Flower reply messages.

Replies are built as Flower builds them on a node: ``Message(content, reply_to=instruction)``,
where the instruction carries the metadata the SuperLink would have given it (outside a run,
Flower has no task identity, so instructions are built from ``Metadata`` directly)."""

from __future__ import annotations

import time

import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from server.strategy import MerchantFedAvg, reply_document, sort_replies
from synth_models.federation import (
    ARRAYS,
    CONFIG,
    DOCUMENT_KEY,
    FAILED,
    LEDGER,
    METRICS,
    OK,
    REFUSED,
    STATISTICS,
    STATUS,
    dumps,
)


def instruction(node_id: int, message_type: str = "train") -> Message:
    metadata = Metadata(
        run_id=1,
        message_id=f"instruction-{node_id}",
        src_node_id=1,
        dst_node_id=node_id,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    return Message(metadata=metadata, content=RecordDict())


def document(content: dict) -> ConfigRecord:
    return ConfigRecord({DOCUMENT_KEY: dumps(content)})


def ledger_document(merchant: str, epsilon: float) -> dict:
    return {
        "owner": merchant,
        "epsilon_budget": 1.0,
        "delta": 1e-5,
        "records": [],
        "epsilon": epsilon,
    }


def weights(value: float) -> dict[str, torch.Tensor]:
    return {"layer.weight": torch.full((2, 3), value), "layer.bias": torch.full((3,), value)}


def trained(node_id: int, merchant: str, value: float, dp_rows: float, epsilon=0.5) -> Message:
    content = RecordDict(
        {
            ARRAYS: ArrayRecord(weights(value)),
            METRICS: MetricRecord({"num-examples": dp_rows, "epsilon": epsilon}),
            LEDGER: document(ledger_document(merchant, epsilon)),
            STATUS: document({"state": OK, "merchant": merchant}),
        }
    )
    return Message(content, reply_to=instruction(node_id))


def status_only(
    node_id: int, merchant: str, state: str, code: str, column: str | None = None
) -> Message:
    status = {"state": state, "merchant": merchant, "code": code}
    if column is not None:
        status["column"] = column
    return Message(RecordDict({STATUS: document(status)}), reply_to=instruction(node_id))


def error_reply(node_id: int, reason: str) -> Message:
    return Message(Error(code=0, reason=reason), reply_to=instruction(node_id))


@pytest.fixture
def replies() -> list[Message]:
    return [
        trained(11, "merchant-0", 1.0, 100.0, epsilon=0.4),
        trained(12, "merchant-1", 3.0, 300.0, epsilon=0.6),
        status_only(13, "merchant-2", REFUSED, "budget-exhausted"),
        status_only(14, "merchant-3", FAILED, "bad-input", column="price"),
        error_reply(15, "ClientApp raised an exception"),
    ]


def test_hand_built_replies_look_like_node_replies(replies):
    assert replies[0].metadata.src_node_id == 11
    assert replies[0].metadata.reply_to_message_id == "instruction-11"
    assert reply_document(replies[0], STATUS) == {"state": OK, "merchant": "merchant-0"}
    assert reply_document(replies[0], STATISTICS) is None
    assert replies[4].has_error()


def test_sort_replies_splits_outcomes_and_keeps_ledgers(replies):
    ledgers = {"merchant-2": ledger_document("merchant-2", 0.9)}  # from an earlier round
    accepted, outcome = sort_replies(replies, ledgers, {})
    assert [(m.metadata.src_node_id, name) for m, name in accepted] == [
        (11, "merchant-0"),
        (12, "merchant-1"),
    ]
    assert set(outcome) == {"merchant-0", "merchant-1", "merchant-2", "merchant-3", "node-15"}
    assert outcome["merchant-0"] == {"state": OK, "num-examples": 100.0, "epsilon": 0.4}
    assert outcome["merchant-2"] == {
        "state": REFUSED,
        "code": "budget-exhausted",
        "reason": "budget-exhausted",
    }
    # A merchant says why by a code and a public column only; the server words it.
    assert outcome["merchant-3"] == {
        "state": FAILED,
        "code": "bad-input",
        "column": "price",
        "reason": "bad-input (column 'price')",
    }
    assert outcome["node-15"] == {"state": FAILED, "reason": "ClientApp raised an exception"}
    # Ledgers: updated for the merchants that sent one, kept for the one that did not.
    assert ledgers["merchant-0"]["epsilon"] == 0.4
    assert ledgers["merchant-1"]["epsilon"] == 0.6
    assert ledgers["merchant-2"]["epsilon"] == 0.9
    assert "merchant-3" not in ledgers


def test_an_error_reply_from_the_superlink_names_the_merchant_it_was_sent_to():
    """A node that went offline gets an error reply written by the SuperLink (source node 1):
    the outcome names the merchant whose message it answers, not the SuperLink."""
    lost = Message(Error(code=0, reason="node unavailable"), reply_to=instruction(16))
    lost.metadata.__dict__["_src_node_id"] = 1
    owners = {"merchant-6": 16}
    _, outcome = sort_replies([lost], {}, owners, {"instruction-16": 16})
    assert outcome == {"merchant-6": {"state": FAILED, "reason": "node unavailable"}}
    _, unknown = sort_replies([lost], {}, owners)
    assert set(unknown) == {"node-1"}


def test_a_reply_without_status_is_a_failure():
    content = RecordDict(
        {ARRAYS: ArrayRecord(weights(1.0)), METRICS: MetricRecord({"num-examples": 5.0})}
    )
    accepted, outcome = sort_replies([Message(content, reply_to=instruction(21))], {}, {})
    assert accepted == []
    assert outcome == {"node-21": {"state": FAILED, "reason": "no status"}}


def test_aggregate_train_averages_by_dp_row_counts(replies):
    strategy = MerchantFedAvg(round_offset=2, min_train_replies=2)
    arrays, metrics = strategy.aggregate_train(1, replies)
    averaged = arrays.to_torch_state_dict()
    assert set(averaged) == {"layer.weight", "layer.bias"}
    # (1.0 * 100 + 3.0 * 300) / 400 = 2.5: weighted by num-examples, refused/failed left out.
    assert torch.allclose(averaged["layer.weight"], torch.full((2, 3), 2.5))
    assert torch.allclose(averaged["layer.bias"], torch.full((3,), 2.5))
    # Epsilon is the maximum over merchants, not a weighted average.
    assert metrics["epsilon"] == pytest.approx(0.6)
    (entry,) = strategy.round_log
    assert entry["round"] == 3  # server round 1 after 2 completed rounds
    assert entry["aggregated"] is True
    assert entry["merchants"]["merchant-2"]["state"] == REFUSED
    assert set(strategy.ledgers) == {"merchant-0", "merchant-1"}


def test_too_few_trained_merchants_keep_the_model(replies):
    strategy = MerchantFedAvg(min_train_replies=3, ledgers={"merchant-9": {"epsilon": 0.1}})
    assert strategy.aggregate_train(4, replies) == (None, None)
    (entry,) = strategy.round_log
    assert entry["round"] == 4 and entry["aggregated"] is False
    # The ledgers of the merchants that did train are still recorded (their steps ran).
    assert set(strategy.ledgers) == {"merchant-0", "merchant-1", "merchant-9"}


def test_every_merchant_refusing_keeps_the_model():
    strategy = MerchantFedAvg(min_train_replies=1)
    refusals = [status_only(30 + i, f"merchant-{i}", REFUSED, "budget") for i in range(3)]
    assert strategy.aggregate_train(1, refusals) == (None, None)
    assert {r["state"] for r in strategy.round_log[0]["merchants"].values()} == {REFUSED}


def test_a_merchant_name_belongs_to_its_first_node(replies):
    impostor = trained(99, "merchant-0", 9.0, 900.0, epsilon=0.01)
    ledgers, owners = {}, {}
    accepted, outcome = sort_replies([*replies, impostor], ledgers, owners)
    assert 99 not in [m.metadata.src_node_id for m, _ in accepted]
    assert outcome["node-99"]["state"] == FAILED and "another node" in outcome["node-99"]["reason"]
    assert ledgers["merchant-0"]["epsilon"] == 0.4  # the impostor's ledger was not taken
    assert owners["merchant-0"] == 11


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def test_configure_train_numbers_rounds_after_the_offset(monkeypatch):
    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
    strategy = MerchantFedAvg(round_offset=2, min_available_nodes=2, min_train_nodes=2)
    config = ConfigRecord({DOCUMENT_KEY: dumps({"model": "gan"})})
    messages = list(
        strategy.configure_train(1, ArrayRecord(weights(0.0)), config, FakeGrid([5, 6]))
    )
    assert sorted(m.metadata.dst_node_id for m in messages) == [5, 6]
    for msg in messages:
        assert msg.metadata.message_type == "train"
        assert msg.content.config_records[CONFIG]["server-round"] == 3
        assert ARRAYS in msg.content.array_records


def test_a_reply_with_mismatched_weights_fails_only_its_merchant():
    mismatched = trained(12, "merchant-1", 3.0, 300.0)
    del mismatched.content[ARRAYS]["layer.bias"]
    strategy = MerchantFedAvg(min_train_replies=1)
    arrays, _ = strategy.aggregate_train(1, [trained(11, "merchant-0", 1.0, 100.0), mismatched])
    assert torch.allclose(arrays.to_torch_state_dict()["layer.weight"], torch.full((2, 3), 1.0))
    assert strategy.round_log[0]["merchants"]["merchant-1"]["state"] == FAILED
