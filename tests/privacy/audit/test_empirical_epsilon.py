import math

import numpy as np
import pytest
from scipy.stats import binomtest

from privacy.audit.empirical_epsilon import (
    audit_scores,
    clopper_pearson_lower,
    clopper_pearson_upper,
    epsilon_lower_bound,
)


@pytest.mark.parametrize("k,n", [(0, 50), (1, 50), (17, 50), (49, 50), (50, 50), (950, 1000)])
def test_clopper_pearson_matches_scipy_exact_interval(k, n):
    alpha = 0.025  # one-sided level = the tail of a two-sided 95% interval
    ci = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(ci.low, abs=1e-9)
    assert clopper_pearson_upper(k, n, alpha) == pytest.approx(ci.high, abs=1e-9)


def test_bound_on_known_counts():
    result = epsilon_lower_bound(900, 1000, 100, 1000, delta=1e-5, confidence=0.95)
    ci_tpr = binomtest(900, 1000).proportion_ci(confidence_level=0.95, method="exact")
    ci_fpr = binomtest(100, 1000).proportion_ci(confidence_level=0.95, method="exact")
    assert result["tpr_lower"] == pytest.approx(ci_tpr.low)
    assert result["fpr_upper"] == pytest.approx(ci_fpr.high)
    expected = max(
        math.log((ci_tpr.low - 1e-5) / ci_fpr.high),
        math.log((1 - ci_fpr.high - 1e-5) / (1 - ci_tpr.low)),
    )
    assert result["epsilon_lower_bound"] == pytest.approx(expected)
    assert 1.5 < expected < math.log(9)  # below the point estimate log(0.9 / 0.1)


def test_bound_is_zero_without_signal():
    assert epsilon_lower_bound(100, 1000, 100, 1000, delta=0)["epsilon_lower_bound"] == 0.0
    assert epsilon_lower_bound(0, 10, 0, 10, delta=0)["epsilon_lower_bound"] == 0.0


def test_audit_scores_no_selection_bias_on_noise():
    rng = np.random.default_rng(3)
    bounds = [
        audit_scores(rng.normal(size=2000), rng.normal(size=2000), delta=0, seed=s)[
            "epsilon_lower_bound"
        ]
        for s in range(5)
    ]
    assert max(bounds) <= 0.1


def test_audit_scores_finds_signal():
    rng = np.random.default_rng(4)
    result = audit_scores(rng.normal(3, 1, 2000), rng.normal(0, 1, 2000), delta=0)
    assert result["epsilon_lower_bound"] > 2.0
    assert 0 <= result["threshold_quantile"] <= 1
