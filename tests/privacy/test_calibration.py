"""Tests of noise calibration against the ledger."""

from __future__ import annotations

import itertools
import math

import pytest

from privacy.calibration import calibrate_noise_multiplier, gaussian_noise_multiplier
from privacy.ledger import DISCRETE_GAUSSIAN, MechanismRecord, PrivacyLedger

TARGET = 2.0
Q = 0.01
STEPS = 1000


def _plan(sigma: float) -> list[MechanismRecord]:
    return [MechanismRecord("dp-sgd", sigma, Q, STEPS)]


@pytest.fixture(scope="module")
def fresh_sigma() -> float:
    ledger = PrivacyLedger(epsilon_budget=TARGET, delta=1e-5)
    return calibrate_noise_multiplier(ledger, target_epsilon=TARGET, sample_rate=Q, steps=STEPS)


def test_calibrated_sigma_is_tight(fresh_sigma):
    ledger = PrivacyLedger(epsilon_budget=TARGET, delta=1e-5)
    eps = ledger.epsilon_after(_plan(fresh_sigma))
    assert eps <= TARGET
    assert eps >= 0.99 * TARGET
    # The search stops within 0.1% of sigma: 0.2% less noise must already be too little.
    assert ledger.epsilon_after(_plan(0.998 * fresh_sigma)) > TARGET
    ledger.check(_plan(fresh_sigma))  # the ledger's own budget check agrees
    # Calibration neither records anything nor changes the ledger.
    assert ledger.records == []


def test_calibration_accounts_for_prior_spending(fresh_sigma):
    ledger = PrivacyLedger(epsilon_budget=TARGET, delta=1e-5)
    ledger.record(MechanismRecord("statistics", 6.0, 1.0, 1, extra_delta=1e-6))
    ledger.record(MechanismRecord("pretraining", 8.0, 1.0, 1))  # q=1: cheap to account
    spent = ledger.epsilon()
    assert 0 < spent < TARGET
    sigma = calibrate_noise_multiplier(ledger, target_epsilon=TARGET, sample_rate=Q, steps=STEPS)
    assert sigma > fresh_sigma * 1.01
    after = ledger.epsilon_after(_plan(sigma))
    assert 0.99 * TARGET <= after <= TARGET
    # The noise that was enough for a fresh ledger is not enough for this one.
    assert ledger.epsilon_after(_plan(fresh_sigma)) > TARGET
    assert ledger.epsilon() == spent


def test_gaussian_noise_multiplier_single_release():
    epsilons = [0.25, 0.5, 1.0, 2.0, 4.0]
    sigmas = [gaussian_noise_multiplier(epsilon=e, delta=1e-6) for e in epsilons]
    # More budget, less noise; strictly.
    assert all(a > b > 0 for a, b in itertools.pairwise(sigmas))
    # Roughly inverse in epsilon for small epsilon (sigma ~ sqrt(2 log(1/delta)) / eps).
    assert sigmas[0] / sigmas[1] == pytest.approx(2.0, rel=0.15)
    for eps, sigma in zip(epsilons, sigmas, strict=True):
        ledger = PrivacyLedger(epsilon_budget=eps, delta=1e-6)
        got = ledger.epsilon_after([MechanismRecord("gaussian", sigma, 1.0, 1)])
        assert 0.99 * eps <= got <= eps
    # Smaller delta needs more noise.
    assert gaussian_noise_multiplier(epsilon=1.0, delta=1e-9) > sigmas[2]


def test_infinite_target_means_no_noise():
    assert gaussian_noise_multiplier(epsilon=math.inf, delta=1e-5) == 0.0
    ledger = PrivacyLedger(epsilon_budget=1.0, delta=1e-5)
    assert (
        calibrate_noise_multiplier(ledger, target_epsilon=math.inf, sample_rate=Q, steps=STEPS)
        == 0.0
    )


def test_already_spent_ledger_raises():
    ledger = PrivacyLedger(epsilon_budget=1.0, delta=1e-5, owner="merchant-2")
    ledger.record(MechanismRecord("statistics", 0.5, 1.0, 1))
    assert ledger.epsilon() > 1.0
    with pytest.raises(ValueError, match="merchant-2"):
        calibrate_noise_multiplier(ledger, target_epsilon=1.0, sample_rate=Q, steps=10)
    # An extra delta that uses up all of delta leaves nothing to calibrate either.
    no_delta = PrivacyLedger(epsilon_budget=1.0, delta=1e-5)
    no_delta.record(MechanismRecord("statistics", 50.0, 1.0, 1, extra_delta=1e-5))
    with pytest.raises(ValueError):
        calibrate_noise_multiplier(no_delta, target_epsilon=1.0, sample_rate=Q, steps=10)


def test_discrete_releases_are_calibrated_as_discrete_gaussian_records():
    """The plan is a record of the kind that will be recorded: a discrete Gaussian release
    (never subsampled) calibrated to its budget share lands on it."""
    ledger = PrivacyLedger(epsilon_budget=1.0, delta=1e-6)
    ledger.record(MechanismRecord("dp-sgd", 1.5, Q, 200))
    sigma = calibrate_noise_multiplier(
        ledger, target_epsilon=1.0, sample_rate=1.0, steps=1, mechanism=DISCRETE_GAUSSIAN
    )
    planned = MechanismRecord("m", sigma, 1.0, 1, mechanism=DISCRETE_GAUSSIAN)
    assert 0.99 <= ledger.epsilon_after([planned]) <= 1.0
    with pytest.raises(ValueError, match="not subsampled"):
        calibrate_noise_multiplier(
            ledger, target_epsilon=1.0, sample_rate=0.5, steps=1, mechanism=DISCRETE_GAUSSIAN
        )
    alone = gaussian_noise_multiplier(epsilon=0.5, delta=1e-6, mechanism=DISCRETE_GAUSSIAN)
    scratch = PrivacyLedger(epsilon_budget=0.5, delta=1e-6)
    release = MechanismRecord("s", alone, 1.0, 1, mechanism=DISCRETE_GAUSSIAN)
    assert 0.99 * 0.5 <= scratch.epsilon_after([release]) <= 0.5
