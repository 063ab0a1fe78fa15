"""MerchantFedAvg and sort_replies on hand-built Flower reply messages.

Replies are built as Flower builds them on a node: ``Message(content, reply_to=instruction)``,
where the instruction carries the metadata the SuperLink would have given it (outside a run,
Flower has no task identity, so instructions are built from ``Metadata`` directly)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
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


# -- robust aggregation (the module docstring's rules) -----------------------------------------

GLOBAL = 1.0  # the round's global weights, as configure_train sent them


def configured(monkeypatch, **options) -> MerchantFedAvg:
    """A strategy that has sent a round starting from weights(GLOBAL)."""
    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
    strategy = MerchantFedAvg(**options)
    config = ConfigRecord({DOCUMENT_KEY: dumps({"model": "gan"})})
    list(strategy.configure_train(1, ArrayRecord(weights(GLOBAL)), config, FakeGrid([11, 12])))
    return strategy


def honest() -> list[Message]:
    """Three merchants that moved 0.1, 0.2 and 0.3 from the global weights."""
    return [
        trained(11, "merchant-0", GLOBAL + 0.1, 100.0),
        trained(12, "merchant-1", GLOBAL + 0.2, 200.0),
        trained(13, "merchant-2", GLOBAL + 0.3, 300.0),
    ]


HONEST_MEAN = GLOBAL + (0.1 * 100 + 0.2 * 200 + 0.3 * 300) / 600


def poisoned_weights(value: float) -> Message:
    reply = trained(19, "attacker", GLOBAL, 100.0)
    reply.content[ARRAYS] = ArrayRecord(
        {"layer.weight": torch.full((2, 3), value), "layer.bias": torch.full((3,), GLOBAL)}
    )
    return reply


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        (lambda: poisoned_weights(float("nan")), "non-finite weights"),
        (lambda: poisoned_weights(float("inf")), "non-finite weights"),
        (lambda: poisoned_weights(-float("inf")), "non-finite weights"),
        (lambda: trained(19, "attacker", GLOBAL + 0.2 * 1e6, 100.0), "median"),
        (lambda: trained(19, "attacker", (GLOBAL + 0.2) * 1e6, 100.0), "median"),
        (lambda: trained(19, "attacker", GLOBAL + 0.2, 1e12), "above the schema round's total"),
        (lambda: trained(19, "attacker", GLOBAL + 0.2, -99.0), "not positive"),
        (lambda: trained(19, "attacker", GLOBAL + 0.2, 0.0), "not positive"),
        (lambda: trained(19, "attacker", GLOBAL + 0.2, float("nan")), "non-finite DP row count"),
        (lambda: trained(19, "attacker", GLOBAL + 0.2, float("inf")), "non-finite DP row count"),
        (
            lambda: trained(19, "attacker", GLOBAL + 0.2, 100.0, epsilon=float("nan")),
            "non-finite metric 'epsilon'",
        ),
    ],
)
def test_a_poisoned_update_is_rejected_named_and_left_out(monkeypatch, caplog, attack, reason):
    strategy = configured(monkeypatch, min_train_replies=3, total_dp_rows=(600.0, 9.0))
    arrays, metrics = strategy.aggregate_train(1, [*honest(), attack()])
    # The honest three are averaged exactly as without the attacker; the model stays finite.
    averaged = arrays.to_torch_state_dict()
    assert torch.allclose(averaged["layer.weight"], torch.full((2, 3), HONEST_MEAN))
    assert torch.allclose(averaged["layer.bias"], torch.full((3,), HONEST_MEAN))
    assert all(torch.isfinite(v).all() for v in averaged.values())
    assert metrics["epsilon"] == pytest.approx(0.5)
    (entry,) = strategy.round_log
    assert entry["aggregated"] is True
    rejected = entry["merchants"]["attacker"]
    assert rejected["state"] == FAILED
    assert rejected["reason"].startswith("update rejected:") and reason in rejected["reason"]
    assert {m for m, r in entry["merchants"].items() if r["state"] == OK} == {
        "merchant-0",
        "merchant-1",
        "merchant-2",
    }
    assert "attacker" in caplog.text and "update rejected" in caplog.text
    # Its ledger is still kept: its steps ran.
    assert "attacker" in strategy.ledgers


def test_honest_merchants_are_averaged_as_before(monkeypatch):
    strategy = configured(monkeypatch, min_train_replies=3, total_dp_rows=(600.0, 9.0))
    arrays, _ = strategy.aggregate_train(1, honest())
    assert torch.allclose(
        arrays.to_torch_state_dict()["layer.weight"], torch.full((2, 3), HONEST_MEAN)
    )
    assert {r["state"] for r in strategy.round_log[0]["merchants"].values()} == {OK}


def test_the_row_count_limit_allows_the_noise_of_the_total():
    """Limit: max(T, 1) + 6 sqrt(V); an honest count may pass T by the others' noise."""
    strategy = MerchantFedAvg(total_dp_rows=(600.0, 100.0))  # limit 600 + 6 * 10 = 660
    within = trained(11, "merchant-0", 1.0, 659.0)
    above = trained(12, "merchant-1", 1.0, 661.0)
    strategy.aggregate_train(1, [within, above])
    outcome = strategy.round_log[0]["merchants"]
    assert outcome["merchant-0"]["state"] == OK
    assert outcome["merchant-1"]["state"] == FAILED and "660" in outcome["merchant-1"]["reason"]
    # Without the schema round's total, only finite and positive apply.
    loose = MerchantFedAvg()
    loose.aggregate_train(1, [trained(11, "merchant-0", 1.0, 1e12)])
    assert loose.round_log[0]["merchants"]["merchant-0"]["state"] == OK


def test_the_median_rule_with_two_merchants_rejects_the_farther_one(monkeypatch):
    strategy = configured(monkeypatch, min_train_replies=1)
    near = trained(11, "merchant-0", GLOBAL + 0.1, 100.0)
    far = trained(12, "merchant-1", GLOBAL + 0.1 * 11, 100.0)  # 11x the other's distance
    arrays, _ = strategy.aggregate_train(1, [far, near])
    assert torch.allclose(arrays.to_torch_state_dict()["layer.weight"], torch.full((2, 3), 1.1))
    outcome = strategy.round_log[0]["merchants"]
    assert outcome["merchant-0"]["state"] == OK
    assert outcome["merchant-1"]["state"] == FAILED
    assert "other merchant's" in outcome["merchant-1"]["reason"]
    # Within 10x of each other both are averaged.
    both = configured(monkeypatch, min_train_replies=2)
    arrays, _ = both.aggregate_train(
        1,
        [
            trained(11, "merchant-0", GLOBAL + 0.1, 100.0),
            trained(12, "merchant-1", GLOBAL + 0.9, 100.0),
        ],
    )
    assert torch.allclose(arrays.to_torch_state_dict()["layer.weight"], torch.full((2, 3), 1.5))


def test_the_median_rule_with_one_merchant_is_skipped(monkeypatch):
    strategy = configured(monkeypatch, min_train_replies=1)
    arrays, _ = strategy.aggregate_train(1, [trained(11, "merchant-0", GLOBAL + 1e6, 100.0)])
    assert torch.allclose(
        arrays.to_torch_state_dict()["layer.weight"], torch.full((2, 3), GLOBAL + 1e6)
    )
    # The finite rules still apply to a lone merchant.
    alone = configured(monkeypatch, min_train_replies=1)
    assert alone.aggregate_train(1, [poisoned_weights(float("nan"))]) == (None, None)
    assert alone.round_log[0]["merchants"]["attacker"]["reason"] == (
        "update rejected: non-finite weights"
    )


def test_the_median_rule_measures_from_the_global_weights(monkeypatch):
    """Updates near a large global model: their norms are alike, their distances are not."""
    strategy = configured(monkeypatch, min_train_replies=3)
    replies = [*honest(), trained(19, "attacker", GLOBAL + 0.2 * 20, 100.0)]  # 20x the median
    strategy.aggregate_train(1, replies)
    assert strategy.round_log[0]["merchants"]["attacker"]["state"] == FAILED
    # Without the global weights (no configure_train), norms are compared: 5 vs ~1.2.
    unconfigured = MerchantFedAvg(min_train_replies=3)
    unconfigured.aggregate_train(1, replies)
    assert unconfigured.round_log[0]["merchants"]["attacker"]["state"] == OK


def test_rejections_below_the_minimum_keep_the_model(monkeypatch):
    strategy = configured(monkeypatch, min_train_replies=3)
    replies = [*honest()[:2], poisoned_weights(float("nan"))]
    assert strategy.aggregate_train(1, replies) == (None, None)
    (entry,) = strategy.round_log
    assert entry["aggregated"] is False
    assert entry["merchants"]["attacker"]["state"] == FAILED


def test_an_update_whose_norm_overflows_is_rejected(monkeypatch):
    """Finite float64 weights whose squared distance overflows: the norm is not finite."""
    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
    strategy = MerchantFedAvg(min_train_replies=1)

    def double(reply: Message, value: float) -> Message:
        doubles = {
            k: torch.full(v.shape, value, dtype=torch.float64) for k, v in weights(0).items()
        }
        reply.content[ARRAYS] = ArrayRecord(doubles)
        return reply

    config = ConfigRecord({DOCUMENT_KEY: dumps({"model": "gan"})})
    start = ArrayRecord({k: v.double() for k, v in weights(GLOBAL).items()})
    list(strategy.configure_train(1, start, config, FakeGrid([11, 12])))
    replies = [double(r, GLOBAL + 0.1 * (i + 1)) for i, r in enumerate(honest())]
    strategy.aggregate_train(1, [*replies, double(poisoned_weights(0.0), 1e300)])
    outcome = strategy.round_log[0]["merchants"]
    assert outcome["attacker"]["reason"] == "update rejected: non-finite update norm"
    assert {m for m, r in outcome.items() if r["state"] == OK} == {
        "merchant-0",
        "merchant-1",
        "merchant-2",
    }


def test_weights_that_are_not_real_numbers_are_rejected(monkeypatch):
    strategy = configured(monkeypatch, min_train_replies=1)
    other = trained(19, "attacker", GLOBAL, 100.0)
    other.content[ARRAYS] = ArrayRecord(
        {k: Array(v.numpy().astype(np.complex64)) for k, v in weights(GLOBAL + 0.1).items()}
    )
    strategy.aggregate_train(1, [*honest(), other])
    assert strategy.round_log[0]["merchants"]["attacker"]["reason"] == (
        "update rejected: weight dtypes are not real numbers"
    )
    # Another width or an int is averaged: FedAvg's average itself returns float64, and an int
    # buffer (a batch count) comes back from it as a float.
    for cast in (torch.Tensor.double, torch.Tensor.long):
        wider = configured(monkeypatch, min_train_replies=1)
        other.content[ARRAYS] = ArrayRecord({k: cast(v) for k, v in weights(GLOBAL).items()})
        wider.aggregate_train(1, [*honest(), other])
        assert wider.round_log[0]["merchants"]["attacker"]["state"] == OK


def test_a_non_finite_aggregate_keeps_the_previous_model(monkeypatch, caplog):
    """Impossible after the rules; the last check holds even if FedAvg produced one."""
    from flwr.serverapp.strategy import FedAvg

    def broken(self, server_round, replies):
        return ArrayRecord(weights(float("nan"))), MetricRecord({"num-examples": 1.0})

    strategy = configured(monkeypatch, min_train_replies=1)
    monkeypatch.setattr(FedAvg, "aggregate_train", broken)
    assert strategy.aggregate_train(1, honest()) == (None, None)
    (entry,) = strategy.round_log
    assert entry["aggregated"] is False and "not finite" in entry["reason"]
    assert "not finite" in caplog.text


def test_total_dp_rows_are_read_from_the_persisted_statistics(tmp_path):
    from privacy.statistics import TableStatistics
    from server.releases import save_statistics

    assert MerchantFedAvg.total_dp_rows_of(tmp_path) is None
    save_statistics(tmp_path, TableStatistics(columns={}, row_count=600.0, row_count_var=9.0))
    assert MerchantFedAvg.total_dp_rows_of(tmp_path) == (600.0, 9.0)
