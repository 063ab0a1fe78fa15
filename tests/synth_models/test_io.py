"""Bad files must give a DataError naming the file and the problem, never a raw pandas error."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pandas as pd
import pytest

import synth_models.io as table_io
from synth_models.io import load_metadata, metadata_from_dict, read_table, table_format
from synth_models.schema import DataError

GOOD = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"], "c": [0.5, 1.5, 2.5]})


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _raises(path: Path, *fragments: str, reader=read_table) -> DataError:
    with pytest.raises(DataError) as info:
        reader(path)
    message = str(info.value)
    assert str(path) in message
    assert info.value.source == str(path)
    for fragment in fragments:
        assert fragment in message, message
    return info.value


# -- good files --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz", "T.CSV", "t.parquet", "t.pq"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if table_format(path) == "parquet":
        GOOD.to_parquet(path, index=False)
    else:
        GOOD.to_csv(path, index=False, compression="gzip" if name.endswith(".gz") else None)
    table = read_table(path)
    pd.testing.assert_frame_equal(table, GOOD)
    assert table["b"].dtype == object and table["a"].dtype == "int64"


def test_reads_utf8_with_bom_and_accents(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "\ufeffcity,n\nZürich,1\nSão Paulo,2\n".encode())
    table = read_table(path)
    assert list(table.columns) == ["city", "n"]
    assert table["city"].tolist() == ["Zürich", "São Paulo"]


def test_accepts_os_pathlike_and_str(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    GOOD.to_csv(path, index=False)
    pd.testing.assert_frame_equal(read_table(str(path)), read_table(path))


# -- where the file is -------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    _raises(tmp_path / "absent.csv", "file not found")


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "table.parquet"
    folder.mkdir()
    _raises(folder, "is a directory")


def test_unknown_extension(tmp_path: Path) -> None:
    path = _write(tmp_path / "table.xlsx", b"a,b\n1,2\n")
    _raises(path, "unknown file type", ".xlsx")
    _raises(_write(tmp_path / "noext", b"a,b\n1,2\n"), "unknown file type")


def test_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.csv"
    GOOD.to_csv(path, index=False)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # running as root: permissions do not apply

            def denied(*args, **kwargs):
                raise PermissionError(13, "Permission denied")

            monkeypatch.setattr(table_io, "open", denied, raising=False)
        error = _raises(path, "permission denied")
        assert isinstance(error.__cause__, PermissionError)
    finally:
        path.chmod(0o600)


# -- empty tables ------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    _raises(_write(tmp_path / "empty.csv", b""), "the table has no rows")
    _raises(_write(tmp_path / "empty.parquet", b""), "the table has no rows")


def test_blank_lines_only(tmp_path: Path) -> None:
    _raises(_write(tmp_path / "blank.csv", b"\n\n\n"), "the table has no rows")


def test_header_only_csv(tmp_path: Path) -> None:
    _raises(_write(tmp_path / "header.csv", b"a,b,c\n"), "the table has no rows")
    _raises(_write(tmp_path / "header.csv.gz", gzip.compress(b"a,b,c\n")), "the table has no rows")


def test_parquet_without_rows(tmp_path: Path) -> None:
    path = tmp_path / "none.parquet"
    GOOD.iloc[:0].to_parquet(path, index=False)
    _raises(path, "the table has no rows")


# -- encoding ----------------------------------------------------------------------------------


def test_utf16_bom_bytes(tmp_path: Path) -> None:
    error = _raises(_write(tmp_path / "bom.csv", b"\xff\xfea,b\n1,2\n"), "UTF-16", "UTF-8")
    assert isinstance(error.__cause__, UnicodeDecodeError)


def test_non_utf8_byte_gives_offset_and_line(tmp_path: Path) -> None:
    content = b"a,b\n1,2\n3,caf\xe9\n"  # latin-1 e-acute
    path = _write(tmp_path / "latin1.csv", content)
    offset = content.index(b"\xe9")
    _raises(path, "not UTF-8", "0xe9", f"offset {offset}", "line 3")


def test_non_utf8_in_gzip(tmp_path: Path) -> None:
    path = _write(tmp_path / "latin1.csv.gz", gzip.compress(b"a,b\n1,\xff\xfe\n"))
    _raises(path, "not UTF-8", "0xff", "line 2")


def test_non_utf8_far_into_the_file(tmp_path: Path) -> None:
    rows = b"".join(b"%d,word\n" % i for i in range(50_000))
    content = b"a,b\n" + rows + b"1,\xff\n"
    path = _write(tmp_path / "late.csv", content)
    _raises(path, f"offset {len(content) - 2}", "line 50002")


# -- corrupt files -----------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.5, 0.9, 12])
def test_truncated_parquet(tmp_path: Path, keep: float) -> None:
    whole = tmp_path / "whole.parquet"
    pd.DataFrame({"a": range(2_000), "b": ["text"] * 2_000}).to_parquet(whole, index=False)
    data = whole.read_bytes()
    cut = int(len(data) * keep) if keep < 1 else keep
    path = _write(tmp_path / "cut.parquet", data[:cut])
    error = _raises(path, "Parquet", "truncated or corrupt")
    assert error.__cause__ is not None


def test_csv_renamed_as_parquet(tmp_path: Path) -> None:
    _raises(_write(tmp_path / "t.pq", b"a,b\n1,2\n"), "not a valid Parquet file")


def test_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(b"a,b\n" + b"1,2\n" * 20_000)
    _raises(_write(tmp_path / "cut.csv.gz", data[: len(data) // 2]), "gzip")
    _raises(_write(tmp_path / "plain.csv.gz", b"a,b\n1,2\n"), "gzip")


def test_row_longer_than_header(tmp_path: Path) -> None:
    # pandas would silently use the first field as the index, or drop the extra field.
    _raises(_write(tmp_path / "long.csv", b"a,b\n1,2,3\n4,5\n"), "malformed CSV")
    _raises(_write(tmp_path / "later.csv", b"a,b\n1,2\n4,5,6\n"), "malformed CSV", "line 3")


def test_duplicate_and_unnamed_columns(tmp_path: Path) -> None:
    _raises(_write(tmp_path / "dup.csv", b"a,a\n1,2\n"), "duplicate column", "'a'")
    _raises(_write(tmp_path / "unnamed.csv", b"a,,c\n1,2,3\n"), "unnamed column")


def test_unterminated_quote(tmp_path: Path) -> None:
    _raises(_write(tmp_path / "quote.csv", b'a,b\n"open,2\n'), "malformed CSV")


# -- metadata ----------------------------------------------------------------------------------

VALID_METADATA = {
    "METADATA_SPEC_VERSION": "V2",
    "tables": {
        "t": {
            "columns": {
                "a": {"sdtype": "numerical", "decimal_places": 0},
                "b": {"sdtype": "categorical", "range_values": ["x", "y", "z"]},
            }
        }
    },
    "relationships": [],
}


def test_metadata_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(VALID_METADATA))
    assert load_metadata(path) == VALID_METADATA


def test_single_table_metadata_is_normalised(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(VALID_METADATA["tables"]["t"]))
    metadata = load_metadata(path)
    assert list(metadata["tables"]) == ["table"]


def test_metadata_missing(tmp_path: Path) -> None:
    _raises(tmp_path / "absent.json", "not found", reader=load_metadata)


def test_metadata_directory(tmp_path: Path) -> None:
    _raises(tmp_path, "directory", reader=load_metadata)


def test_metadata_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    path.write_text('{"tables": {"t": ')
    error = _raises(path, "invalid JSON", "line 1", reader=load_metadata)
    assert isinstance(error.__cause__, json.JSONDecodeError)


def test_metadata_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    path.write_text("[1, 2]")
    _raises(path, "JSON object", reader=load_metadata)


@pytest.mark.parametrize(
    ("column", "fragment"),
    [
        ({"sdtype": "numerical", "computer_representation": "Int64"}, "computer_representation"),
        ({"sdtype": "numerical", "range_min": 5, "range_max": 1}, "range_max"),
        ({"sdtype": "categorical", "decimal_places": 2}, "decimal_places"),
        ({}, "sdtype"),
    ],
)
def test_metadata_invalid_for_sdv(tmp_path: Path, column: dict, fragment: str) -> None:
    path = tmp_path / "meta.json"
    bad = {**VALID_METADATA, "tables": {"t": {"columns": {"a": column}}}}
    path.write_text(json.dumps(bad))
    _raises(path, "invalid SDV metadata", fragment, reader=load_metadata)


def test_metadata_from_dict_does_not_modify_its_input() -> None:
    raw = json.loads(json.dumps(VALID_METADATA))
    metadata_from_dict(raw)
    assert raw == VALID_METADATA


def test_duplicate_parquet_columns(tmp_path: Path) -> None:
    """pyarrow's own error ("Multiple matches for FieldRef") reads as a corrupt file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "dup.parquet"
    arrays = [pa.array([1, 2]), pa.array(["x", "y"]), pa.array([3, 4])]
    pq.write_table(pa.Table.from_arrays(arrays, names=["a", "b", "a"]), path)
    error = _raises(path, "duplicate column name(s)", "['a']", "rename")
    assert error.column == "a" and "corrupt" not in str(error)


def test_codes_with_leading_zeros_are_read_as_text(tmp_path: Path) -> None:
    """Postcodes such as "00425" keep their zeros; plain numbers stay numbers."""
    path = _write(tmp_path / "codes.csv", b"zip,n,x\n00425,7,0.5\n12345,8,\n01000,9,1.5\n")
    table = read_table(path)
    assert table["zip"].tolist() == ["00425", "12345", "01000"]
    assert table["n"].tolist() == [7, 8, 9] and pd.api.types.is_float_dtype(table["x"])
    parquet = tmp_path / "codes.parquet"
    table.to_parquet(parquet, index=False)
    assert read_table(parquet)["zip"].tolist() == ["00425", "12345", "01000"]
