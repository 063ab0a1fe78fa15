"""Every kind of malformed merchant table gets an error naming the file, column and problem.

This is what a merchant's reply (and the server's run log and report) carries as the reason
when its table is bad; the federation goes on without it (tests/simulations/test_federation.py).
"""

import numpy as np
import pytest

from client.merchant import load_merchant_table
from simulations.datasets import load_dataset
from synth_models.schema import DataError


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
