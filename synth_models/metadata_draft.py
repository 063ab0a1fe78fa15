"""A first draft of SDV metadata from a merchant's own table, with what comes from its rows kept
apart.

The draft's metadata holds only the table's structure: each column's sdtype (numerical,
categorical, boolean, datetime, id, or a personal-information type, which is never synthesized)
and how datetimes are written (``datetime_format``). Everything read off the rows (observed
ranges, category lists, decimal places, whether values are missing) is a *proposal*: in fedsynth
such a value written into the metadata is a public declaration, used as is and not protected by
DP (:mod:`synth_models.schema`). So the proposals stay out of the metadata, in
:meth:`MetadataDraft.private_declarations`, until the table's owner confirms a column as public
(:meth:`MetadataDraft.metadata` with ``public=``). Left unconfirmed, fedsynth learns them with DP.

Sdtypes start from SDV's own detection (``Metadata.detect_from_dataframes``, which knows
personal-information column names), then follow the rules of :func:`draft_metadata`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from synth_models.booleans import is_boolean_spelling

logger = logging.getLogger(__name__)

PROPOSAL_KEYS = ("range_values", "range_min", "range_max", "decimal_places", "range_is_nullable")
BASIC_SDTYPES = frozenset({"numerical", "categorical", "ordinal", "boolean", "datetime", "id"})
ID_WORDS = frozenset({"id", "uuid", "guid"})
LABEL_LIMIT = 50  # a column named like an id with at most this many values is a label
UNIQUE_TEXT_MIN_ROWS = 20  # text unique per row in at least this many rows is an identifier
MAX_PROPOSED_CATEGORIES = 200  # a longer list is not a plausible public declaration
MAX_DECIMALS = 6
DATETIME_SAMPLE = 200  # distinct values whose format is guessed
TIME_OF_DAY_FORMATS = ("%H:%M:%S", "%H:%M")  # pandas guesses dates, not bare times

PRIVATE_DECLARATIONS_NOTICE = (
    "Values read off your rows (ranges, category lists, decimal places, whether values are "
    "missing) are proposals, not metadata: they are private to your table. Left as they are "
    "(the default), fedsynth learns them with differential privacy, inside each merchant's "
    "budget. Confirming a column (--public COLUMN) moves its values into the metadata as a "
    "public declaration: it is used as is, every merchant and the server see it, and it is not "
    "protected by DP. Confirm only what is public anyway (a menu's sizes or prices, a calendar, "
    "your store names), never what only your rows show. The proposals file holds values from "
    "your rows: keep it with your table, do not share it."
)


@dataclass(frozen=True)
class ColumnDraft:
    """One column: its public role, and the values read off the rows (``proposals``)."""

    name: str
    sdtype: str
    reason: str  # why this sdtype, for the owner to check
    datetime_format: str | None = None
    pii: bool = False
    proposals: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def sdv_spec(self, *, public: bool = False) -> dict[str, Any]:
        """SDV column metadata; with ``public`` the proposals are declared in it."""
        spec: dict[str, Any] = {"sdtype": self.sdtype}
        if self.datetime_format is not None:
            spec["datetime_format"] = self.datetime_format
        if self.pii:
            spec["pii"] = True
        if public:
            spec.update(self.proposals)
        return spec


@dataclass(frozen=True)
class MetadataDraft:
    table_name: str
    columns: tuple[ColumnDraft, ...]
    primary_key: str | None = None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnDraft:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    def metadata(self, *, public: Collection[str] = ()) -> dict[str, Any]:
        """SDV 2.x metadata (``to_dict()`` form): structure only, plus the proposals of the
        columns in ``public``, which the owner confirmed as public declarations."""
        self._check_names(public)
        table: dict[str, Any] = {
            "columns": {c.name: c.sdv_spec(public=c.name in public) for c in self.columns}
        }
        if self.primary_key is not None:
            table["primary_key"] = self.primary_key
        return {
            "METADATA_SPEC_VERSION": "V2",
            "tables": {self.table_name: table},
            "relationships": [],
        }

    def private_declarations(
        self, *, public: Collection[str] = (), source: str | None = None
    ) -> dict[str, Any]:
        """The proposals not confirmed as public, with notes: values from the rows, to stay with
        the table. fedsynth never reads this; it is for the owner to confirm or drop."""
        self._check_names(public)
        columns = {
            c.name: {
                "sdtype": c.sdtype,
                "proposed": c.proposals,
                **({"notes": list(c.notes)} if c.notes else {}),
            }
            for c in self.columns
            if c.name not in public and (c.proposals or c.notes)
        }
        return {
            "about": PRIVATE_DECLARATIONS_NOTICE,
            "table_name": self.table_name,
            **({"source": source} if source else {}),
            "declared_public": sorted(public),
            "columns": columns,
        }

    def summary(self, *, public: Collection[str] = ()) -> list[str]:
        """One line per column (role, why, what is proposed or declared) and one per note."""
        self._check_names(public)
        width = max(len(c.name) for c in self.columns)
        lines = []
        for c in self.columns:
            role = c.sdtype + (f" {c.datetime_format!r}" if c.datetime_format else "")
            line = f"  {c.name:<{width}}  {role:<26} {c.reason}"
            if c.proposals:
                state = "declared PUBLIC" if c.name in public else "proposed, private"
                line += f"; {state}: {_describe(c.proposals)}"
            lines.append(line)
            lines.extend(f"  {'':<{width}}  ! {note}" for note in c.notes)
        return lines

    def _check_names(self, public: Collection[str]) -> None:
        unknown = sorted(set(public) - set(self.names))
        if unknown:
            raise ValueError(f"no column(s) {unknown} in table {self.table_name!r}")


def private_declarations_path(metadata_path: str | os.PathLike) -> Path:
    """``orders.metadata.json`` -> ``orders.metadata.private-declarations.json``, beside it."""
    path = Path(metadata_path)
    stem = path.name[: -len(".json")] if path.name.lower().endswith(".json") else path.name
    return path.with_name(f"{stem}.private-declarations.json")


def _describe(proposals: dict[str, Any]) -> str:
    parts = []
    if "range_min" in proposals:
        parts.append(f"range {proposals['range_min']} .. {proposals['range_max']}")
    if "decimal_places" in proposals:
        parts.append(f"{proposals['decimal_places']} decimal places")
    if "range_values" in proposals:
        parts.append(f"{len(proposals['range_values'])} categories")
    if "range_is_nullable" in proposals:
        parts.append("has missing values" if proposals["range_is_nullable"] else "none missing")
    return ", ".join(parts)


def draft_metadata(table: pd.DataFrame, *, table_name: str) -> MetadataDraft:
    """Draft SDV metadata for ``table``; nothing read off its rows enters the metadata.

    Rules, per column, in this order: every value missing: ``id`` (nothing to learn); a
    personal-information sdtype SDV detects (email, name, ...): kept, never synthesized;
    booleans (``bool``, or only yes/no, y/n, true/false, t/f, on/off, and 1/0 with both
    present): ``boolean``; datetimes (stored as such, or text in one format, UTC offsets
    included): ``datetime`` with its ``datetime_format``; named like an id (``id``, ``*_id``,
    ``StoreID``, uuid): ``id``, unless it has at most :data:`LABEL_LIMIT` values (a label:
    ``categorical``); text unique per row: ``id``; other numbers: ``numerical``; other text:
    ``categorical``."""
    if not isinstance(table, pd.DataFrame) or table.shape[1] == 0:
        raise ValueError("expected a pandas DataFrame with at least one column")
    detected = _sdv_sdtypes(table, table_name)
    columns = tuple(
        _draft_column(str(name), table[name], detected.get(str(name), {})) for name in table.columns
    )
    primary_key = next(
        (
            c.name
            for c in columns
            if c.sdtype == "id"
            and table[c.name].notna().all()
            and table[c.name].nunique() == len(table)
        ),
        None,
    )
    return MetadataDraft(table_name=table_name, columns=columns, primary_key=primary_key)


def _sdv_sdtypes(table: pd.DataFrame, table_name: str) -> dict[str, dict]:
    """SDV's detected column specs (only ``sdtype`` and ``pii`` are used from them)."""
    from sdv.metadata import Metadata

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detected = Metadata.detect_from_dataframes({table_name: table}).to_dict()
    except Exception as error:  # detection is a hint: the rules below stand on their own
        logger.warning("SDV's metadata detection failed (%s); using fedsynth's rules only", error)
        return {}
    return detected["tables"][table_name]["columns"]


def _draft_column(name: str, values: pd.Series, detected: dict) -> ColumnDraft:
    present = values.dropna()
    nullable = {"range_is_nullable": bool(len(present) < len(values))}
    if len(present) == 0:
        return ColumnDraft(name, "id", "every value is missing: nothing to learn, not synthesized")
    sdv_sdtype = detected.get("sdtype")
    if sdv_sdtype is not None and sdv_sdtype not in BASIC_SDTYPES:
        return ColumnDraft(
            name,
            sdv_sdtype,
            f"SDV detects personal information ({sdv_sdtype}): never synthesized",
            pii=True,
        )
    if _is_boolean(values, present):
        return ColumnDraft(
            name,
            "boolean",
            _boolean_reason(values, present),
            proposals=nullable,
        )
    if pd.api.types.is_datetime64_any_dtype(values):
        # A format still: the merchants' copies may be CSV files (a simulation's are).
        fmt = _stored_datetime_format(present)
        reason = f"stored as datetimes, as text {fmt!r}"
        return _datetime_column(name, present.dt.strftime(fmt), fmt, reason, nullable, ())
    distinct = present.nunique()
    if _is_text(values):
        guessed = _datetime_format(present)
        if guessed is not None:
            fmt, notes = guessed
            reason = f"text in datetime format {fmt!r}"
            return _datetime_column(name, present, fmt, reason, nullable, notes)
    if _named_like_id(name):
        if distinct > LABEL_LIMIT:
            return ColumnDraft(
                name, "id", f"named like an identifier ({distinct} values): not synthesized"
            )
        return _categorical_column(
            name,
            present,
            f"named like an identifier but only {distinct} values: a label",
            nullable,
        )
    unique = distinct == len(values)
    if pd.api.types.is_numeric_dtype(values):
        notes = (
            ("every value is different: if it identifies rows, set sdtype 'id' (not learned)",)
            if unique and len(values) >= UNIQUE_TEXT_MIN_ROWS
            else ()
        )
        return _numerical_column(name, present, nullable, notes)
    if unique and len(values) >= UNIQUE_TEXT_MIN_ROWS:
        return ColumnDraft(
            name, "id", "text different in every row: an identifier, not synthesized"
        )
    notes = ()
    if distinct > LABEL_LIMIT and distinct > len(present) / 2:
        notes = (
            f"{distinct} distinct values in {len(present)} rows: DP keeps only categories that "
            "many rows share; if this is free text or identifies people, set sdtype 'id'",
        )
    return _categorical_column(name, present, "text", nullable, notes)


def _is_text(values: pd.Series) -> bool:
    return values.dtype == object or pd.api.types.is_string_dtype(values)


def _is_boolean(values: pd.Series, present: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(values):
        return True
    if pd.api.types.is_numeric_dtype(values):
        # A 0/1 column is a flag only if it holds both (a constant 1 may be a count).
        return set(present.unique().tolist()) == {0, 1}
    if not _is_text(values):
        return False
    distinct = pd.Series(present.unique())
    return bool(distinct.map(is_boolean_spelling).all())


def _boolean_reason(values: pd.Series, present: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(values):
        return "stored as booleans"
    spellings = sorted({str(v).strip() for v in present.unique()[:6]})
    return (
        f"booleans spelled {'/'.join(spellings)}: read as True/False (synthetic rows hold "
        "True/False)"
    )


def _datetime_format(present: pd.Series) -> tuple[str, tuple[str, ...]] | None:
    """The format that parses the most values, and notes (mixed or ambiguous formats); None if
    the column does not look like datetimes."""
    text = present.astype(str)
    guesses: Counter[str] = Counter()  # insertion order: month-first guesses before day-first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for value in text.unique()[:DATETIME_SAMPLE]:
            for dayfirst in (False, True):
                fmt = guess_datetime_format(value, dayfirst=dayfirst)
                if fmt is not None and (not dayfirst or fmt not in guesses):
                    guesses[fmt] += 1
    candidates = list(guesses) or list(TIME_OF_DAY_FORMATS)
    parsed = {fmt: _parses(text, fmt) for fmt in candidates}
    counts = {fmt: int(ok.sum()) for fmt, ok in parsed.items()}
    # Most rows parsed, then the format guessed most often, then the first (month first).
    best = max(candidates, key=lambda fmt: (counts[fmt], guesses[fmt]))
    if counts[best] < len(text) / 2:
        return None
    notes = []
    failing = ~parsed[best]
    if failing.any():
        notes.append(
            f"mixed formats: {int(failing.sum())} of {len(text)} values do not match {best!r} "
            f"(e.g. {text[failing].iloc[0]!r}): write them in one format, or fedsynth refuses "
            "the table"
        )
    rivals = [f for f in candidates if f != best and counts[f] == counts[best]]
    if rivals:
        notes.append(
            f"ambiguous: {rivals[0]!r} reads these values too (day and month order?): check "
            "datetime_format"
        )
    return best, tuple(notes)


def _parses(text: pd.Series, fmt: str) -> pd.Series:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # utc=True: values with different UTC offsets (summer time) are one column of instants.
        stamps = pd.to_datetime(text, format=fmt, errors="coerce", utc=True)
    return stamps.notna()


def _stored_datetime_format(stamps: pd.Series) -> str:
    """How pandas writes these datetimes to CSV: dates alone when every time is midnight."""
    tz = getattr(stamps.dt, "tz", None) is not None
    if not tz and (stamps == stamps.dt.normalize()).all():
        return "%Y-%m-%d"
    fraction = ".%f" if (stamps.dt.microsecond != 0).any() else ""
    return f"%Y-%m-%d %H:%M:%S{fraction}{'%z' if tz else ''}"


def _datetime_column(
    name: str,
    present: pd.Series,
    fmt: str,
    reason: str,
    nullable: dict,
    notes: tuple[str, ...],
) -> ColumnDraft:
    written = present.astype(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stamps = pd.to_datetime(written, format=fmt, errors="coerce", utc=True).dropna()
    proposals = dict(nullable)
    if stamps.nunique() > 1:
        # As the rows write them (with their own UTC offsets), earliest and latest instant.
        proposals.update(range_min=written[stamps.idxmin()], range_max=written[stamps.idxmax()])
    return ColumnDraft(
        name, "datetime", reason, datetime_format=fmt, proposals=proposals, notes=notes
    )


def _named_like_id(name: str) -> bool:
    # "order_id", "OrderID", "orderId", "id", "uuid" (but not "paid" or "valid").
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)
    return any(word.lower() in ID_WORDS for word in words)


def _categorical_column(
    name: str, present: pd.Series, reason: str, nullable: dict, notes: tuple[str, ...] = ()
) -> ColumnDraft:
    categories = [_plain(v) for v in present.unique()]
    proposals = dict(nullable)
    if len(categories) <= MAX_PROPOSED_CATEGORIES:
        proposals["range_values"] = _sorted(categories)
    else:
        notes = (*notes, f"{len(categories)} categories: too many to propose as a public list")
    return ColumnDraft(name, "categorical", reason, proposals=proposals, notes=notes)


def _numerical_column(
    name: str, present: pd.Series, nullable: dict, notes: tuple[str, ...]
) -> ColumnDraft:
    numbers = pd.to_numeric(present).astype(float).to_numpy()
    proposals = dict(nullable)
    low, high = float(numbers.min()), float(numbers.max())
    decimals = _decimal_places(numbers)
    if low < high:
        as_number = int if decimals == 0 else float
        proposals.update(range_min=as_number(low), range_max=as_number(high))
    if decimals is not None:
        proposals["decimal_places"] = decimals
    reason = "integers" if decimals == 0 else "numbers"
    return ColumnDraft(name, "numerical", reason, proposals=proposals, notes=notes)


def _decimal_places(numbers: np.ndarray) -> int | None:
    """The fewest decimals that write every value exactly, up to :data:`MAX_DECIMALS`."""
    for places in range(MAX_DECIMALS + 1):
        scaled = numbers * 10.0**places
        if np.all(np.abs(scaled - np.round(scaled)) <= 1e-6 * np.maximum(1.0, np.abs(scaled))):
            return places
    return None


def _plain(value: Any) -> Any:
    """numpy scalars to Python ones (JSON), whole floats to ints (as pandas reads 1 vs 1.0)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer() and not math.isinf(value):
        return int(value)
    return value


def _sorted(values: list) -> list:
    try:
        return sorted(values)
    except TypeError:  # mixed types (numbers and text): a stable, readable order
        return sorted(values, key=lambda v: (type(v).__name__, str(v)))
