"""The reply guard: only typed releases leave a merchant, checked against the public schema,
the request and the merchant's ledger. Each test smuggles something real handlers never send
into a reply the real ClientApp built, and checks that the guard blocks it."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

import client.guard as guard
from client.guard import reply_problems
from client.policy import MerchantPolicy
from privacy.statistics import canonical_order, in_open_vocabulary
from synth_models.federation import (
    ARRAYS,
    AUDIT,
    DOCUMENT_KEY,
    FAILED,
    LEDGER,
    MARGINALS,
    MARGINALS_MESSAGE,
    METRICS,
    STATISTICS,
    STATISTICS_MESSAGE,
    STATUS,
    TRAIN_MESSAGE,
    dumps,
)
from synth_models.synthesizer import build_model
from synth_models.training import TrainingConfig
from tests.client.harness import document, message, pizza_merchant

ROWS_AS_CSV = "order_id,pizza,price\n1,hawaiian_m,13.25\n2,classic_dlx_l,20.75\n" * 20


@pytest.fixture(scope="module")
def replies(tmp_path_factory):
    """One real reply of each release type, with the request that asked for it."""
    merchant = pizza_merchant(tmp_path_factory.mktemp("guarded"), rows=6000, undeclared=("type",))
    encoder = merchant.encoder()
    base = {
        "schema": merchant.schema.to_dict(),
        "encoder": encoder.to_dict(),
        "model_options": {},
        "epsilon": 1.0,
        "delta": 1e-5,
        "seed": 0,
    }
    asked = {
        STATISTICS_MESSAGE: (merchant.statistics_request(), None),
        MARGINALS_MESSAGE: ({**base, "model": "marginal", "phase": "selection"}, None),
        TRAIN_MESSAGE: (
            {
                **base,
                "model": "vae",
                "training": TrainingConfig(epochs=1, warm_start_share=0).to_dict(),
                "num_rounds": 1,
            },
            build_model("vae", encoder, {}).state_dict(),
        ),
    }
    out = {}
    for kind, (request, arrays) in asked.items():
        reply = merchant.ask(kind, request, arrays)
        assert merchant.status(reply)["state"] == "ok", merchant.status(reply)
        out[kind] = (request, reply.content)
    return out


def problems(kind, content, request, policy=None) -> list[str]:
    return reply_problems(
        content,
        message_type=kind,
        request=request,
        merchant="merchant-0",
        policy=policy or MerchantPolicy(),
    )


def tampered(replies, kind, name, change):
    """The real reply of ``kind`` with document ``name`` passed through ``change``."""
    request, content = replies[kind]
    content = copy.deepcopy(content)
    doc = json.loads(str(content.config_records[name][DOCUMENT_KEY]))
    changed = change(doc)
    content[name] = ConfigRecord({DOCUMENT_KEY: dumps(doc if changed is None else changed)})
    return problems(kind, content, request)


@pytest.mark.parametrize("kind", [STATISTICS_MESSAGE, MARGINALS_MESSAGE, TRAIN_MESSAGE])
def test_real_replies_pass(replies, kind):
    request, content = replies[kind]
    assert problems(kind, content, request) == []


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (STATISTICS_MESSAGE, STATUS),
        (STATISTICS_MESSAGE, LEDGER),
        (STATISTICS_MESSAGE, STATISTICS),
        (MARGINALS_MESSAGE, MARGINALS),
    ],
)
def test_a_table_smuggled_into_any_document_is_blocked(replies, kind, name):
    assert tampered(replies, kind, name, lambda d: d.update(rows=ROWS_AS_CSV))


def test_free_text_in_a_status_is_blocked(replies):
    assert tampered(replies, STATISTICS_MESSAGE, STATUS, lambda d: d.update(code=ROWS_AS_CSV))
    assert tampered(replies, STATISTICS_MESSAGE, STATUS, lambda d: d.update(reason="value 51"))


def test_rows_as_released_categories_are_blocked(replies):
    def rows_as_categories(d):
        column = next(c for c in d["columns"].values() if c["kind"] == "categorical")
        column["public_domain"] = False
        column["categories"] = ROWS_AS_CSV.splitlines()[: len(column["counts"])]

    assert tampered(replies, STATISTICS_MESSAGE, STATISTICS, rows_as_categories)


def test_unsorted_released_categories_are_blocked(replies):
    _, content = replies[STATISTICS_MESSAGE]
    released = document(Message(content, reply_to=message(STATISTICS_MESSAGE, {})), STATISTICS)
    names = released["columns"]["type"]["categories"]
    found = [n for n in names if not in_open_vocabulary(n)]  # besides every public cell
    assert len(found) == 4 and names == sorted(names, key=canonical_order)  # as released

    def first_appearance(d):
        d["columns"]["type"]["categories"] = d["columns"]["type"]["categories"][::-1]

    found = tampered(replies, STATISTICS_MESSAGE, STATISTICS, first_appearance)
    assert found == ["statistics of column 'type': released categories are not in canonical order"]


def test_a_ledger_whose_epsilon_is_not_its_records_is_blocked(replies):
    assert tampered(replies, STATISTICS_MESSAGE, LEDGER, lambda d: d.update(epsilon=0.001))
    assert tampered(
        replies, STATISTICS_MESSAGE, LEDGER, lambda d: d["records"][0].update(label="rows: 1,2")
    )
    assert tampered(replies, STATISTICS_MESSAGE, LEDGER, lambda d: d.update(owner="merchant-9"))


def test_statistics_with_noise_other_than_the_ledgers_are_blocked(replies):
    def exact(d):
        d["row_count_var"] = 0.0
        for column in d["columns"].values():
            column["noise_var"] = 0.0

    assert tampered(replies, STATISTICS_MESSAGE, STATISTICS, exact)


def test_a_raw_column_sent_as_a_zero_noise_marginal_is_blocked(replies):
    def raw(d):
        d["noise_var"] = 0.0

    found = tampered(replies, MARGINALS_MESSAGE, MARGINALS, raw)
    assert any("noise variance" in p for p in found)


def test_marginals_of_another_shape_are_blocked(replies):
    def rows_as_a_table(d):
        d["cliques"].append([0, 1])
        d["shapes"].append([600, 4])
        d["tables"].append([[1.0] * 4] * 600)

    assert tampered(replies, MARGINALS_MESSAGE, MARGINALS, rows_as_a_table)

    def three_way(d):
        d["cliques"][0] = [0, 1, 2]

    assert tampered(replies, MARGINALS_MESSAGE, MARGINALS, three_way)


def test_nan_in_a_document_is_blocked(replies):
    def nan(d):
        d["tables"][0][0][0] = math.nan

    found = tampered(replies, MARGINALS_MESSAGE, MARGINALS, nan)
    assert any("finite" in p for p in found)


def test_a_raw_tensor_is_blocked(replies):
    request, content = replies[TRAIN_MESSAGE]
    content = copy.deepcopy(content)
    content["rows"] = ArrayRecord({"x": torch.randn(600, 4)})
    assert problems(TRAIN_MESSAGE, content, request)
    # ... and so is a raw tensor added to the weights, or weights of another shape.
    weights = content.array_records[ARRAYS].to_torch_state_dict()
    del content["rows"]
    content[ARRAYS] = ArrayRecord({**weights, "rows": torch.randn(600, 4)})
    assert problems(TRAIN_MESSAGE, content, request)


def test_non_finite_weights_are_blocked(replies):
    request, content = replies[TRAIN_MESSAGE]
    content = copy.deepcopy(content)
    weights = content.array_records[ARRAYS].to_torch_state_dict()
    name = next(iter(weights))
    weights[name] = torch.full_like(weights[name], math.nan)
    content[ARRAYS] = ArrayRecord(weights)
    assert problems(TRAIN_MESSAGE, content, request) == ["weights hold non-finite values"]


def test_metrics_off_the_allow_list_or_not_scalars_are_blocked(replies):
    request, content = replies[TRAIN_MESSAGE]
    content = copy.deepcopy(content)
    content[METRICS]["exact-rows"] = 300
    assert problems(TRAIN_MESSAGE, content, request) == [
        "metric 'exact-rows' is not on the allow-list"
    ]
    del content[METRICS]["exact-rows"]
    content[METRICS]["epsilon"] = [0.1, 0.2]
    assert problems(TRAIN_MESSAGE, content, request) == ["metric 'epsilon' is not a scalar"]


def test_a_release_of_another_message_type_is_blocked(replies):
    request, content = replies[STATISTICS_MESSAGE]
    content = copy.deepcopy(content)
    content[METRICS] = MetricRecord({"epsilon": 0.1})
    assert problems(STATISTICS_MESSAGE, content, request)
    assert problems(TRAIN_MESSAGE, replies[STATISTICS_MESSAGE][1], request)


def test_an_audit_reply_holds_a_flag_only(replies):
    request, _ = replies[STATISTICS_MESSAGE]
    status = {"state": "ok", "merchant": "merchant-0", "code": "done"}
    reply = RecordDict(
        {
            STATUS: ConfigRecord({DOCUMENT_KEY: dumps(status)}),
            AUDIT: ConfigRecord({DOCUMENT_KEY: dumps({"local_report": True})}),
        }
    )
    assert problems("evaluate", reply, request) == []
    reply[AUDIT] = ConfigRecord({DOCUMENT_KEY: dumps({"shares": {"alice": 0.01}})})
    assert problems("evaluate", reply, request)


def test_an_oversize_reply_is_blocked(replies, monkeypatch):
    request, content = replies[STATISTICS_MESSAGE]
    monkeypatch.setattr(guard, "MAX_REPLY_BYTES", 1000)
    assert "larger than" in problems(STATISTICS_MESSAGE, content, request)[0]


def test_the_mod_replaces_a_blocked_reply_by_a_code_only_status(tmp_path):
    merchant = pizza_merchant(tmp_path)
    instruction = message(STATISTICS_MESSAGE, merchant.statistics_request())
    leaking = RecordDict({"rows": ArrayRecord({"x": torch.arange(300.0)})})
    mod = guard.make_reply_guard(lambda context: MerchantPolicy(), lambda context: "merchant-0")
    reply = mod(instruction, merchant.context, lambda msg, ctx: Message(leaking, reply_to=msg))
    assert list(reply.content.keys()) == [STATUS]
    assert document(reply, STATUS) == {
        "state": FAILED,
        "merchant": "merchant-0",
        "code": "reply-blocked",
    }
    assert reply.metadata.reply_to_message_id == instruction.metadata.message_id
