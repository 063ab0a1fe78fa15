"""Booleans in their common spellings: yes/no, y/n, true/false, t/f, 1/0, on/off.

A CSV file holds booleans as text, in whatever spelling its exporter chose; pandas reads only
``True``/``False`` as booleans. A column declared ``sdtype: boolean`` is read through
:func:`parse_booleans`, so that ``"Yes"``, ``"n"`` or ``1`` count as ``True``/``False``; a value
in none of these spellings is kept as it is, for validation to name it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from synth_models.schema import TableSchema

# Compared after stripping blanks and lower-casing.
TRUE_SPELLINGS = frozenset({"true", "t", "yes", "y", "1", "on"})
FALSE_SPELLINGS = frozenset({"false", "f", "no", "n", "0", "off"})
_UNPARSED = object()


def boolean_value(value: object) -> object:
    """``True``/``False`` for a common spelling, the missing value itself, else ``_UNPARSED``."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return value
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return {1: True, 0: False}.get(value, _UNPARSED)  # 1.0 == 1: floats of 1/0 too
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_SPELLINGS:
            return True
        if word in FALSE_SPELLINGS:
            return False
    return _UNPARSED


def is_boolean_spelling(value: object) -> bool:
    """Whether a present value is one of the common spellings of true or false."""
    return boolean_value(value) in (True, False)


def parse_booleans(values: pd.Series) -> pd.Series:
    """The column with every common spelling as ``True``/``False``; missing values stay missing
    (object dtype) and a value in no spelling is kept, unchanged, for validation."""
    if pd.api.types.is_bool_dtype(values):
        return values
    parsed = values.map(boolean_value, na_action="ignore")
    unparsed = parsed.map(lambda v: v is _UNPARSED)
    if unparsed.any():
        return parsed.where(~unparsed, values).astype(object)
    if parsed.isna().any():
        return parsed.astype(object)  # as pandas reads True/False with empty cells
    return parsed.astype(bool)


def parse_declared_booleans(data: pd.DataFrame, schema: TableSchema) -> pd.DataFrame:
    """The table with its ``sdtype: boolean`` columns parsed; the same object if none changes."""
    changed = {
        column.name: parse_booleans(data[column.name])
        for column in schema.columns
        if column.sdtype == "boolean"
        and column.name in data.columns
        and not pd.api.types.is_bool_dtype(data[column.name])
    }
    return data.assign(**changed) if changed else data
