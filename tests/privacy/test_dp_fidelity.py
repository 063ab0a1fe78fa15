"""Fidelity of a synthetic sample against noisy DP releases (privacy/audit/dp_fidelity.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from privacy.audit.dp_fidelity import (
    column_fidelity,
    noise_reference,
    similarity,
    summarize,
    table_fidelity,
)
from privacy.noise import SeededNoise
from privacy.statistics import CategoricalInput, Grid, NumericInput, release_statistics

GRID = Grid(kind="uniform", low=0.0, high=100.0, bins=20)


def _table(rows: int, seed: int, *, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    size = rng.choice(["S", "M", "L"], rows, p=[0.2, 0.5, 0.3])
    price = np.clip(rng.normal(40 + shift, 10, rows), 0, 100)
    price[rng.random(rows) < 0.05] = np.nan
    return pd.DataFrame({"size": size, "price": price})


def _statistics(table: pd.DataFrame, noise: float, seed: int = 0):
    inputs = {
        "size": CategoricalInput(table["size"]),
        "price": NumericInput(table["price"].to_numpy(dtype=float), grid=GRID),
    }
    stats, _ = release_statistics(
        inputs, noise_multiplier=noise, threshold_delta=1e-6, noise=SeededNoise(seed)
    )
    return stats


def test_similarity_is_one_minus_total_variation() -> None:
    assert similarity(np.array([2.0, 2.0]), np.array([10.0, 10.0])) == pytest.approx(1.0)
    assert similarity(np.array([1.0, 0.0]), np.array([0.0, 5.0])) == pytest.approx(0.0)
    # negatives clipped, then normalized: [3, 0, 1] / 4 against [1, 1, 2] / 4
    assert similarity(np.array([3.0, -2.0, 1.0]), np.array([1.0, 1.0, 2.0])) == pytest.approx(0.5)
    assert math.isnan(similarity(np.array([-1.0, 0.0]), np.array([1.0, 1.0])))
    with pytest.raises(ValueError):
        similarity(np.ones(3), np.ones(4))


def test_same_distribution_scores_about_one_a_shifted_one_lower() -> None:
    release = _statistics(_table(5000, seed=1), noise=0.0)  # noiseless: exact counts
    same = column_fidelity(release, _statistics(_table(20000, seed=2), noise=0.0))
    shifted = column_fidelity(release, _statistics(_table(20000, seed=3, shift=25), noise=0.0))
    assert all(s["score"] > 0.95 for s in same["scores"].values()), same["scores"]
    assert same["mean"] > 0.97 and same["reference_mean"] == 1.0 and same["noise_std"] == 0.0
    assert shifted["scores"]["price"]["score"] < 0.4
    assert shifted["scores"]["size"]["score"] > 0.95  # that column did not move
    assert shifted["mean"] < same["mean"] - 0.2
    assert same["scores"]["price"]["cells"] == GRID.bins + 1  # grid bins and the missing bin


def test_with_noise_the_score_is_post_processing_of_the_release() -> None:
    real = _table(3000, seed=4)
    release = _statistics(real, noise=3.0)
    del real  # from here on no real row exists: only the release and the synthetic sample
    synthetic = _statistics(_table(20000, seed=5), noise=0.0)
    block = column_fidelity(release, synthetic)
    # The score is the release's own noisy counts (clipped, normalized) against the sample's.
    price = release.columns["price"]
    noisy = np.clip(np.append(price.counts, price.missing), 0, None)
    counts = np.append(synthetic.columns["price"].counts, synthetic.columns["price"].missing)
    expected = 1 - 0.5 * np.abs(noisy / noisy.sum() - counts / counts.sum()).sum()
    assert block["scores"]["price"]["score"] == pytest.approx(expected, rel=1e-12)
    # The same release and sample give the same figures (nothing else is read).
    assert column_fidelity(release, synthetic) == block
    # Stated so readers can judge the noise: std per cell, noisy total, a reference below 1.
    assert block["noise_std"] == pytest.approx(math.sqrt(price.noise_var))
    assert block["total"] == release.row_count  # the noisy count, not the table's
    assert 0 < block["reference_mean"] < 1
    assert "noisy DP release" in block["label"] and "post-processing" in block["label"]


def test_a_category_the_release_never_held_counts_against_the_sample() -> None:
    release = _statistics(_table(2000, seed=6), noise=0.0)
    other = _table(2000, seed=7)
    other.loc[: len(other) // 2, "size"] = "XXL"
    score = column_fidelity(release, _statistics(other, noise=0.0))["scores"]["size"]
    assert score["cells"] == 6  # S, M, L, (other), XXL and missing
    assert score["score"] < 0.6


def test_pair_tables_and_the_summary() -> None:
    rng = np.random.default_rng(8)
    joint = rng.dirichlet(np.ones(12)).reshape(3, 4)
    noisy = {"a|b": joint * 5000, "a|c": np.outer(joint.sum(1), [0.5, 0.5]) * 5000}
    same = {
        k: rng.multinomial(20000, (v / v.sum()).ravel()).reshape(v.shape) for k, v in noisy.items()
    }
    flipped = {k: v[::-1, ::-1] for k, v in same.items()}
    good = table_fidelity(noisy, same, noise_var=0.0, contributors=3)
    bad = table_fidelity(noisy, flipped, noise_var=0.0)
    assert good["kind"] == "pairs" and good["contributors"] == 3
    assert good["mean"] > 0.97 and bad["mean"] < good["mean"] - 0.1
    assert good["scores"]["a|b"]["cells"] == 12
    noisier = table_fidelity(
        {k: v + rng.normal(0, 30, v.shape) for k, v in noisy.items()}, same, noise_var=900.0
    )
    assert noisier["noise_std"] == 30.0 and noisier["reference_mean"] < 1
    columns = column_fidelity(
        _statistics(_table(500, seed=9), 0.0), _statistics(_table(500, seed=9), 0.0)
    )
    summary = summarize({"statistics": columns, "selection": good, "measurement": bad})
    assert summary["column_mean"] == pytest.approx(1.0)
    assert summary["pair_mean"] == good["mean"]  # the release with the most pairs (a tie: first)
    assert summary["pair_reference"] == good["reference_mean"] == 1.0
    assert set(summary["releases"]) == {"statistics", "selection", "measurement"}


def test_the_reference_is_what_a_faithful_sample_scores_under_this_noise() -> None:
    truth = np.array([500.0, 300.0, 150.0, 50.0, 0.0, 0.0, 0.0, 0.0])
    assert noise_reference(truth, truth.sum(), 0.0) == 1.0
    assert 1 > noise_reference(truth, 1000, 5.0) > noise_reference(truth, 1000, 50.0) > 0
    rng = np.random.default_rng(10)
    faithful = truth * 20  # the real distribution, more rows
    for std in (5.0, 30.0):
        scores = [similarity(truth + rng.normal(0, std, truth.shape), faithful) for _ in range(200)]
        reference = noise_reference(faithful, truth.sum(), std, draws=200)
        assert np.mean(scores) == pytest.approx(reference, abs=0.01)
