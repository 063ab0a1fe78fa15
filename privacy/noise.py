"""The randomness of every DP release: a source nobody else can seed or predict.

A mechanism whose noise the adversary can compute is not DP, so no release draws its noise
from a seed (the server chooses the run's seed). :class:`SecureNoise`, the default everywhere,
takes no seed: its bits come from the OS CSPRNG (``os.urandom``), directly for small requests
and, for bulk ones (DP-SGD noise), as the ChaCha20 keystream under a fresh 256-bit key read
from ``os.urandom`` for that one request and then dropped: the construction the Linux kernel's
own generator uses, about 4x faster here than reading as many bytes from the kernel (a
10^5-parameter critic's noise: 2 ms instead of 11 ms a step). :class:`SeededNoise` is for
tests and local reproducibility on the owner's own machine only: nothing a server sends
selects it.

Both turn uniform 64-bit words into what releases need:

- ``discrete_gaussian(sigma, shape)``: the discrete Gaussian N_Z(0, sigma^2) of Canonne,
  Kamath & Steinke 2020 ("The Discrete Gaussian for Differential Privacy", Algorithms 1-3),
  for counting releases. It is sampled *exactly*, with integer arithmetic only: uniform
  integers below an integer by rejection, Bernoulli(exp(-g)) for rational g by Algorithm 1
  (Bernoulli(g / k) draws are comparisons of uniform integers), the discrete Laplace of
  Algorithm 2 and the rejection step of Algorithm 3. The one rounding is of the parameter:
  sigma^2 is replaced by the rational p / q >= sigma^2 nearest above it with q a power of two
  chosen so that the arithmetic stays in int64 (relative excess below 2^-25 for sigma >= 1):
  slightly more noise than asked, never less, so the recorded guarantee still holds. The
  output is an integer: no floating-point low bits to leak (Mironov 2012). Exact given
  uniform bits (the keystream is computationally indistinguishable from them). Cost (2-core
  CPU): 0.06 s for 10^5 cells (0.1 s at sigma < 1, 0.15 s past sigma ~10^4, where the
  rejection step needs Python integers).
- ``poisson_mask(n, rate)``: Poisson subsampling for DP-SGD, each entry in with probability
  exactly ``rate`` (the float's dyadic value, the one the ledger records).
- ``torch_normal(std, shape, dtype)``: Gaussian noise for DP-SGD. Gradients are floats, so
  this one is continuous: Box-Muller over 53-bit uniforms, and, as Opacus' ``secure_mode``
  does (``opacus.optimizers.optimizer._generate_noise``, after Holohan & Braghin 2021, §5.1),
  the sum of 4 draws divided by 2, so that the low bits of one draw do not identify it.
  Cost: 1.2 ms for the 62k parameters of the default VAE, 2 ms for the GAN critic's 104k.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from fractions import Fraction

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms  # a dependency of flwr

# Denominators below this keep the discrete Gaussian's rejection step in int64 (with room for
# Algorithm 1's factor k); larger ones (sigma above ~10^4) take exact Python integers.
_INT64_DENOMINATOR = 2**56
_ALL_BITS = np.uint64(2**64 - 1)
# Draws summed for each DP-SGD Gaussian (Opacus' secure_mode: n = 2, 2n draws).
GAUSSIAN_DRAWS = 4
# Requests of at least this many words read a ChaCha20 keystream under a fresh OS key.
_KEYSTREAM_WORDS = 1024


class NoiseSource(ABC):
    """Uniform 64-bit words, and the DP noise built on them."""

    @abstractmethod
    def words(self, n: int) -> np.ndarray:
        """``n`` independent uniform 64-bit words (uint64)."""

    # -- exact integer primitives ----------------------------------------------------------------
    def below(self, m: np.ndarray) -> np.ndarray:
        """A uniform integer in ``[0, m_i)`` for each positive integer ``m_i`` (rejection, so
        exactly uniform). int64 in, int64 out; an object array of Python integers of any size
        gives Python integers."""
        m = np.asarray(m)
        if m.dtype == object:
            return self._below_big(m)
        m = m.astype(np.uint64)
        out = np.empty(m.shape, dtype=np.uint64)
        todo = np.arange(m.size)
        while todo.size:
            r, mm = self.words(todo.size), m[todo]
            ok = r < (_ALL_BITS // mm) * mm  # whole multiples of m: r % m is uniform
            out[todo[ok]] = r[ok] % mm[ok]
            todo = todo[~ok]
        return out.astype(np.int64)

    def _below_big(self, m: np.ndarray) -> np.ndarray:
        num_words = max(int(v).bit_length() for v in m) // 64 + 2 if m.size else 1
        out = np.empty(m.shape, dtype=object)
        todo = np.arange(m.size)
        while todo.size:
            r = np.zeros(todo.size, dtype=object)
            for _ in range(num_words):
                r = (r << 64) | self.words(todo.size).astype(object)
            mm = m[todo]
            ok = (r < ((1 << (64 * num_words)) // mm) * mm).astype(bool)
            out[todo[ok]] = r[ok] % mm[ok]
            todo = todo[~ok]
        return out

    def bernoulli(self, p: float, n: int) -> np.ndarray:
        """``n`` independent draws that are True with probability exactly ``p`` (the float's
        dyadic value): a uniform's bits are compared with ``p``'s, 64 at a time."""
        if not 0 <= p <= 1:
            raise ValueError(f"a probability must be in [0, 1], got {p}")
        out = np.zeros(n, dtype=bool)
        if p == 1:
            out[:] = True
        exact = Fraction(p)
        a, k = exact.numerator, exact.denominator.bit_length() - 1  # p = a / 2^k
        todo = np.arange(n)
        while todo.size and k > 0 and a > 0:
            bits = min(k, 64)
            shift = k - bits
            top = a >> shift  # the next ``bits`` bits of p
            r = self.words(todo.size) >> np.uint64(64 - bits)
            out[todo[r < np.uint64(top)]] = True
            todo = todo[r == np.uint64(top)]  # equal so far: compare the next bits
            a, k = a - (top << shift), shift
        return out

    def _bernoulli_exp_at_most_1(self, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        """Bernoulli(exp(-num/den)) for ``0 <= num <= den`` (CKS20 Algorithm 1): K = 1, 2, ...
        while Bernoulli(num / (den K)) succeeds; True when the K it stops at is odd."""
        k = np.ones(len(num), dtype=np.int64)
        active = np.arange(len(num))
        while active.size:
            success = np.asarray(self.below(den[active] * k[active]) < num[active], dtype=bool)
            active = active[success]
            k[active] += 1
        return k % 2 == 1

    def _bernoulli_exp(self, whole: np.ndarray, frac: np.ndarray, den: np.ndarray) -> np.ndarray:
        """Bernoulli(exp(-(whole + frac/den))): ``whole`` Bernoulli(exp(-1)) that all succeed
        (stopping at the first failure), then Bernoulli(exp(-frac/den)) (CKS20 Algorithm 1)."""
        alive = np.ones(len(whole), dtype=bool)
        idx, done = np.flatnonzero(whole > 0), 0
        while idx.size:
            ok = self._bernoulli_exp_at_most_1(*np.ones((2, idx.size), dtype=np.int64))
            alive[idx[~ok]] = False
            done += 1
            idx = idx[ok & (whole[idx] > done)]
        idx = np.flatnonzero(alive)
        alive[idx] = self._bernoulli_exp_at_most_1(frac[idx], den[idx])
        return alive

    def bernoulli_exp(self, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        """Bernoulli(exp(-num/den)) for integer arrays ``num >= 0``, ``den >= 1``."""
        num, den = np.asarray(num, dtype=np.int64), np.asarray(den, dtype=np.int64)
        if np.any(num < 0) or np.any(den < 1) or np.any(den >= _INT64_DENOMINATOR):
            raise ValueError("need 0 <= num and 1 <= den < 2^56")
        return self._bernoulli_exp(num // den, num % den, den)

    def _geometric_exp_minus_1(self, n: int) -> np.ndarray:
        """Successes of Bernoulli(exp(-1)) before the first failure."""
        v = np.zeros(n, dtype=np.int64)
        active = np.arange(n)
        while active.size:
            active = active[self._bernoulli_exp_at_most_1(*np.ones((2, active.size), np.int64))]
            v[active] += 1
        return v

    def discrete_laplace(self, t: int, n: int) -> np.ndarray:
        """``n`` draws of P(z) proportional to exp(-|z| / t), integer ``t >= 1`` (CKS20
        Algorithm 2)."""
        out = np.empty(n, dtype=np.int64)
        todo = np.arange(n)
        while todo.size:
            scale = np.full(todo.size, t, dtype=np.int64)
            u = self.below(scale)
            d = self._bernoulli_exp_at_most_1(u, scale)
            kept, u = todo[d], u[d]
            v = self._geometric_exp_minus_1(kept.size)
            negative = (self.words(kept.size) & np.uint64(1)).astype(bool)
            reject = negative & (u == 0) & (v == 0)  # -0 would count zero twice
            z = np.where(negative, -1, 1) * (u + t * v)
            out[kept[~reject]] = z[~reject]
            todo = np.concatenate([todo[~d], kept[reject]])
        return out

    def discrete_gaussian(self, sigma: float, shape) -> np.ndarray:
        """int64 draws of N_Z(0, sigma^2) (CKS20 Algorithm 3; sigma^2 rounded up by a relative
        2^-25 at most, see the module docstring). ``sigma = 0``: zeros (no noise)."""
        n = math.prod(np.atleast_1d(shape)) if np.ndim(shape) else int(shape)
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
        if sigma == 0 or n == 0:
            return np.zeros(shape, dtype=np.int64)
        t = math.floor(sigma) + 1
        p, q = _rational_variance(sigma, t)  # sigma^2 <= p / q
        # Accept a discrete Laplace draw y w.p. exp(-(|y| - sigma^2/t)^2 / (2 sigma^2)),
        # i.e. exp(-a^2 / den) with a = |y| t q - p, den = 2 p q t^2.
        den = 2 * p * q * t * t
        small_den = den < _INT64_DENOMINATOR
        out = np.empty(n, dtype=np.int64)
        todo = np.arange(n)
        while todo.size:
            y = self.discrete_laplace(t, todo.size)
            accept = np.empty(todo.size, dtype=bool)
            a_small = np.abs(y) < (2**31 - p) // (t * q)  # then |a| < 2^31: a^2 fits in int64
            if small_den and a_small.any():
                a = np.abs(y[a_small]) * (t * q) - p
                square = a * a
                dens = np.full(a.size, den, dtype=np.int64)
                accept[a_small] = self._bernoulli_exp(square // den, square % den, dens)
            rest = ~a_small if small_den else np.ones(todo.size, dtype=bool)
            if rest.any():  # exact Python integers
                a = np.abs(y[rest]).astype(object) * (t * q) - p
                square = a * a
                whole, frac = square // den, square % den
                whole = np.minimum(whole, 2**62).astype(np.int64)  # e^(-2^62): never passes
                dens = np.full(a.size, den, dtype=np.int64 if small_den else object)
                if small_den:
                    frac = frac.astype(np.int64)
                accept[rest] = self._bernoulli_exp(whole, frac, dens)
            out[todo[accept]] = y[accept]
            todo = todo[~accept]
        return out.reshape(shape)

    # -- DP-SGD ------------------------------------------------------------------------------------
    def poisson_mask(self, n: int, rate: float) -> np.ndarray:
        """Poisson subsampling: each of ``n`` rows is in with probability exactly ``rate``."""
        return self.bernoulli(rate, n)

    def normal(self, n: int) -> torch.Tensor:
        """``n`` standard normal float64 draws (Box-Muller over 53-bit uniforms; the
        arithmetic in torch, about 3x faster here than numpy's)."""
        half = (n + 1) // 2
        uniform = torch.from_numpy((self.words(2 * half) >> np.uint64(11)).astype(np.float64))
        uniform.mul_(2.0**-53)
        radius = uniform[:half].add_(2.0**-53).log_().mul_(-2.0).sqrt_()  # u in (0, 1]
        angle = uniform[half:].mul_(2.0 * math.pi)
        return torch.cat([angle.cos().mul_(radius), angle.sin_().mul_(radius)])[:n]

    def torch_normal(self, std: float, shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """N(0, std^2) noise for a gradient: the sum of ``GAUSSIAN_DRAWS`` draws, rescaled
        (Opacus' floating-point attack mitigation)."""
        shape = torch.Size(shape)
        if std == 0:
            return torch.zeros(shape, dtype=dtype)
        draws = self.normal(GAUSSIAN_DRAWS * shape.numel()).view(GAUSSIAN_DRAWS, -1)
        noise = draws.sum(0).mul_(std / math.sqrt(GAUSSIAN_DRAWS))
        return noise.to(dtype).view(shape)


def _rational_variance(sigma: float, t: int) -> tuple[int, int]:
    """``(p, q)`` with ``p / q >= sigma^2``, ``q`` a power of two as large as keeps
    ``2 p q t^2`` below 2^55 (1 when sigma is large): the excess is below ``1 / q``."""
    scale = 2**27 / (sigma * t)
    q = 2 ** max(0, math.floor(math.log2(scale))) if scale >= 1 else 1
    variance = Fraction(sigma) ** 2 * q
    return -(-variance.numerator // variance.denominator), q


class SecureNoise(NoiseSource):
    """The OS CSPRNG (``os.urandom``; bulk requests: ChaCha20 under a fresh key from it). Takes
    no seed: nobody can replay its noise."""

    def words(self, n: int) -> np.ndarray:
        if n < _KEYSTREAM_WORDS:
            return np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
        # Key fresh from the OS for this request only, so a fixed (zero) nonce and counter.
        stream = Cipher(algorithms.ChaCha20(os.urandom(32), bytes(16)), mode=None).encryptor()
        return np.frombuffer(stream.update(bytes(8 * n)), dtype=np.uint64)

    def __repr__(self) -> str:
        return "SecureNoise()"


class SeededNoise(NoiseSource):
    """Deterministic noise from ``seed``: tests and local reproducibility ONLY. Anyone who
    knows the seed can subtract the noise, so a release made with it is not private against
    them; nothing a server sends may select it."""

    def __init__(self, seed: int) -> None:
        self._bits = np.random.PCG64(seed)

    def words(self, n: int) -> np.ndarray:
        return self._bits.random_raw(n)

    def __repr__(self) -> str:
        return "SeededNoise(...)"
