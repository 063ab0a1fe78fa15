"""The noise source of every DP release: unseedable by default, and exactly the distributions
the ledger accounts for (checked against pmfs computed here from their definitions)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import stats

from privacy.noise import (
    GAUSSIAN_DRAWS,
    NoiseSource,
    SecureNoise,
    SeededNoise,
    _rational_variance,
)


def _dg_pmf(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """N_Z(0, sigma^2) from its definition, on a support wide enough for float precision."""
    support = np.arange(-int(40 * sigma) - 40, int(40 * sigma) + 41)
    weights = np.exp(-(support.astype(float) ** 2) / (2 * sigma**2))
    return support, weights / weights.sum()


# -- no seed reaches the secure source -----------------------------------------------------------
def test_secure_noise_accepts_no_seed():
    with pytest.raises(TypeError):
        SecureNoise(0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        SecureNoise(seed=0)  # type: ignore[call-arg]
    assert repr(SecureNoise()) == "SecureNoise()"


def test_secure_draws_never_repeat_seeded_draws_do():
    a, b = SecureNoise(), SecureNoise()
    assert not np.array_equal(a.words(4), b.words(4))
    assert not np.array_equal(a.discrete_gaussian(3.0, 2000), a.discrete_gaussian(3.0, 2000))
    assert not torch.equal(a.torch_normal(1.0, (500,)), b.torch_normal(1.0, (500,)))
    np.testing.assert_array_equal(
        SeededNoise(7).discrete_gaussian(3.0, 2000), SeededNoise(7).discrete_gaussian(3.0, 2000)
    )
    assert not np.array_equal(
        SeededNoise(7).discrete_gaussian(3.0, 2000), SeededNoise(8).discrete_gaussian(3.0, 2000)
    )


# -- the discrete Gaussian -----------------------------------------------------------------------
@pytest.mark.parametrize(("sigma", "n"), [(0.5, 200_000), (3.0, 200_000), (40.0, 100_000)])
def test_discrete_gaussian_has_the_recorded_scale(sigma, n):
    """Integer draws whose mean and variance are those of N_Z(0, sigma^2) (whose variance is
    below sigma^2 for small sigma: 0.215 at sigma 0.5), within 5 standard errors."""
    draws = SeededNoise(round(sigma * 10)).discrete_gaussian(sigma, n)
    assert draws.dtype == np.int64 and draws.shape == (n,)
    support, pmf = _dg_pmf(sigma)
    var = float(pmf @ support.astype(float) ** 2)
    fourth = float(pmf @ support.astype(float) ** 4)
    if sigma == 0.5:
        assert var == pytest.approx(0.2150, abs=1e-4)  # not 0.25: the check can tell
    assert abs(draws.mean()) < 5 * math.sqrt(var / n)
    assert abs(draws.var() - var) < 5 * math.sqrt((fourth - var**2) / n)


@pytest.mark.parametrize("sigma", [0.5, 3.0])
def test_discrete_gaussian_matches_its_pmf(sigma):
    """Chi-square goodness of fit against the exact pmf (cells expecting >= 20 draws)."""
    n = 200_000
    draws = SeededNoise(11).discrete_gaussian(sigma, n)
    support, pmf = _dg_pmf(sigma)
    expected = pmf * n
    cells = expected >= 20
    observed = np.array([(draws == v).sum() for v in support[cells]])
    rest_observed, rest_expected = n - observed.sum(), n - expected[cells].sum()
    result = stats.chisquare(
        np.append(observed, rest_observed), np.append(expected[cells], rest_expected)
    )
    assert result.pvalue > 1e-4
    # and the OS-entropy source samples the same distribution
    secure = SecureNoise().discrete_gaussian(sigma, n)
    observed = np.array([(secure == v).sum() for v in support[cells]])
    result = stats.chisquare(
        np.append(observed, n - observed.sum()), np.append(expected[cells], rest_expected)
    )
    assert result.pvalue > 1e-7


def test_discrete_gaussian_large_sigma_and_shapes():
    """sigma 2e4 takes the exact Python-integer path; shapes are kept; sigma 0 is no noise."""
    sigma, n = 2e4, 20_000
    draws = SeededNoise(1).discrete_gaussian(sigma, n)
    assert abs(draws.mean()) < 5 * sigma / math.sqrt(n)
    assert draws.var() == pytest.approx(sigma**2, rel=5 * math.sqrt(2 / n))
    assert SeededNoise(1).discrete_gaussian(2.0, (3, 4)).shape == (3, 4)
    assert SeededNoise(1).discrete_gaussian(2.0, ()).shape == ()
    np.testing.assert_array_equal(SecureNoise().discrete_gaussian(0.0, (2, 5)), np.zeros((2, 5)))
    with pytest.raises(ValueError):
        SecureNoise().discrete_gaussian(-1.0, 3)
    with pytest.raises(ValueError):
        SecureNoise().discrete_gaussian(math.nan, 3)


def test_the_sampled_variance_is_sigma_squared_rounded_up_by_little():
    """sigma^2 becomes p / q >= sigma^2 (never less noise than recorded), by a relative 2^-25
    at most from sigma 1 on, with the rejection step in int64 up to sigma ~10^4."""
    for sigma in (0.05, 0.5, 1.0, 1.7, 3.0, 40.0, 1234.5, 9000.0, 2e4, 3e6):
        t = math.floor(sigma) + 1
        p, q = _rational_variance(sigma, t)
        excess = Fraction(p, q) - Fraction(sigma) ** 2
        assert excess >= 0
        if sigma >= 1:
            assert excess / Fraction(sigma) ** 2 < Fraction(1, 2**25)
        if sigma < 1e4:
            assert 2 * p * q * t * t < 2**56


@pytest.mark.parametrize("t", [1, 4])
def test_discrete_laplace_has_its_scale(t):
    n = 200_000
    draws = SeededNoise(t).discrete_laplace(t, n)
    r = math.exp(-1 / t)
    var = 2 * r / (1 - r) ** 2  # of P(z) proportional to r^|z|
    assert abs(draws.mean()) < 5 * math.sqrt(var / n)
    assert draws.var() == pytest.approx(var, rel=0.03)
    assert (draws == 0).mean() == pytest.approx((1 - r) / (1 + r), abs=0.005)


def test_bernoulli_exp_is_exp_of_a_rational():
    n = 400_000
    for num, den in ((7, 3), (1, 1), (0, 5), (2, 7)):
        hits = SeededNoise(num).bernoulli_exp(np.full(n, num), np.full(n, den)).mean()
        p = math.exp(-num / den)
        assert abs(hits - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-12, (num, den)


# -- Poisson masks -------------------------------------------------------------------------------
class _Scripted(NoiseSource):
    """Words given in advance (to reach a comparison that ties on its first 64 bits)."""

    def __init__(self, *batches: list[int]) -> None:
        self.batches = [np.array(b, dtype=np.uint64) for b in batches]

    def words(self, n: int) -> np.ndarray:
        batch = self.batches.pop(0)
        assert len(batch) == n
        return batch


def test_bernoulli_compares_all_the_bits_of_p():
    p = 1e-5  # a / 2^69: its first 64 bits tie with probability 2^-64; the rest decides
    exact = Fraction(p)
    shift = exact.denominator.bit_length() - 1 - 64
    assert shift > 0
    top, rest = exact.numerator >> shift, exact.numerator % (1 << shift)
    assert rest > 0
    assert _Scripted([top - 1]).bernoulli(p, 1)[0]
    assert not _Scripted([top + 1]).bernoulli(p, 1)[0]
    assert _Scripted([top], [0]).bernoulli(p, 1)[0]  # tie, then below the rest
    assert not _Scripted([top], [2**64 - 1]).bernoulli(p, 1)[0]  # tie, then above it


def test_poisson_mask_rate():
    n = 1_000_000
    for rate in (0.0125, 0.25):
        mask = SeededNoise(3).poisson_mask(n, rate)
        assert mask.dtype == bool
        assert abs(mask.mean() - rate) < 5 * math.sqrt(rate * (1 - rate) / n)
    assert SecureNoise().poisson_mask(10, 1.0).all()
    assert not SecureNoise().poisson_mask(10, 0.0).any()
    with pytest.raises(ValueError):
        SecureNoise().poisson_mask(10, 1.5)


# -- DP-SGD's Gaussian ---------------------------------------------------------------------------
def test_normal_is_standard_normal():
    draws = SeededNoise(5).normal(400_000).numpy()
    assert stats.kstest(draws, "norm").pvalue > 1e-4
    assert np.isfinite(draws).all()


def test_torch_normal_sums_several_draws_with_the_asked_scale():
    n = 50_000
    noise = SeededNoise(9).torch_normal(2.5, (n,), torch.float32)
    assert noise.dtype == torch.float32 and noise.shape == (n,)
    assert noise.std().item() == pytest.approx(2.5, rel=0.02)
    # Opacus' floating-point attack mitigation: the sum of GAUSSIAN_DRAWS draws, rescaled
    assert GAUSSIAN_DRAWS == 4
    draws = SeededNoise(9).normal(GAUSSIAN_DRAWS * n).view(GAUSSIAN_DRAWS, n)
    torch.testing.assert_close(noise, (draws.sum(0) * 2.5 / 2).float())
    assert torch.equal(SecureNoise().torch_normal(0.0, (2, 3)), torch.zeros(2, 3))
    assert SecureNoise().torch_normal(1.0, (2, 3), torch.float64).dtype == torch.float64
