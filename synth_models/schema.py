"""Column roles from SDV metadata, and validation of a table against them.

Everything here comes from metadata, which is public. A range, category list or number of
decimals written in the metadata (SDV 2.x ``range_min``/``range_max``, ``range_values``,
``decimal_places``) is a *public declaration*: it is used as is and not estimated from rows.
Metadata detected from the private table by SDV holds such values taken from the data, so it is
not public: pass it through :func:`strip_data_derived` first, or declare by hand.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from synth_models.booleans import parse_declared_booleans

logger = logging.getLogger(__name__)

NUMERIC, CATEGORICAL, DATETIME = "numeric", "categorical", "datetime"
DROPPED_SDTYPES = {"id"}
DECLARATION_KEYS = ("range_min", "range_max", "range_values", "decimal_places")


class DataError(ValueError):
    """A table or metadata problem, naming the source, the column and what is wrong."""

    def __init__(self, problem: str, *, source: str | None = None, column: str | None = None):
        self.source, self.column, self.problem = source, column, problem
        where = []
        if source:
            where.append(f"file {source!r}")
        if column:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {problem}" if where else problem)


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    kind: str  # numeric | categorical | datetime
    sdtype: str
    categories: tuple | None = None  # public domain
    bounds: tuple[float, float] | None = None  # public bounds (datetime: epoch seconds)
    decimals: int | None = None  # public number of decimals
    datetime_format: str | None = None
    nullable: bool | None = None  # public: may hold missing values

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "sdtype": self.sdtype,
            "categories": None if self.categories is None else list(self.categories),
            "bounds": None if self.bounds is None else list(self.bounds),
            "decimals": self.decimals,
            "datetime_format": self.datetime_format,
            "nullable": self.nullable,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ColumnSpec:
        return cls(
            name=d["name"],
            kind=d["kind"],
            sdtype=d["sdtype"],
            categories=None if d["categories"] is None else tuple(d["categories"]),
            bounds=None if d["bounds"] is None else (float(d["bounds"][0]), float(d["bounds"][1])),
            decimals=d["decimals"],
            datetime_format=d["datetime_format"],
            nullable=d["nullable"],
        )


@dataclass(frozen=True)
class TableSchema:
    table_name: str
    columns: tuple[ColumnSpec, ...]
    dropped: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def __getitem__(self, name: str) -> ColumnSpec:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "table_name": self.table_name,
            "columns": [c.to_dict() for c in self.columns],
            "dropped": list(self.dropped),
        }

    @classmethod
    def from_dict(cls, d: dict) -> TableSchema:
        return cls(
            table_name=d["table_name"],
            columns=tuple(ColumnSpec.from_dict(c) for c in d["columns"]),
            dropped=tuple(d.get("dropped", ())),
        )

    @classmethod
    def from_metadata(cls, metadata: Any, table_name: str | None = None) -> TableSchema:
        """Build from an SDV ``Metadata`` or its ``to_dict()`` form (single table)."""
        meta = metadata if isinstance(metadata, dict) else metadata.to_dict()
        tables = meta.get("tables")
        if not tables:
            raise DataError("metadata has no 'tables' section")
        if table_name is None:
            if len(tables) != 1:
                raise DataError(f"metadata has {len(tables)} tables; name the one to use")
            table_name = next(iter(tables))
        if table_name not in tables:
            raise DataError(f"metadata has no table {table_name!r}")
        columns, dropped = [], []
        for name, spec in tables[table_name].get("columns", {}).items():
            column = _column_from_sdv(name, spec)
            if column is None:
                dropped.append(name)
            else:
                columns.append(column)
        if not columns:
            raise DataError(f"metadata of table {table_name!r} has no column to synthesize")
        return cls(table_name=table_name, columns=tuple(columns), dropped=tuple(dropped))


def _column_from_sdv(name: str, spec: dict) -> ColumnSpec | None:
    sdtype = spec.get("sdtype")
    if sdtype is None:
        raise DataError("metadata gives no 'sdtype'", column=name)
    nullable = spec.get("range_is_nullable")
    if sdtype in DROPPED_SDTYPES:
        return None
    if sdtype in ("categorical", "ordinal"):
        values = spec.get("range_values")
        return ColumnSpec(
            name,
            CATEGORICAL,
            sdtype,
            categories=None if values is None else tuple(values),
            nullable=nullable,
        )
    if sdtype == "boolean":
        return ColumnSpec(name, CATEGORICAL, sdtype, categories=(False, True), nullable=nullable)
    if sdtype == "numerical":
        bounds = _bounds(name, spec, float)
        return ColumnSpec(
            name,
            NUMERIC,
            sdtype,
            bounds=bounds,
            decimals=spec.get("decimal_places"),
            nullable=nullable,
        )
    if sdtype == "datetime":
        fmt = spec.get("datetime_format")
        return ColumnSpec(
            name,
            DATETIME,
            sdtype,
            bounds=_bounds(name, spec, lambda v: _to_seconds(v, fmt)),
            datetime_format=fmt,
            nullable=nullable,
        )
    # Personal identifiers (email, phone_number, ...) and unknown types are never learned.
    logger.warning("column %r has sdtype %r: not synthesized (dropped)", name, sdtype)
    return None


def _bounds(name: str, spec: dict, convert) -> tuple[float, float] | None:
    if "range_min" not in spec and "range_max" not in spec:
        return None
    if "range_min" not in spec or "range_max" not in spec:
        raise DataError("declares only one of range_min / range_max", column=name)
    low, high = convert(spec["range_min"]), convert(spec["range_max"])
    if not low < high:
        raise DataError(f"declared range_min {low} is not below range_max {high}", column=name)
    return (low, high)


def _to_seconds(value, fmt: str | None) -> float:
    stamp = pd.to_datetime(value, format=fmt) if fmt else pd.Timestamp(value)
    return float(stamp.value) / 1e9


def strip_data_derived(metadata: dict) -> dict:
    """Copy of SDV metadata without the ranges and values SDV detected from the rows."""
    meta = {**metadata, "tables": {}}
    for table, spec in metadata.get("tables", {}).items():
        columns = {
            name: {
                k: v for k, v in col.items() if k not in (*DECLARATION_KEYS, "range_is_nullable")
            }
            for name, col in spec.get("columns", {}).items()
        }
        meta["tables"][table] = {**spec, "columns": columns}
    return meta


# -- validation -----------------------------------------------------------------------------


def datetime_seconds(
    values: pd.Series, column: ColumnSpec, source: str | None = None
) -> np.ndarray:
    """Datetime column to float epoch seconds, NaN for missing; unparsable values are an error."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        # utc=True: one column may hold several UTC offsets (summer time), as instants.
        parsed = pd.to_datetime(values, format=column.datetime_format, errors="coerce", utc=True)
        bad = parsed.isna() & values.notna()
        if bad.any():
            raise DataError(
                _unparsed_datetimes(values, bad, column.datetime_format),
                source=source,
                column=column.name,
            )
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    seconds = parsed.astype("datetime64[ns]").to_numpy().astype("int64").astype(float) / 1e9
    seconds[parsed.isna().to_numpy()] = np.nan
    return seconds


def _unparsed_datetimes(values: pd.Series, bad: pd.Series, declared: str | None) -> str:
    """What is wrong with values that ``pd.to_datetime`` could not read. Without a declared
    format pandas takes the format of the column's first value for every value: name it."""
    example = values[bad].iloc[0]
    if declared is not None:
        return (
            f"{int(bad.sum())} value(s) are not datetimes in format {declared!r} "
            f"(e.g. {example!r}); write them in that format, or declare the format they are in"
        )
    present = np.flatnonzero(values.notna().to_numpy())
    first = values.iloc[present[0]]
    inferred = guess_datetime_format(first) if isinstance(first, str) else None
    if inferred is None or bool(bad.iloc[present[0]]):
        return (
            f"{int(bad.sum())} value(s) are not datetimes (e.g. {example!r}); fix them, or "
            "declare the column's datetime_format in the metadata"
        )
    return (
        f"mixed datetime formats: {int(bad.sum())} value(s) (e.g. {example!r}) are not in the "
        f"format {inferred!r} of the column's first value {first!r}; write every value in one "
        "format, or declare datetime_format in the metadata"
    )


def numeric_values(values: pd.Series, column: ColumnSpec, source: str | None = None) -> np.ndarray:
    """Numeric column to float, NaN for missing; text, infinities and overflow are errors."""
    if pd.api.types.is_bool_dtype(values) or not (
        pd.api.types.is_numeric_dtype(values) or values.dtype == object
    ):
        raise DataError(
            f"expected numbers, found dtype {values.dtype}", source=source, column=column.name
        )
    converted = pd.to_numeric(values, errors="coerce")
    bad = converted.isna() & values.notna()
    if bad.any():
        example = values[bad].iloc[0]
        raise DataError(
            f"{int(bad.sum())} value(s) are not numbers (e.g. {example!r})",
            source=source,
            column=column.name,
        )
    array = converted.to_numpy(dtype=float, na_value=np.nan)
    if np.isinf(array).any():
        raise DataError(
            f"{int(np.isinf(array).sum())} value(s) are infinite", source=source, column=column.name
        )
    if (np.abs(array[~np.isnan(array)]) > 1e15).any():
        raise DataError(
            "value(s) beyond 1e15 in magnitude: not a plausible measurement",
            source=source,
            column=column.name,
        )
    return array


def validate_table(
    data: pd.DataFrame, schema: TableSchema, *, source: str | None = None
) -> pd.DataFrame:
    """Check a table against the schema; return it restricted to the schema's columns.

    Raises :class:`DataError` naming the file, the column and the problem."""
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame, got {type(data).__name__}", source=source)
    if len(data) == 0:
        raise DataError("the table has no rows", source=source)
    missing = [name for name in schema.names if name not in data.columns]
    if missing:
        raise DataError(
            f"missing column(s) {missing}; the metadata expects {schema.names}: add them to "
            "the table, or remove them from the metadata",
            source=source,
            column=missing[0],
        )
    unknown = [c for c in data.columns if c not in schema.names and c not in schema.dropped]
    if unknown:
        # Possibly data the merchant did not mean to hand over: never used silently.
        raise DataError(
            f"column(s) {unknown} are not in the metadata: remove them from the table, or "
            "declare them in the metadata (sdtype 'id' to ignore them)",
            source=source,
            column=str(unknown[0]),
        )
    # Booleans spelled yes/no, Y/N, on/off, 1/0, ... are read as True/False.
    data = parse_declared_booleans(data, schema)
    for column in schema.columns:
        values = data[column.name]
        if values.isna().all():
            raise DataError("every value is missing", source=source, column=column.name)
        if column.nullable is False and values.isna().any():
            raise DataError(
                f"{int(values.isna().sum())} missing value(s) in a column declared not nullable "
                "(range_is_nullable: false); fill them, or declare range_is_nullable: true",
                source=source,
                column=column.name,
            )
        if column.kind == NUMERIC:
            array = numeric_values(values, column, source)
            _check_declared(array, column, source)
        elif column.kind == DATETIME:
            _check_declared(datetime_seconds(values, column, source), column, source)
        elif column.categories is not None:
            values = _as_declared_text(values, column.categories)
            if values is not data[column.name]:
                data = data.assign(**{column.name: values})
            allowed = set(column.categories)
            unseen = [v for v in values.dropna().unique() if _plain(v) not in allowed]
            if unseen:
                raise DataError(
                    f"{len(unseen)} value(s) outside the declared categories, e.g. "
                    f"{_plain(unseen[0])!r}; fix them, or add them to range_values in the "
                    "metadata",
                    source=source,
                    column=column.name,
                )
    return data[schema.names]


def _as_declared_text(values: pd.Series, categories: tuple) -> pd.Series:
    """A column of numbers whose declared categories are all text (codes "1", "2", ... that
    the file reader took for numbers), as that text; any other column as it is."""
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if not numeric or not categories or not all(isinstance(c, str) for c in categories):
        return values
    return values.map(lambda v: str(_plain(v)), na_action="ignore").astype(object)


def _check_declared(array: np.ndarray, column: ColumnSpec, source: str | None) -> None:
    if column.bounds is None:
        return
    low, high = column.bounds
    present = array[~np.isnan(array)]
    outside = (present < low) | (present > high)
    if outside.any():
        raise DataError(
            f"{int(outside.sum())} value(s) outside the declared range [{low:g}, {high:g}]",
            source=source,
            column=column.name,
        )


def _plain(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer() and not math.isinf(value):
        return int(value)
    return value
