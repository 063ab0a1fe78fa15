"""The embedded datasets, their shipped metadata, and loading a user's own table."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest
from sdv.metadata import Metadata

from simulations.datasets import (
    DATASETS,
    WEEKDAYS,
    Dataset,
    derive_pizza_orders,
    load_dataset,
    load_user_dataset,
)
from synth_models.schema import DataError, TableSchema, validate_table

PIZZA_COLUMNS = ["month", "weekday", "hour", "name", "size", "type", "price", "items"]
OJ_COLUMNS = [
    "Purchase", "WeekofPurchase", "StoreID", "PriceCH", "PriceMM", "DiscCH", "DiscMM",
    "SpecialCH", "SpecialMM", "LoyalCH", "SalePriceMM", "SalePriceCH", "PriceDiff", "Store7",
    "PctDiscMM", "PctDiscCH", "ListPriceDiff", "STORE",
]  # fmt: skip

# The pizza shop's menu (names, types, sizes) is published by the shop, so it is public.
MENU = [
    "bbq_ckn",
    "big_meat",
    "brie_carre",
    "calabrese",
    "cali_ckn",
    "ckn_alfredo",
    "ckn_pesto",
    "classic_dlx",
    "five_cheese",
    "four_cheese",
    "green_garden",
    "hawaiian",
    "ital_cpcllo",
    "ital_supr",
    "ital_veggie",
    "mediterraneo",
    "mexicana",
    "napolitana",
    "pep_msh_pep",
    "pepperoni",
    "peppr_salami",
    "prsc_argla",
    "sicilian",
    "soppressata",
    "southw_ckn",
    "spicy_ital",
    "spin_pesto",
    "spinach_fet",
    "spinach_supr",
    "thai_ckn",
    "the_greek",
    "veggie_veg",
]

# Exactly what the shipped metadata may declare: public facts only. A declaration here is used
# as is, without DP; adding a data-dependent one (a price range, quantiles) would leak.
PUBLIC_DECLARATIONS = {
    "pizzaplace": {
        "month": {"range_values": list(range(1, 13))},
        "weekday": {"range_values": list(WEEKDAYS)},
        "hour": {"range_min": 0, "range_max": 23, "decimal_places": 0},
        "name": {"range_values": MENU},
        "size": {"range_values": ["S", "M", "L", "XL", "XXL"]},
        "type": {"range_values": ["chicken", "classic", "supreme", "veggie"]},
        # the menu's cheapest and dearest pizzas, priced to the cent
        "price": {"range_min": 9.75, "range_max": 35.95, "decimal_places": 2},
        "items": {"decimal_places": 0},
    },
    "oj": {
        "Purchase": {"range_values": ["CH", "MM"]},
        "WeekofPurchase": {"decimal_places": 0},
        "StoreID": {"range_values": [1, 2, 3, 4, 7]},
        "SpecialCH": {"range_values": [0, 1]},
        "SpecialMM": {"range_values": [0, 1]},
        "Store7": {"range_values": ["No", "Yes"]},
        "STORE": {"range_values": [0, 1, 2, 3, 4]},
    },
}


@pytest.fixture(scope="module")
def pizza() -> Dataset:
    return load_dataset("pizzaplace")


@pytest.fixture(scope="module")
def oj() -> Dataset:
    return load_dataset("oj")


@pytest.fixture(scope="module")
def datasets(pizza: Dataset, oj: Dataset) -> dict[str, Dataset]:
    return {"pizzaplace": pizza, "oj": oj}


def test_names() -> None:
    assert DATASETS == ("pizzaplace", "oj")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("iris")


def test_pizza_shape_and_roles(pizza: Dataset) -> None:
    assert pizza.name == "pizzaplace" and pizza.table_name == "orders"
    assert pizza.table.shape == (49_574, 8)
    assert list(pizza.table.columns) == PIZZA_COLUMNS
    assert pizza.target == "type" and pizza.natural_partition is None


def test_oj_shape_and_roles(oj: Dataset) -> None:
    assert oj.name == "oj" and oj.table_name == "oj"
    assert oj.table.shape == (1_070, 18)
    assert list(oj.table.columns) == OJ_COLUMNS
    assert oj.target == "Purchase" and oj.natural_partition == "StoreID"
    assert sorted(oj.table["StoreID"].unique()) == [1, 2, 3, 4, 7]


@pytest.mark.parametrize("name", DATASETS)
def test_clean_dtypes(datasets: dict[str, Dataset], name: str) -> None:
    table = datasets[name].table
    assert not table.isna().any().any()
    assert isinstance(table.index, pd.RangeIndex) and table.index.start == 0
    for column in table.columns:
        dtype = table[column].dtype
        assert str(dtype) in ("int64", "float64", "object"), (column, dtype)
        if pd.api.types.is_object_dtype(dtype):
            assert table[column].map(type).eq(str).all(), column


def test_pizza_dtypes(pizza: Dataset) -> None:
    dtypes = pizza.table.dtypes.astype(str).to_dict()
    assert dtypes == {
        "month": "int64", "weekday": "object", "hour": "int64", "name": "object",
        "size": "object", "type": "object", "price": "float64", "items": "int64",
    }  # fmt: skip


@pytest.mark.parametrize("name", DATASETS)
def test_metadata_is_valid_sdv_and_matches_the_table(datasets: dict[str, Dataset], name: str):
    dataset = datasets[name]
    metadata = Metadata.load_from_dict(dataset.metadata)
    metadata.validate()
    metadata.validate_data({dataset.table_name: dataset.table})
    assert metadata.to_dict() == dataset.metadata
    assert list(dataset.metadata["tables"]) == [dataset.table_name]
    assert list(dataset.metadata["tables"][dataset.table_name]["columns"]) == list(
        dataset.table.columns
    )
    schema = TableSchema.from_metadata(dataset.metadata)
    assert schema.names == list(dataset.table.columns) and schema.dropped == ()
    validate_table(dataset.table, schema)
    assert dataset.schema() == schema


@pytest.mark.parametrize("name", DATASETS)
def test_metadata_declares_only_public_facts(datasets: dict[str, Dataset], name: str) -> None:
    columns = datasets[name].metadata["tables"][datasets[name].table_name]["columns"]
    declared = {
        column: {k: v for k, v in spec.items() if k != "sdtype"}
        for column, spec in columns.items()
        if set(spec) - {"sdtype"}
    }
    assert declared == PUBLIC_DECLARATIONS[name]


def test_pizza_sdtypes(pizza: Dataset) -> None:
    columns = pizza.metadata["tables"]["orders"]["columns"]
    sdtypes = {column: spec["sdtype"] for column, spec in columns.items()}
    assert sdtypes == {
        "month": "categorical", "weekday": "categorical", "hour": "numerical",
        "name": "categorical", "size": "categorical", "type": "categorical",
        "price": "numerical", "items": "numerical",
    }  # fmt: skip


def test_shipped_as_package_data() -> None:
    data = resources.files("simulations") / "data"
    for name in DATASETS:
        assert (data / f"{name}.csv.gz").is_file()
        json.loads((data / f"{name}.metadata.json").read_text(encoding="utf-8"))


# -- the derived pizza table -------------------------------------------------------------------


def test_pizza_derived_properties(pizza: Dataset) -> None:
    table = pizza.table
    assert (table["items"] >= 1).all()
    assert table["items"].max() > 1
    assert table["hour"].between(9, 23).all()
    assert set(table["month"]) == set(range(1, 13))
    assert set(table["weekday"]) == set(WEEKDAYS)
    assert set(table["size"]) == {"S", "M", "L", "XL", "XXL"}
    assert table["name"].nunique() == 32 and table["type"].nunique() == 4
    assert (table.groupby(["name", "size"])["price"].nunique() == 1).all()
    assert (table.groupby("name")["type"].nunique() == 1).all()
    # items counts the lines of one order: an order of k lines contributes k rows with items=k.
    counts = table["items"].value_counts()
    assert all(counts[k] % k == 0 for k in counts.index)


def test_derive_pizza_orders_small() -> None:
    raw = pd.DataFrame(
        {
            "id": ["o1", "o2", "o2", "o3"],
            "date": ["2015-01-01", "2015-01-05", "2015-01-05", "2015-12-31"],
            "time": ["11:38:36", "23:05:00", "23:05:00", "09:00:01"],
            "name": ["hawaiian", "mexicana", "hawaiian", "the_greek"],
            "size": ["M", "L", "S", "XXL"],
            "type": ["classic", "veggie", "classic", "classic"],
            "price": [13.25, 20.25, 10.5, 35.95],
        }
    )
    out = derive_pizza_orders(raw)
    assert list(out.columns) == PIZZA_COLUMNS
    assert out["month"].tolist() == [1, 1, 1, 12]
    assert out["weekday"].tolist() == ["Thursday", "Monday", "Monday", "Thursday"]
    assert out["hour"].tolist() == [11, 23, 23, 9]
    assert out["items"].tolist() == [1, 2, 2, 1]
    assert out["price"].tolist() == raw["price"].tolist()
    assert out["month"].dtype == "int64" and out["weekday"].dtype == object


def test_derive_pizza_orders_errors() -> None:
    raw = pd.DataFrame(
        {
            "id": ["o1"],
            "date": ["2015-01-01"],
            "time": ["25:00:00"],
            "name": ["x"],
            "size": ["M"],
            "type": ["classic"],
            "price": [1.0],
        }
    )
    with pytest.raises(DataError, match="not in format"):
        derive_pizza_orders(raw)
    with pytest.raises(DataError, match="lacks column"):
        derive_pizza_orders(raw.drop(columns="time"))


# -- a user's own table ------------------------------------------------------------------------


def _write_user_files(tmp_path: Path, oj: Dataset, fmt: str) -> tuple[Path, Path]:
    data_path = tmp_path / f"juice.{fmt}"
    if fmt == "parquet":
        oj.table.to_parquet(data_path, index=False)
    else:
        oj.table.to_csv(data_path, index=False)
    metadata_path = tmp_path / "juice.metadata.json"
    metadata_path.write_text(json.dumps(oj.metadata))
    return data_path, metadata_path


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet"])
def test_user_dataset_round_trip(tmp_path: Path, oj: Dataset, fmt: str) -> None:
    data_path, metadata_path = _write_user_files(tmp_path, oj, fmt)
    loaded = load_user_dataset(
        data_path, metadata_path, target="Purchase", natural_partition="StoreID"
    )
    assert loaded.name == "juice" and loaded.table_name == "oj"
    assert loaded.target == "Purchase" and loaded.natural_partition == "StoreID"
    assert loaded.metadata == oj.metadata
    pd.testing.assert_frame_equal(loaded.table, oj.table)


def test_user_dataset_ids_kept_and_undeclared_columns_refused(tmp_path: Path) -> None:
    table = pd.DataFrame({"key": ["a", "b", "c"], "x": [1.0, 2.0, 3.0], "junk": [0, 0, 0]})
    data_path = tmp_path / "t.csv"
    table.to_csv(data_path, index=False)
    metadata = {
        "METADATA_SPEC_VERSION": "V2",
        "tables": {
            "t": {
                "columns": {"key": {"sdtype": "id"}, "x": {"sdtype": "numerical"}},
                "primary_key": "key",
            }
        },
        "relationships": [],
    }
    metadata_path = tmp_path / "m.json"
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(DataError, match="not in the metadata") as refused:
        load_user_dataset(data_path, metadata_path)
    assert refused.value.column == "junk" and str(data_path) in str(refused.value)
    table.drop(columns=["junk"]).to_csv(data_path, index=False)
    loaded = load_user_dataset(data_path, metadata_path)
    assert list(loaded.table.columns) == ["key", "x"]
    assert loaded.schema().names == ["x"]
    with pytest.raises(DataError, match="target column") as info:
        load_user_dataset(data_path, metadata_path, target="key")
    assert str(data_path) in str(info.value)


def test_user_dataset_picks_a_table(tmp_path: Path, oj: Dataset) -> None:
    data_path, metadata_path = _write_user_files(tmp_path, oj, "csv")
    other = {"columns": {"v": {"sdtype": "numerical"}}}
    metadata = {**oj.metadata, "tables": {**oj.metadata["tables"], "other": other}}
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(DataError, match="2 tables") as info:
        load_user_dataset(data_path, metadata_path)
    assert str(metadata_path) in str(info.value)
    loaded = load_user_dataset(data_path, metadata_path, table_name="oj")
    assert list(loaded.metadata["tables"]) == ["oj"]
    Metadata.load_from_dict(loaded.metadata).validate_data({"oj": loaded.table})


def test_user_dataset_violating_its_metadata(tmp_path: Path, oj: Dataset) -> None:
    data_path, metadata_path = _write_user_files(tmp_path, oj, "csv")
    bad = oj.table.copy()
    bad.loc[5, "StoreID"] = 9
    bad.to_csv(data_path, index=False)
    with pytest.raises(DataError, match="outside the declared categories") as info:
        load_user_dataset(data_path, metadata_path)
    assert str(data_path) in str(info.value) and info.value.column == "StoreID"
    oj.table.drop(columns="LoyalCH").to_csv(data_path, index=False)
    with pytest.raises(DataError, match="missing column"):
        load_user_dataset(data_path, metadata_path)


def test_user_dataset_bad_files(tmp_path: Path, oj: Dataset) -> None:
    data_path, metadata_path = _write_user_files(tmp_path, oj, "csv")
    with pytest.raises(DataError, match="not found"):
        load_user_dataset(tmp_path / "absent.csv", metadata_path)
    with pytest.raises(DataError, match="not found"):
        load_user_dataset(data_path, tmp_path / "absent.json")
