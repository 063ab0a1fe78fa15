import pytest

from client.merchant import holdout_split
from simulations.datasets import load_dataset


@pytest.fixture(scope="session")
def pizza():
    return load_dataset("pizzaplace")


@pytest.fixture(scope="session")
def pizza_splits(pizza):
    """Three disjoint random thirds of pizzaplace, 6,000 rows each (members, non-members,
    independent rows from the same distribution)."""
    rest, members = holdout_split(pizza.table, 6000 / len(pizza.table), seed=0)
    rest, nonmembers = holdout_split(rest, 6000 / len(rest), seed=1)
    _, independent = holdout_split(rest, 6000 / len(rest), seed=2)
    return members, nonmembers, independent
