import json
import math

from privacy.audit import audit_table, fidelity, quality_scores


def _longest_list(value) -> int:
    if isinstance(value, dict):
        return max((_longest_list(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return max([len(value), *(_longest_list(v) for v in value)])
    return 0


def test_audit_table_json_and_aggregate(pizza, pizza_splits):
    members, holdout, independent = pizza_splits
    report = audit_table(
        members.iloc[:3000],
        holdout.iloc[:3000],
        independent.iloc[:3000],
        pizza.metadata,
        pizza.table_name,
        target="type",
        sensitive_columns=("type",),
        delta=1e-5,
        claimed_epsilon=math.inf,
        dcr_synthetic_rows=5,
    )
    text = json.dumps(report, allow_nan=False)
    assert set(report) >= {"fidelity", "utility", "attack", "heuristics", "claimed", "seconds"}
    assert "empirical_epsilon" in report["attack"]
    assert report["claimed"] == {"epsilon": None, "delta": 1e-5}
    assert _longest_list(json.loads(text)) <= 200
    assert all(v["heuristic"] for v in report["heuristics"].values())


def test_fidelity_keys(pizza, pizza_splits):
    members, _, independent = pizza_splits
    result = fidelity(members, independent, pizza.metadata, pizza.table_name)
    assert result["quality"] > 0.9
    assert set(result["column_shapes"]) == set(members.columns)
    assert len(result["pair_trends"]) == 28  # all 8 * 7 / 2 pairs
    dist = result["distributions"]
    assert dist["price"]["kind"] == "numeric" and len(dist["price"]["edges"]) == 21
    assert dist["name"]["kind"] == "categorical" and len(dist["name"]["labels"]) >= 30
    assert abs(sum(dist["name"]["synthetic"]) - 1) < 1e-9
    assert set(quality_scores(members, independent, pizza.metadata, pizza.table_name)) == {
        "quality",
        "quality_all_pairs",
        "quality_properties",
        "diagnostic",
    }


def test_without_holdout_rows_only_fidelity_is_measured(pizza, pizza_splits):
    members, _, independent = pizza_splits
    report = audit_table(
        members.iloc[:500],
        members.iloc[:0],
        independent.iloc[:500],
        pizza.metadata,
        pizza.table_name,
        target="type",
    )
    assert 0.0 <= report["fidelity"]["quality"] <= 1.0
    for name in ("utility", "attack", "heuristics"):
        assert "holdout" in report[name]["skipped"], name
