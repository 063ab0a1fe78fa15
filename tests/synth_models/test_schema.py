"""Column roles from SDV metadata, public declarations, and validation errors that say where."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from synth_models.schema import (
    CATEGORICAL,
    DATETIME,
    NUMERIC,
    DataError,
    TableSchema,
    strip_data_derived,
    validate_table,
)

SOURCE = "shop/orders.csv"


def _meta(columns: dict, table: str = "orders") -> dict:
    return {"METADATA_SPEC_VERSION": "V2", "tables": {table: {"columns": columns}}}


METADATA = _meta(
    {
        "order_id": {"sdtype": "id"},
        "email": {"sdtype": "email", "pii": True},
        "amount": {"sdtype": "numerical", "range_min": 0, "range_max": 500, "decimal_places": 2},
        "quantity": {"sdtype": "numerical"},
        "store": {"sdtype": "categorical", "range_values": ["north", "south"]},
        "size": {"sdtype": "ordinal", "range_values": ["S", "M", "L"]},
        "paid": {"sdtype": "boolean"},
        "day": {
            "sdtype": "datetime",
            "datetime_format": "%Y-%m-%d",
            "range_min": "2024-01-01",
            "range_max": "2024-12-31",
        },
        "note": {"sdtype": "categorical"},
    }
)

TABLE = pd.DataFrame(
    {
        "order_id": [1, 2, 3],
        "email": ["a@x.org", "b@x.org", "c@x.org"],
        "amount": [10.5, 20.25, 499.99],
        "quantity": [1, 2, 3],
        "store": ["north", "south", "north"],
        "size": ["S", "L", "M"],
        "paid": [True, False, True],
        "day": ["2024-01-05", "2024-06-30", "2024-12-31"],
        "note": ["x", "y", None],
    }
)


@pytest.fixture
def schema() -> TableSchema:
    return TableSchema.from_metadata(METADATA)


# -- roles -------------------------------------------------------------------------------------


def test_column_roles(schema: TableSchema) -> None:
    assert schema.table_name == "orders"
    assert schema.names == ["amount", "quantity", "store", "size", "paid", "day", "note"]
    assert set(schema.dropped) == {"order_id", "email"}
    kinds = {c.name: (c.kind, c.sdtype) for c in schema.columns}
    assert kinds == {
        "amount": (NUMERIC, "numerical"),
        "quantity": (NUMERIC, "numerical"),
        "store": (CATEGORICAL, "categorical"),
        "size": (CATEGORICAL, "ordinal"),
        "paid": (CATEGORICAL, "boolean"),
        "day": (DATETIME, "datetime"),
        "note": (CATEGORICAL, "categorical"),
    }


def test_public_declarations_land_in_specs(schema: TableSchema) -> None:
    amount = schema["amount"]
    assert amount.bounds == (0.0, 500.0) and amount.decimals == 2
    assert schema["quantity"].bounds is None and schema["quantity"].decimals is None
    assert schema["store"].categories == ("north", "south")
    assert schema["size"].categories == ("S", "M", "L")  # order kept
    assert schema["paid"].categories == (False, True)
    assert schema["note"].categories is None
    day = schema["day"]
    assert day.datetime_format == "%Y-%m-%d"
    assert day.bounds == (
        pd.Timestamp("2024-01-01").value / 1e9,
        pd.Timestamp("2024-12-31").value / 1e9,
    )


def test_schema_dict_round_trip(schema: TableSchema) -> None:
    assert TableSchema.from_dict(schema.to_dict()) == schema


def test_accepts_sdv_metadata_object() -> None:
    from sdv.metadata import Metadata

    meta = Metadata.load_from_dict(METADATA)
    schema = TableSchema.from_metadata(meta)
    assert schema.names == TableSchema.from_metadata(METADATA).names


def test_several_tables_need_a_name() -> None:
    meta = {"tables": {"a": {"columns": {"x": {"sdtype": "numerical"}}}, "b": {"columns": {}}}}
    with pytest.raises(DataError, match="2 tables"):
        TableSchema.from_metadata(meta)
    assert TableSchema.from_metadata(meta, "a").names == ["x"]
    with pytest.raises(DataError, match="no table 'c'"):
        TableSchema.from_metadata(meta, "c")


# -- bad metadata -------------------------------------------------------------------------------


def test_no_tables() -> None:
    with pytest.raises(DataError, match="no 'tables'"):
        TableSchema.from_metadata({"METADATA_SPEC_VERSION": "V2"})
    with pytest.raises(DataError, match="no 'tables'"):
        TableSchema.from_metadata({"tables": {}})


def test_only_dropped_columns() -> None:
    with pytest.raises(DataError, match="no column to synthesize"):
        TableSchema.from_metadata(_meta({"id": {"sdtype": "id"}}))


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"type": "numerical"}, "no 'sdtype'"),
        ({"sdtype": "numerical", "range_min": 0}, "only one of range_min"),
        ({"sdtype": "numerical", "range_max": 9}, "only one of range_min"),
        ({"sdtype": "numerical", "range_min": 5, "range_max": 5}, "not below range_max"),
        ({"sdtype": "numerical", "range_min": 6, "range_max": 5}, "not below range_max"),
        (
            {"sdtype": "datetime", "range_min": "2024-02-01", "range_max": "2024-01-01"},
            "not below range_max",
        ),
    ],
)
def test_bad_column_metadata_names_the_column(spec: dict, fragment: str) -> None:
    meta = _meta({"fine": {"sdtype": "categorical"}, "broken": spec})
    with pytest.raises(DataError) as info:
        TableSchema.from_metadata(meta)
    assert info.value.column == "broken"
    assert "'broken'" in str(info.value)
    assert fragment in str(info.value)


# -- validation ---------------------------------------------------------------------------------


def test_valid_table_is_restricted_to_schema(schema: TableSchema) -> None:
    # A column the metadata declares as an id is accepted and left out.
    out = validate_table(TABLE.assign(order_id=range(len(TABLE))), schema, source=SOURCE)
    assert list(out.columns) == schema.names
    pd.testing.assert_frame_equal(out, TABLE[schema.names])


def test_a_column_missing_from_the_metadata_is_an_error(schema: TableSchema) -> None:
    _fails(TABLE.assign(extra=1), schema, "extra", "not in the metadata")


def _fails(table: pd.DataFrame, schema: TableSchema, column: str | None, *fragments: str):
    with pytest.raises(DataError) as info:
        validate_table(table, schema, source=SOURCE)
    message = str(info.value)
    assert info.value.source == SOURCE and SOURCE in message, message
    if column is not None:
        assert info.value.column == column and f"'{column}'" in message, message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_missing_column(schema: TableSchema) -> None:
    _fails(TABLE.drop(columns=["store"]), schema, "store", "missing column", "store")


def test_text_in_numeric_column(schema: TableSchema) -> None:
    table = TABLE.assign(quantity=["1", "two", "3"])
    _fails(table, schema, "quantity", "not numbers", "'two'")


def test_boolean_in_numeric_column(schema: TableSchema) -> None:
    _fails(TABLE.assign(quantity=[True, False, True]), schema, "quantity", "expected numbers")


def test_numeric_strings_are_accepted(schema: TableSchema) -> None:
    validate_table(TABLE.assign(quantity=["1", "2", "3"]), schema, source=SOURCE)


def test_all_nan_column(schema: TableSchema) -> None:
    _fails(TABLE.assign(quantity=np.nan), schema, "quantity", "every value is missing")
    _fails(TABLE.assign(note=None), schema, "note", "every value is missing")


def test_empty_table(schema: TableSchema) -> None:
    _fails(TABLE.iloc[:0], schema, None, "no rows")


def test_not_a_dataframe(schema: TableSchema) -> None:
    _fails(TABLE.to_dict("list"), schema, None, "DataFrame")


def test_unseen_category_of_declared_domain(schema: TableSchema) -> None:
    _fails(TABLE.assign(store=["north", "east", "south"]), schema, "store", "'east'", "declared")
    _fails(TABLE.assign(size=["S", "XL", "M"]), schema, "size", "'XL'")


def test_undeclared_domain_accepts_anything(schema: TableSchema) -> None:
    validate_table(TABLE.assign(note=["anything", 3, None]), schema, source=SOURCE)


def test_integer_categories_match_float_values() -> None:
    schema = TableSchema.from_metadata(
        _meta({"m": {"sdtype": "categorical", "range_values": [1, 2]}})
    )
    validate_table(pd.DataFrame({"m": [1.0, 2.0, np.nan]}), schema)
    with pytest.raises(DataError, match="outside the declared categories"):
        validate_table(pd.DataFrame({"m": [1.0, 2.5]}), schema)


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_values(schema: TableSchema, value: float) -> None:
    _fails(TABLE.assign(quantity=[1.0, value, 2.0]), schema, "quantity", "infinite")


def test_huge_values(schema: TableSchema) -> None:
    _fails(TABLE.assign(quantity=[1.0, 2e15, 3.0]), schema, "quantity", "1e15")
    _fails(TABLE.assign(quantity=[1.0, -2e15, 3.0]), schema, "quantity", "1e15")
    validate_table(TABLE.assign(quantity=[1.0, 9e14, 3.0]), schema, source=SOURCE)


def test_values_outside_declared_range(schema: TableSchema) -> None:
    _fails(TABLE.assign(amount=[10.0, 500.01, -1.0]), schema, "amount", "2 value(s)", "[0, 500]")
    validate_table(TABLE.assign(amount=[0.0, 500.0, np.nan]), schema, source=SOURCE)


def test_datetime_outside_declared_range(schema: TableSchema) -> None:
    table = TABLE.assign(day=["2024-01-05", "2025-01-01", "2024-12-31"])
    _fails(table, schema, "day", "outside the declared range")


def test_unparsable_datetime(schema: TableSchema) -> None:
    table = TABLE.assign(day=["2024-01-05", "05/06/2024", "2024-12-31"])
    _fails(table, schema, "day", "not datetimes", "'%Y-%m-%d'", "'05/06/2024'")
    _fails(TABLE.assign(day=["2024-01-05", "soon", None]), schema, "day", "'soon'")


def test_datetime_column_may_hold_missing_and_datetime_dtype(schema: TableSchema) -> None:
    validate_table(TABLE.assign(day=["2024-01-05", None, "2024-12-31"]), schema, source=SOURCE)
    validate_table(TABLE.assign(day=pd.to_datetime(TABLE["day"])), schema, source=SOURCE)


def test_declared_not_nullable() -> None:
    meta = _meta({"x": {"sdtype": "numerical", "range_is_nullable": False}})
    schema = TableSchema.from_metadata(meta)
    with pytest.raises(DataError) as info:
        validate_table(pd.DataFrame({"x": [1.0, np.nan]}), schema, source=SOURCE)
    assert info.value.column == "x" and "not nullable" in str(info.value)


# -- data-derived metadata ----------------------------------------------------------------------


def test_strip_data_derived_removes_detected_ranges() -> None:
    detected = _meta(
        {
            "amount": {
                "sdtype": "numerical",
                "range_min": 0.5,
                "range_max": 99.5,
                "decimal_places": 1,
                "range_is_nullable": True,
                "computer_representation": "Float",
            },
            "store": {"sdtype": "categorical", "range_values": ["north", "south"]},
        }
    )
    stripped = strip_data_derived(detected)
    columns = stripped["tables"]["orders"]["columns"]
    assert columns == {
        "amount": {"sdtype": "numerical", "computer_representation": "Float"},
        "store": {"sdtype": "categorical"},
    }
    assert stripped["METADATA_SPEC_VERSION"] == "V2"
    # the input is not modified
    assert detected["tables"]["orders"]["columns"]["amount"]["range_min"] == 0.5
    schema = TableSchema.from_metadata(stripped)
    assert schema["amount"].bounds is None and schema["amount"].decimals is None
    assert schema["store"].categories is None and schema["amount"].nullable is None


# -- what a merchant's export holds ---------------------------------------------------------------


def _undeclared_datetime() -> TableSchema:
    return TableSchema.from_metadata(_meta({"at": {"sdtype": "datetime"}}))


def test_mixed_datetime_formats_name_the_format_of_the_first_value() -> None:
    """Without a declared format pandas reads every value in the first one's format: the
    message says so (it used to say "format None")."""
    table = pd.DataFrame({"at": ["2024-03-25 10:00:00", "03/27/2024 12:00", None]})
    error = _fails(table, _undeclared_datetime(), "at", "mixed datetime formats", "'%Y-%m-%d")
    assert "'03/27/2024 12:00'" in str(error) and "None" not in str(error)
    assert "datetime_format" in str(error)  # the fix


def test_utc_offset_datetimes_are_read_as_instants() -> None:
    """Summer time: one column with +01:00 and +02:00 offsets (it used to raise)."""
    from synth_models.schema import datetime_seconds

    schema = _undeclared_datetime()
    table = pd.DataFrame({"at": ["2024-03-30 10:00:00+01:00", "2024-03-31 11:00:00+02:00"]})
    validate_table(table, schema, source=SOURCE)
    seconds = datetime_seconds(table["at"], schema["at"], SOURCE)
    assert seconds[1] - seconds[0] == 24 * 3600  # 09:00 UTC both days


def test_yes_no_booleans_are_accepted() -> None:
    schema = TableSchema.from_metadata(_meta({"paid": {"sdtype": "boolean"}}))
    out = validate_table(pd.DataFrame({"paid": ["yes", "No", "Y", "n", None]}), schema)
    assert out["paid"].tolist()[:4] == [True, False, True, False] and pd.isna(out["paid"][4])
    _fails(pd.DataFrame({"paid": ["yes", "maybe"]}), schema, "paid", "'maybe'")


def test_declared_text_codes_read_as_numbers_are_compared_as_text() -> None:
    """A reader takes codes "1", "2" for numbers; the declared text domain reads them back."""
    schema = TableSchema.from_metadata(
        _meta({"grade": {"sdtype": "categorical", "range_values": ["1", "2", "10"]}})
    )
    out = validate_table(pd.DataFrame({"grade": [1, 10, np.nan]}), schema, source=SOURCE)
    assert out["grade"].tolist()[:2] == ["1", "10"] and pd.isna(out["grade"][2])
    error = _fails(pd.DataFrame({"grade": [1, 3]}), schema, "grade", "outside the declared")
    assert "e.g. '3'" in str(error) and "range_values" in str(error)
