"""TabularSynthesizer end to end on the embedded pizzaplace table: DP fit, sample, quality."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from sdmetrics.reports import QualityReport

from privacy.noise import SeededNoise
from simulations.datasets import Dataset, load_dataset
from synth_models.schema import DataError
from synth_models.synthesizer import TabularSynthesizer
from synth_models.training import TrainingConfig, batch_size_for

EPSILON, DELTA = 1.0, 1e-5
ROWS, EPOCHS = 20_000, 4  # a subsample of the 49,574 rows keeps each fit around 15-25 s
# SDMetrics quality (Column Shapes + Column Pair Trends) against the fitted subsample, at
# epsilon=1, delta=1e-5, 4 epochs, batch 500 (160 DP steps), fit seeds 0, 1, 2:
#   gan: 0.642, 0.661, 0.639        vae: 0.573, 0.597, 0.595
# For scale, on the full table: real vs. another real sample 0.97, independent columns 0.79,
# uniform over each column's values 0.63, the mode repeated 0.12.
QUALITY_FLOOR = {"gan": 0.55, "vae": 0.50}


@pytest.fixture(scope="module")
def pizza() -> Dataset:
    return load_dataset("pizzaplace")


@pytest.fixture(scope="module")
def real(pizza: Dataset) -> pd.DataFrame:
    return pizza.table.sample(ROWS, random_state=0).reset_index(drop=True)


@pytest.fixture(scope="module", params=["gan", "vae"])
def fitted(request, pizza: Dataset, real: pd.DataFrame) -> TabularSynthesizer:
    synth = TabularSynthesizer(
        pizza.metadata,
        model=request.param,
        epsilon=EPSILON,
        delta=DELTA,
        training=TrainingConfig(epochs=EPOCHS, batch_size=500),
        table_name=pizza.table_name,
        seed=0,
        noise=SeededNoise(0),  # the quality floors below are about one reproducible fit
    )
    return synth.fit(real, source="pizzaplace.csv.gz")


def quality(pizza: Dataset, real: pd.DataFrame, synthetic: pd.DataFrame) -> float:
    report = QualityReport()
    report.generate(
        {pizza.table_name: real},
        {pizza.table_name: synthetic},
        pizza.metadata,
        verbose=False,
    )
    return float(report.get_score())


def test_quality_above_floor(
    fitted: TabularSynthesizer, pizza: Dataset, real: pd.DataFrame
) -> None:
    synthetic = fitted.sample(len(real), seed=0)
    score = quality(pizza, real, synthetic)
    print(f"\nSDMetrics quality, {fitted.model} at epsilon={fitted.epsilon_spent:.3f}: {score:.4f}")
    assert score > QUALITY_FLOOR[fitted.model]


def test_sample_has_the_real_columns_and_dtypes(fitted: TabularSynthesizer, pizza: Dataset) -> None:
    synthetic = fitted.sample(1234, seed=1)
    assert len(synthetic) == 1234
    assert list(synthetic.columns) == list(pizza.table.columns) == pizza.schema().names
    pd.testing.assert_series_equal(synthetic.dtypes, pizza.table.dtypes)
    assert synthetic.notna().all().all()
    # declared domains and bounds hold
    assert set(synthetic["size"]) <= {"S", "M", "L", "XL", "XXL"}
    assert set(synthetic["month"]) <= set(range(1, 13))
    assert synthetic["hour"].between(0, 23).all()
    assert set(synthetic["name"]) <= set(pizza.table["name"])
    assert len(fitted.sample(1, seed=2)) == 1


def test_same_seed_same_sample(fitted: TabularSynthesizer) -> None:
    pd.testing.assert_frame_equal(fitted.sample(300, seed=5), fitted.sample(300, seed=5))
    assert not fitted.sample(300, seed=5).equals(fitted.sample(300, seed=6))


def test_conditional_sampling(fitted: TabularSynthesizer) -> None:
    synthetic = fitted.sample(200, conditions={"size": "L"}, seed=3)
    assert len(synthetic) == 200
    assert (synthetic["size"] == "L").all()


def test_bad_conditions(fitted: TabularSynthesizer) -> None:
    with pytest.raises(ValueError, match=r"unknown column|categorical columns"):
        fitted.sample(10, conditions={"colour": "red"})
    if fitted.model == "gan":
        with pytest.raises(ValueError, match="not a category"):
            fitted.sample(10, conditions={"size": "XXXL"})
        with pytest.raises(ValueError, match="categorical columns"):
            fitted.sample(10, conditions={"price": 12.5})
    else:  # rejection sampling never meets an impossible condition
        with pytest.raises(ValueError, match="could not generate"):
            fitted.sample(10, conditions={"size": "XXXL"}, batch_size=100, max_tries=3)


def test_privacy_spent_is_the_ledgers(fitted: TabularSynthesizer, real: pd.DataFrame) -> None:
    ledger = fitted.ledgers_["local"]
    assert list(fitted.ledgers_) == ["local"]
    assert fitted.epsilon_spent == ledger.epsilon()
    assert 0.9 * EPSILON < fitted.epsilon_spent <= EPSILON * (1 + 1e-9)
    assert ledger.delta == DELTA and ledger.epsilon_budget == EPSILON
    labels = [r.label for r in ledger.records]
    # The statistics, the warm start's two marginal releases, then DP-SGD.
    assert labels == [
        "encoder-statistics", "marginals-selection", "marginals-measurement", "dp-sgd",
    ]  # fmt: skip
    training = ledger.records[3]
    # the Poisson rate comes from the DP row count: close to, but not, batch / exact rows
    # (20,000 rows: batch 250, so that an epoch takes 80 steps)
    rows = len(fitted.encoder_.transform(real))
    batch = batch_size_for(rows, fitted.training)
    assert batch == 250
    assert training.sample_rate == pytest.approx(batch / rows, rel=0.01)
    assert training.sample_rate != batch / rows
    assert training.steps == EPOCHS * int(1 / training.sample_rate)  # Opacus' batches an epoch
    assert training.noise_multiplier > 0
    assert fitted.history_[-1]["epsilon"] == ledger.epsilon()
    assert len(fitted.history_) == EPOCHS
    manifest = fitted.manifest()
    assert manifest["privacy"]["epsilon"] == fitted.epsilon_spent


def test_fit_without_privacy(pizza: Dataset) -> None:
    synth = TabularSynthesizer(
        pizza.metadata,
        model="vae",
        epsilon=math.inf,
        training=TrainingConfig(epochs=1, batch_size=500),
        model_options={"latent_dim": 16, "hidden": [32]},
        seed=0,
    )
    synth.fit(pizza.table.sample(2000, random_state=0))
    assert synth.ledgers_ == {}
    assert synth.epsilon_spent == math.inf
    assert "epsilon" not in synth.history_[0]
    assert synth.manifest()["privacy"]["ledgers"] == {}
    synthetic = synth.sample(100, seed=0)
    pd.testing.assert_series_equal(synthetic.dtypes, pizza.table.dtypes)
    # exact statistics: every pizza name of the table is in the domain
    assert sorted(synth.encoder_.transforms["name"].categories) == sorted(
        pizza.table.sample(2000, random_state=0)["name"].unique()
    )


def test_unknown_model(pizza: Dataset) -> None:
    with pytest.raises(ValueError, match="unknown model 'ctgan'"):
        TabularSynthesizer(pizza.metadata, model="ctgan")


def test_bad_statistics_share(pizza: Dataset) -> None:
    with pytest.raises(ValueError, match="statistics_share"):
        TabularSynthesizer(pizza.metadata, statistics_share=1.0)


def test_sample_before_fit(pizza: Dataset) -> None:
    synth = TabularSynthesizer(pizza.metadata)
    with pytest.raises(RuntimeError, match="not fitted"):
        synth.sample(10)
    with pytest.raises(RuntimeError, match="not fitted"):
        synth.manifest()


def test_bad_table_names_the_column(pizza: Dataset) -> None:
    synth = TabularSynthesizer(pizza.metadata, epsilon=1.0)
    with pytest.raises(DataError) as info:
        synth.fit(pizza.table.drop(columns=["price"]), source="orders.csv")
    assert info.value.column == "price"
    assert "'price'" in str(info.value) and "orders.csv" in str(info.value)
    assert synth.encoder_ is None and synth.ledgers_ == {}
    bad = pizza.table.head(100).assign(hour=lambda d: d["hour"].where(d.index != 7, 30))
    with pytest.raises(DataError, match="outside the declared range") as info:
        synth.fit(bad)
    assert info.value.column == "hour"
