"""Reading a user's table (CSV or Parquet) and SDV metadata, with errors that say what is wrong.

Every problem with the file itself (missing, a directory, unreadable, empty, not UTF-8, truncated,
corrupt, of an unknown kind) is raised as :class:`~synth_models.schema.DataError` naming the file;
the underlying pandas / pyarrow / OS exception is chained, never raised bare.
"""

from __future__ import annotations

import copy
import gzip
import json
import logging
import os
import warnings
import zlib
from pathlib import Path
from typing import Any

import pandas as pd

from synth_models.schema import DataError

logger = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def table_format(path: str | os.PathLike) -> str:
    """``"csv"``, ``"csv.gz"`` or ``"parquet"`` from the file name; DataError if unknown."""
    name = Path(path).name.lower()
    if name.endswith(".csv.gz"):
        return "csv.gz"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise DataError(
        f"unknown file type {''.join(Path(path).suffixes) or '(no extension)'!r}: expected one "
        f"of {', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}",
        source=str(path),
    )


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV (``.csv``, ``.csv.gz``, UTF-8) or Parquet (``.parquet``, ``.pq``) table.

    Raises :class:`DataError` with ``source=str(path)`` when the file is missing, a directory,
    unreadable, empty (no rows), not UTF-8, malformed, truncated or corrupt, or of an unknown
    type."""
    source = str(path)
    path = Path(path)
    _check_file(path, source)
    kind = table_format(path)
    if kind == "parquet":
        table = _read_parquet(path, source)
    else:
        table = _read_csv(path, source, compressed=kind == "csv.gz")
    if table.shape[1] == 0:
        raise DataError("the table has no columns", source=source)
    if len(table) == 0:
        raise DataError(
            f"the table has no rows (only the columns {list(table.columns)})", source=source
        )
    logger.debug("read %s: %d rows x %d columns", source, *table.shape)
    return table


def _check_file(path: Path, source: str) -> None:
    if not path.exists():
        raise DataError("file not found", source=source)
    if path.is_dir():
        hint = (
            " (a partitioned Parquet dataset is not supported: write a single file)"
            if path.name.lower().endswith(PARQUET_SUFFIXES)
            else ""
        )
        raise DataError(f"is a directory, not a file{hint}", source=source)
    if not path.is_file():
        raise DataError("is not a regular file", source=source)
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except PermissionError as error:
        raise DataError("permission denied: the file cannot be read", source=source) from error
    except OSError as error:
        raise DataError(
            f"the file cannot be read ({error.strerror or error})", source=source
        ) from error
    if path.stat().st_size == 0:
        raise DataError("the file is empty (0 bytes): the table has no rows", source=source)


def _read_csv(path: Path, source: str, *, compressed: bool) -> pd.DataFrame:
    compression = "gzip" if compressed else None
    options: dict[str, Any] = {"encoding": "utf-8", "compression": compression}
    try:
        with warnings.catch_warnings():
            # A first row longer than the header is otherwise dropped silently (index_col=False).
            warnings.simplefilter("error", pd.errors.ParserWarning)
            header = pd.read_csv(
                path, nrows=1, header=None, dtype=str, keep_default_na=False, **options
            )
            table = pd.read_csv(path, index_col=False, **options)
    except UnicodeDecodeError as error:
        raise DataError(_not_utf8(path, compressed), source=source) from error
    except pd.errors.EmptyDataError as error:
        raise DataError(
            "the file has no header and no rows: the table has no rows", source=source
        ) from error
    except pd.errors.ParserWarning as error:
        raise DataError(
            f"malformed CSV: a row has more fields than the header ({error})", source=source
        ) from error
    except pd.errors.ParserError as error:
        raise DataError(f"malformed CSV: {str(error).strip()}", source=source) from error
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataError(f"corrupt or truncated gzip file ({error})", source=source) from error
    except OSError as error:
        raise DataError(f"the file cannot be read ({error})", source=source) from error
    _check_header(header.iloc[0].tolist(), source)
    return _keep_leading_zeros(table, path, options)


def _keep_leading_zeros(table: pd.DataFrame, path: Path, options: dict) -> pd.DataFrame:
    """Whole numbers written with leading zeros ("00425") are codes, such as postcodes: read
    as text, which keeps their zeros (a numeric column still parses its text as numbers)."""
    numbers = [c for c in table.columns if pd.api.types.is_integer_dtype(table[c])]
    floats = [c for c in table.columns if pd.api.types.is_float_dtype(table[c])]
    if not numbers and not floats:
        return table
    text = pd.read_csv(path, index_col=False, dtype=str, usecols=numbers + floats, **options)
    coded = [c for c in text.columns if text[c].str.fullmatch(r"0\d+", na=False).any()]
    return table.assign(**{c: text[c].astype(object) for c in coded}) if coded else table


def _check_header(names: list[str], source: str, *, where: str = "the header") -> None:
    """pandas renames duplicate columns ("a", "a.1") and names empty ones "Unnamed: i"."""
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise DataError(
            f"duplicate column name(s) in {where}: {duplicated}; rename them so that each "
            "column has its own name",
            source=source,
            column=str(duplicated[0]),
        )
    empty = [i for i, n in enumerate(names) if n.strip() == ""]
    if empty:
        raise DataError(
            f"{where} has {len(empty)} unnamed column(s) (position(s) {empty}); name them",
            source=source,
        )


def _not_utf8(path: Path, compressed: bool) -> str:
    """Describe where the first byte that is not UTF-8 lies (pandas' position is per buffer)."""
    opener = gzip.open if compressed else open
    offset = 0
    with opener(path, "rb") as handle:
        head = handle.read(2)
        if head in _UTF16_BOMS:
            return "the file is UTF-16 text, not UTF-8: save it as UTF-8"
        handle.seek(0)
        for line_number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                where = "of the decompressed text" if compressed else ""
                return (
                    f"not UTF-8 text: byte 0x{line[error.start]:02x} at byte offset "
                    f"{offset + error.start}{' ' + where if where else ''} (line {line_number}) "
                    "cannot be decoded; save the file as UTF-8"
                )
            offset += len(line)
    return "not UTF-8 text; save the file as UTF-8"


def _read_parquet(path: Path, source: str) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # The footer alone: pyarrow's own error for duplicate names ("Multiple matches for
        # FieldRef") would otherwise read as a corrupt file.
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError, ValueError, EOFError) as error:
        raise DataError(
            f"not a valid Parquet file: truncated or corrupt ({error})", source=source
        ) from error
    _check_header(names, source, where="the Parquet file's columns")
    try:
        return pd.read_parquet(path, engine="pyarrow")
    except (pa.ArrowException, OSError, ValueError, EOFError) as error:
        raise DataError(
            f"not a valid Parquet file: truncated or corrupt ({error})", source=source
        ) from error


# -- metadata --------------------------------------------------------------------------------


def load_metadata(path: str | os.PathLike) -> dict:
    """Read an SDV metadata JSON file; return it validated, in SDV's ``to_dict()`` form."""
    source = str(path)
    path = Path(path)
    if not path.exists():
        raise DataError("metadata file not found", source=source)
    if path.is_dir():
        raise DataError("is a directory, not a metadata file", source=source)
    try:
        text = path.read_text(encoding="utf-8")
    except PermissionError as error:
        raise DataError(
            "permission denied: the metadata file cannot be read", source=source
        ) from error
    except UnicodeDecodeError as error:
        raise DataError(f"the metadata file is not UTF-8 text ({error})", source=source) from error
    except OSError as error:
        raise DataError(f"the metadata file cannot be read ({error})", source=source) from error
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}",
            source=source,
        ) from error
    return metadata_from_dict(raw, source=source)


def metadata_from_dict(raw: Any, *, source: str | None = None) -> dict:
    """Validate an SDV metadata dict with ``Metadata.load_from_dict(d).validate()``.

    Returns SDV's ``to_dict()`` form (multi-table, ``"tables"``); DataError if invalid."""
    from sdv.metadata import Metadata

    if not isinstance(raw, dict):
        raise DataError(
            f"SDV metadata must be a JSON object, not {type(raw).__name__}", source=source
        )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            metadata = Metadata.load_from_dict(copy.deepcopy(raw))
            metadata.validate()
    except Exception as error:  # SDV raises InvalidMetadataError, ValueError, KeyError, ...
        message = " ".join(str(error).split()) or type(error).__name__
        raise DataError(f"invalid SDV metadata: {message}", source=source) from error
    for warning in caught:  # e.g. a single-table dict gets the table name "table"
        logger.info("SDV metadata%s: %s", f" {source}" if source else "", warning.message)
    return metadata.to_dict()
