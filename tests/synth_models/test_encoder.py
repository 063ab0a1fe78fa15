"""The table encoder: exact round trips on exact statistics, DP noise, public declarations."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from privacy.calibration import gaussian_noise_multiplier
from privacy.ledger import DISCRETE_GAUSSIAN, MechanismRecord, PrivacyLedger
from privacy.noise import SeededNoise
from privacy.statistics import (
    OPEN_VOCABULARY,
    OTHER,
    ColumnStatistics,
    Grid,
    TableStatistics,
    canonical_order,
    merge_statistics,
    num_histograms,
    open_column_weight,
    release_statistics,
)
from synth_models.encoder import (
    BOUNDED_BINS,
    END_ATOM_MASS,
    MAX_ATOMS,
    MAX_TAIL_BINS,
    MIN_TAIL_BINS,
    SPURIOUS_STRETCHES,
    CategoricalTransform,
    QuantileTransform,
    TableEncoder,
    _geometric_tail,
    _tail_reach,
    grid_for,
    numeric_shape,
    statistics_inputs,
    with_value_modes,
)
from synth_models.schema import NUMERIC, ColumnSpec, TableSchema, datetime_seconds
from synth_models.synthesizer import (
    STATISTICS_LABEL,
    THRESHOLD_DELTA_SHARE,
    release_encoder_statistics,
)

N = 600
METADATA = {
    "tables": {
        "t": {
            "columns": {
                "colour": {"sdtype": "categorical"},
                "code": {"sdtype": "categorical"},  # integers used as categories
                "flag": {"sdtype": "boolean"},
                "size": {"sdtype": "ordinal", "range_values": ["S", "M", "L", "XL"]},
                "count": {
                    "sdtype": "numerical",
                    "range_min": 0,
                    "range_max": 50,
                    "decimal_places": 0,
                },
                "visits": {"sdtype": "numerical", "decimal_places": 0},  # Int64 with missing
                "price": {"sdtype": "numerical"},  # 2 decimals, learnt
                "weight": {"sdtype": "numerical"},  # NaNs: missing indicator
                "day": {"sdtype": "datetime", "datetime_format": "%Y-%m-%d"},
                "stamp": {"sdtype": "datetime"},  # datetime64 with NaT
            }
        }
    }
}


def make_frame(n: int = N, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    weight = rng.lognormal(3, 1, n).round(3)
    weight[rng.random(n) < 0.25] = np.nan
    visits = pd.array(rng.integers(0, 300, n), dtype="Int64")
    visits[rng.random(n) < 0.1] = pd.NA
    stamp = pd.Series(
        pd.Timestamp("2022-03-01") + pd.to_timedelta(rng.integers(0, 10**7, n), unit="s")
    )
    stamp[rng.random(n) < 0.2] = pd.NaT
    days = pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 365, n), unit="D")
    return pd.DataFrame(
        {
            "colour": rng.choice(["red", "green", "blue"], n).astype(object),
            "code": rng.choice([10, 20, 30], n),
            "flag": rng.random(n) < 0.3,
            "size": rng.choice(["S", "M", "L"], n).astype(object),  # "XL" never occurs
            "count": rng.integers(0, 51, n),
            "visits": visits,
            "price": rng.normal(50, 10, n).round(2),
            "weight": weight,
            "day": days.strftime("%Y-%m-%d").astype(object),
            "stamp": stamp,
        }
    )


@pytest.fixture(scope="module")
def schema() -> TableSchema:
    return TableSchema.from_metadata(METADATA)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame()


def exact_encoder(frame: pd.DataFrame, schema: TableSchema) -> TableEncoder:
    stats, _ = release_statistics(
        statistics_inputs(frame, schema),
        noise_multiplier=0.0,
        threshold_delta=0.0,
        noise=SeededNoise(1),
    )
    return TableEncoder.from_statistics(schema, stats)


def dp_encoder(
    frame: pd.DataFrame, schema: TableSchema, seed: int, noise: float = 1.0
) -> TableEncoder:
    stats, _ = release_statistics(
        statistics_inputs(frame, schema),
        noise_multiplier=noise,
        threshold_delta=1e-6,
        noise=SeededNoise(seed),
    )
    return TableEncoder.from_statistics(schema, stats)


@pytest.fixture(scope="module")
def encoder(frame: pd.DataFrame, schema: TableSchema) -> TableEncoder:
    return exact_encoder(frame, schema)


# -- round trip ---------------------------------------------------------------------------------


def test_round_trip_dtypes(frame: pd.DataFrame, encoder: TableEncoder) -> None:
    out = encoder.inverse_transform(encoder.transform(frame))
    assert list(out.columns) == list(frame.columns)
    assert len(out) == len(frame)
    expected = {
        "colour": "object",
        "code": "int64",
        "flag": "bool",
        "size": "object",
        "count": "int64",
        "visits": "Int64",
        "price": "float64",
        "weight": "float64",
        "day": "object",
        "stamp": "datetime64[ns]",
    }
    assert {c: str(out[c].dtype) for c in out.columns} == expected
    assert {c: str(frame[c].dtype) for c in frame.columns} == expected


def test_round_trip_categories_and_missing(frame: pd.DataFrame, encoder: TableEncoder) -> None:
    out = encoder.inverse_transform(encoder.transform(frame))
    for column in ("colour", "code", "flag", "size", "day"):
        assert out[column].tolist() == frame[column].tolist(), column
    assert isinstance(out["code"].iloc[0], np.integer | int)
    for column in ("visits", "weight", "stamp"):
        np.testing.assert_array_equal(out[column].isna(), frame[column].isna(), err_msg=column)
        assert frame[column].isna().sum() > 10
    pd.testing.assert_series_equal(out["stamp"], frame["stamp"])


def _bin_width(transform: QuantileTransform, x: np.ndarray) -> np.ndarray:
    i = np.clip(np.searchsorted(transform.highs, x, side="left"), 0, len(transform.lows) - 1)
    return transform.highs[i] - transform.lows[i]


@pytest.mark.parametrize("column", ["price", "weight", "visits"])
def test_round_trip_numeric_within_bin(
    frame: pd.DataFrame, encoder: TableEncoder, column: str
) -> None:
    out = encoder.inverse_transform(encoder.transform(frame))
    present = frame[column].notna().to_numpy()
    x = frame[column].to_numpy(dtype=float, na_value=np.nan)[present]
    y = out[column].to_numpy(dtype=float, na_value=np.nan)[present]
    transform = encoder.transforms[column]
    assert np.all(np.abs(y - x) <= _bin_width(transform, x) + 1e-9)
    # the learnt number of decimals makes nearly every value come back exactly
    assert np.mean(np.isclose(x, y, rtol=0, atol=1e-9)) > 0.95


def test_learnt_decimals(encoder: TableEncoder) -> None:
    assert encoder.transforms["price"].decimals == 2
    assert encoder.transforms["weight"].decimals == 3
    assert encoder.transforms["visits"].decimals == 0  # declared
    assert encoder.transforms["stamp"].decimals == 0


def test_integer_column_with_public_bounds_is_exact(
    frame: pd.DataFrame, encoder: TableEncoder
) -> None:
    transform = encoder.transforms["count"]
    widths = transform.highs - transform.lows  # one bin per integer, clipped to [0, 50]
    np.testing.assert_array_equal(widths, [0.5, *[1.0] * 49, 0.5])
    out = encoder.inverse_transform(encoder.transform(frame))
    np.testing.assert_array_equal(out["count"].to_numpy(), frame["count"].to_numpy())


def test_values_on_bin_edges_across_gaps(schema: TableSchema) -> None:
    # 1, 10, 100, 1000 are lower edges of log-grid bins; the bins below them are empty here,
    # so the inverse CDF jumps there. These used to come back as 0, 9, 99, 999 (float32 offset).
    rng = np.random.default_rng(0)
    edges = [0, 1, 3, 9, 10, 20, 99, 100, 300, 999, 1000, 5000, 9999, 10000]
    values = np.concatenate([np.full(rng.integers(1, 60), v) for v in edges])
    frame = make_frame(len(values)).assign(visits=pd.array(values, dtype="Int64"))
    encoder = exact_encoder(frame, schema)
    out = encoder.inverse_transform(encoder.transform(frame))
    np.testing.assert_array_equal(out["visits"].to_numpy(dtype=float), values)


def test_datetime_day_boundary_is_not_shifted(schema: TableSchema) -> None:
    # A light bin (2 rows) just below a heavy month: the float32 offset is then only precise
    # to a few seconds, which used to turn 2023-01-01 into "2022-12-31".
    frame = make_frame()
    frame.loc[:1, "day"] = "2023-01-01"
    frame.loc[2:, "day"] = frame.loc[2:, "day"].where(
        frame.loc[2:, "day"] > "2023-01-01", "2023-06-01"
    )
    encoder = exact_encoder(frame, schema)
    out = encoder.inverse_transform(encoder.transform(frame))
    assert out["day"].tolist() == frame["day"].tolist()


# -- declared lattices ("atoms") ------------------------------------------------------------------
MENU = {9.75: 40, 10.5: 900, 12.0: 3000, 12.75: 1500, 16.5: 2500, 20.75: 4000, 35.95: 3}
PRICE_META = {
    "tables": {
        "t": {
            "columns": {
                "price": {
                    "sdtype": "numerical",
                    "range_min": 9.75,
                    "range_max": 35.95,
                    "decimal_places": 2,
                }
            }
        }
    }
}


def _numeric(bounds, decimals) -> ColumnSpec:
    return ColumnSpec("x", NUMERIC, "numerical", bounds=bounds, decimals=decimals)


def menu_frame() -> pd.DataFrame:
    prices = np.concatenate([np.full(n, p) for p, n in MENU.items()])
    return pd.DataFrame({"price": np.random.default_rng(0).permutation(prices)})


def random_blocks(transform: QuantileTransform, n: int, seed: int) -> np.ndarray:
    """Arbitrary generator outputs: any mode, any offset (the ends -1 and 1 included)."""
    rng = np.random.default_rng(seed)
    block = np.zeros((n, transform.width), dtype=np.float32)
    block[np.arange(n), rng.integers(0, transform.n_modes, n)] = 1.0
    block[:, transform.n_modes] = np.clip(rng.uniform(-1.2, 1.2, n), -1, 1)
    return block


def test_declared_bounds_and_decimals_give_one_bin_per_value() -> None:
    grid = grid_for(_numeric((9.75, 35.95), 2))
    assert grid.bins == 2621  # 9.75, 9.76, ... 35.95
    centres = (grid.edges()[:-1] + grid.edges()[1:]) / 2
    np.testing.assert_allclose(centres, np.arange(975, 3596) / 100, atol=1e-9)
    # integers: as before, one bin per integer
    assert grid_for(_numeric((0, 23), 0)).to_dict() == {
        "kind": "uniform", "low": -0.5, "high": 23.5, "per_decade": Grid().per_decade, "bins": 24
    }  # fmt: skip
    # bounds off the lattice: the lattice values inside them
    off = grid_for(_numeric((0.333, 1.0), 2))
    assert off.bins == 67 and off.low == pytest.approx(0.335) and off.high == pytest.approx(1.005)
    # the cap: past MAX_ATOMS values, equal bins over the bounds
    assert grid_for(_numeric((0, (MAX_ATOMS - 1) / 10), 1)).bins == MAX_ATOMS
    assert grid_for(_numeric((0, MAX_ATOMS / 10), 1)).bins == BOUNDED_BINS
    assert grid_for(_numeric((0, 1), None)).bins == BOUNDED_BINS  # no declared decimals


def test_atom_grid_decodes_to_exact_values() -> None:
    schema = TableSchema.from_metadata(PRICE_META)
    frame = menu_frame()
    exact = exact_encoder(frame, schema)
    price = exact.transforms["price"]
    assert sorted(price.atoms) == sorted(MENU)
    out = exact.inverse_transform(exact.transform(frame))
    np.testing.assert_array_equal(out["price"].to_numpy(), frame["price"].to_numpy())
    for encoder in (exact, dp_encoder(frame, schema, seed=3, noise=5.0)):
        price = encoder.transforms["price"]
        decoded = price.decode(random_blocks(price, 20_000, seed=1)).to_numpy()
        # every decoded value is exactly the value of a bin holding mass, even from the
        # bins' edges (offsets of exactly -1 and 1), where rounding could tip either way
        assert set(decoded) <= set(price.atoms) <= set(np.arange(975, 3596) / 100)
        assert set(decoded) <= set(MENU)


def test_value_modes_give_each_lattice_value_its_own_mode() -> None:
    schema = TableSchema.from_metadata(PRICE_META)
    frame = menu_frame()
    exact = exact_encoder(frame, schema)
    valued = with_value_modes(exact)
    price = valued.transforms["price"]
    assert price.value_modes and price.n_modes == len(price.atoms) == len(MENU)
    assert valued.width == exact.width - exact.transforms["price"].n_modes + len(MENU)
    rows = valued.transform(frame)
    np.testing.assert_array_equal(
        valued.inverse_transform(rows)["price"].to_numpy(), frame["price"].to_numpy()
    )
    # The mode alone names the value: the dearest price is one softmax entry, whatever the
    # offset, where equal-mass modes leave it a sliver of the last mode's offset.
    blocks = random_blocks(price, 1000, seed=0)
    blocks[:, : price.n_modes] = 0.0
    blocks[:, price.n_modes - 1] = 1.0
    assert (price.decode(blocks).to_numpy() == max(MENU)).all()
    assert TableEncoder.from_dict(valued.to_dict()).to_dict() == valued.to_dict()
    # Past `max_modes` values a column keeps its equal-mass modes.
    assert with_value_modes(exact, max_modes=len(MENU) - 1).to_dict() == exact.to_dict()


def test_declared_bounds_stay_in_the_domain_with_a_small_mass() -> None:
    # 3 rows at 35.95 and 40 at 9.75 are far below the noise: the bounds stay, with a small mass
    schema = TableSchema.from_metadata(PRICE_META)
    frame = menu_frame()
    price = dp_encoder(frame, schema, seed=4, noise=30.0).transforms["price"]
    assert price.atoms[0] == 9.75 and price.atoms[-1] == 35.95
    assert price.masses[0] <= 2 * END_ATOM_MASS and price.masses[-1] <= 2 * END_ATOM_MASS
    # their rows still reach them (a model that counts rows, like the marginal model, sees them)
    top = price.bin_of_unit(price.to_unit(np.array([35.95, 9.75])))
    assert price.atoms[top].tolist() == [35.95, 9.75]
    # a GAN or VAE reaches them about as often as their mass says, saturated outputs included
    decoded = price.decode(random_blocks(price, 50_000, seed=2)).to_numpy()
    assert 0 < np.isin(decoded, [9.75, 35.95]).mean() < 10 * END_ATOM_MASS


def test_values_in_suppressed_bins_go_to_the_nearest_mass() -> None:
    spec = _numeric((0, 30), 0)
    grid_lows = np.arange(31) - 0.5
    kept = np.array([10, 20])
    transform = QuantileTransform(
        spec, grid_lows[kept], grid_lows[kept] + 1, np.array([0.5, 0.5]), 0, 4, False
    )
    x = np.array([3.0, 12.0, 14.9, 15.1, 18.0, 29.0])
    np.testing.assert_array_equal(
        transform.value_of_unit(transform.to_unit(x)), [10, 10, 10, 20, 20, 20]
    )


# -- layout -------------------------------------------------------------------------------------


def test_spans_cover_the_width_exactly(frame: pd.DataFrame, encoder: TableEncoder) -> None:
    position = 0
    for span in encoder.spans:
        assert span.start == position
        assert span.width >= 1 and span.activation in ("softmax", "tanh")
        position += span.width
    assert position == encoder.width == sum(t.width for t in encoder.transforms.values())
    matrix = encoder.transform(frame)
    assert matrix.shape == (len(frame), encoder.width) and matrix.dtype == np.float32
    for span in encoder.spans:
        block = matrix[:, span.start : span.start + span.width]
        if span.activation == "softmax":
            np.testing.assert_array_equal(block.sum(axis=1), 1.0)
            assert set(np.unique(block)) <= {0.0, 1.0}
        else:
            assert block.min() >= -1.0 and block.max() <= 1.0
    assert {s.column for s in encoder.spans} == set(encoder.transforms)
    assert encoder.categorical_columns == ["colour", "code", "flag", "size"]


def test_json_round_trip_gives_identical_transforms(
    frame: pd.DataFrame, encoder: TableEncoder
) -> None:
    restored = TableEncoder.from_dict(json.loads(json.dumps(encoder.to_dict())))
    assert restored.spans == encoder.spans
    matrix = encoder.transform(frame)
    np.testing.assert_array_equal(restored.transform(frame), matrix)
    pd.testing.assert_frame_equal(
        restored.inverse_transform(matrix), encoder.inverse_transform(matrix)
    )
    assert restored.to_dict() == encoder.to_dict()


# -- DP statistics ------------------------------------------------------------------------------


def test_dp_encoder_differs_from_exact(
    frame: pd.DataFrame, schema: TableSchema, encoder: TableEncoder
) -> None:
    private = dp_encoder(frame, schema, seed=3)
    assert private.to_dict() != encoder.to_dict()
    exact_freq = encoder.transforms["colour"].frequencies
    dp_freq = private.transforms["colour"].frequencies
    assert private.transforms["colour"].categories == encoder.transforms["colour"].categories
    assert not np.allclose(dp_freq, exact_freq, rtol=0, atol=1e-6)
    assert np.allclose(dp_freq, exact_freq, atol=0.05)  # noise ~ 4 rows out of 600
    x = frame["price"].to_numpy()
    exact_u, dp_u = encoder.transforms["price"].to_unit(x), private.transforms["price"].to_unit(x)
    assert 0.001 < np.abs(exact_u - dp_u).max() < 0.1
    # two releases with different seeds differ too
    assert dp_encoder(frame, schema, seed=4).to_dict() != private.to_dict()


def test_neighbouring_tables_give_close_but_different_encoders(
    frame: pd.DataFrame, schema: TableSchema
) -> None:
    neighbour = frame.drop(index=frame.index[5]).reset_index(drop=True)
    a, b = dp_encoder(frame, schema, seed=7), dp_encoder(neighbour, schema, seed=7)
    assert a.to_dict() != b.to_dict()
    for name in ("colour", "code", "flag", "size"):
        ta, tb = a.transforms[name], b.transforms[name]
        assert ta.categories == tb.categories
        assert np.abs(ta.frequencies - tb.frequencies).max() < 0.02, name
    for name in ("price", "weight", "count"):
        x = frame[name].dropna().to_numpy(dtype=float)
        gap = np.abs(a.transforms[name].to_unit(x) - b.transforms[name].to_unit(x)).max()
        assert gap < 0.05, (name, gap)


def test_public_declarations_bypass_dp(frame: pd.DataFrame, schema: TableSchema) -> None:
    # heavy noise: an estimated domain or range would be wrecked, a declared one is kept as is
    declared = ["size", "flag", "count", "visits"]
    schema = TableSchema(schema.table_name, tuple(schema[c] for c in declared))
    private = dp_encoder(frame[declared], schema, seed=11, noise=50.0)
    size = private.transforms["size"]
    assert size.categories == ["S", "M", "L", "XL"]  # "XL" is in no row
    assert len(size.frequencies) == 4 and np.all(size.frequencies >= 0)
    assert np.isclose(size.frequencies.sum(), 1.0)
    assert private.transforms["flag"].categories == [False, True]
    count = private.transforms["count"]
    assert count.decimals == 0
    assert count.lows.min() >= -0.5 and count.highs.max() <= 50.5
    assert private.transforms["visits"].decimals == 0
    out = private.inverse_transform(private.transform(frame[declared]))
    assert out["count"].between(0, 50).all()


def test_declared_nullable_overrides_dp(frame: pd.DataFrame) -> None:
    meta = json.loads(json.dumps(METADATA))
    meta["tables"]["t"]["columns"]["price"]["range_is_nullable"] = True
    meta["tables"]["t"]["columns"]["weight"]["range_is_nullable"] = True
    schema = TableSchema.from_metadata(meta)
    private = dp_encoder(frame, schema, seed=2)
    assert private.transforms["price"].has_missing  # declared, though no row is missing


def test_values_outside_an_open_domain_are_encoded_as_other(schema: TableSchema) -> None:
    frame = make_frame()
    frame.loc[17, "colour"] = "ultraviolet"  # one row: cannot pass the DP threshold
    private = dp_encoder(frame, schema, seed=5)
    colour = private.transforms["colour"]
    assert colour.other and colour.categories == ["blue", "green", "red", OTHER]
    matrix = private.transform(frame)
    assert len(matrix) == len(frame)  # no row is left out
    block = matrix[:, private.column_offset("colour") : private.column_offset("colour") + 4]
    assert block[17].tolist() == [0, 0, 0, 1] and block[:, 3].sum() == 1
    # a value no release has seen (here in an integer column) goes to OTHER the same way
    novel = frame.assign(code=frame["code"].where(frame.index != 3, 99))
    codes = private.transforms["code"].codes(novel["code"])
    assert codes[3] == len(private.transforms["code"].categories) - 1
    decoded = private.inverse_transform(private.transform(novel))
    assert decoded.loc[3, "code"] == OTHER and decoded.loc[17, "colour"] == OTHER
    assert decoded["code"].dtype == object  # an integer column that holds OTHER
    # rows without OTHER keep their labels' own dtype
    plain = private.inverse_transform(private.transform(make_frame()))
    assert plain["code"].dtype == np.int64 and set(plain["code"]) == {10, 20, 30}


def _open_statistics(counts: dict, *, row_count: float, noise_var: float) -> TableStatistics:
    """Summed statistics of one open column ``c``, with public cells as a release has them."""
    labels = sorted(set(OPEN_VOCABULARY) | set(counts), key=canonical_order)
    column = ColumnStatistics(
        kind="categorical",
        counts=np.array([float(counts.get(c, 0.0)) if not isinstance(c, bool) else 0.0
                         for c in labels]),
        missing=0.0,
        noise_var=noise_var,
        categories=labels,
    )  # fmt: skip
    return TableStatistics({"c": column}, row_count=row_count, row_count_var=noise_var)


OPEN_SCHEMA = TableSchema.from_metadata(
    {"tables": {"t": {"columns": {"c": {"sdtype": "categorical"}}}}}
)


def test_a_column_where_nothing_was_found_is_all_other(caplog) -> None:
    stats = _open_statistics({}, row_count=500.0, noise_var=400.0)
    with caplog.at_level("WARNING", logger="synth_models.encoder"):
        encoder = TableEncoder.from_statistics(OPEN_SCHEMA, stats)  # no exception
    t = encoder.transforms["c"]
    assert t.categories == [OTHER] and t.frequencies.tolist() == [1.0] and not t.id_like
    assert "column 'c'" in caplog.text and "every synthetic value is '(other)'" in caplog.text
    assert encoder.notes == {"c": t.note}
    sample = encoder.inverse_transform(np.ones((4, t.width), dtype=np.float32))
    assert sample["c"].tolist() == [OTHER] * 4


def test_open_domain_keeps_found_labels_and_other_gets_the_remainder() -> None:
    # 1000 rows: two labels found, 300 rows in labels nobody could release.
    stats = _open_statistics({"a": 500.0, "b": 200.0}, row_count=1000.0, noise_var=1.0)
    t = TableEncoder.from_statistics(OPEN_SCHEMA, stats).transforms["c"]
    assert t.categories == ["a", "b", OTHER]
    np.testing.assert_allclose(t.frequencies, [0.5, 0.2, 0.3])
    assert not t.id_like and t.note is None
    # a remainder within its noise is taken as empty (noise var 400: row count and 3 counts)
    noisy = _open_statistics({"a": 500.0, "b": 480.0}, row_count=1000.0, noise_var=400.0)
    t = TableEncoder.from_statistics(OPEN_SCHEMA, noisy).transforms["c"]
    assert t.frequencies[-1] == 0.0 and np.isclose(t.frequencies.sum(), 1.0)


def test_mostly_other_or_an_identifier_name_is_flagged_id_like(caplog) -> None:
    stats = _open_statistics({"vip": 40.0}, row_count=1000.0, noise_var=1.0)
    with caplog.at_level("WARNING", logger="synth_models.encoder"):
        t = TableEncoder.from_statistics(OPEN_SCHEMA, stats).transforms["c"]
    assert t.id_like and t.other_share == pytest.approx(0.96)
    assert "looks like an identifier" in caplog.text and "sdtype 'id'" in caplog.text
    for name, flagged in [("customer_id", True), ("orderID", True), ("CustomerId", True),
                          ("uuid", True), ("id", True), ("paid", False), ("valid", False),
                          ("home", False)]:  # fmt: skip
        schema = TableSchema.from_metadata(
            {"tables": {"t": {"columns": {name: {"sdtype": "categorical"}}}}}
        )
        fine = _open_statistics({"a": 600.0, "b": 400.0}, row_count=1000.0, noise_var=1.0)
        fine = TableStatistics({name: fine.columns["c"]}, fine.row_count, fine.row_count_var)
        assert TableEncoder.from_statistics(schema, fine).transforms[name].id_like == flagged, name
    restored = CategoricalTransform.from_dict(OPEN_SCHEMA["c"], json.loads(json.dumps(t.to_dict())))
    assert restored.id_like and restored.other and restored.categories == t.categories


def test_true_and_one_are_different_labels() -> None:
    schema = TableSchema.from_metadata(
        {"tables": {"t": {"columns": {"c": {"sdtype": "categorical"}}}}}
    )
    frame = pd.DataFrame({"c": pd.Series([True] * 30 + [1] * 50 + [0] * 20, dtype=object)})
    encoder = exact_encoder(frame, schema)
    t = encoder.transforms["c"]
    assert [(type(c), c) for c in t.categories] == [(bool, True), (int, 0), (int, 1), (str, OTHER)]
    np.testing.assert_allclose(t.frequencies, [0.3, 0.2, 0.5, 0.0])
    decoded = encoder.inverse_transform(encoder.transform(frame))
    assert [(type(v), v) for v in decoded["c"]] == [(type(v), v) for v in frame["c"]]


def test_transform_accepts_datetime_strings_and_stamps(
    frame: pd.DataFrame, schema: TableSchema, encoder: TableEncoder
) -> None:
    as_strings = frame.assign(stamp=frame["stamp"].dt.strftime("%Y-%m-%d %H:%M:%S"))
    np.testing.assert_array_equal(encoder.transform(as_strings), encoder.transform(frame))
    seconds = datetime_seconds(frame["day"], schema["day"])
    assert np.isfinite(seconds).all()


def test_the_ledger_records_exactly_the_statistics_mechanism(
    frame: pd.DataFrame, schema: TableSchema
) -> None:
    """One owner's statistics release: one discrete Gaussian record whose L2 sensitivity
    weighs the two open columns (colour, code), and the threshold's delta; the released noise
    is that record's."""
    ledger = PrivacyLedger(epsilon_budget=1.0, delta=1e-5, owner="m")
    stats = release_encoder_statistics(frame, schema, ledger, epsilon=0.1, noise=SeededNoise(0))
    histograms = num_histograms(statistics_inputs(frame, schema))
    assert histograms == 1 + 10 + 2  # row count, columns, decimals of price and weight
    weight = open_column_weight(histograms=histograms, open_columns=2)
    assert weight == pytest.approx(11 / 2)  # the open ones take half the precision
    multiplier = gaussian_noise_multiplier(
        epsilon=0.1, delta=1e-5 * (1 - THRESHOLD_DELTA_SHARE), mechanism=DISCRETE_GAUSSIAN
    )
    sensitivity = math.sqrt(11 + 2 * weight)
    expected = MechanismRecord(
        STATISTICS_LABEL, multiplier, 1.0, 1, 1e-5 * THRESHOLD_DELTA_SHARE,
        mechanism=DISCRETE_GAUSSIAN, l2_sensitivity=sensitivity, dimension=0,
    )  # fmt: skip
    (record,) = ledger.records
    assert record.l2_sensitivity == pytest.approx(sensitivity)
    assert record == dataclasses.replace(expected, l2_sensitivity=record.l2_sensitivity)
    assert stats.row_count_var == pytest.approx((multiplier * sensitivity) ** 2)
    for name in ("colour", "code"):
        assert stats.columns[name].noise_var == pytest.approx(stats.row_count_var / weight)
    assert stats.columns["size"].noise_var == pytest.approx(stats.row_count_var)
    assert ledger.epsilon() == pytest.approx(0.1, rel=2e-3)


# -- undeclared numeric columns: the shape a noisy log-grid histogram allows ----------------
NOISE_STD = 73.0  # pooled std per bin of 5 merchants at 0.3 of epsilon = 1 (3 numeric columns)


def test_a_tail_reaches_at_most_a_decade_of_bins() -> None:
    """Past a run of 60 bins of mass, counts decaying by 3% a bin: the tail follows them, but
    for MAX_TAIL_BINS only (before, as far again as the run: a code of 1-41 decoded up to
    133, amounts of 1-10,000 up to 457,000)."""
    outward = 1000.0 * 0.97 ** np.arange(1, 201)
    tail = _geometric_tail(outward, 1000.0, _tail_reach(60), 1.0)
    assert len(tail) == MAX_TAIL_BINS
    np.testing.assert_allclose(tail, outward[:MAX_TAIL_BINS], rtol=0.05)
    assert _tail_reach(3) == MIN_TAIL_BINS  # a spike's tail: a few bins


def test_noise_past_a_hard_edge_rarely_gets_a_tail() -> None:
    """A code's largest value is a hard edge: past it only noise. A tail must beat no tail by
    more than its own noise (about 9 in 100 here); one that merely beat nothing came in 44."""
    rng = np.random.default_rng(0)
    tails = 0
    for _ in range(100):
        counts = rng.normal(0.0, NOISE_STD, 120)
        counts[20:60] += 250.0  # a flat run of values, then nothing
        masses = numeric_shape(counts, NOISE_STD**2).masses
        tails += bool(masses[61:].sum() > 0)  # one bin of slack for the edge itself
    assert tails <= 20


def test_a_noise_stretch_far_from_the_values_is_not_taken_for_mass() -> None:
    """Seen in a federation: 18 bins of noise 5.35 standard deviations above zero, decades
    past a code's values; it passed the old cut (4.8 for the log grid's 75,000 intervals)
    and the code decoded up to 4e8. The cut is now 5.6: one noise-only histogram in 1,000."""
    n = Grid().num_bins
    counts = np.zeros(n)
    counts[242:268] = 400.0  # the code's values, 1 to 41
    counts[n - 18 :] = 5.35 * NOISE_STD / math.sqrt(18)
    masses = numeric_shape(counts, NOISE_STD**2).masses
    assert masses[242:268].all() and not masses[300:].any()
    assert SPURIOUS_STRETCHES <= 1e-3


def test_undeclared_heavy_tail_and_integers_keep_their_ranges_and_decimals() -> None:
    """Five merchants' DP statistics (seeded noise, 0.3 of epsilon = 1) of a log-normal amount
    over four decades, an integer code 1..41 and a capped tenure 0..72, all undeclared."""
    rng = np.random.default_rng(0)
    rows = 9000
    weights = 1.0 / np.arange(1, 42) ** 1.2
    frame = pd.DataFrame(
        {
            "amount": np.round(np.exp(rng.normal(math.log(100), 1.5, rows)).clip(1, 1e4), 2),
            "code": rng.choice(np.arange(1, 42), rows, p=weights / weights.sum()),
            "tenure": np.minimum(rng.exponential(24.0, rows).astype(int), 72),
        }
    )
    metadata = {"tables": {"t": {"columns": {c: {"sdtype": "numerical"} for c in frame}}}}
    schema = TableSchema.from_metadata(metadata)
    parts = np.array_split(rng.permutation(rows), 5)
    for seed in range(3):
        releases = [
            release_encoder_statistics(
                frame.iloc[part].reset_index(drop=True),
                schema,
                PrivacyLedger(epsilon_budget=1.0, delta=1e-5),
                epsilon=0.3,
                noise=SeededNoise(10 * seed + i),
            )
            for i, part in enumerate(parts)
        ]
        encoder = TableEncoder.from_statistics(schema, merge_statistics(releases))
        assert not encoder.notes
        assert [encoder.transforms[c].decimals for c in frame] == [2, 0, 0]
        u = np.random.default_rng(seed).random(rows)
        for column in frame:
            values = encoder.transforms[column].value_of_unit(u)
            real = frame[column]
            low = real.min() / 10 if real.min() > 0 else 0.0
            assert low <= values.min() and values.max() <= real.max() * 10, (seed, column)
            median = np.median(values)
            assert abs(np.log10(max(median, 0.5) / max(real.median(), 0.5))) < 0.3, column
