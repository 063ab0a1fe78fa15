"""The reply guard: what may leave a merchant, and what happens to a reply that may not."""

from __future__ import annotations

import json
import time

import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)

from client.guard import reply_guard, reply_problems
from synth_models.federation import (
    ARRAYS,
    DOCUMENT_KEY,
    FAILED,
    LEDGER,
    METRICS,
    OK,
    REPLY_METRICS,
    STATISTICS,
    STATUS,
    dumps,
    loads,
)


def document(content: dict) -> ConfigRecord:
    return ConfigRecord({DOCUMENT_KEY: dumps(content)})


def legitimate_reply() -> RecordDict:
    """What a merchant's train handler sends: weights, allowed metrics and JSON documents."""
    return RecordDict(
        {
            ARRAYS: ArrayRecord({"layer.weight": torch.ones(3, 2)}),
            METRICS: MetricRecord({key: 1.5 for key in REPLY_METRICS}),
            LEDGER: document({"owner": "merchant-0", "records": []}),
            STATISTICS: document({"row_count": 301.7, "columns": {}}),
            STATUS: document({"state": OK, "merchant": "merchant-0"}),
        }
    )


def with_record(name: str, record) -> RecordDict:
    content = legitimate_reply()
    content[name] = record
    return content


def test_legitimate_reply_passes():
    assert reply_problems(legitimate_reply()) == []
    assert reply_problems(RecordDict({STATUS: document({"state": OK})})) == []


def test_extra_array_record_is_rejected():
    content = with_record("rows", ArrayRecord({"x": torch.arange(10.0)}))
    problems = reply_problems(content)
    assert len(problems) == 1
    assert "'rows'" in problems[0] and "not the model weights" in problems[0]


def test_metric_not_on_allow_list_is_rejected():
    content = legitimate_reply()
    content[METRICS]["exact-rows"] = 300
    problems = reply_problems(content)
    assert problems == ["metric 'exact-rows' is not on the allow-list"]


def test_metric_list_is_rejected():
    content = legitimate_reply()
    content[METRICS]["epsilon"] = [0.1, 0.2, 0.3]  # per-batch / per-row values
    assert reply_problems(content) == ["metric 'epsilon' is not a scalar"]


def test_metric_record_under_another_name_is_rejected():
    content = with_record("extra-metrics", MetricRecord({"epsilon": 1.0}))
    assert reply_problems(content) == ["metric record 'extra-metrics' is not allowed"]


def test_non_json_document_is_rejected():
    content = with_record(STATISTICS, ConfigRecord({DOCUMENT_KEY: "{row_count: 12"}))
    assert reply_problems(content) == [f"config record {STATISTICS!r} is not a JSON document"]


def test_unknown_config_record_is_rejected():
    content = with_record("table", document({"price": [13.25, 16.0]}))
    assert reply_problems(content) == ["config record 'table' is not allowed"]


def test_config_record_with_a_list_of_per_row_values_is_rejected():
    rows = [13.25, 16.0, 16.0, 20.75, 18.5]
    extra_key = ConfigRecord({DOCUMENT_KEY: dumps({"row_count": 5.3}), "price": rows})
    problems = reply_problems(with_record(STATISTICS, extra_key))
    assert len(problems) == 1 and "holds ['json', 'price']" in problems[0]
    # The same list put directly under the document key: str() of a list of numbers is valid
    # JSON, so the guard must check that the document is a string, not just parse it.
    under_key = ConfigRecord({DOCUMENT_KEY: rows})
    problems = reply_problems(with_record(STATISTICS, under_key))
    assert len(problems) == 1 and STATISTICS in problems[0]


def test_several_problems_are_all_named():
    content = with_record("rows", ArrayRecord({"x": torch.arange(3.0)}))
    content["table"] = document({})
    content[METRICS]["rows"] = 3
    assert len(reply_problems(content)) == 3


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def _instruction() -> Message:
    """An instruction as the node receives it (built from metadata: outside a run, Flower has
    no task identity to fill it in)."""
    metadata = Metadata(
        run_id=1,
        message_id="instruction-7",
        src_node_id=1,
        dst_node_id=7,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type="train",
    )
    return Message(metadata=metadata, content=RecordDict())


def test_reply_guard_replaces_a_bad_reply_by_a_failed_status():
    instruction = _instruction()
    leaking = with_record("rows", ArrayRecord({"x": torch.arange(300.0)}))

    def handler(msg, context):
        return Message(leaking, reply_to=msg)

    reply = reply_guard(instruction, _context(), handler)
    assert not reply.has_error()
    assert list(reply.content.keys()) == [STATUS]
    status = loads(str(reply.content.config_records[STATUS][DOCUMENT_KEY]))
    assert status["state"] == FAILED
    assert "privacy guard" in status["reason"] and "'rows'" in status["reason"]
    # Nothing of the blocked reply leaves: no weights, no metrics, no ledger.
    assert not reply.content.array_records and not reply.content.metric_records
    assert reply.metadata.reply_to_message_id == instruction.metadata.message_id
    assert reply.metadata.dst_node_id == instruction.metadata.src_node_id
    assert reply_problems(reply.content) == []


def test_reply_guard_passes_a_good_reply_unchanged():
    content = legitimate_reply()

    def handler(msg, context):
        return Message(content, reply_to=msg)

    reply = reply_guard(_instruction(), _context(), handler)
    assert reply.content is content


@pytest.mark.parametrize("bad", ["not json", "{'single': 'quotes'}"])
def test_guard_parses_documents_as_json(bad):
    with pytest.raises(ValueError):
        json.loads(bad)
    content = with_record(LEDGER, ConfigRecord({DOCUMENT_KEY: bad}))
    assert reply_problems(content) == [f"config record {LEDGER!r} is not a JSON document"]
