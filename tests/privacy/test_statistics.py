"""Tests of the DP column statistics that the shared encoder is built from."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from privacy.ledger import MechanismRecord, PrivacyLedger
from privacy.noise import SeededNoise
from privacy.statistics import (
    MAX_DECIMALS,
    MAX_OPEN_CATEGORIES,
    MIN_OPEN_SHARE,
    OPEN_VOCABULARY,
    OTHER,
    SPURIOUS_CELLS,
    CategoricalInput,
    ColumnStatistics,
    Grid,
    NumericInput,
    TableStatistics,
    canonical_order,
    category_key,
    close_open_domains,
    count_decimals,
    discrete_gaussian_tail,
    in_open_vocabulary,
    merge_statistics,
    num_histograms,
    open_column_weight,
    release_statistics,
    sparse_threshold,
    squared_sensitivity,
)

DOMAIN = ["a", "b", "c", "d", "e"]
UNIFORM = Grid(kind="uniform", low=0.0, high=100.0, bins=10)


def _decimals_by_hand(x: float) -> int:
    """Decimals of a value with at most 2 decimals, from its text (independent of the code)."""
    text = f"{x:.2f}".rstrip("0").rstrip(".")
    return len(text.split(".")[1]) if "." in text else 0


def _table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    city = pd.Series(rng.choice(["a", "b", "c", "e"], size=n, p=[0.4, 0.3, 0.2, 0.1]), dtype=object)
    city[rng.random(n) < 0.05] = None
    amount = rng.integers(0, 10_000, size=n) / 100.0  # 0.00 .. 99.99, 0-2 decimals
    amount[rng.random(n) < 0.05] = np.nan
    return pd.DataFrame({"city": city, "amount": amount})


def _columns(df: pd.DataFrame, grid: Grid = UNIFORM) -> dict:
    return {
        "city": CategoricalInput(df["city"], domain=list(DOMAIN)),
        "amount": NumericInput(df["amount"].to_numpy(), grid=grid),
    }


def _flatten(stats: TableStatistics) -> np.ndarray:
    """All released numbers of a release with public domains / grids, in a fixed order."""
    parts = [np.atleast_1d(stats.row_count)]
    for name in sorted(stats.columns):
        col = stats.columns[name]
        parts += [col.counts, np.atleast_1d(col.missing)]
        if col.decimals is not None:
            parts.append(col.decimals)
    return np.concatenate(parts).astype(float)


def _exact(df: pd.DataFrame) -> np.ndarray:
    """The same numbers without noise, computed independently of privacy.statistics."""
    amount = df["amount"].to_numpy()
    present = amount[~np.isnan(amount)]
    hist = np.histogram(present, bins=10, range=(0.0, 100.0))[0]
    decimals = np.zeros(MAX_DECIMALS + 1)
    for x in present:
        decimals[_decimals_by_hand(x)] += 1
    city = df["city"]
    city_counts = np.array([(city == c).sum() for c in DOMAIN], dtype=float)
    return np.concatenate(
        [
            [len(df)],
            hist,  # "amount" sorts before "city"
            [np.isnan(amount).sum()],
            decimals,
            city_counts,
            [city.isna().sum()],
        ]
    ).astype(float)


# -- noise ---------------------------------------------------------------------------------------
def _dg_pmf(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The discrete Gaussian N_Z(0, sigma^2) on a support wide enough for float precision,
    computed from its definition (independent of privacy.noise)."""
    support = np.arange(-int(40 * sigma) - 40, int(40 * sigma) + 41)
    weights = np.exp(-(support.astype(float) ** 2) / (2 * sigma**2))
    return support, weights / weights.sum()


def _dg_tail(m: int, sigma: float) -> float:
    """P[X >= m] for X ~ N_Z(0, sigma^2), exactly (to float precision)."""
    support, pmf = _dg_pmf(sigma)
    return float(pmf[support >= m].sum())


def test_counts_are_noisy():
    df = _table()
    stats, record = release_statistics(
        _columns(df), noise_multiplier=1.0, threshold_delta=1e-6, noise=SeededNoise(1)
    )
    released, exact = _flatten(stats), _exact(df)
    assert released.shape == exact.shape
    # Integer counts plus integer noise: integers, most of them moved (P[noise = 0] ~ 0.2) ...
    np.testing.assert_array_equal(released, np.round(released))
    assert np.mean(released != exact) > 0.5
    # ... but only by noise of the stated scale (std 2 here), not by anything systematic.
    assert np.max(np.abs(released - exact)) < 2 * 6
    assert record.mechanism == "discrete-gaussian"
    assert record.l2_sensitivity == 2.0 and record.dimension == released.size


def test_two_releases_of_the_same_table_have_different_noise():
    """The default noise is the OS's: the same inputs never give the same release, so no one
    can replay it (the server chose the run's seed, which no longer reaches the noise)."""
    columns = _columns(_table())
    first, second = (
        _flatten(release_statistics(columns, noise_multiplier=1.0, threshold_delta=1e-6)[0])
        for _ in range(2)
    )
    assert np.mean(first != second) > 0.5
    # Seeded noise (tests and local runs only) is what replays.
    seeded = [
        _flatten(
            release_statistics(
                columns, noise_multiplier=1.0, threshold_delta=1e-6, noise=SeededNoise(3)
            )[0]
        )
        for _ in range(2)
    ]
    np.testing.assert_array_equal(*seeded)


def test_released_sparse_categories_are_sorted():
    """An unknown domain's categories come out in canonical order (booleans, numbers by value,
    then strings), never in the order the rows first show them."""
    first_seen = {"zeta": 60, 7: 100, "alpha": 140, 1.5: 180, "mango": 220, 3: 260}
    values = pd.Series([v for v, n in first_seen.items() for _ in range(n)], dtype=object)
    stats, _ = release_statistics(
        {"c": CategoricalInput(values)}, noise_multiplier=0.5, threshold_delta=1e-6
    )
    column = stats.columns["c"]
    found = [c for c in column.categories if not in_open_vocabulary(c)]
    assert found == [1.5, "alpha", "mango", "zeta"]  # 3 and 7 are public cells
    bools = [c for c in column.categories if isinstance(c, bool)]
    numbers = [
        c for c in column.categories if isinstance(c, int | float) and not isinstance(c, bool)
    ]
    strings = [c for c in column.categories if isinstance(c, str)]
    assert column.categories == [*bools, *numbers, *strings]
    assert bools == [False, True] and numbers == sorted(numbers) and strings == sorted(strings)
    counts = dict(zip(map(category_key, column.categories), column.counts, strict=True))
    for category, count in first_seen.items():
        assert abs(counts[category_key(category)] - count) < 15, category  # counts moved along


@pytest.mark.parametrize("sigma", [0.5, 1.7, 3.0, 12.0, 40.0, 250.0])
def test_sparse_threshold_bounds_the_discrete_gaussian_tail(sigma):
    """The tail bound holds against the exact pmf, and the threshold is the smallest integer
    it clears: a singleton passes with probability at most delta / num_sparse."""
    for m in range(1, int(12 * sigma) + 3):
        assert _dg_tail(m, sigma) <= discrete_gaussian_tail(m, sigma) * (1 + 1e-9) + 1e-300
    for delta, num_sparse in ((1e-6, 1), (1e-7, 3), (0.1, 2)):
        threshold = sparse_threshold(sigma, delta=delta, num_sparse=num_sparse)
        assert threshold == int(threshold) >= 1
        target = delta / num_sparse
        assert _dg_tail(int(threshold), sigma) <= target  # count 1 passes "> T" iff noise >= T
        if threshold > 1:
            assert discrete_gaussian_tail(int(threshold) - 1, sigma) > target


def test_noise_std_is_noise_multiplier_times_sqrt_histograms():
    df = _table()
    columns = _columns(df)
    k = num_histograms(columns)
    assert k == 4  # row count + city + amount bins + amount decimals
    noise_multiplier = 1.5
    expected_std = noise_multiplier * math.sqrt(k)  # 3.0
    exact = _exact(df)
    residuals = []
    for seed in range(400):
        stats, _ = release_statistics(
            columns,
            noise_multiplier=noise_multiplier,
            threshold_delta=1e-6,
            noise=SeededNoise(seed),
        )
        residuals.append(_flatten(stats) - exact)
        assert stats.row_count_var == pytest.approx(expected_std**2)
        assert all(c.noise_var == pytest.approx(expected_std**2) for c in stats.columns.values())
    residuals = np.array(residuals)  # 400 x 25
    # 10,000 draws: the sample std is within ~0.7% of the truth (1 s.d.); allow 4%.
    assert residuals.std() == pytest.approx(expected_std, rel=0.04)
    assert abs(residuals.mean()) < 4 * expected_std / math.sqrt(residuals.size)
    # Every group of outputs is noised at the same scale (2,000-10,000 draws each; allow 10%).
    groups = {"row count + amount": slice(0, 12), "decimals": slice(12, 19), "city": slice(19, 25)}
    for name, cols in groups.items():
        assert residuals[:, cols].std() == pytest.approx(expected_std, rel=0.10), name
    # Independent across outputs (no shared noise draw).
    corr = np.corrcoef(residuals.T)
    assert np.max(np.abs(corr - np.eye(corr.shape[0]))) < 0.25


@pytest.mark.parametrize("grid", [UNIFORM, Grid()], ids=["uniform", "log"])
def test_neighbouring_tables_differ_by_one_rows_contributions(grid):
    df = _table(n=200, seed=3)
    df.loc[17, ["city", "amount"]] = ["c", 12.5]
    neighbour = df.drop(index=17).reset_index(drop=True)

    def release(table):
        stats, _ = release_statistics(
            _columns(table, grid),
            noise_multiplier=2.0,
            threshold_delta=1e-6,
            noise=SeededNoise(99),
        )
        return stats

    full, minus = release(df), release(neighbour)
    assert full.row_count - minus.row_count == pytest.approx(1.0, abs=1e-9)
    city_diff = full.columns["city"].counts - minus.columns["city"].counts
    np.testing.assert_allclose(city_diff, [0, 0, 1, 0, 0], atol=1e-9)
    assert full.columns["city"].missing == pytest.approx(minus.columns["city"].missing, abs=1e-9)
    amount_diff = full.columns["amount"].counts - minus.columns["amount"].counts
    lo, hi = grid.bin_bounds()
    (bin_of_row,) = np.flatnonzero((lo <= 12.5) & (hi > 12.5))
    expected = np.zeros(grid.num_bins)
    expected[bin_of_row] = 1.0
    np.testing.assert_allclose(amount_diff, expected, atol=1e-9)
    decimals_diff = full.columns["amount"].decimals - minus.columns["amount"].decimals
    np.testing.assert_allclose(decimals_diff, np.eye(MAX_DECIMALS + 1)[1], atol=1e-9)
    # The whole release moves by exactly the sensitivity sqrt(k) = 2.
    diff = _flatten(full) - _flatten(minus)
    assert np.linalg.norm(diff) == pytest.approx(2.0, abs=1e-9)


def test_neighbour_with_missing_values_moves_only_missing_bins():
    df = _table(n=200, seed=4)
    df.loc[5, ["city", "amount"]] = [None, np.nan]
    neighbour = df.drop(index=5).reset_index(drop=True)
    outs = [
        _flatten(
            release_statistics(
                _columns(t),
                noise_multiplier=1.0,
                threshold_delta=1e-6,
                noise=SeededNoise(7),
            )[0]
        )
        for t in (df, neighbour)
    ]
    diff = outs[0] - outs[1]
    expected = np.zeros_like(diff)
    expected[[0, 11, 24]] = 1.0  # row count, amount missing, city missing
    np.testing.assert_allclose(diff, expected, atol=1e-9)


# -- domains -------------------------------------------------------------------------------------
def test_public_domain_is_released_exactly_as_declared():
    domain = ["z", "a", "absent", "m"]
    tables = [
        pd.Series(["a", "m", "z", "other", "a", None] * 20, dtype=object),
        pd.Series(["other"] * 50, dtype=object),
        pd.Series([None] * 10, dtype=object),
    ]
    for i, values in enumerate(tables):
        stats, record = release_statistics(
            {"c": CategoricalInput(values, domain=domain)},
            noise_multiplier=1.0,
            threshold_delta=1e-6,
            noise=SeededNoise(i),
        )
        col = stats.columns["c"]
        assert col.categories == domain
        assert col.public_domain
        assert col.counts.shape == (4,)
        assert record.extra_delta == 0.0
    # The declared category absent from the data is released (as noise around 0).
    assert abs(col.counts[2]) < 10


def test_unknown_domain_releases_frequent_and_hides_singletons():
    values = pd.Series(["big"] * 200 + ["mid"] * 60 + ["single"] + [None] * 5, dtype=object)
    noise_multiplier, threshold_delta = 2.0, 1e-6
    noise_std = noise_multiplier * math.sqrt(2)
    threshold = sparse_threshold(noise_std, delta=threshold_delta, num_sparse=1)
    # 15 (the continuous Gaussian's 1 + 4.75 sigma would be 14.4): integer, rigorous tail
    assert threshold == 15.0 and _dg_tail(15, noise_std) <= threshold_delta
    released_single = 0
    for seed in range(300):
        stats, record = release_statistics(
            {"c": CategoricalInput(values)},
            noise_multiplier=noise_multiplier,
            threshold_delta=threshold_delta,
            noise=SeededNoise(seed),
        )
        col = stats.columns["c"]
        assert not col.public_domain
        assert {"big", "mid"} <= set(col.categories)
        released_single += "single" in col.categories
        found = [not in_open_vocabulary(c) for c in col.categories]
        assert np.all(col.counts[found] > threshold)  # public cells need no threshold
        assert col.counts[col.categories.index("big")] == pytest.approx(200, abs=6 * noise_std)
        assert record.extra_delta == threshold_delta
    assert released_single == 0


def test_sparse_threshold_is_calibrated_to_threshold_delta():
    # With a large threshold_delta the singleton's release probability is measurable: it must be
    # at most threshold_delta / (number of sparse columns) for each column (0.2 / 2 = 0.1), and
    # exactly the discrete Gaussian's tail at the threshold.
    columns = {
        name: CategoricalInput(pd.Series(["common"] * 100 + [f"{name}-single"], dtype=object))
        for name in ("p", "q")
    }
    released = {"p": 0, "q": 0}
    trials = 600
    for seed in range(trials):
        stats, _ = release_statistics(
            columns, noise_multiplier=1.0, threshold_delta=0.2, noise=SeededNoise(seed)
        )
        for name in released:
            released[name] += f"{name}-single" in stats.columns[name].categories
    sigma = math.sqrt(3)  # noise multiplier 1, row count + 2 histograms
    threshold = int(sparse_threshold(sigma, delta=0.2, num_sparse=2))
    p = _dg_tail(threshold, sigma)
    assert 0.03 < p <= 0.1
    for name, count in released.items():  # Binomial(600, p), within 4.5 s.d.
        assert abs(count - trials * p) <= 4.5 * math.sqrt(trials * p * (1 - p)), (name, count)


def test_mechanism_record():
    df = _table(n=50)
    for sparse in (False, True):
        columns = _columns(df)
        if sparse:
            columns["merchant"] = CategoricalInput(pd.Series(["x"] * 50, dtype=object))
        _, record = release_statistics(
            columns,
            noise_multiplier=3.5,
            threshold_delta=2e-7,
            noise=SeededNoise(0),
            label="stats",
        )
        assert record.label == "stats"
        assert record.noise_multiplier == 3.5
        assert record.sample_rate == 1.0
        assert record.steps == 1
        assert record.extra_delta == (2e-7 if sparse else 0.0)


def test_release_rejects_bad_arguments():
    cols = _columns(_table(n=20))
    with pytest.raises(ValueError):
        release_statistics(cols, noise_multiplier=-1.0, threshold_delta=1e-6, noise=SeededNoise(0))
    with pytest.raises(ValueError):
        release_statistics({}, noise_multiplier=1.0, threshold_delta=1e-6, noise=SeededNoise(0))


def test_zero_noise_is_exact_and_costs_infinite_epsilon():
    df = _table(n=120, seed=8)
    columns = {**_columns(df), "shop": CategoricalInput(pd.Series(["s1"] * 119 + ["s2"]))}
    stats, record = release_statistics(
        columns, noise_multiplier=0.0, threshold_delta=1e-6, noise=SeededNoise(0)
    )
    np.testing.assert_array_equal(_flatten(_without(stats, "shop")), _exact(df))
    column = stats.columns["shop"]
    shop = dict(zip(map(category_key, column.categories), column.counts, strict=True))
    assert (shop.pop(("str", "s1")), shop.pop(("str", "s2"))) == (119, 1)  # nothing hidden
    assert len(shop) == len(OPEN_VOCABULARY) and not any(shop.values())  # public cells: 0
    assert stats.row_count_var == 0.0
    assert record.noise_multiplier == 0.0
    ledger = PrivacyLedger(epsilon_budget=10.0, delta=1e-5)
    ledger.record(record)
    assert ledger.epsilon() == math.inf


def _without(stats: TableStatistics, name: str) -> TableStatistics:
    columns = {n: c for n, c in stats.columns.items() if n != name}
    return TableStatistics(columns, stats.row_count, stats.row_count_var, stats.contributors)


def test_num_histograms():
    values = pd.Series(["a"])
    assert num_histograms({}) == 1
    assert num_histograms({"c": CategoricalInput(values)}) == 2
    assert num_histograms({"x": NumericInput(np.ones(1))}) == 3
    assert num_histograms({"x": NumericInput(np.ones(1), count_decimals=False)}) == 2
    assert (
        num_histograms(
            {
                "c": CategoricalInput(values, domain=["a"]),
                "d": CategoricalInput(values),
                "x": NumericInput(np.ones(1)),
                "y": NumericInput(np.ones(1), count_decimals=False),
            }
        )
        == 1 + 1 + 1 + 2 + 1
    )


# -- merging and persistence -----------------------------------------------------------------------
def _categorical(categories, counts, noise_var, missing=0.0, public=False):
    return ColumnStatistics(
        kind="categorical",
        counts=np.array(counts, dtype=float),
        missing=missing,
        noise_var=noise_var,
        categories=list(categories),
        public_domain=public,
    )


def _numeric(counts, decimals, noise_var, missing=0.0):
    return ColumnStatistics(
        kind="numeric",
        counts=np.array(counts, dtype=float),
        missing=missing,
        noise_var=noise_var,
        grid=Grid(kind="uniform", low=0, high=3, bins=3),
        decimals=np.array(decimals, dtype=float),
    )


def test_merge_statistics_sums_and_unites():
    a = TableStatistics(
        columns={
            "c": _categorical(["x", "y"], [10.0, 5.0], 4.0, missing=1.0),
            "n": _numeric([1, 2, 3], [1, 0, 0, 0, 0, 0, 0], 4.0, missing=0.5),
        },
        row_count=16.0,
        row_count_var=4.0,
    )
    b = TableStatistics(
        columns={
            "c": _categorical(["y", "z"], [7.0, 3.0], 9.0, missing=2.0),
            "n": _numeric([4, 5, 6], [0, 2, 0, 0, 0, 0, 1], 9.0, missing=1.5),
        },
        row_count=12.0,
        row_count_var=9.0,
    )
    merged = merge_statistics([a, b])
    c = merged.columns["c"]
    assert c.categories == ["x", "y", "z"]
    np.testing.assert_allclose(c.counts, [10.0, 12.0, 3.0])
    assert c.missing == 3.0
    assert c.noise_var == 13.0
    n = merged.columns["n"]
    np.testing.assert_allclose(n.counts, [5, 7, 9])
    np.testing.assert_allclose(n.decimals, [1, 2, 0, 0, 0, 0, 1])
    assert n.missing == 2.0
    assert n.noise_var == 13.0
    assert n.grid == Grid(kind="uniform", low=0, high=3, bins=3)
    assert merged.row_count == 28.0
    assert merged.row_count_var == 13.0
    assert merged.contributors == 2
    # Merging merged statistics keeps counting contributors; inputs are left untouched.
    again = merge_statistics([merged, b])
    assert again.contributors == 3
    np.testing.assert_allclose(again.columns["c"].counts, [10.0, 19.0, 6.0])
    np.testing.assert_allclose(a.columns["c"].counts, [10.0, 5.0])
    assert merge_statistics([a]).columns["c"].categories == ["x", "y"]
    with pytest.raises(ValueError):
        merge_statistics([])


def test_merge_of_released_statistics():
    parts = [
        release_statistics(
            _columns(_table(n=100, seed=s)),
            noise_multiplier=1.0,
            threshold_delta=1e-6,
            noise=SeededNoise(s),
        )[0]
        for s in range(3)
    ]
    merged = merge_statistics(parts)
    np.testing.assert_allclose(_flatten(merged), sum(_flatten(p) for p in parts))
    assert merged.columns["city"].categories == DOMAIN
    assert merged.columns["city"].public_domain
    assert merged.columns["amount"].noise_var == pytest.approx(3 * 4.0)
    assert merged.contributors == 3


def test_table_statistics_json_round_trip():
    rng = np.random.default_rng(0)
    df = _table(n=400)
    columns = {
        **_columns(df, grid=Grid()),
        "plain": NumericInput(rng.normal(size=400), grid=UNIFORM, count_decimals=False),
        "mcc": CategoricalInput(pd.Series(rng.choice([5411, 5812, 4111], size=400))),
    }
    stats, _ = release_statistics(
        columns, noise_multiplier=0.5, threshold_delta=1e-6, noise=SeededNoise(5)
    )
    mcc = [c for c in stats.columns["mcc"].categories if not in_open_vocabulary(c)]
    assert mcc == [4111, 5411, 5812]
    text = json.dumps(stats.to_dict())
    restored = TableStatistics.from_dict(json.loads(text))
    assert restored.row_count == stats.row_count
    assert restored.row_count_var == stats.row_count_var
    assert restored.contributors == stats.contributors
    assert list(restored.columns) == list(stats.columns)
    for name, col in stats.columns.items():
        back = restored.columns[name]
        assert back.kind == col.kind
        np.testing.assert_array_equal(back.counts, col.counts)
        assert back.missing == col.missing
        assert back.noise_var == col.noise_var
        assert back.categories == col.categories
        assert back.public_domain == col.public_domain
        assert back.grid == col.grid
        if col.decimals is None:
            assert back.decimals is None
        else:
            np.testing.assert_array_equal(back.decimals, col.decimals)
    assert restored.columns["plain"].decimals is None
    assert restored.columns["mcc"].categories == stats.columns["mcc"].categories
    assert [type(c) for c in restored.columns["mcc"].categories] == [
        type(c) for c in stats.columns["mcc"].categories
    ]
    np.testing.assert_array_equal(_flatten(merge_statistics([restored])), _flatten(restored))


# -- grids and decimals ---------------------------------------------------------------------------
def test_log_grid_bins_contain_their_values():
    grid = Grid()
    lo, hi = grid.bin_bounds()
    assert len(lo) == len(hi) == grid.num_bins
    assert np.all(lo < hi)
    values = np.array(
        [
            -5e9, -1e9, -123.456, -1.0, -1e-3, -5e-4, -1e-300, 0.0, 1e-300, 1e-12, 9.99e-4,
            1e-3, 0.5, 1.0, 2.5, 12.5, 1e8, 999_999_999.0, 1e9, 5e9,
        ]
    )  # fmt: skip
    idx = grid.bin_index(values)
    assert np.all((idx >= 0) & (idx < grid.num_bins))
    for v, i in zip(values, idx, strict=True):
        assert lo[i] <= v < hi[i], (v, i, lo[i], hi[i])
    assert np.all(np.diff(idx) >= 0)  # monotone
    # Zero, tiny values of both signs share the one bin around zero.
    assert len(set(grid.bin_index(np.array([-5e-4, -1e-300, 0.0, 1e-300, 1e-12])))) == 1
    # Magnitudes beyond the grid go to the open overflow bins.
    assert grid.bin_index(np.array([-1e300]))[0] == 0
    assert grid.bin_index(np.array([1e300]))[0] == grid.num_bins - 1
    # Interior bins are geometric: per_decade bins per decade.
    inner = (lo > 0) & (hi < grid.high * 1.0001)
    np.testing.assert_allclose(hi[inner] / lo[inner], 10 ** (1 / grid.per_decade), rtol=1e-9)
    # Symmetric around zero (for values off the bin edges).
    off_edge = np.array([5e-4, 0.5, 2.5, 12.5, 123.456, 5e9])
    np.testing.assert_array_equal(
        grid.bin_index(off_edge), grid.num_bins - 1 - grid.bin_index(-off_edge)
    )


def test_uniform_grid_clips_out_of_range_values():
    grid = Grid(kind="uniform", low=0.0, high=10.0, bins=5)
    assert grid.num_bins == 5
    values = np.array([-1e6, -3.0, 0.0, 1.999, 2.0, 4.0, 9.99, 10.0, 12.0, 1e6])
    np.testing.assert_array_equal(grid.bin_index(values), [0, 0, 0, 0, 1, 2, 4, 4, 4, 4])
    lo, hi = grid.bin_bounds()
    np.testing.assert_allclose(lo, [0, 2, 4, 6, 8])
    np.testing.assert_allclose(hi, [2, 4, 6, 8, 10])


def test_count_decimals():
    values = np.array([1.0, 2.5, 9.75, 1 / 3, 0.0, -2.25, 100.0, 0.1, 0.125, 1e-6, math.pi])
    np.testing.assert_array_equal(count_decimals(values), [0, 1, 2, 6, 0, 2, 0, 1, 3, 6, 6])
    assert count_decimals(np.array([])).shape == (0,)


# -- open (undeclared) categorical domains ---------------------------------------------------------
def _open_table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "amount": rng.integers(0, 10_000, size=n) / 100.0,
            "visits": rng.integers(0, 9, size=n).astype(float),
            "size": pd.Series(rng.choice(["S", "M", "L"], size=n), dtype=object),
            "plan": pd.Series(rng.choice(["basic", "pro"], size=n, p=[0.7, 0.3]), dtype=object),
        }
    )


def _open_columns(df: pd.DataFrame) -> dict:
    return {
        "amount": NumericInput(df["amount"].to_numpy(), grid=UNIFORM),
        "visits": NumericInput(df["visits"].to_numpy(), grid=UNIFORM),
        "size": CategoricalInput(df["size"], domain=["S", "M", "L"]),
        "plan": CategoricalInput(df["plan"]),
    }


def test_open_columns_take_half_the_precision_with_less_noise():
    """Row count + 2 x (bins + decimals) + a declared domain: 6 ordinary histograms, 1 open
    one of weight 6. Measured noise matches, and the precisions add up to one Gaussian's."""
    df = _open_table(400, seed=1)
    columns = _open_columns(df)
    assert num_histograms(columns) == 7
    assert open_column_weight(histograms=7, open_columns=1) == 6.0
    assert squared_sensitivity(histograms=7, open_columns=1) == 12.0
    noise_multiplier = 1.5
    dense_std, open_std = noise_multiplier * math.sqrt(12.0), noise_multiplier * math.sqrt(2.0)
    # sum over histograms of 1 / std^2 is 1 / noise_multiplier^2: the RDP of one Gaussian
    assert 6 / dense_std**2 + 1 / open_std**2 == pytest.approx(1 / noise_multiplier**2)
    exact_basic = float((df["plan"] == "basic").sum())
    exact_size = np.array([(df["size"] == c).sum() for c in ["S", "M", "L"]], dtype=float)
    open_residuals, dense_residuals = [], []
    for seed in range(150):
        stats, record = release_statistics(
            columns,
            noise_multiplier=noise_multiplier,
            threshold_delta=1e-6,
            noise=SeededNoise(seed),
        )
        plan = stats.columns["plan"]
        assert plan.noise_var == pytest.approx(open_std**2)
        assert stats.columns["size"].noise_var == pytest.approx(dense_std**2)
        assert stats.row_count_var == pytest.approx(dense_std**2)
        public = np.array([in_open_vocabulary(c) for c in plan.categories])
        open_residuals += list(plan.counts[public])  # every public cell holds 0 rows
        open_residuals.append(plan.counts[plan.categories.index("basic")] - exact_basic)
        dense_residuals += list(stats.columns["size"].counts - exact_size)
        dense_residuals.append(stats.row_count - len(df))
    assert np.std(open_residuals) == pytest.approx(open_std, rel=0.03)  # 18,750 draws
    assert np.std(dense_residuals) == pytest.approx(dense_std, rel=0.1)  # 600 draws
    assert record.l2_sensitivity == pytest.approx(math.sqrt(12.0))
    ledger = PrivacyLedger(epsilon_budget=10.0, delta=1e-5)
    ledger.record(record)
    reference = PrivacyLedger(epsilon_budget=10.0, delta=1e-5)
    reference.record(MechanismRecord("one Gaussian", noise_multiplier, 1.0, 1, 1e-6))
    assert ledger.epsilon() == pytest.approx(reference.epsilon(), rel=1e-9)


def test_public_cells_are_found_from_pooled_counts_that_no_merchant_could_release():
    """Eight merchants, each with 55 rows of "Yes" and 55 of "gold": 3 noise std under each
    one's threshold, so no merchant releases "gold"; "Yes" is a public cell that every merchant
    counts, and the pooled 440 rows stand 4 pooled std above the server's cut."""
    merchant = pd.Series(["Yes"] * 55 + ["gold"] * 55 + ["No"] * 290, dtype=object)
    noise_multiplier, threshold_delta = 20 / math.sqrt(2), 1e-9  # row count + 1: std 20
    parts = [
        release_statistics(
            {"c": CategoricalInput(merchant)},
            noise_multiplier=noise_multiplier,
            threshold_delta=threshold_delta,
            noise=SeededNoise(seed),
        )[0]
        for seed in range(8)
    ]
    std, pooled_std = 20.0, 20.0 * math.sqrt(8)
    assert sparse_threshold(std, delta=threshold_delta, num_sparse=1) > 55 + 3 * std
    assert pooled_std * (norm.isf(SPURIOUS_CELLS / len(OPEN_VOCABULARY)) + 4) < 440
    assert all("gold" not in p.columns["c"].categories for p in parts)
    closed = close_open_domains(merge_statistics(parts)).columns["c"]
    assert closed.categories == ["No", "Yes", OTHER]
    counts = dict(zip(closed.categories, closed.counts, strict=True))
    assert counts["Yes"] == pytest.approx(440, abs=4 * pooled_std)
    # OTHER: the noisy row count less the missing and kept counts (the 440 "gold" rows)
    assert counts[OTHER] == pytest.approx(440, abs=4 * pooled_std * 2)


def test_closing_an_open_domain_keeps_frequent_labels_and_counts_the_rest_as_other():
    labels = [f"v{i:04d}" for i in range(MAX_OPEN_CATEGORIES + 10)]
    counts = {label: 1000.0 - i for i, label in enumerate(labels)}  # all above the share floor
    counts["rare"] = 50.0  # under MIN_OPEN_SHARE of the present rows
    cells = sorted([*OPEN_VOCABULARY, *counts], key=canonical_order)
    noisy = {c: counts.get(c, 1.0) for c in cells}  # public cells: 1 (noise level)
    noisy[7] = 9_000.0  # a public cell that stands out
    present = sum(counts.values()) + 9_000.0 + 20_000.0  # 20,000 rows in labels not released
    column = ColumnStatistics(
        kind="categorical",
        counts=np.array([noisy[c] for c in cells]),
        missing=100.0,
        noise_var=4.0,
        categories=cells,
    )
    stats = TableStatistics({"c": column}, row_count=present + 100.0, row_count_var=4.0)
    assert MIN_OPEN_SHARE * present > 50.0
    closed = close_open_domains(stats).columns["c"]
    kept = labels[: MAX_OPEN_CATEGORIES - 1]  # the most frequent, 7 counted in
    assert closed.categories == [7, *kept, OTHER]
    other = present - 9_000.0 - sum(counts[label] for label in kept)
    assert closed.counts[-1] == pytest.approx(other)  # rare, cut, unreleased rows and noise
    assert closed.missing == 100.0 and not closed.public_domain
    again = close_open_domains(close_open_domains(stats))
    assert again.columns["c"].categories == closed.categories  # closing is idempotent
    np.testing.assert_array_equal(again.columns["c"].counts, closed.counts)


def test_a_release_never_holds_other_and_the_guard_checks_open_columns():
    from client.release_checks import statistics_problems
    from synth_models.encoder import statistics_inputs
    from synth_models.schema import TableSchema

    df = _open_table(300, seed=3)
    df.loc[:99, "plan"] = OTHER  # a label spelled like OTHER stays in the remainder
    metadata = {
        "tables": {
            "t": {
                "columns": {
                    "amount": {"sdtype": "numerical", "range_min": 0, "range_max": 100},
                    "visits": {"sdtype": "numerical", "range_min": 0, "range_max": 100},
                    "size": {"sdtype": "categorical", "range_values": ["S", "M", "L"]},
                    "plan": {"sdtype": "categorical"},
                }
            }
        }
    }
    schema = TableSchema.from_metadata(metadata)
    stats, record = release_statistics(
        statistics_inputs(df, schema), noise_multiplier=0.5, threshold_delta=1e-6,
        noise=SeededNoise(0),
    )  # fmt: skip
    assert OTHER not in stats.columns["plan"].categories
    ledger = PrivacyLedger(epsilon_budget=10.0, delta=1e-5, owner="m")
    ledger.record(record)
    check = {"schema": schema, "ledger": ledger.state_dict(), "private": True}
    document = json.loads(json.dumps(stats.to_dict()))
    assert statistics_problems(document, **check) == []
    missing_cell = json.loads(json.dumps(document))
    plan = missing_cell["columns"]["plan"]
    zero = plan["categories"].index(0)  # leaving out a public cell would say no row holds it
    del plan["categories"][zero], plan["counts"][zero]
    assert statistics_problems(missing_cell, **check) == [
        "statistics of column 'plan': released categories are not every public cell once "
        "plus found labels"
    ]
    same_noise = json.loads(json.dumps(document))
    same_noise["columns"]["plan"]["noise_var"] = same_noise["row_count_var"]
    assert statistics_problems(same_noise, **check) == [
        "statistics of column 'plan': noise differs from the rest of the release"
    ]
