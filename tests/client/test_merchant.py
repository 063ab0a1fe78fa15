"""A merchant's rounds as plain functions: the statistics round, then DP-SGD training rounds."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch

import client.merchant as merchant_module
from client.merchant import statistics_round, train_round
from client.state import MerchantState
from privacy.ledger import BudgetExceededError
from simulations.datasets import load_dataset
from synth_models.encoder import TableEncoder
from synth_models.federation import REPLY_METRICS
from synth_models.synthesizer import STATISTICS_LABEL, build_model
from synth_models.training import TRAINING_LABEL, TrainingConfig, batch_size_for, plan_steps

EPSILON, DELTA, SHARE = 3.0, 1e-5, 0.1
ROWS = 300
MODEL_OPTIONS = {"generator_hidden": [32, 32], "discriminator_hidden": [32, 32], "noise_dim": 16}
TRAINING = TrainingConfig(epochs=1, batch_size=100)


@pytest.fixture(scope="module")
def pizza():
    dataset = load_dataset("pizzaplace")
    table = dataset.table.sample(ROWS, random_state=3).reset_index(drop=True)
    return dataset.schema(), table


def _train(table, encoder, weights, state, server_round, num_rounds=2):
    return train_round(
        table,
        encoder=encoder,
        weights=weights,
        model="gan",
        model_options=MODEL_OPTIONS,
        training=TRAINING,
        state=state,
        epsilon=EPSILON,
        delta=DELTA,
        server_round=server_round,
        num_rounds=num_rounds,
        source="merchant-0.csv",
    )


@pytest.fixture(scope="module")
def rounds(pizza):
    """Statistics round, then rounds 1 and 2 of a 2-round federation; snapshots of the state
    after each, and how often the noise was calibrated."""
    schema, table = pizza
    state = MerchantState(merchant="merchant-0")
    stats = statistics_round(
        table,
        schema=schema,
        state=state,
        epsilon=EPSILON,
        delta=DELTA,
        statistics_share=SHARE,
        source="merchant-0.csv",
    )
    after_statistics = copy.deepcopy(state)
    encoder = TableEncoder.from_statistics(schema, stats)
    torch.manual_seed(0)
    weights = build_model("gan", encoder, MODEL_OPTIONS).state_dict()
    calls = []
    real = merchant_module.calibrate_noise_multiplier

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(merchant_module, "calibrate_noise_multiplier", counting)
        weights1, metrics1 = _train(table, encoder, weights, state, 1)
        after_round1 = copy.deepcopy(state)
        weights2, metrics2 = _train(table, encoder, weights1, state, 2)
    return {
        "table": table,
        "stats": stats,
        "encoder": encoder,
        "initial": weights,
        "states": [after_statistics, after_round1, copy.deepcopy(state)],
        "state": state,
        "weights": [weights1, weights2],
        "metrics": [metrics1, metrics2],
        "calibrations": calls,
    }


def test_statistics_round_records_the_release_and_a_dp_row_count(rounds):
    state = rounds["states"][0]
    records = state.ledger.records
    assert [r.label for r in records] == [STATISTICS_LABEL]
    assert records[0].sample_rate == 1.0 and records[0].steps == 1
    assert state.ledger.epsilon() <= EPSILON * SHARE * (1 + 1e-9)
    assert state.ledger.epsilon() >= EPSILON * SHARE * 0.99  # the share is used, not wasted
    assert state.dp_rows == rounds["stats"].row_count
    # a DP count: the exact count plus integer (discrete Gaussian) noise of the merchant's own
    assert float(state.dp_rows).is_integer() and records[0].mechanism == "discrete-gaussian"
    assert state.noise_multiplier is None  # calibrated at the first training round


def test_the_same_request_twice_gets_different_noise(pizza):
    """Same table, same request: the merchant's noise is its own (``SecureNoise``), so a
    server that replays a round (or chose the run's seed) cannot subtract it."""
    schema, table = pizza
    releases = []
    for _ in range(2):
        state = MerchantState(merchant="merchant-0")
        stats = statistics_round(
            table, schema=schema, state=state, epsilon=EPSILON, delta=DELTA,
            statistics_share=SHARE, source="m.csv",
        )  # fmt: skip
        releases.append(stats.to_dict())
    assert releases[0] != releases[1]


def test_training_rounds_add_dp_sgd_steps_after_the_statistics(rounds):
    (_, after1, after2), metrics = rounds["states"], rounds["metrics"]
    sample_rate, steps = plan_steps(after1.dp_rows, TRAINING)
    assert [r.label for r in after1.ledger.records] == [STATISTICS_LABEL, TRAINING_LABEL]
    assert after1.ledger.records[0] == rounds["states"][0].ledger.records[0]
    sgd1 = after1.ledger.records[1]
    assert sgd1.noise_multiplier == after1.noise_multiplier
    assert sgd1.sample_rate == pytest.approx(sample_rate, rel=1e-12)
    assert sgd1.steps == steps
    # Round 2 ran the same mechanism again: the consecutive records merge their steps.
    assert [r.label for r in after2.ledger.records] == [STATISTICS_LABEL, TRAINING_LABEL]
    assert after2.ledger.records[1].steps == 2 * steps
    assert metrics[0]["steps"] == metrics[1]["steps"] == steps
    assert metrics[0]["epsilon"] < metrics[1]["epsilon"] <= EPSILON * (1 + 1e-9)
    assert metrics[1]["epsilon"] == pytest.approx(after2.ledger.epsilon(), rel=1e-12)
    # Calibrated for both rounds: after the last one the budget is (nearly) all spent.
    assert metrics[1]["epsilon"] >= 0.97 * EPSILON


def test_noise_multiplier_is_calibrated_once_and_reused(rounds):
    calls = rounds["calibrations"]
    assert len(calls) == 1
    _, steps = plan_steps(rounds["states"][1].dp_rows, TRAINING)
    assert calls[0]["steps"] == 2 * steps  # both planned rounds at once
    sigma = rounds["states"][1].noise_multiplier
    assert sigma > 0
    assert rounds["states"][2].noise_multiplier == sigma
    assert rounds["metrics"][0]["noise-multiplier"] == rounds["metrics"][1]["noise-multiplier"]
    assert rounds["states"][1].plan["rounds"] == 2 and rounds["states"][1].plan["from_round"] == 1


def test_training_changes_the_weights(rounds):
    before, after = rounds["initial"], rounds["weights"][1]
    assert set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_num_examples_is_the_dp_row_count(rounds):
    state = rounds["state"]
    for metrics in rounds["metrics"]:
        # The released DP count (integer discrete Gaussian noise: it may equal the exact count
        # by chance, which says nothing, so equality with ROWS is not tested).
        assert metrics["num-examples"] == state.dp_rows
        # The sample rate is derived from the DP count too: it must not reveal the exact one.
        batch = batch_size_for(state.dp_rows, TRAINING)
        assert metrics["sample-rate"] == pytest.approx(batch / state.dp_rows)
        assert set(metrics) <= set(REPLY_METRICS)
        assert all(isinstance(v, float) for v in metrics.values())


def test_a_round_past_the_budget_is_refused_before_any_step(rounds):
    state = copy.deepcopy(rounds["state"])
    records = list(state.ledger.records)
    with pytest.raises(BudgetExceededError, match="merchant-0") as info:
        _train(rounds["table"], rounds["encoder"], rounds["weights"][1], state, 3)
    assert "budget" in str(info.value)
    assert state.ledger.records == records  # nothing ran
    assert state.ledger.epsilon() <= EPSILON * (1 + 1e-9)


def test_a_merchant_without_a_dp_row_count_refuses_to_train(rounds):
    state = MerchantState(merchant="merchant-9")  # missed the statistics round
    with pytest.raises(RuntimeError, match="no DP row count"):
        _train(rounds["table"], rounds["encoder"], rounds["initial"], state, 1)
    assert state.ledger is None or not state.ledger.records


def test_without_dp_nothing_is_recorded(rounds, pizza):
    """epsilon = inf: plain SGD, no ledger, the exact count as weight (nothing is private)."""
    schema, table = pizza
    state = MerchantState(merchant="merchant-0")
    statistics_round(
        table,
        schema=schema,
        state=state,
        epsilon=math.inf,
        delta=DELTA,
        statistics_share=SHARE,
        source="m.csv",
    )
    assert state.ledger is None
    _, metrics = train_round(
        table,
        encoder=rounds["encoder"],
        weights=rounds["initial"],
        model="gan",
        model_options=MODEL_OPTIONS,
        training=TRAINING,
        state=state,
        epsilon=math.inf,
        delta=DELTA,
        server_round=1,
        num_rounds=1,
        source="m.csv",
    )
    assert state.ledger is None and math.isinf(metrics["epsilon"])


def test_the_holdout_is_decided_row_by_row(pizza):
    """Adding a row moves no other row between training and holdout: DP on the training rows
    is then DP on the merchant's whole table (a permutation would move many rows)."""
    from client.merchant import row_wise_holdout

    table = pizza[1]
    train, holdout = row_wise_holdout(table, 0.2, salt="merchant-0")
    assert len(train) + len(holdout) == len(table)
    assert 0.15 < len(holdout) / len(table) < 0.25
    neighbour = pd.concat([table, table.iloc[[7]].assign(price=99.5)], ignore_index=True)
    train2, holdout2 = row_wise_holdout(neighbour, 0.2, salt="merchant-0")
    assert len(train2) + len(holdout2) == len(table) + 1
    assert min(len(train2) - len(train), len(holdout2) - len(holdout)) == 0
    assert abs(len(train2) - len(train)) + abs(len(holdout2) - len(holdout)) == 1
    again, _ = row_wise_holdout(table, 0.2, salt="merchant-0")
    pd.testing.assert_frame_equal(again, train)
    other, _ = row_wise_holdout(table, 0.2, salt="merchant-1")
    assert not other.equals(train)
