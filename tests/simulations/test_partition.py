"""Splitting one table into merchant tables (iid, Dirichlet label skew, natural ids)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from simulations.datasets import load_dataset
from simulations.partition import (
    PartitionSpec,
    describe_partitions,
    parse_partition,
    partition_table,
    write_partitions,
)
from synth_models.io import read_table


@pytest.fixture(scope="module")
def pizza() -> pd.DataFrame:
    return load_dataset("pizzaplace").table


@pytest.fixture(scope="module")
def oj() -> pd.DataFrame:
    return load_dataset("oj").table


@pytest.fixture
def mixed() -> pd.DataFrame:
    """Every dtype family that an Arrow round trip could change."""
    n = 200
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "i64": np.arange(n, dtype=np.int64),
            "i32": np.arange(n, dtype=np.int32),
            "f64": rng.normal(size=n),
            "obj": np.array(["a", "b", "c", "d"], dtype=object)[np.arange(n) % 4],
            "cat": pd.Categorical(
                np.array(["x", "y", "z"])[np.arange(n) % 3], categories=["z", "y", "x", "w"]
            ),
            "nullable": pd.array([None if k % 7 == 0 else k for k in range(n)], dtype="Int64"),
            "flag": pd.array([None if k % 5 == 0 else k % 2 == 0 for k in range(n)], "boolean"),
            "text": pd.array([f"s{k % 9}" for k in range(n)], dtype="string"),
            "when": pd.date_range("2024-01-01", periods=n, freq="h", tz="Europe/Paris"),
            "store": np.arange(n) % 4 + 10,
        }
    )


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    columns = list(frame.columns)
    return frame.sort_values(columns, kind="stable", na_position="last").reset_index(drop=True)


def assert_exact_cover(parts: list[pd.DataFrame], table: pd.DataFrame) -> None:
    """Every row of ``table`` is in exactly one part: the multisets of rows are equal."""
    assert sum(len(p) for p in parts) == len(table)
    pooled = pd.concat(parts, ignore_index=True)
    pd.testing.assert_frame_equal(_sorted(pooled), _sorted(table))


def assert_dtypes_kept(parts: list[pd.DataFrame], table: pd.DataFrame) -> None:
    for part in parts:
        assert list(part.columns) == list(table.columns)
        assert part.dtypes.to_dict() == table.dtypes.to_dict()
        assert isinstance(part.index, pd.RangeIndex)
        assert part.index.start == 0


def mean_tv(parts: list[pd.DataFrame], column: str) -> float:
    """Mean total-variation distance between each merchant's and the pooled distribution."""
    pooled = pd.concat(parts)[column].value_counts(normalize=True)
    distances = [
        0.5
        * p[column]
        .value_counts(normalize=True)
        .reindex(pooled.index, fill_value=0.0)
        .sub(pooled)
        .abs()
        .sum()
        for p in parts
    ]
    return float(np.mean(distances))


# --- parse_partition -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("iid", PartitionSpec("iid")),
        (" IID ", PartitionSpec("iid")),
        ("dirichlet:type:0.5", PartitionSpec("dirichlet", "type", 0.5)),
        ("Dirichlet:type:100", PartitionSpec("dirichlet", "type", 100.0)),
        ("dirichlet:a:b:1e-1", PartitionSpec("dirichlet", "a:b", 0.1)),
        ("natural:StoreID", PartitionSpec("natural", "StoreID")),
        ("natural:a:b", PartitionSpec("natural", "a:b")),
    ],
)
def test_parse_partition(text, expected):
    spec = parse_partition(text)
    assert spec == expected
    assert parse_partition(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected 'iid'"),
        ("random", "expected 'iid'"),
        ("iid:type", "takes no arguments"),
        ("dirichlet", "dirichlet:<column>:<alpha>"),
        ("dirichlet:type", "dirichlet:<column>:<alpha>"),
        ("dirichlet:type:", "dirichlet:<column>:<alpha>"),
        ("dirichlet::0.5", "dirichlet:<column>:<alpha>"),
        ("dirichlet:type:abc", "not a number"),
        ("dirichlet:type:0", "> 0"),
        ("dirichlet:type:-1", "> 0"),
        ("dirichlet:type:nan", "finite"),
        ("dirichlet:type:inf", "finite"),
        ("natural", "natural:<column>"),
        ("natural:", "natural:<column>"),
    ],
)
def test_parse_partition_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_partition(text)


def test_partition_spec_validates():
    with pytest.raises(ValueError, match="alpha > 0"):
        PartitionSpec("dirichlet", "type", 0.0)
    with pytest.raises(ValueError, match="unknown partition kind"):
        PartitionSpec("shards")  # type: ignore[arg-type]


# --- iid -------------------------------------------------------------------------------------


def test_iid_exact_cover_and_near_equal_sizes(pizza):
    parts = partition_table(pizza, "iid", num_merchants=7, seed=3)
    assert len(parts) == 7
    assert_exact_cover(parts, pizza)
    assert_dtypes_kept(parts, pizza)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    # Shuffled, not contiguous chunks: every merchant has rows from the whole year ...
    for part in parts:
        assert set(part["month"]) == set(range(1, 13))
    # ... and the same mix of pizza types.
    assert mean_tv(parts, "type") < 0.03


def test_iid_seeds(pizza):
    first = partition_table(pizza, "iid", num_merchants=4, seed=0)
    again = partition_table(pizza, "iid", num_merchants=4, seed=0)
    other = partition_table(pizza, "iid", num_merchants=4, seed=1)
    for a, b in zip(first, again, strict=True):
        pd.testing.assert_frame_equal(a, b)
    assert any(not a.equals(b) for a, b in zip(first, other, strict=True))


# --- dirichlet -------------------------------------------------------------------------------


def test_dirichlet_exact_cover(pizza):
    parts = partition_table(pizza, "dirichlet:type:0.5", num_merchants=5, seed=0, min_rows=10)
    assert len(parts) == 5
    assert min(len(p) for p in parts) >= 10
    assert_exact_cover(parts, pizza)
    assert_dtypes_kept(parts, pizza)


def test_dirichlet_alpha_controls_label_skew(pizza):
    def skew(alpha: float) -> float:
        return np.mean(
            [
                mean_tv(
                    partition_table(pizza, f"dirichlet:type:{alpha}", num_merchants=5, seed=s),
                    "type",
                )
                for s in range(3)
            ]
        )

    skewed, uniform = skew(0.1), skew(100)
    assert skewed > 0.25
    assert uniform < 0.06
    assert skewed > uniform + 0.2


def test_dirichlet_seeds(pizza):
    first = partition_table(pizza, "dirichlet:type:0.5", num_merchants=4, seed=7)
    again = partition_table(pizza, "dirichlet:type:0.5", num_merchants=4, seed=7)
    other = partition_table(pizza, "dirichlet:type:0.5", num_merchants=4, seed=8)
    for a, b in zip(first, again, strict=True):
        pd.testing.assert_frame_equal(a, b)
    assert [len(p) for p in first] != [len(p) for p in other]


def test_dirichlet_impossible_min_rows_is_a_clear_error(pizza):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the partitioner's per-draw warnings stay inside
        with pytest.raises(ValueError, match=r"at least 5000 row\(s\).*Raise alpha"):
            partition_table(pizza, "dirichlet:type:0.1", num_merchants=8, min_rows=5000)


def test_dirichlet_missing_values_are_a_category(mixed):
    parts = partition_table(mixed, "dirichlet:nullable:1", num_merchants=3, seed=0)
    assert_exact_cover(parts, mixed)


# --- natural ---------------------------------------------------------------------------------


@pytest.mark.parametrize("num_merchants", [None, 0, 5])
def test_natural_oj_by_store(oj, num_merchants):
    parts = partition_table(oj, "natural:StoreID", num_merchants=num_merchants)
    assert len(parts) == 5
    assert [p["StoreID"].unique().tolist() for p in parts] == [[1], [2], [3], [4], [7]]
    counts = oj["StoreID"].value_counts()
    assert [len(p) for p in parts] == [counts[v] for v in (1, 2, 3, 4, 7)]
    assert_exact_cover(parts, oj)
    assert_dtypes_kept(parts, oj)


def test_natural_wrong_count_names_the_values(oj):
    with pytest.raises(ValueError, match=r"5 distinct values \(1, 2, 3, 4, 7\).*must be 5"):
        partition_table(oj, "natural:StoreID", num_merchants=4)


def test_natural_min_rows(oj):
    with pytest.raises(ValueError, match=r"4 \(139 rows\)"):
        partition_table(oj, "natural:StoreID", num_merchants=None, min_rows=150)


def test_natural_missing_ids(mixed):
    with pytest.raises(ValueError, match="missing value"):
        partition_table(mixed, "natural:nullable", num_merchants=None)


# --- dtypes and argument checks --------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "num_merchants"),
    [("iid", 3), ("dirichlet:cat:0.5", 3), ("dirichlet:text:2", 2), ("natural:store", None)],
)
def test_dtypes_preserved(mixed, spec, num_merchants):
    parts = partition_table(mixed, spec, num_merchants=num_merchants, seed=0)
    assert_dtypes_kept(parts, mixed)
    assert_exact_cover(parts, mixed)
    for part in parts:
        assert part["cat"].cat.categories.tolist() == ["z", "y", "x", "w"]
        assert str(part["when"].dt.tz) == "Europe/Paris"
        # original relative order is kept within a merchant
        assert part["i64"].is_monotonic_increasing


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("dirichlet:missing:1", {"num_merchants": 2}, "'missing' is not in the table"),
        ("natural:missing", {"num_merchants": None}, "'missing' is not in the table"),
        ("iid", {"num_merchants": 0}, "num_merchants must be an integer >= 1"),
        ("iid", {"num_merchants": None}, "num_merchants must be an integer >= 1"),
        ("dirichlet:obj:1", {"num_merchants": 0}, "num_merchants must be an integer >= 1"),
        ("iid", {"num_merchants": 201}, "too few for 201 merchants"),
        ("iid", {"num_merchants": 3, "min_rows": 100}, "too few for 3 merchants"),
        ("iid", {"num_merchants": 2, "min_rows": 0}, "min_rows must be an integer >= 1"),
        ("natural:store", {"num_merchants": -1}, "num_merchants must be an integer >= 0"),
    ],
)
def test_argument_errors(mixed, spec, kwargs, message):
    with pytest.raises(ValueError, match=message):
        partition_table(mixed, spec, **kwargs)


def test_empty_table(mixed):
    with pytest.raises(ValueError, match="no rows"):
        partition_table(mixed.iloc[:0], "iid", num_merchants=1)


# --- describe / write ------------------------------------------------------------------------


def test_describe_partitions(pizza):
    parts = partition_table(pizza, "dirichlet:type:0.3", num_merchants=4, seed=2)
    plain = describe_partitions(parts)
    assert list(plain.columns) == ["rows", "share"]
    assert plain["rows"].tolist() == [len(p) for p in parts]
    assert plain["share"].sum() == pytest.approx(1.0)

    summary = describe_partitions(parts, "type")
    share_columns = [c for c in summary.columns if c.startswith("type=")]
    assert sorted(share_columns) == sorted(f"type={v}" for v in pizza["type"].unique())
    np.testing.assert_allclose(summary[share_columns].sum(axis=1), 1.0)
    assert summary.loc[1, "type=classic"] == pytest.approx((parts[1]["type"] == "classic").mean())
    assert summary["tv_distance"].mean() == pytest.approx(mean_tv(parts, "type"))


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet"])
def test_write_partitions_round_trip(oj, tmp_path, fmt):
    parts = partition_table(oj, "natural:StoreID", num_merchants=None)
    paths = write_partitions(parts, tmp_path / "merchants", fmt=fmt)
    suffix = {"csv": ".csv", "csv.gz": ".csv.gz", "parquet": ".parquet"}[fmt]
    assert [p.name for p in paths] == [f"merchant-{i}{suffix}" for i in range(5)]
    for part, path in zip(parts, paths, strict=True):
        pd.testing.assert_frame_equal(read_table(path), part)
    # Writing the same split again overwrites in place.
    assert write_partitions(parts, tmp_path / "merchants", fmt=fmt) == paths


def test_write_partitions_refuses_to_mix_splits(oj, tmp_path):
    parts = partition_table(oj, "iid", num_merchants=4, seed=0)
    write_partitions(parts, tmp_path)
    with pytest.raises(ValueError, match=r"merchant-3\.csv"):
        write_partitions(parts[:3], tmp_path)
    with pytest.raises(ValueError, match=r"merchant-0\.csv"):
        write_partitions(parts, tmp_path, fmt="parquet")
    with pytest.raises(ValueError, match="unknown format"):
        write_partitions(parts, tmp_path / "other", fmt="xlsx")
