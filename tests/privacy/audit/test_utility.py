import pytest

from privacy.audit import utility


def _subset_metadata(pizza, columns):
    spec = pizza.metadata["tables"][pizza.table_name]["columns"]
    return {"tables": {pizza.table_name: {"columns": {c: spec[c] for c in columns}}}}


def test_utility_trtr_and_copy(pizza, pizza_splits):
    members, holdout, _ = pizza_splits
    metadata = _subset_metadata(pizza, ["name", "size", "price", "type"])
    result = utility(
        members,
        holdout,
        members.copy(),
        target="type",
        metadata=metadata,
        table_name=pizza.table_name,
    )
    assert result["task"] == "classification" and result["metric"] == "macro_f1"
    assert result["trtr"] > 0.5
    assert result["tstr"] == pytest.approx(result["trtr"], abs=0.02)


def test_utility_regression_and_shuffled(pizza, pizza_splits):
    members, holdout, _ = pizza_splits
    metadata = _subset_metadata(pizza, ["name", "size", "price"])
    shuffled = members.copy()
    shuffled["price"] = shuffled["price"].sample(frac=1, random_state=0).to_numpy()
    result = utility(
        members,
        holdout,
        shuffled,
        target="price",
        metadata=metadata,
        table_name=pizza.table_name,
    )
    assert result["task"] == "regression" and result["trtr"] > 0.9
    assert result["tstr"] < 0.1  # no relation left in the "synthetic" data
