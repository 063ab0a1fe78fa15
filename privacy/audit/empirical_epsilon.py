"""Empirical lower bound on epsilon from a membership-inference attack.

An (epsilon, delta)-DP mechanism bounds every membership test: TPR <= e^eps FPR + delta and
(1 - FPR) <= e^eps (1 - TPR) + delta. So any attack's (TPR, FPR) gives

    eps >= max(log((TPR - delta) / FPR), log((1 - FPR - delta) / (1 - TPR))).

To make this a statistical statement, TPR is replaced by its one-sided Clopper-Pearson lower
bound and FPR by its one-sided upper bound, each at level ``1 - (1 - confidence) / 2`` (a union
bound, so both hold together with probability >= ``confidence``). The decision threshold is
chosen on one seeded half of the members and non-members (the one maximising the same bound
there) and the bound is evaluated on the other half only, so the choice of threshold does not
inflate it.

Caveat: every scored record is treated as one independent trial of the same test. That is the
usual (heuristic) reading of a one-run audit; a strictly valid one-run bound needs members drawn
by independent coin flips (Steinke, Nasr & Jagielski 2023). A bound of 0 means "no evidence of
leakage", not a proof of privacy.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta

NUM_THRESHOLDS = 200


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) exact lower bound of a binomial proportion."""
    if successes <= 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


def clopper_pearson_upper(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) exact upper bound of a binomial proportion."""
    if successes >= trials:
        return 1.0
    return float(beta.ppf(1 - alpha, successes + 1, trials - successes))


def _log_ratio(numerator: float, denominator: float) -> float:
    if numerator <= 0:
        return 0.0
    if denominator <= 0:
        return math.inf
    return max(0.0, math.log(numerator / denominator))


def epsilon_lower_bound(
    true_positives: int,
    members: int,
    false_positives: int,
    nonmembers: int,
    *,
    delta: float,
    confidence: float = 0.95,
) -> dict:
    """Lower bound on epsilon (>= 0) from the counts of one fixed-threshold attack:
    ``true_positives`` of ``members`` and ``false_positives`` of ``nonmembers`` flagged."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    if members <= 0 or nonmembers <= 0:
        raise ValueError("need at least one member and one non-member")
    alpha = (1 - confidence) / 2
    tpr_lower = clopper_pearson_lower(true_positives, members, alpha)
    fpr_upper = clopper_pearson_upper(false_positives, nonmembers, alpha)
    bound = max(
        _log_ratio(tpr_lower - delta, fpr_upper),
        _log_ratio(1 - fpr_upper - delta, 1 - tpr_lower),
    )
    return {
        "epsilon_lower_bound": float(bound),
        "tpr_lower": tpr_lower,
        "fpr_upper": fpr_upper,
        "confidence": confidence,
    }


def _counts(member_scores: np.ndarray, nonmember_scores: np.ndarray, threshold: float):
    return int((member_scores >= threshold).sum()), int((nonmember_scores >= threshold).sum())


def audit_scores(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Split members and non-members in seeded halves, pick the threshold (records with score
    >= threshold are called members) maximising the bound on the first half, and return the
    bound on the second half, with ``threshold_quantile``: the threshold's quantile among the
    selection half's scores (the threshold value itself is not returned)."""
    member_scores = np.asarray(member_scores, dtype=np.float64)
    nonmember_scores = np.asarray(nonmember_scores, dtype=np.float64)
    if len(member_scores) < 2 or len(nonmember_scores) < 2:
        raise ValueError("need at least two members and two non-members")
    rng = np.random.default_rng(seed)
    m_order, n_order = rng.permutation(len(member_scores)), rng.permutation(len(nonmember_scores))
    m_sel, m_eval = np.array_split(member_scores[m_order], 2)
    n_sel, n_eval = np.array_split(nonmember_scores[n_order], 2)
    pooled = np.concatenate([m_sel, n_sel])
    quantiles = np.linspace(0.0, 1.0, NUM_THRESHOLDS + 1)
    thresholds = np.unique(np.quantile(pooled, quantiles, method="inverted_cdf"))
    best_threshold, best = thresholds[0], -1.0
    for threshold in thresholds:
        tp, fp = _counts(m_sel, n_sel, threshold)
        bound = epsilon_lower_bound(
            tp, len(m_sel), fp, len(n_sel), delta=delta, confidence=confidence
        )["epsilon_lower_bound"]
        if bound > best:
            best_threshold, best = threshold, bound
    tp, fp = _counts(m_eval, n_eval, best_threshold)
    out = epsilon_lower_bound(tp, len(m_eval), fp, len(n_eval), delta=delta, confidence=confidence)
    out["threshold_quantile"] = float((pooled < best_threshold).mean())
    out["delta"] = float(delta)
    out["evaluation_members"], out["evaluation_nonmembers"] = len(m_eval), len(n_eval)
    return out
