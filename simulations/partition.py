"""Split one table into N merchant tables for federated simulations.

Three schemes, written as short spec strings (see :func:`parse_partition`):

* ``iid``: rows are shuffled (seeded) and cut into N near-equal shares (sizes differ by at
  most one row).
* ``dirichlet:<column>:<alpha>``: label skew. For every category of ``column`` the shares
  of the N merchants are drawn from Dirichlet(alpha); a small alpha (0.1) gives merchants that
  hold mostly one or two categories, a large one (100) near-identical mixes. Missing values of
  ``column`` count as one more category.
* ``natural:<column>``: one merchant per distinct value of ``column`` (e.g. a store id);
  merchant ``i`` holds the ``i``-th smallest value. ``num_merchants`` must equal the number of
  distinct values, or be ``None``/``0`` for "as many as there are values".

The assignment of rows is done by the flwr-datasets partitioners (``IidPartitioner``,
``DirichletPartitioner``, ``NaturalIdPartitioner``), run offline on a two-column
:class:`datasets.Dataset` of row numbers and integer category codes. The merchant tables are
then cut from the original frame with ``iloc``, so no value goes through Arrow: every column
keeps its exact dtype (categorical, nullable, datetime with time zone, ...) and values. Rows
keep their original relative order within a merchant; indexes are reset.

Reading merchant files back goes through :func:`synth_models.io.read_table`.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

__all__ = [
    "PartitionKind",
    "PartitionSpec",
    "describe_partitions",
    "parse_partition",
    "partition_table",
    "write_partitions",
]

PartitionKind = Literal["iid", "dirichlet", "natural"]

_ROW = "__row__"
_KEY = "__key__"
_FORMATS = {"csv": ".csv", "csv.gz": ".csv.gz", "parquet": ".parquet"}
_SPEC_HELP = "expected 'iid', 'dirichlet:<column>:<alpha>' or 'natural:<column>'"


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed partition scheme; ``str(spec)`` gives back the spec string."""

    kind: PartitionKind
    column: str | None = None
    alpha: float | None = None

    def __post_init__(self) -> None:
        if self.kind == "iid":
            if self.column is not None or self.alpha is not None:
                raise ValueError("an 'iid' partition takes no column and no alpha")
        elif self.kind == "dirichlet":
            if not self.column:
                raise ValueError("a 'dirichlet' partition needs a column")
            if self.alpha is None or not math.isfinite(self.alpha) or self.alpha <= 0:
                raise ValueError(
                    f"a 'dirichlet' partition needs a finite alpha > 0, got {self.alpha!r}"
                )
        elif self.kind == "natural":
            if not self.column:
                raise ValueError("a 'natural' partition needs a column")
            if self.alpha is not None:
                raise ValueError("a 'natural' partition takes no alpha")
        else:
            raise ValueError(f"unknown partition kind {self.kind!r}: {_SPEC_HELP}")

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.column}:{self.alpha:g}"
        if self.kind == "natural":
            return f"natural:{self.column}"
        return "iid"


def parse_partition(spec: str) -> PartitionSpec:
    """Parse ``"iid"``, ``"dirichlet:<column>:<alpha>"`` or ``"natural:<column>"``.

    The kind is case-insensitive; the column is taken verbatim (it may contain ``:``, the alpha
    is what follows the last one). Raises ValueError for anything else.
    """
    if not isinstance(spec, str):
        raise ValueError(f"partition spec must be a string, got {type(spec).__name__}")
    text = spec.strip()
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind == "iid":
        if sep:
            raise ValueError(f"malformed partition spec {spec!r}: 'iid' takes no arguments")
        return PartitionSpec("iid")
    if kind == "natural":
        if not rest:
            raise ValueError(
                f"malformed partition spec {spec!r}: expected 'natural:<column>', "
                "e.g. 'natural:StoreID'"
            )
        return PartitionSpec("natural", column=rest)
    if kind == "dirichlet":
        column, sep2, alpha_text = rest.rpartition(":")
        if not sep2 or not column or not alpha_text.strip():
            raise ValueError(
                f"malformed partition spec {spec!r}: expected 'dirichlet:<column>:<alpha>', "
                "e.g. 'dirichlet:type:0.5'"
            )
        try:
            alpha = float(alpha_text)
        except ValueError:
            raise ValueError(
                f"malformed partition spec {spec!r}: alpha {alpha_text!r} is not a number"
            ) from None
        if not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(
                f"malformed partition spec {spec!r}: alpha must be a finite number > 0, "
                f"got {alpha_text!r}"
            )
        return PartitionSpec("dirichlet", column=column, alpha=alpha)
    raise ValueError(f"malformed partition spec {spec!r}: {_SPEC_HELP}")


def partition_table(
    table: pd.DataFrame,
    spec: PartitionSpec | str,
    *,
    num_merchants: int | None,
    seed: int = 0,
    min_rows: int = 1,
) -> list[pd.DataFrame]:
    """Split ``table`` into merchant tables; every row lands in exactly one of them.

    ``num_merchants``: number of merchants (>= 1). For ``natural`` it must equal the number of
    distinct values of the column, or be ``None``/``0`` for as many merchants as values.
    ``seed`` makes ``iid`` and ``dirichlet`` reproducible (``natural`` is deterministic).
    ``min_rows``: every merchant must get at least this many rows (>= 1). For ``dirichlet`` it
    is the partitioner's ``min_partition_size``: the draw is repeated (at most 11 times) until
    it holds, then a ValueError says what to change. For ``iid``/``natural`` a violation is a
    ValueError at once.

    Returns frames with a fresh ``RangeIndex``, the original columns and dtypes, and rows in
    their original relative order.
    """
    if isinstance(spec, str):
        spec = parse_partition(spec)
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    if len(table) == 0:
        raise ValueError("the table has no rows: nothing to partition")
    if not _is_int(min_rows) or min_rows < 1:
        raise ValueError(f"min_rows must be an integer >= 1, got {min_rows!r}")
    if not _is_int(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if spec.column is not None and spec.column not in table.columns:
        raise ValueError(
            f"partition column {spec.column!r} is not in the table; columns: "
            f"{', '.join(map(str, table.columns))}"
        )

    if spec.kind == "natural":
        indices = _natural(table, spec.column, num_merchants, min_rows)
    else:
        if num_merchants is None or not _is_int(num_merchants) or num_merchants < 1:
            raise ValueError(f"num_merchants must be an integer >= 1, got {num_merchants!r}")
        if len(table) < num_merchants * min_rows:
            raise ValueError(
                f"the table has {len(table)} rows: too few for {num_merchants} merchants "
                f"with at least {min_rows} row(s) each"
            )
        if spec.kind == "iid":
            indices = _iid(len(table), num_merchants, seed)
        else:
            indices = _dirichlet(table, spec, num_merchants, seed, min_rows)

    parts = [table.iloc[np.sort(rows)].reset_index(drop=True) for rows in indices]
    if sum(len(p) for p in parts) != len(table):  # pragma: no cover - partitioner invariant
        raise RuntimeError("partitioning lost or duplicated rows")
    return parts


def describe_partitions(parts: Sequence[pd.DataFrame], column: str | None = None) -> pd.DataFrame:
    """One row per merchant, for logging: ``rows`` and ``share`` of all rows.

    With ``column``: one more column ``<column>=<value>`` per category (sorted by global
    frequency) with that category's share within the merchant, and ``tv_distance``, the
    total-variation distance between the merchant's category distribution and the pooled one
    (0: same mix, 1: disjoint). Missing values count as the category ``<NA>``.
    """
    if len(parts) == 0:
        raise ValueError("no partitions to describe")
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    total = int(sizes.sum())
    summary = pd.DataFrame(
        {"rows": sizes, "share": sizes / total if total else np.zeros(len(parts))},
        index=pd.RangeIndex(len(parts), name="merchant"),
    )
    if column is None:
        return summary
    for i, part in enumerate(parts):
        if column not in part.columns:
            raise ValueError(f"merchant {i} has no column {column!r}")
    counts = pd.DataFrame([_category_counts(p[column]) for p in parts], index=summary.index).fillna(
        0
    )
    counts = counts[counts.sum(axis=0).sort_values(ascending=False, kind="stable").index]
    shares = counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0)
    pooled = counts.sum(axis=0) / max(total, 1)
    summary["tv_distance"] = 0.5 * (shares - pooled).abs().sum(axis=1)
    shares.columns = [f"{column}={value}" for value in shares.columns]
    return pd.concat([summary, shares], axis=1)


def write_partitions(
    parts: Sequence[pd.DataFrame], out_dir: str | os.PathLike, fmt: str = "csv"
) -> list[Path]:
    """Write ``merchant-{i}.csv`` (``fmt="csv"``), ``.csv.gz`` or ``.parquet`` files.

    ``out_dir`` is created if needed; files of the same names are overwritten. If ``out_dir``
    already holds other ``merchant-<i>.*`` files (left over from a split into more merchants
    or another format), nothing is written and a ValueError lists them, so a directory never
    mixes two splits. Returns the paths in merchant order. Read them back with
    :func:`synth_models.io.read_table` (CSV keeps values, not dtypes such as categorical).
    """
    if fmt not in _FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(_FORMATS)}")
    if len(parts) == 0:
        raise ValueError("no partitions to write")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    paths = [out / f"merchant-{i}{_FORMATS[fmt]}" for i in range(len(parts))]
    if out.is_dir():
        pattern = re.compile(r"merchant-\d+\..+")
        stale = sorted(
            p.name for p in out.iterdir() if pattern.fullmatch(p.name) and p not in set(paths)
        )
        if stale:
            raise ValueError(
                f"{out} already holds other merchant files ({', '.join(stale)}): "
                "use an empty directory or remove them"
            )
    out.mkdir(parents=True, exist_ok=True)
    for part, path in zip(parts, paths, strict=True):
        if fmt == "parquet":
            part.to_parquet(path, index=False, engine="pyarrow")
        else:
            part.to_csv(path, index=False, encoding="utf-8")
    return paths


# --- internals -----------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _rows_dataset(rows: np.ndarray, keys: np.ndarray | None = None):
    """A small in-memory ``datasets.Dataset`` of row numbers (and integer keys)."""
    import datasets

    frame = pd.DataFrame({_ROW: rows.astype(np.int64)})
    if keys is not None:
        frame[_KEY] = keys.astype(np.int64)
    # Arrow format: the partitioners' ``dataset[column]`` is then a column slice, not a
    # row-by-row Python iteration (seconds on 50k rows).
    return datasets.Dataset.from_pandas(frame, preserve_index=False).with_format("arrow")


def _row_indices(partitioner, num_partitions: int) -> list[np.ndarray]:
    return [
        partitioner.load_partition(i)[_ROW].to_numpy().astype(np.int64, copy=False)
        for i in range(num_partitions)
    ]


def _codes(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Integer codes of a column (sorted categories when sortable; NaN is a category)."""
    try:
        codes, uniques = pd.factorize(values, sort=True, use_na_sentinel=False)
    except TypeError:  # mixed, unorderable values
        codes, uniques = pd.factorize(values, sort=False, use_na_sentinel=False)
    return np.asarray(codes, dtype=np.int64), pd.Index(uniques)


def _iid(num_rows: int, num_merchants: int, seed: int) -> list[np.ndarray]:
    from flwr_datasets.partitioner import IidPartitioner

    # IidPartitioner cuts contiguous shards without shuffling: shuffle the row numbers first.
    order = np.random.default_rng(seed).permutation(num_rows)
    partitioner = IidPartitioner(num_partitions=num_merchants)
    partitioner.dataset = _rows_dataset(order)
    return _row_indices(partitioner, num_merchants)


def _dirichlet(
    table: pd.DataFrame, spec: PartitionSpec, num_merchants: int, seed: int, min_rows: int
) -> list[np.ndarray]:
    from flwr_datasets.partitioner import DirichletPartitioner

    codes, uniques = _codes(table[spec.column])
    partitioner = DirichletPartitioner(
        num_partitions=num_merchants,
        partition_by=_KEY,
        alpha=float(spec.alpha),
        min_partition_size=min_rows,
        self_balancing=False,
        shuffle=False,  # rows are put back in table order anyway
        seed=seed,
    )
    partitioner.dataset = _rows_dataset(np.arange(len(table)), codes)
    try:
        with warnings.catch_warnings():
            # One warning per failed draw; the final failure is reported below.
            warnings.filterwarnings("ignore", message=".*min_partition_size.*")
            return _row_indices(partitioner, num_merchants)
    except ValueError as error:
        if "max number of attempts" not in str(error):
            raise
        raise ValueError(
            f"partition {spec} could not give each of {num_merchants} merchants at least "
            f"{min_rows} row(s): every Dirichlet draw (11 tries, seed {seed}) left a merchant "
            f"short ({len(table)} rows, {len(uniques)} categories in {spec.column!r}). "
            "Raise alpha, or lower num_merchants or min_rows, or try another seed."
        ) from error


def _natural(
    table: pd.DataFrame, column: str, num_merchants: int | None, min_rows: int
) -> list[np.ndarray]:
    from flwr_datasets.partitioner import NaturalIdPartitioner

    values = table[column]
    missing = int(values.isna().sum())
    if missing:
        raise ValueError(
            f"natural partition column {column!r} has {missing} missing value(s): "
            "every row needs a merchant id"
        )
    codes, uniques = _codes(values)
    distinct = len(uniques)
    if num_merchants is None or (_is_int(num_merchants) and num_merchants == 0):
        num_merchants = distinct
    elif not _is_int(num_merchants) or num_merchants < 0:
        raise ValueError(
            f"num_merchants must be an integer >= 0 (0/None: one per value), got {num_merchants!r}"
        )
    if num_merchants != distinct:
        shown = ", ".join(map(str, uniques[:10])) + (", ..." if distinct > 10 else "")
        raise ValueError(
            f"natural partition column {column!r} has {distinct} distinct values ({shown}), "
            f"one merchant each: num_merchants must be {distinct} (or None/0 for as many as "
            f"values), got {num_merchants}"
        )
    sizes = np.bincount(codes, minlength=distinct)
    if sizes.min() < min_rows:
        small = [f"{uniques[k]} ({sizes[k]} rows)" for k in np.flatnonzero(sizes < min_rows)]
        raise ValueError(
            f"natural partition by {column!r}: merchant(s) with fewer than min_rows={min_rows} "
            f"rows: {', '.join(small[:10])}{', ...' if len(small) > 10 else ''}"
        )
    partitioner = NaturalIdPartitioner(partition_by=_KEY)
    partitioner.dataset = _rows_dataset(np.arange(len(table)), codes)
    # The partitioner sorts the distinct keys, so partition i holds code i, i.e. the i-th value.
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm progress bar
        return _row_indices(partitioner, distinct)


def _category_counts(values: pd.Series) -> pd.Series:
    counts = values.astype(object).where(values.notna(), "<NA>").value_counts(sort=False)
    counts.index = counts.index.map(str)
    return counts.groupby(level=0, sort=False).sum()  # 1 and "1" print alike
