"""The tuning sweep scores a configuration on the public split, within its budget."""

from __future__ import annotations

from simulations.benchmarks.tuning import main, score_configuration


def test_one_configuration_is_fitted_within_budget_and_scored(tmp_path) -> None:
    config = {"model": "vae", "epsilon": 1, "training": {"epochs": 1}, "options": {"hidden": [32]}}
    result = score_configuration(config)
    assert result["training"] == {"epochs": 1}  # the configuration travels with its scores
    assert 0 < result["epsilon_spent"] <= 1.0
    for key in ("quality", "quality_all_pairs", "pair_trends_real_bins", "column_shapes"):
        assert 0 < result[key] <= 1
    assert set(result["numeric_ranges"]) == {"hour", "price", "items"}


def test_main_appends_json_lines(tmp_path) -> None:
    out = tmp_path / "sweep.jsonl"
    main(["--out", str(out), '{"model": "marginal", "epsilon": "inf"}'])
    assert '"model": "marginal"' in out.read_text()
