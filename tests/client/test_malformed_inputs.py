"""Every kind of malformed merchant table gets an error naming the file, column and problem.

This is what a merchant's reply (and the server's run log and report) carries as the reason
when its table is bad; the federation goes on without it (tests/simulations/test_federation.py).
Through the real ClientApp the merchant refuses such a table before its first release: one
line in its own log, a reason code (and a public column) to the server, nothing in its ledger.
"""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from client.merchant import load_merchant_table
from simulations.datasets import load_dataset
from synth_models.federation import STATISTICS_MESSAGE, STATUS
from synth_models.io import metadata_from_dict
from synth_models.schema import DataError, TableSchema
from synth_models.synthesizer import STATISTICS_LABEL
from tests.client.harness import document, folder_merchant, message


@pytest.fixture(scope="module")
def pizza():
    data = load_dataset("pizzaplace")
    return data.table.iloc[:200].reset_index(drop=True), data.schema()


def _csv(table):
    return lambda path: table.to_csv(path, index=False)


def _cases(table):
    def with_price(values):
        return table.assign(price=values)

    truncated = table.copy()
    return {
        "missing column": ("t.csv", _csv(table.drop(columns=["price"])), "price", "missing column"),
        "extra column": (
            "t.csv",
            _csv(table.assign(card_number="4111")),
            "card_number",
            "not in the metadata",
        ),
        "wrong dtype": ("t.csv", _csv(with_price("cheap")), "price", "not numbers"),
        "all-NaN column": ("t.csv", _csv(with_price(np.nan)), "price", "every value is missing"),
        "unseen category": (
            "t.csv",
            _csv(table.assign(size="XXXL")),
            "size",
            "outside the declared categories",
        ),
        "+inf": ("t.csv", _csv(with_price(np.inf)), "price", "infinite"),
        "-inf": ("t.csv", _csv(with_price(-np.inf)), "price", "infinite"),
        "huge value": ("t.csv", _csv(with_price(1e20)), "price", "1e15"),
        "empty file": ("t.csv", lambda p: p.write_bytes(b""), None, "no rows"),
        "header only": ("t.csv", _csv(table.iloc[:0]), None, "no rows"),
        "non-UTF-8 bytes": (
            "t.csv",
            lambda p: p.write_bytes(b"month,weekday\n1,Montag\n2,\xff\xfeDienstag\n"),
            None,
            "UTF-8",
        ),
        "a directory": ("t.csv", lambda p: p.mkdir(), None, "directory"),
        "truncated Parquet": (
            "t.parquet",
            lambda p: (truncated.to_parquet(p), p.write_bytes(p.read_bytes()[:200])),
            None,
            "Parquet",
        ),
    }


CASES = [
    "missing column", "extra column", "wrong dtype", "all-NaN column", "unseen category",
    "+inf", "-inf", "huge value", "empty file", "header only", "non-UTF-8 bytes", "a directory",
    "truncated Parquet",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_malformed_table_names_file_column_and_problem(tmp_path, pizza, case):
    table, schema = pizza
    filename, write, column, problem = _cases(table)[case]
    path = tmp_path / filename
    write(path)
    with pytest.raises(DataError) as info:
        load_merchant_table(path, schema)
    message = str(info.value)
    assert str(path) in message, message
    assert problem in message, message
    if column is not None:
        assert info.value.column == column and f"'{column}'" in message, message


def test_every_case_is_parametrized(pizza):
    assert list(_cases(pizza[0])) == CASES


# -- through the ClientApp: one line naming file, column and problem; nothing spent --------------


def _statistics_round(folder, schema):
    """The first release a server asks for; returns the reply's status, the merchant's own
    events log (one line per refusal or failure) and the ledger it kept on disk."""
    merchant = folder_merchant(folder, schema)
    request = {
        "epsilon": 1.0,
        "delta": 1e-5,
        "statistics_share": 0.1,
        "seed": 0,
        "schema": schema.to_dict(),
    }
    reply = merchant.app(message(STATISTICS_MESSAGE, request), merchant.context)
    events = folder / "state" / "merchant-0.log"
    state = json.loads((folder / "state" / "merchant-0.json").read_text())
    return (
        document(reply, STATUS),
        events.read_text() if events.exists() else "",
        state["ledger"],
    )


ORDERS_METADATA = {
    "METADATA_SPEC_VERSION": "V2",
    "tables": {
        "orders": {
            "columns": {
                "store": {"sdtype": "categorical", "range_values": ["north", "south"]},
                "paid": {"sdtype": "boolean"},
                "ordered_at": {"sdtype": "datetime"},  # no declared format
                "amount": {"sdtype": "numerical", "range_is_nullable": False},
            }
        }
    },
}


@pytest.fixture(scope="module")
def orders():
    rng = np.random.default_rng(0)
    n = 200
    stamps = pd.Timestamp("2024-03-25 08:00") + pd.to_timedelta(rng.integers(0, 9000, n), "min")
    table = pd.DataFrame(
        {
            "store": rng.choice(["north", "south"], n),
            "paid": rng.choice([True, False], n),
            "ordered_at": stamps.strftime("%Y-%m-%d %H:%M:%S"),
            "amount": rng.gamma(4, 10, n).round(2),
        }
    )
    return table, TableSchema.from_metadata(metadata_from_dict(ORDERS_METADATA))


def _duplicate_columns_parquet(table):
    def write(path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrays = [pa.array(table[c]) for c in table.columns] + [pa.array(table["store"])]
        pq.write_table(pa.Table.from_arrays(arrays, names=[*table.columns, "store"]), path)

    return write


def _fifo(path):
    os.mkfifo(path)  # reading it would block the merchant for ever


def _orders_cases(table):
    mixed = table["ordered_at"].copy()
    mixed.iloc[5:9] = ["03/27/2024 12:00", "03/28/2024 09:30", "28.03.2024 10:00", "3/29/24"]
    return {
        "missing column": ("o.csv", _csv(table.drop(columns=["amount"])), "amount", "missing"),
        "wrong type (text in a number column)": (
            "o.csv",
            _csv(table.assign(amount=["cheap"] * len(table))),
            "amount",
            "not numbers",
        ),
        "wrong type (not a boolean)": (
            "o.csv",
            _csv(table.assign(paid=["maybe"] * len(table))),
            "paid",
            "outside the declared categories",
        ),
        "NaN in a non-nullable column": (
            "o.csv",
            _csv(table.assign(amount=table["amount"].where(table.index % 7 != 0))),
            "amount",
            "declared not nullable",
        ),
        "unseen category": (
            "o.csv",
            _csv(table.assign(store=["east"] * len(table))),
            "store",
            "outside the declared categories",
        ),
        "empty file": ("o.csv", lambda p: p.write_bytes(b""), None, "empty (0 bytes)"),
        "unreadable file (a FIFO)": ("o.csv", _fifo, None, "not a regular file"),
        "duplicate Parquet columns": (
            "o.parquet",
            _duplicate_columns_parquet(table),
            "store",
            "duplicate column name(s)",
        ),
        "mixed datetime formats": (
            "o.csv",
            _csv(table.assign(ordered_at=mixed)),
            "ordered_at",
            "mixed datetime formats",
        ),
    }


ORDERS_CASES = [
    "missing column", "wrong type (text in a number column)", "wrong type (not a boolean)",
    "NaN in a non-nullable column", "unseen category", "empty file", "unreadable file (a FIFO)",
    "duplicate Parquet columns", "mixed datetime formats",
]  # fmt: skip


def _merchant_file(tmp_path, filename, write):
    folder = tmp_path / "merchant"
    folder.mkdir()
    path = folder / f"merchant-0{''.join(Path(filename).suffixes)}"
    write(path)
    return folder, path


def _assert_failed_before_any_release(folder, path, schema, column, problem):
    status, events, ledger = _statistics_round(folder, schema)
    assert status["state"] == "failed" and status["code"] == "bad-input", status
    public = column is not None and column in schema.names
    assert status.get("column") == (column if public else None), status
    # The merchant's own log: one line naming the file, the column and the problem.
    lines = events.strip().splitlines()
    assert len(lines) == 1, events
    assert str(path) in lines[0] and problem in lines[0], lines[0]
    if column is not None:
        assert f"column '{column}'" in lines[0], lines[0]
    assert ledger is None or ledger["records"] == [], ledger  # no budget spent


@pytest.mark.parametrize("case", ORDERS_CASES)
def test_the_merchant_refuses_a_malformed_table_before_any_release(tmp_path, orders, case):
    table, schema = orders
    filename, write, column, problem = _orders_cases(table)[case]
    folder, path = _merchant_file(tmp_path, filename, write)
    _assert_failed_before_any_release(folder, path, schema, column, problem)


@pytest.mark.parametrize("case", CASES)
def test_the_pizza_cases_fail_before_any_release_too(tmp_path, pizza, case):
    table, schema = pizza
    filename, write, column, problem = _cases(table)[case]
    folder, path = _merchant_file(tmp_path, filename, write)
    _assert_failed_before_any_release(folder, path, schema, column, problem)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_file_fails_before_any_release(tmp_path, orders):
    table, schema = orders
    folder, path = _merchant_file(tmp_path, "o.csv", _csv(table))
    path.chmod(0)
    _assert_failed_before_any_release(folder, path, schema, None, "permission denied")


def test_every_orders_case_is_parametrized(orders):
    assert list(_orders_cases(orders[0])) == ORDERS_CASES


@pytest.mark.parametrize(
    "case",
    ["yes/no booleans", "UTC-offset datetimes", "codes with leading zeros"],
)
def test_common_spellings_are_accepted_and_released(tmp_path, orders, case):
    """Booleans spelled yes/no (any case, Y/N), datetimes with several UTC offsets (summer
    time) and declared text codes a reader takes for numbers are read, validated and
    released like any other table."""
    table, schema = orders
    if case == "yes/no booleans":
        spelled = table["paid"].map({True: "yes", False: "No"})
        spelled.iloc[:3] = ["Y", "n", "YES"]
        table = table.assign(paid=spelled)
    elif case == "UTC-offset datetimes":
        local = pd.to_datetime(table["ordered_at"]).dt.tz_localize(
            "Europe/Berlin", nonexistent="shift_forward"
        )
        text = local.dt.strftime("%Y-%m-%d %H:%M:%S%z")
        table = table.assign(ordered_at=[s[:-2] + ":" + s[-2:] for s in text])
        assert {s[-6:] for s in table["ordered_at"]} == {"+01:00", "+02:00"}
    else:
        codes = {"north": "007", "south": "012"}  # postcodes: "007" would be read as 7
        metadata = json.loads(json.dumps(ORDERS_METADATA))
        metadata["tables"]["orders"]["columns"]["store"]["range_values"] = list(codes.values())
        schema = TableSchema.from_metadata(metadata_from_dict(metadata))
        table = table.assign(store=table["store"].map(codes))
    folder, _ = _merchant_file(tmp_path, "o.csv", _csv(table))
    status, events, ledger = _statistics_round(folder, schema)
    assert status == {"state": "ok", "merchant": "merchant-0", "code": "done"}, events
    assert [record["label"] for record in ledger["records"]] == [STATISTICS_LABEL]
