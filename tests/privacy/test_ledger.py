"""Tests of the per-owner privacy ledger (RDP composition of subsampled Gaussian mechanisms).

The ledger's epsilon is checked against (a) an RDP accountant written here from scratch with
numpy/scipy only, and (b) a different accountant (Opacus' PRV accountant), which is tighter.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy.special import gammaln, logsumexp

from privacy.ledger import (
    DISCRETE_GAUSSIAN,
    RDP_ORDERS,
    BudgetExceededError,
    MechanismRecord,
    PrivacyLedger,
)

# ----------------------------------------------------------------------------------------------
# Independent reference accountant (no opacus): exact RDP of the Poisson-subsampled Gaussian
# mechanism at integer orders (Mironov, Talwar, Zhang 2019, binomial expansion), composed by
# summation and converted to (eps, delta) with Balle et al. 2020 (Theorem 21), as Opacus does.
# ----------------------------------------------------------------------------------------------
INTEGER_ORDERS = np.arange(2, 257)


def _log_a(q: float, sigma: float, alpha: int) -> float:
    """log A_alpha = log sum_k C(alpha,k) (1-q)^(alpha-k) q^k exp((k^2-k)/(2 sigma^2))."""
    k = np.arange(alpha + 1, dtype=float)
    log_binom = gammaln(alpha + 1) - gammaln(k + 1) - gammaln(alpha - k + 1)
    terms = log_binom + (alpha - k) * np.log1p(-q) + k * np.log(q) + (k * k - k) / (2.0 * sigma**2)
    return float(logsumexp(terms))


def reference_rdp(q: float, sigma: float, alpha: int) -> float:
    """RDP of one step of the Poisson-subsampled Gaussian mechanism at integer order alpha."""
    if q == 1.0:
        return alpha / (2.0 * sigma**2)
    return _log_a(q, sigma, alpha) / (alpha - 1)


def reference_discrete_gaussian_rdp(sigma: float, alpha: int) -> float:
    """D_alpha(N_Z(0, sigma^2) || N_Z(1, sigma^2)) summed numerically over the integers, from
    the pmf's definition (no closed form used)."""
    x = np.arange(-alpha - int(30 * sigma) - 60, alpha + int(30 * sigma) + 61, dtype=float)
    log_z = logsumexp(-(x**2) / (2 * sigma**2))  # the same normalizer for both (shift 1)
    log_p, log_q = -(x**2) / (2 * sigma**2) - log_z, -((x - 1) ** 2) / (2 * sigma**2) - log_z
    return float(logsumexp(alpha * log_p + (1 - alpha) * log_q)) / (alpha - 1)


def _record_rdp(record: MechanismRecord, alpha: int) -> float:
    """One record's RDP from its parameters: a discrete Gaussian release moves
    ``l2_sensitivity^2`` cells by 1, each with noise ``noise_multiplier * l2_sensitivity``."""
    if record.mechanism == DISCRETE_GAUSSIAN:
        cells = round(record.l2_sensitivity**2)
        assert cells == pytest.approx(record.l2_sensitivity**2)  # the test's releases: k tables
        sigma = record.noise_multiplier * record.l2_sensitivity
        return cells * reference_discrete_gaussian_rdp(sigma, alpha)
    return reference_rdp(record.sample_rate, record.noise_multiplier, alpha)


def reference_epsilon(history: list, delta: float) -> float:
    """Epsilon at ``delta`` of the composition of ``(sigma, q, steps)`` entries or records."""
    rdp = np.zeros(len(INTEGER_ORDERS))
    for entry in history:
        if not isinstance(entry, MechanismRecord):
            entry = MechanismRecord("", entry[0], entry[1], entry[2])
        rdp += entry.steps * np.array([_record_rdp(entry, int(a)) for a in INTEGER_ORDERS])
    alphas = INTEGER_ORDERS.astype(float)
    eps = rdp - (np.log(delta) + np.log(alphas)) / (alphas - 1) + np.log((alphas - 1) / alphas)
    return float(np.min(eps))


def _ledger(
    records: list[MechanismRecord], *, delta: float = 1e-5, owner: str = "m"
) -> PrivacyLedger:
    ledger = PrivacyLedger(epsilon_budget=100.0, delta=delta, owner=owner)
    for r in records:
        ledger.record(r)
    return ledger


# -- the reference itself ------------------------------------------------------------------------
def test_reference_rdp_closed_forms():
    # Order 2 has a closed form: A_2 = 1 + q^2 (exp(1/sigma^2) - 1).
    for q, sigma in [(1e-4, 2.0), (0.01, 1.0), (0.3, 0.7)]:
        expected = math.log1p(q**2 * math.expm1(1.0 / sigma**2))
        assert reference_rdp(q, sigma, 2) == pytest.approx(expected, rel=1e-10)
    # The binomial expansion tends to the unsubsampled Gaussian alpha / (2 sigma^2) as q -> 1.
    for alpha in (2, 7, 40):
        assert reference_rdp(1 - 1e-12, 1.3, alpha) == pytest.approx(alpha / (2 * 1.3**2), rel=1e-6)
    # Subsampling amplifies: smaller q, smaller RDP.
    assert reference_rdp(0.01, 1.0, 8) < reference_rdp(0.1, 1.0, 8) < reference_rdp(1.0, 1.0, 8)
    # The discrete Gaussian's RDP at integer orders is the Gaussian's alpha / (2 sigma^2)
    # (CKS20: exact there), even for sigma below 1 where the pmf is far from a bell.
    for sigma in (0.4, 1.0, 3.0, 25.0):
        for alpha in (2, 5, 64):
            expected = alpha / (2 * sigma**2)
            assert reference_discrete_gaussian_rdp(sigma, alpha) == pytest.approx(
                expected, rel=1e-9
            )


# -- ledger vs the independent recomputation -----------------------------------------------------
# Tolerance 1% relative: the ledger (Opacus' compute_rdp) and the reference evaluate the same
# exact formula at integer orders, so they agree to rounding whenever an integer order is
# optimal. The ledger additionally uses fractional orders 1.25, 1.5, 1.75; those can only lower
# the minimum, so the ledger must never be above the reference (checked with 1e-9 slack).
HISTORIES = {
    "dp-sgd only": (1e-5, [MechanismRecord("dp-sgd", 1.0, 0.01, 1000)]),
    "statistics + dp-sgd": (
        1e-5,
        [MechanismRecord("statistics", 5.0, 1.0, 1), MechanismRecord("dp-sgd", 1.1, 0.02, 500)],
    ),
    "several labels": (
        1e-6,
        [
            MechanismRecord("statistics", 8.0, 1.0, 1),
            MechanismRecord("gan", 1.0, 0.01, 300),
            MechanismRecord("vae", 1.5, 0.05, 200),
            MechanismRecord("gan", 1.0, 0.01, 300),
        ],
    ),
    "sparse statistics (extra delta)": (
        1e-5,
        [
            MechanismRecord("statistics", 4.0, 1.0, 1, extra_delta=2e-6),
            MechanismRecord("dp-sgd", 1.0, 0.01, 500),
        ],
    ),
    "discrete Gaussian releases + dp-sgd": (
        1e-6,
        [
            MechanismRecord(
                "encoder-statistics", 9.0, 1.0, 1, extra_delta=1e-7,
                mechanism=DISCRETE_GAUSSIAN, l2_sensitivity=math.sqrt(13), dimension=0,
            ),
            MechanismRecord(
                "marginals-selection", 2.2, 1.0, 1,
                mechanism=DISCRETE_GAUSSIAN, l2_sensitivity=math.sqrt(29), dimension=4000,
            ),
            MechanismRecord(
                "marginals-measurement", 1.4, 1.0, 1,
                mechanism=DISCRETE_GAUSSIAN, l2_sensitivity=math.sqrt(9), dimension=700,
            ),
            MechanismRecord("dp-sgd", 1.2, 0.02, 300),
        ],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(HISTORIES))
def test_epsilon_matches_independent_rdp(name):
    delta, records = HISTORIES[name]
    ledger = _ledger(records, delta=delta)
    effective_delta = delta - sum(r.extra_delta for r in records)
    expected = reference_epsilon(records, effective_delta)
    got = ledger.epsilon()
    assert 0 < expected < 50
    assert got <= expected + 1e-9
    assert got == pytest.approx(expected, rel=0.01)


def test_extra_delta_is_taken_from_delta():
    records = HISTORIES["sparse statistics (extra delta)"][1]
    with_extra = _ledger(records, delta=1e-5)
    no_extra = _ledger(
        [MechanismRecord(r.label, r.noise_multiplier, r.sample_rate, r.steps) for r in records],
        delta=1e-5,
    )
    assert with_extra.extra_delta == pytest.approx(2e-6)
    # Same RDP curve, smaller effective delta -> strictly larger epsilon ...
    assert with_extra.epsilon() > no_extra.epsilon()
    # ... which is exactly the epsilon without extra delta at delta - extra_delta.
    at_reduced = _ledger(no_extra.records, delta=8e-6)
    assert with_extra.epsilon() == pytest.approx(at_reduced.epsilon(), rel=1e-12)
    # Extra delta that eats the whole delta gives no guarantee at all.
    hopeless = _ledger([MechanismRecord("statistics", 4.0, 1.0, 1, extra_delta=1e-5)], delta=1e-5)
    assert hopeless.epsilon() == math.inf


def test_fractional_orders_only_lower_epsilon_at_large_epsilon():
    # A weak-privacy history whose optimum lies below order 2: the fractional orders matter.
    records = [MechanismRecord("dp-sgd", 0.6, 0.1, 1000)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "optimal order is the smallest alpha"
        got = _ledger(records).epsilon()
    expected = reference_epsilon([(0.6, 0.1, 1000)], 1e-5)
    assert got < expected
    assert min(RDP_ORDERS) < 2


# -- a different accountant ----------------------------------------------------------------------
# Measured ledger/PRV ratios (delta=1e-5): 1.147 for (1.0, 0.01, 1000), 1.105 for the two-phase
# history below. RDP is an upper bound on the (near-exact) PRV epsilon, and loose by < 30% here.
@pytest.mark.parametrize(
    "history",
    [
        [(1.0, 0.01, 1000)],
        [(1.0, 0.01, 1000), (2.0, 0.05, 200)],
    ],
)
def test_ledger_upper_bounds_prv_accountant(history):
    from opacus.accountants import PRVAccountant

    ledger = _ledger([MechanismRecord(f"phase{i}", *h) for i, h in enumerate(history)])
    prv = PRVAccountant()
    prv.history = list(history)
    prv_eps = prv.get_epsilon(delta=1e-5)
    rdp_eps = ledger.epsilon()
    assert prv_eps <= rdp_eps
    assert rdp_eps <= 1.3 * prv_eps


# -- behaviour -----------------------------------------------------------------------------------
def test_epsilon_grows_strictly_with_steps():
    eps = [_ledger([MechanismRecord("dp-sgd", 1.0, 0.01, t)]).epsilon() for t in (10, 200, 2000)]
    assert 0 < eps[0] < eps[1] < eps[2]
    ledger = _ledger([MechanismRecord("statistics", 3.0, 1.0, 1)])
    before = ledger.epsilon()
    ledger.record(MechanismRecord("statistics", 3.0, 1.0, 1))
    assert ledger.epsilon() > before
    assert PrivacyLedger(epsilon_budget=1.0, delta=1e-5).epsilon() == 0.0


def test_state_dict_round_trip_through_json():
    ledger = PrivacyLedger(epsilon_budget=3.0, delta=1e-6, owner="merchant-3")
    ledger.record(MechanismRecord("statistics", 6.0, 1.0, 1, extra_delta=1e-7))
    ledger.record(MechanismRecord("gan", 1.2, 0.02, 150))
    state = ledger.state_dict()
    assert state["epsilon"] == ledger.epsilon()
    for restored in (
        PrivacyLedger.from_state_dict(state),
        PrivacyLedger.from_state_dict(json.loads(json.dumps(state))),
    ):
        assert restored.records == ledger.records
        assert restored.owner == "merchant-3"
        assert restored.epsilon_budget == 3.0
        assert restored.delta == 1e-6
        assert restored.extra_delta == ledger.extra_delta
        assert restored.epsilon() == ledger.epsilon()
    # The restored ledger keeps accounting: further steps add to what was restored.
    restored.record(MechanismRecord("gan", 1.2, 0.02, 150))
    assert restored.records[-1].steps == 300
    assert restored.epsilon() > ledger.epsilon()


def test_old_ledgers_load_as_gaussian_records():
    """A ledger saved before records had a mechanism kind: its records are Gaussian ones."""
    old = {
        "owner": "m",
        "epsilon_budget": 2.0,
        "delta": 1e-5,
        "records": [{"label": "dp-sgd", "noise_multiplier": 1.0, "sample_rate": 0.01,
                     "steps": 100, "extra_delta": 0.0}],
    }  # fmt: skip
    restored = PrivacyLedger.from_state_dict(old)
    assert restored.records == [MechanismRecord("dp-sgd", 1.0, 0.01, 100)]
    assert restored.records[0].mechanism == "gaussian"
    assert restored.epsilon() == _ledger([MechanismRecord("dp-sgd", 1.0, 0.01, 100)]).epsilon()


def test_mechanism_kinds_are_checked():
    with pytest.raises(ValueError, match="unknown mechanism"):
        MechanismRecord("x", 1.0, 1.0, 1, mechanism="laplace")
    with pytest.raises(ValueError, match="not subsampled"):
        MechanismRecord("x", 1.0, 0.5, 1, mechanism=DISCRETE_GAUSSIAN)
    # A discrete and a continuous release of the same noise are not merged into one record.
    ledger = PrivacyLedger(epsilon_budget=10.0, delta=1e-5)
    ledger.record(MechanismRecord("s", 3.0, 1.0, 1))
    ledger.record(MechanismRecord("s", 3.0, 1.0, 1, mechanism=DISCRETE_GAUSSIAN))
    ledger.record(MechanismRecord("s", 3.0, 1.0, 1, mechanism=DISCRETE_GAUSSIAN))
    assert [(r.mechanism, r.steps) for r in ledger.records] == [
        ("gaussian", 1),
        (DISCRETE_GAUSSIAN, 2),
    ]


def test_record_merges_consecutive_identical_mechanisms_only():
    ledger = PrivacyLedger(epsilon_budget=10.0, delta=1e-5)
    ledger.record(MechanismRecord("gan", 1.0, 0.01, 5))
    ledger.record(MechanismRecord("gan", 1.0, 0.01, 7))
    assert ledger.records == [MechanismRecord("gan", 1.0, 0.01, 12)]
    ledger.record(MechanismRecord("vae", 1.0, 0.01, 1))  # other label
    ledger.record(MechanismRecord("vae", 1.1, 0.01, 1))  # other noise
    ledger.record(MechanismRecord("vae", 1.1, 0.02, 1))  # other rate
    ledger.record(MechanismRecord("gan", 1.0, 0.01, 3))  # same as an earlier, not the last one
    assert [(r.label, r.noise_multiplier, r.sample_rate, r.steps) for r in ledger.records] == [
        ("gan", 1.0, 0.01, 12),
        ("vae", 1.0, 0.01, 1),
        ("vae", 1.1, 0.01, 1),
        ("vae", 1.1, 0.02, 1),
        ("gan", 1.0, 0.01, 3),
    ]
    # Releases with an extra delta are never merged: each one costs its own delta.
    sparse = MechanismRecord("statistics", 4.0, 1.0, 1, extra_delta=1e-7)
    ledger.record(sparse)
    ledger.record(sparse)
    assert ledger.records[-2:] == [sparse, sparse]
    assert ledger.extra_delta == pytest.approx(2e-7)
    # Merging is composition: the merged record costs the same as the separate ones.
    merged = PrivacyLedger(epsilon_budget=10.0, delta=1e-5)
    for _ in range(3):
        merged.record(MechanismRecord("statistics", 2.0, 1.0, 1))
    assert len(merged.records) == 1
    separate = [MechanismRecord("statistics", 2.0, 1.0, 1)] * 3
    assert merged.epsilon() == pytest.approx(merged.epsilon(separate), rel=1e-12)


def test_check_refuses_plans_past_the_budget():
    ledger = PrivacyLedger(epsilon_budget=2.0, delta=1e-5, owner="merchant-7")
    step = MechanismRecord("dp-sgd", 1.0, 0.01, 1)
    ok = MechanismRecord("dp-sgd", 1.0, 0.01, 800)  # epsilon ~1.9
    too_many = MechanismRecord("dp-sgd", 1.0, 0.01, 1200)  # epsilon ~2.4
    assert ledger.epsilon_after([ok]) < 2.0 < ledger.epsilon_after([too_many])
    ledger.check([ok])
    with pytest.raises(BudgetExceededError, match="merchant-7"):
        ledger.check([too_many])
    assert ledger.records == []  # check never records anything
    # What was already spent counts: after 500 steps, 800 more no longer fit.
    ledger.record(MechanismRecord("dp-sgd", 1.0, 0.01, 500))
    with pytest.raises(BudgetExceededError, match="merchant-7"):
        ledger.check([ok])
    ledger.check([step])
    assert issubclass(BudgetExceededError, RuntimeError)


def test_zero_noise_is_infinite_epsilon():
    ledger = _ledger([MechanismRecord("dp-sgd", 1.0, 0.01, 10)])
    assert math.isfinite(ledger.epsilon())
    ledger.record(MechanismRecord("debug", 0.0, 1.0, 1))
    assert ledger.epsilon() == math.inf
    assert ledger.remaining == 0.0
    with pytest.raises(BudgetExceededError):
        ledger.check([])


@pytest.mark.parametrize(
    ("budget", "delta"),
    [
        (0.0, 1e-5),
        (-1.0, 1e-5),
        (float("nan"), 1e-5),
        (1.0, 0.0),
        (1.0, 1.0),
        (1.0, -1e-5),
        (1.0, 2.0),
    ],
)
def test_invalid_budget_or_delta(budget, delta):
    with pytest.raises(ValueError):
        PrivacyLedger(epsilon_budget=budget, delta=delta)


def test_optimizer_hook_records_one_step_per_call():
    class StandInOptimizer:
        noise_multiplier = 1.3

    ledger = PrivacyLedger(epsilon_budget=10.0, delta=1e-5)
    hook = ledger.optimizer_hook(sample_rate=0.02, label="gan")
    opt = StandInOptimizer()
    for _ in range(3):
        hook(opt)
    assert ledger.records == [MechanismRecord("gan", 1.3, 0.02, 3)]
    opt.noise_multiplier = 2  # an int noise multiplier is stored as a float
    hook(opt)
    assert ledger.records[-1] == MechanismRecord("gan", 2.0, 0.02, 1)
    assert isinstance(ledger.records[-1].noise_multiplier, float)
    assert len(ledger.records) == 2
    expected = ledger.epsilon(
        [MechanismRecord("x", 1.3, 0.02, 3), MechanismRecord("y", 2.0, 0.02, 1)]
    )
    assert ledger.epsilon() == pytest.approx(expected, rel=1e-12)


def test_epsilon_by_label():
    stats = MechanismRecord("statistics", 4.0, 1.0, 1)
    gan_a = MechanismRecord("gan", 1.0, 0.01, 200)
    vae = MechanismRecord("vae", 2.0, 0.01, 100)
    gan_b = MechanismRecord("gan", 1.0, 0.01, 200)
    ledger = _ledger([stats, gan_a, vae, gan_b])
    by_label = ledger.epsilon_by_label()
    assert list(by_label) == ["statistics", "gan", "vae"]
    assert by_label["statistics"] == pytest.approx(_ledger([stats]).epsilon(), rel=1e-12)
    assert by_label["gan"] == pytest.approx(
        _ledger([MechanismRecord("gan", 1.0, 0.01, 400)]).epsilon(), rel=1e-12
    )
    assert by_label["vae"] == pytest.approx(_ledger([vae]).epsilon(), rel=1e-12)
    total = ledger.epsilon()
    # RDP composition of the parts: more than any part, less than the sum of parts.
    assert max(by_label.values()) < total < sum(by_label.values())
