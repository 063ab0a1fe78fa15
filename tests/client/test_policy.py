"""The merchant's local policy: only the merchant sets its budget, its delta and what it
answers; the server's request is refused, with a code, when it asks for more."""

from __future__ import annotations

import json
import logging
import math

import pytest

from client.policy import MerchantPolicy, PolicyRefusal
from simulations.datasets import load_dataset
from synth_models.federation import LEDGER, STATISTICS, STATISTICS_MESSAGE
from tests.client.harness import document, pizza_merchant


def test_node_config_and_policy_file_set_the_policy(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('epsilon-budget = 3.0\nmax-delta = 1e-6\nallowed-models = ["marginal"]\n')
    policy = MerchantPolicy.from_node_config(
        {"policy-path": str(path), "allowed-messages": "query.statistics,query.marginals"}
    )
    assert policy.epsilon_budget == 3.0 and policy.max_delta == 1e-6
    assert policy.allowed_models == ("marginal",)
    assert policy.allowed_messages == ("query.statistics", "query.marginals")
    assert not policy.allow_non_private and not policy.require_ledger_path
    json_path = tmp_path / "policy.json"
    json_path.write_text(json.dumps({"epsilon-budget": 0.5, "typo-budget": 9}))
    with pytest.raises(ValueError, match="typo-budget"):
        MerchantPolicy.from_file(json_path)


def test_a_deployed_merchant_always_needs_a_ledger_file():
    policy = MerchantPolicy.from_node_config({"data-path": "/data/orders.csv"})
    assert policy.require_ledger_path
    with pytest.raises(PolicyRefusal) as refusal:
        policy.check(STATISTICS_MESSAGE, {"epsilon": 1.0}, has_ledger_path=False)
    assert refusal.value.code == "ledger-path-required"


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        ({"epsilon": math.inf}, "non-private-refused"),
        ({"epsilon": 3.0}, "epsilon-above-policy"),
        ({"epsilon": 1.0, "target_epsilon": 2.0}, "epsilon-above-policy"),
        ({"epsilon": -1.0}, "bad-request"),
        ({"epsilon": 1.0, "delta": 0.5}, "delta-above-policy"),
        ({"epsilon": 1.0, "delta": 0.0}, "delta-above-policy"),
        ({"epsilon": 1.0, "model": "ctgan"}, "model-not-allowed"),
    ],
)
def test_requests_outside_the_policy_are_refused_with_a_code(request_, code):
    with pytest.raises(PolicyRefusal) as refusal:
        MerchantPolicy().check(STATISTICS_MESSAGE, request_, has_ledger_path=True)
    assert refusal.value.code == code


def test_a_message_type_outside_the_policy_is_refused():
    policy = MerchantPolicy(allowed_messages=("query.statistics",))
    with pytest.raises(PolicyRefusal, match="message-not-allowed"):
        policy.check("train", {"epsilon": 1.0}, has_ledger_path=True)
    policy.check(STATISTICS_MESSAGE, {"epsilon": 1.0, "delta": 1e-5}, has_ledger_path=True)


def test_an_infinite_budget_needs_non_private_allowed():
    with pytest.raises(ValueError, match="allow-non-private"):
        MerchantPolicy(epsilon_budget=math.inf)
    MerchantPolicy(epsilon_budget=math.inf, allow_non_private=True).check(
        STATISTICS_MESSAGE, {"epsilon": math.inf}, has_ledger_path=False
    )


def test_the_ledger_budget_and_delta_are_the_merchants_own(tmp_path):
    merchant = pizza_merchant(tmp_path, policy=MerchantPolicy(epsilon_budget=2.0, max_delta=1e-6))
    reply = merchant.ask(STATISTICS_MESSAGE, merchant.statistics_request(epsilon=1.0, delta=1e-6))
    ledger = document(reply, LEDGER)
    assert ledger["epsilon_budget"] == 2.0 and ledger["delta"] == 1e-6
    # The server's epsilon (1.0) is what this release plans to: 10% of it.
    assert ledger["epsilon"] < 0.11


def test_a_spent_ledger_is_not_reopened_by_a_non_private_request(tmp_path):
    merchant = pizza_merchant(tmp_path)
    for _ in range(9):  # spend most of the budget on statistics at 10% each
        merchant.ask(STATISTICS_MESSAGE, merchant.statistics_request())
    reply = merchant.ask(STATISTICS_MESSAGE, merchant.statistics_request(epsilon=math.inf))
    assert merchant.status(reply)["code"] == "non-private-refused"
    assert STATISTICS not in reply.content and LEDGER not in reply.content


def test_a_bad_table_fails_with_a_code_and_a_public_column_only(tmp_path, caplog):
    merchant = pizza_merchant(tmp_path)
    table = load_dataset("pizzaplace").table.iloc[:300].assign(price="SECRET-CARD-4111")
    table.to_csv(merchant.folder / "merchant-0.csv", index=False)
    with caplog.at_level(logging.WARNING):
        reply = merchant.ask(STATISTICS_MESSAGE, merchant.statistics_request())
    assert merchant.status(reply) == {
        "state": "failed",
        "merchant": "merchant-0",
        "code": "bad-input",
        "column": "price",
    }
    # The merchant's own log names the file, the column and the problem.
    assert "merchant-0.csv" in caplog.text and "'price'" in caplog.text


def test_a_changed_schema_is_refused_before_any_row_is_read(tmp_path):
    """A server that narrows a declared range to probe for values outside it is refused."""
    merchant = pizza_merchant(tmp_path)
    assert (
        merchant.status(merchant.ask(STATISTICS_MESSAGE, merchant.statistics_request()))["state"]
        == "ok"
    )
    probe = merchant.schema.to_dict()
    price = next(c for c in probe["columns"] if c["name"] == "price")
    price["bounds"] = [0.0, 20.0]
    reply = merchant.ask(STATISTICS_MESSAGE, merchant.statistics_request(schema=probe))
    assert merchant.status(reply)["code"] == "schema-mismatch"
    assert STATISTICS not in reply.content


def test_a_policy_metadata_file_pins_the_schema(tmp_path):
    data = load_dataset("pizzaplace")
    metadata = tmp_path / "own.metadata.json"
    metadata.write_text(json.dumps(data.metadata))
    merchant = pizza_merchant(tmp_path / "m", policy=MerchantPolicy(metadata_path=str(metadata)))
    assert (
        merchant.status(merchant.ask(STATISTICS_MESSAGE, merchant.statistics_request()))["state"]
        == "ok"
    )
    probe = merchant.schema.to_dict()
    probe["columns"] = probe["columns"][:-1]  # fewer columns: a fresh state, not pinned yet
    fresh = pizza_merchant(tmp_path / "n", policy=MerchantPolicy(metadata_path=str(metadata)))
    reply = fresh.ask(STATISTICS_MESSAGE, fresh.statistics_request(schema=probe))
    assert fresh.status(reply)["code"] == "schema-mismatch"


def test_a_huge_model_request_is_refused_before_anything_is_built(tmp_path):
    merchant = pizza_merchant(tmp_path)
    encoder = merchant.encoder()
    request = {
        "schema": merchant.schema.to_dict(),
        "encoder": encoder.to_dict(),
        "model": "vae",
        "model_options": {"hidden": [20000, 20000]},  # ~3.6 GB of weights
        "training": {},
        "num_rounds": 1,
        "epsilon": 1.0,
        "delta": 1e-5,
        "seed": 0,
    }
    reply = merchant.ask("train", request)
    assert merchant.status(reply)["code"] == "bad-request"
