"""Calibrate Gaussian noise to a budget, given what a ledger has already spent."""

from __future__ import annotations

import math

from privacy.ledger import GAUSSIAN, MechanismRecord, PrivacyLedger


def calibrate_noise_multiplier(
    ledger: PrivacyLedger,
    *,
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    label: str = "dp-sgd",
    tolerance: float = 1e-3,
    mechanism: str = GAUSSIAN,
) -> float:
    """Smallest noise multiplier such that the ledger plus ``steps`` new steps of
    ``mechanism`` stays within ``target_epsilon`` (at the ledger's delta). The planned steps are
    all future rounds, so the noise is fixed once for the whole federation."""
    if math.isinf(target_epsilon):
        return 0.0
    if ledger.epsilon() >= target_epsilon:
        raise ValueError(
            f"nothing left to calibrate: {ledger.owner!r} has already spent "
            f"epsilon={ledger.epsilon():.4f} >= target {target_epsilon}"
        )

    def eps(sigma: float) -> float:
        planned = MechanismRecord(label, sigma, sample_rate, steps, mechanism=mechanism)
        return ledger.epsilon_after([planned])

    low, high = 0.0, 1.0
    while eps(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e5:
            raise ValueError(f"cannot reach epsilon={target_epsilon} with {steps} steps")
    while high - low > tolerance * high:
        mid = (low + high) / 2
        if eps(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high


def gaussian_noise_multiplier(*, epsilon: float, delta: float, mechanism: str = GAUSSIAN) -> float:
    """Noise multiplier of a single (discrete) Gaussian release costing ``epsilon`` alone
    (RDP-converted)."""
    if math.isinf(epsilon):
        return 0.0
    scratch = PrivacyLedger(epsilon_budget=epsilon, delta=delta)
    return calibrate_noise_multiplier(
        scratch, target_epsilon=epsilon, sample_rate=1.0, steps=1, label=mechanism,
        mechanism=mechanism,
    )  # fmt: skip
