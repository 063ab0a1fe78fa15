"""Combining the merchants' audits into the federated one."""

from __future__ import annotations

import pytest

from server.evaluation import combine


def _audit(tstr: float, trtr: float, quality: float, bound: float) -> dict:
    return {
        "fidelity": {"quality": quality, "shares": [0.5, 0.5]},
        "utility": {
            "target": "type",
            "metric": "macro_f1",
            "tstr": tstr,
            "trtr": trtr,
            "ratio": tstr / trtr,
        },
        "attack": {"auc": 0.5, "empirical_epsilon": {"epsilon_lower_bound": bound}},
    }


def test_utility_ratio_is_the_ratio_of_the_combined_scores() -> None:
    # a merchant whose real baseline is weak (skewed target shares) has a ratio far above 1
    audits = {"a": _audit(0.9, 1.0, 0.8, 0.1), "b": _audit(0.4, 0.2, 0.6, 0.3)}
    combined = combine(audits, {"a": 3.0, "b": 1.0})
    utility = combined["utility"]
    assert utility["tstr"] == pytest.approx(0.75 * 0.9 + 0.25 * 0.4)
    assert utility["trtr"] == pytest.approx(0.75 * 1.0 + 0.25 * 0.2)
    assert utility["ratio"] == pytest.approx(0.775 / 0.8)  # not the mean ratio 1.175
    assert utility["ratio"] < 1.0
    # the rest is unchanged: weighted means, the maximum of the lower bounds
    assert combined["fidelity"]["quality"] == pytest.approx(0.75)
    assert combined["attack"]["empirical_epsilon"]["epsilon_lower_bound"] == 0.3


def test_utility_ratio_without_a_positive_baseline() -> None:
    audits = {"a": _audit(0.5, 1.0, 0.8, 0.1)}
    audits["a"]["utility"].update(trtr=0.0, ratio=None)
    assert combine(audits, {})["utility"]["ratio"] is None
    skipped = {"a": {"utility": {"skipped": "no target column"}}}
    assert combine(skipped, {})["utility"] == {"skipped": "no target column"}
