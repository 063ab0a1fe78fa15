import pytest

from simulations.datasets import load_dataset
from simulations.runner import split_holdout


@pytest.fixture(scope="session")
def pizza():
    return load_dataset("pizzaplace")


@pytest.fixture(scope="session")
def pizza_splits(pizza):
    """Three disjoint random thirds of pizzaplace, 6,000 rows each (members, non-members,
    independent rows from the same distribution)."""
    rest, members = split_holdout(pizza.table, 6000 / len(pizza.table), 0)
    rest, nonmembers = split_holdout(rest, 6000 / len(rest), 1)
    _, independent = split_holdout(rest, 6000 / len(rest), 2)
    return members, nonmembers, independent
