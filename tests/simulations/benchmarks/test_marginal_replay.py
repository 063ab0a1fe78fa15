"""The in-process replay of the marginal federation (a tuning tool) runs the real rounds."""

from __future__ import annotations

from simulations.benchmarks.marginal_replay import replay


def test_replay_fits_within_every_budget_and_keeps_the_menu_range() -> None:
    result = replay(seed=0, merchants=2, epsilon=1.0, options={})
    assert 0.99 < result["epsilon"] <= 1.0  # each merchant's ledger ends at its budget
    assert result["quality"] > 0.95
    assert result["max_price"] == 35.95  # the declared maximum survives the noise
    assert any("price" in pair for pair in result["tree"])
