"""Drafting SDV metadata from a table: roles from the data, values from the rows kept private."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from synth_models.booleans import parse_booleans
from synth_models.io import metadata_from_dict
from synth_models.metadata_draft import (
    PROPOSAL_KEYS,
    draft_metadata,
    private_declarations_path,
)
from synth_models.schema import DataError, TableSchema, datetime_seconds, validate_table


def _orders(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """A merchant's export as pandas reads it back from CSV (text, NaN for empty cells)."""
    rng = np.random.default_rng(seed)
    # Berlin local time across the switch to summer time: offsets +01:00 and +02:00.
    stamps = pd.Timestamp("2024-03-25 08:00", tz="Europe/Berlin") + pd.to_timedelta(
        rng.integers(0, 14 * 24 * 60, n), unit="min"
    )
    written = [s[:-2] + ":" + s[-2:] for s in stamps.strftime("%Y-%m-%d %H:%M:%S%z")]
    frame = pd.DataFrame(
        {
            "order_id": [f"A-{i:05d}" for i in range(n)],
            "CustomerID": rng.integers(1, 80, n),
            "StoreID": rng.choice([3, 5, 9], n),
            "paid": rng.choice(["yes", "no", "Yes", "NO"], n),
            "gift_wrap": rng.choice(["Y", "N", None], n),
            "ordered_at": written,
            "amount": np.where(rng.random(n) < 0.1, np.nan, rng.normal(40, 8, n).round(2)),
            "items": rng.integers(1, 6, n),
            "size": rng.choice(["S", "M", "L"], n),
            "email": [f"buyer{i}@example.com" for i in range(n)],
            "note": [None] * n,
        }
    )
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    buffer.seek(0)
    return pd.read_csv(buffer)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return _orders()


@pytest.fixture(scope="module")
def draft(table):
    return draft_metadata(table, table_name="orders")


def test_roles_of_ids_booleans_datetimes_numbers_and_text(draft) -> None:
    sdtypes = {c.name: c.sdtype for c in draft.columns}
    assert sdtypes == {
        "order_id": "id",
        "CustomerID": "id",  # named like an id, many values
        "StoreID": "categorical",  # named like an id, three values: a label
        "paid": "boolean",
        "gift_wrap": "boolean",
        "ordered_at": "datetime",
        "amount": "numerical",
        "items": "numerical",
        "size": "categorical",
        "email": "email",  # SDV's personal-information detection
        "note": "id",  # every value missing
    }
    assert draft.column("ordered_at").datetime_format == "%Y-%m-%d %H:%M:%S%z"
    assert draft.primary_key == "order_id"


def test_metadata_holds_no_value_from_the_rows(draft) -> None:
    metadata = draft.metadata()
    for name, spec in metadata["tables"]["orders"]["columns"].items():
        assert not set(spec) & set(PROPOSAL_KEYS), name
    schema = TableSchema.from_metadata(metadata_from_dict(metadata))
    assert all(
        c.bounds is None and c.decimals is None and c.nullable is None for c in schema.columns
    )
    assert all(c.categories in (None, (False, True)) for c in schema.columns)
    assert set(schema.dropped) == {"order_id", "CustomerID", "email", "note"}


def test_proposals_are_what_the_rows_show_and_stay_private_unless_confirmed(table, draft):
    private = draft.private_declarations(source="orders.csv")
    amount = private["columns"]["amount"]["proposed"]
    assert amount == {
        "range_is_nullable": True,
        "range_min": float(table["amount"].min()),
        "range_max": float(table["amount"].max()),
        "decimal_places": 2,
    }
    assert private["columns"]["size"]["proposed"]["range_values"] == ["L", "M", "S"]
    assert private["columns"]["StoreID"]["proposed"]["range_values"] == [3, 5, 9]
    assert private["columns"]["gift_wrap"]["proposed"] == {"range_is_nullable": True}
    assert "not protected by DP" in private["about"]

    confirmed = draft.metadata(public=["size", "amount"])
    schema = TableSchema.from_metadata(metadata_from_dict(confirmed))
    assert schema["size"].categories == ("L", "M", "S")
    assert schema["amount"].bounds == (amount["range_min"], amount["range_max"])
    assert schema["amount"].decimals == 2
    assert schema["StoreID"].categories is None and schema["items"].bounds is None
    remaining = draft.private_declarations(public=["size", "amount"])
    assert "size" not in remaining["columns"] and "StoreID" in remaining["columns"]
    assert remaining["declared_public"] == ["amount", "size"]
    with pytest.raises(ValueError, match="no column"):
        draft.metadata(public=["colour"])


def test_the_validated_table_reads_booleans_and_utc_offsets(table, draft) -> None:
    schema = TableSchema.from_metadata(metadata_from_dict(draft.metadata()))
    checked = validate_table(table, schema, source="orders.csv")
    expected = table["paid"].str.lower().eq("yes")
    assert checked["paid"].tolist() == expected.tolist()
    assert checked["gift_wrap"].isna().tolist() == table["gift_wrap"].isna().tolist()
    assert set(checked["gift_wrap"].dropna()) == {True, False}
    # Instants in UTC whatever their offset: 10:00+01:00 and 11:00+02:00 are both 09:00 UTC.
    seconds = datetime_seconds(
        pd.Series(["2024-03-30 10:00:00+01:00", "2024-03-31 11:00:00+02:00"]),
        schema["ordered_at"],
    )
    assert seconds[1] - seconds[0] == 24 * 3600
    assert seconds[0] == pd.Timestamp("2024-03-30 09:00", tz="UTC").timestamp()


@pytest.mark.parametrize(
    "true, false",
    [("yes", "no"), ("Y", "N"), ("true", "false"), ("T", "F"), ("1", "0"), ("ON", "off")],
)
def test_common_boolean_spellings(true: str, false: str) -> None:
    column = pd.Series([true, false, None, f" {true} "] * 10, dtype=object)
    drafted = draft_metadata(pd.DataFrame({"flag": column}), table_name="t")
    assert drafted.column("flag").sdtype == "boolean"
    parsed = parse_booleans(column)
    assert [None if pd.isna(v) else v for v in parsed] == [True, False, None, True] * 10


def test_what_is_not_a_boolean() -> None:
    table = pd.DataFrame(
        {
            "answer": ["yes", "maybe"] * 20,
            "ones": [1] * 40,  # a constant 1 may be a count
            "flag": [0, 1] * 20,
        }
    )
    sdtypes = {c.name: c.sdtype for c in draft_metadata(table, table_name="t").columns}
    assert sdtypes == {"answer": "categorical", "ones": "numerical", "flag": "boolean"}
    schema = TableSchema.from_metadata(
        metadata_from_dict(
            {"tables": {"t": {"columns": {"answer": {"sdtype": "boolean"}}}}, "relationships": []}
        )
    )
    with pytest.raises(DataError, match=r"outside the declared categories, e\.g\. 'maybe'"):
        validate_table(table[["answer"]], schema)


def test_datetime_formats_mixed_ambiguous_and_times_of_day() -> None:
    table = pd.DataFrame(
        {
            "mixed": ["2024-01-05"] * 30 + ["05/01/2024"] * 2,
            "ambiguous": ["03/04/2024", "05/06/2024"] * 16,
            "day_first": ["03/04/2024", "25/06/2024"] * 16,
            "at": ["09:30:00", "17:45:10"] * 16,
            "size": ["S", "M"] * 16,
        }
    )
    drafted = draft_metadata(table, table_name="t")
    mixed = drafted.column("mixed")
    assert mixed.datetime_format == "%Y-%m-%d"
    assert any("mixed formats: 2 of 32 values" in note for note in mixed.notes)
    ambiguous = drafted.column("ambiguous")
    assert ambiguous.datetime_format == "%m/%d/%Y"
    assert any("ambiguous" in note for note in ambiguous.notes)
    assert drafted.column("day_first").datetime_format == "%d/%m/%Y"
    assert drafted.column("at").datetime_format == "%H:%M:%S"
    assert drafted.column("size").sdtype == "categorical"
    assert drafted.column("day_first").proposals["range_min"] == "03/04/2024"


def test_identifiers_without_an_id_name() -> None:
    table = pd.DataFrame(
        {
            "reference": [f"R{i:04d}" for i in range(40)],  # text unique per row
            "amount_cents": np.arange(40) * 7 + 100,  # numbers unique per row: kept, flagged
            "paid": ["yes"] * 40,  # "paid" is not named like an id
        }
    )
    drafted = draft_metadata(table, table_name="t")
    assert drafted.column("reference").sdtype == "id"
    amount = drafted.column("amount_cents")
    assert amount.sdtype == "numerical" and any("sdtype 'id'" in n for n in amount.notes)
    assert drafted.column("paid").sdtype == "boolean"


def test_private_declarations_sit_beside_the_metadata(tmp_path) -> None:
    path = private_declarations_path(tmp_path / "orders.metadata.json")
    assert path == tmp_path / "orders.metadata.private-declarations.json"
    assert private_declarations_path("meta").name == "meta.private-declarations.json"
    # The whole proposal document is plain JSON.
    drafted = draft_metadata(_orders(40), table_name="orders")
    json.dumps(drafted.private_declarations())
    json.dumps(drafted.metadata(public=drafted.names))


def test_stored_datetimes_get_the_format_their_csv_copies_are_written_in(tmp_path) -> None:
    """A Parquet table's datetimes need no format, but a simulation's merchants read CSV."""
    n = 40
    table = pd.DataFrame(
        {
            "day": pd.date_range("2024-01-01", periods=n, freq="D"),
            "at": pd.date_range("2024-01-01 10:00", periods=n, freq="37min"),
            "local": pd.date_range("2024-03-28 10:00", periods=n, freq="3h", tz="Europe/Berlin"),
            "flag": pd.array([True, None, False, True] * 10, dtype="boolean"),
        }
    )
    drafted = draft_metadata(table, table_name="t")
    formats = {c.name: c.datetime_format for c in drafted.columns}
    assert formats == {
        "day": "%Y-%m-%d",
        "at": "%Y-%m-%d %H:%M:%S",
        "local": "%Y-%m-%d %H:%M:%S%z",
        "flag": None,
    }
    assert drafted.column("flag").sdtype == "boolean"
    schema = TableSchema.from_metadata(metadata_from_dict(drafted.metadata()))
    table.to_csv(tmp_path / "copy.csv", index=False)
    copy = validate_table(pd.read_csv(tmp_path / "copy.csv"), schema)
    for name in ("day", "at", "local"):
        expected = table[name].dt.tz_convert("UTC") if name == "local" else table[name]
        seconds = datetime_seconds(copy[name], schema[name])
        assert np.array_equal(seconds, expected.astype("int64").to_numpy() / 1e9), name
