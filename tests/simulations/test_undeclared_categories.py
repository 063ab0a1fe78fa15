"""A federation over a table whose categorical columns are all undeclared (issue 15 item 1).

One run through the real simulation path (``run_simulation_job``: partitions, Flower's
simulation engine, the same ServerApp and ClientApp as a deployment), marginal model, 5
merchants, epsilon = 1. The table (8,000 rows, seeded) has a binary flag spelled "Yes"/"No"
(public cells), a 5-value plan code and a 300-value code with a long tail (labels found by
each merchant's DP partition selection), and a customer id (every value once). The
merchants' noise is their own (``SecureNoise``), so what must survive and what must fall into
``OTHER`` is derived from the mechanism each merchant's ledger records, with 4.5 standard
deviations of margin on either side (each check fails with probability below 1e-5).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from privacy.statistics import (
    OPEN_VOCABULARY,
    OTHER,
    SPURIOUS_CELLS,
    open_column_weight,
    sparse_threshold,
    squared_sensitivity,
)
from synth_models.marginals import MEASUREMENT_LABEL, SELECTION_LABEL
from synth_models.synthesizer import STATISTICS_LABEL, THRESHOLD_DELTA_SHARE
from tests.simulations.undeclared import run_undeclared

pytestmark = pytest.mark.slow

ROWS, MERCHANTS, EPSILON, DELTA = 8000, 5, 1.0, 1e-5
# The marginal model's statistics share (``synth_models.synthesizer.STATISTICS_SHARES``),
# pinned: noise multiplier 12.4, about what 10% of the budget's precision gives; 0.1 of
# epsilon is 1.4% of the precision (multiplier 34).
STATISTICS_SHARE = 0.3
COLUMNS = ("flag", "plan", "code", "customer_id")
MARGIN = 4.5  # standard deviations


def undeclared_table(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tail = 0.4 / np.arange(1, 298) / np.sum(1.0 / np.arange(1, 298))  # Zipf over 297 codes
    code_probs = np.concatenate([[0.3, 0.2, 0.1], tail])
    return pd.DataFrame(
        {
            "flag": rng.choice(["Yes", "No"], ROWS, p=[0.3, 0.7]),
            "plan": rng.choice(
                ["basic", "plus", "pro", "team", "max"], ROWS, p=[0.4, 0.25, 0.18, 0.1, 0.07]
            ),
            "code": rng.choice([f"K{i:03d}" for i in range(300)], ROWS, p=code_probs),
            "customer_id": [f"c-{i:06d}" for i in rng.permutation(ROWS)],
        }
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    table = undeclared_table()
    run_dir = tmp_path_factory.mktemp("undeclared")
    summary, synth = run_undeclared(
        table[list(COLUMNS)],
        sdtype="categorical",
        run_dir=run_dir,
        merchants=MERCHANTS,
        epsilon=EPSILON,
        delta=DELTA,
        statistics_share=STATISTICS_SHARE,
    )
    merchants = [pd.read_csv(run_dir / "merchants" / f"merchant-{i}.csv") for i in range(MERCHANTS)]
    return {
        "summary": summary,
        "synth": synth,
        "merchants": merchants,
        "table": table,
        "synthetic": pd.read_csv(run_dir / "synthetic.csv", keep_default_na=False),
    }


def _statistics_record(ledger):
    return next(r for r in ledger.records if r.label == STATISTICS_LABEL)


def _open_noise(record) -> tuple[float, float]:
    """An open histogram's noise std and label threshold, from the recorded mechanism."""
    histograms = 1 + len(COLUMNS)
    weight = open_column_weight(histograms=histograms, open_columns=len(COLUMNS))
    std = record.noise_multiplier * record.l2_sensitivity / math.sqrt(weight)
    threshold = sparse_threshold(std, delta=record.extra_delta, num_sparse=len(COLUMNS))
    return std, threshold


def test_every_merchants_ledger_records_exactly_the_mechanisms_used(run):
    ledgers = run["synth"].ledgers_
    assert sorted(ledgers) == [f"merchant-{i}" for i in range(MERCHANTS)]
    for name, ledger in ledgers.items():
        assert [r.label for r in ledger.records] == [
            STATISTICS_LABEL,
            SELECTION_LABEL,
            MEASUREMENT_LABEL,
        ], name
        record = _statistics_record(ledger)
        # Row count + 4 open histograms; the open ones weigh max(1, 1 / 4) = 1 each.
        assert record.l2_sensitivity**2 == pytest.approx(
            squared_sensitivity(histograms=5, open_columns=4)
        )
        assert record.extra_delta == pytest.approx(DELTA * THRESHOLD_DELTA_SHARE)
        assert record.dimension == 0  # a found domain's size is not public
        assert ledger.epsilon() <= EPSILON * (1 + 1e-9)
    assert run["summary"]["epsilon"] <= EPSILON * (1 + 1e-9)


def test_frequent_categories_survive_and_the_rest_are_other(run):
    encoder = run["synth"].encoder_
    std, threshold = _open_noise(_statistics_record(next(iter(run["synth"].ledgers_.values()))))
    sure, never = threshold + MARGIN * std, threshold - MARGIN * std  # rows at each merchant
    pooled_std = math.sqrt(MERCHANTS) * std
    public_cut = pooled_std * norm.isf(SPURIOUS_CELLS / len(OPEN_VOCABULARY))
    rows = min(len(m) for m in run["merchants"])
    survived = {}
    for column in COLUMNS:
        t = encoder.transforms[column]
        assert t.other and t.categories[-1] == OTHER, column
        found = set(t.categories[:-1])
        counts = pd.concat([m[column].value_counts() for m in run["merchants"]], axis=1).fillna(0)
        for label, per_merchant in counts.iterrows():
            pooled = per_merchant.sum()
            if label in OPEN_VOCABULARY:  # a public cell: the pooled count decides
                must, cannot = pooled > public_cut + MARGIN * pooled_std, pooled < public_cut / 4
            else:  # a label: some merchant must release it
                must, cannot = per_merchant.min() > sure, per_merchant.max() < never
            assert not (must and label not in found), (column, label, per_merchant.tolist())
            assert not (cannot and label in found), (column, label, per_merchant.tolist())
        survived[column] = found
    # What that means on this table (shares of a merchant's 1,600 rows): a label holding 17%
    # of each merchant's rows surely survives, one holding 1% surely does not.
    assert sure / rows < 0.2 and never / rows < 0.015
    assert survived["flag"] == {"Yes", "No"}  # public cells: found from the pooled counts
    assert {"basic", "plus"} <= survived["plan"] and {"K000", "K001"} <= survived["code"]
    assert survived["customer_id"] == set()  # every id is held by one row
    assert len(survived["code"]) < 20  # not the long tail of 297 codes (0.03% to 6.4% each)


def test_ids_are_flagged_and_nothing_aborts(run):
    encoder = run["synth"].encoder_
    ids = encoder.transforms["customer_id"]
    assert ids.categories == [OTHER] and ids.id_like  # by its name; all OTHER by its values
    assert "customer_id" in encoder.notes and "sdtype 'id'" in encoder.notes["customer_id"]
    assert not encoder.transforms["plan"].id_like and not encoder.transforms["flag"].id_like


def test_rows_outside_the_found_domains_count_as_other(run):
    """The marginal rounds count every merchant's rows on the union, OTHER included: the
    synthetic rows hold OTHER about as often as the real rows hold a label not found."""
    synthetic, table = run["synthetic"], run["table"]
    encoder = run["synth"].encoder_
    for column in ("plan", "code", "customer_id"):
        t = encoder.transforms[column]
        assert set(synthetic[column]) <= set(t.categories), column
        real_other = float((~table[column].isin(t.categories[:-1])).mean())
        synthetic_other = float((synthetic[column] == OTHER).mean())
        assert synthetic_other == pytest.approx(real_other, abs=0.05), column
    assert (synthetic["customer_id"] == OTHER).all()
    assert (synthetic["code"] == OTHER).mean() > 0.3  # the long tail: about 40% of the rows
