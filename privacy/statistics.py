"""Differentially private column statistics: the only thing about a table the shared encoder sees.

Each row adds exactly 1 to one bin of every histogram released here (a category or the missing
bin; a numeric grid bin or the missing bin; a decimals bin) and to the row count. With ``k``
histograms the L2 sensitivity of all of them together (add/remove one row) is ``sqrt(k)``, so one
discrete Gaussian mechanism with noise ``noise_multiplier * sqrt(k)`` per bin covers the whole
release: integer counts plus integer noise from a source nobody else can seed
(``privacy.noise``).

Numeric values go to a fixed, data-independent grid (never the data's own min/max). Categories
of a public domain are counted densely; an unknown domain is released sparsely: only categories
whose noisy count passes a threshold appear, which costs an extra ``delta`` (the probability that
a category held by a single row passes it). Released categories are sorted canonically, so that
their order tells nothing about the rows. Statistics are additive: merchants' releases sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import norm

from privacy.ledger import DISCRETE_GAUSSIAN, MechanismRecord
from privacy.noise import NoiseSource, SecureNoise

MAX_DECIMALS = 6


@dataclass(frozen=True)
class Grid:
    """Bin edges known before any data is seen.

    ``log``: symmetric geometric bins from ``low`` to ``high`` in magnitude, ``per_decade`` bins
    per decade, one bin for ``|x| < low`` and open overflow bins. ``uniform``: ``bins`` equal bins
    on ``[low, high]`` (public bounds)."""

    kind: str = "log"
    low: float = 1e-3
    high: float = 1e9
    per_decade: int = 32
    bins: int = 0

    def edges(self) -> np.ndarray:
        if self.kind == "uniform":
            return np.linspace(self.low, self.high, self.bins + 1)
        decades = math.log10(self.high / self.low)
        positive = self.low * 10 ** (
            np.arange(round(decades * self.per_decade) + 1) / self.per_decade
        )
        return np.concatenate([-positive[::-1], positive])

    def bin_index(self, values: np.ndarray) -> np.ndarray:
        """Bin of each value; values outside a uniform grid are clipped to its end bins."""
        edges = self.edges()
        idx = np.searchsorted(edges, values, side="right") - 1
        if self.kind == "uniform":
            return np.clip(idx, 0, len(edges) - 2)
        # log grid: index 0 is the underflow bin (< -high), last is the overflow bin (>= high).
        return np.clip(idx + 1, 0, len(edges))

    @property
    def num_bins(self) -> int:
        n = len(self.edges()) - 1
        return n if self.kind == "uniform" else n + 2

    def bin_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bound of each bin (overflow bins get a bounded stand-in width)."""
        edges = self.edges()
        if self.kind == "uniform":
            return edges[:-1], edges[1:]
        lo = np.concatenate([[edges[0] * 10], edges])
        hi = np.concatenate([edges, [edges[-1] * 10]])
        return lo, hi

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "low": self.low,
            "high": self.high,
            "per_decade": self.per_decade,
            "bins": self.bins,
        }


@dataclass
class CategoricalInput:
    values: pd.Series
    domain: list | None = None  # public domain, or None to discover it privately


@dataclass
class NumericInput:
    values: np.ndarray  # float, NaN for missing
    grid: Grid = field(default_factory=Grid)
    count_decimals: bool = True


@dataclass
class ColumnStatistics:
    """Noisy counts for one column. ``categories`` and ``counts`` align; for numeric columns
    ``counts`` follows the grid bins."""

    kind: str
    counts: np.ndarray
    missing: float
    noise_var: float
    categories: list | None = None
    public_domain: bool = False
    grid: Grid | None = None
    decimals: np.ndarray | None = None

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "counts": self.counts.tolist(),
            "missing": self.missing,
            "noise_var": self.noise_var,
            "categories": self.categories,
            "public_domain": self.public_domain,
            "grid": None if self.grid is None else self.grid.to_dict(),
            "decimals": None if self.decimals is None else self.decimals.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ColumnStatistics:
        return cls(
            kind=d["kind"],
            counts=np.asarray(d["counts"], dtype=float),
            missing=float(d["missing"]),
            noise_var=float(d["noise_var"]),
            categories=d["categories"],
            public_domain=bool(d["public_domain"]),
            grid=None if d["grid"] is None else Grid(**d["grid"]),
            decimals=None if d["decimals"] is None else np.asarray(d["decimals"], dtype=float),
        )


@dataclass
class TableStatistics:
    """The DP statistics of one table, or the sum over several merchants' tables."""

    columns: dict[str, ColumnStatistics]
    row_count: float
    row_count_var: float
    contributors: int = 1

    def to_dict(self) -> dict:
        return {
            "columns": {name: c.to_dict() for name, c in self.columns.items()},
            "row_count": self.row_count,
            "row_count_var": self.row_count_var,
            "contributors": self.contributors,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TableStatistics:
        return cls(
            columns={n: ColumnStatistics.from_dict(c) for n, c in d["columns"].items()},
            row_count=float(d["row_count"]),
            row_count_var=float(d["row_count_var"]),
            contributors=int(d.get("contributors", 1)),
        )


def merge_statistics(parts: list[TableStatistics]) -> TableStatistics:
    """Sum merchants' releases: counts add, noise variances add, category domains unite."""
    if not parts:
        raise ValueError("no statistics to merge")
    columns: dict[str, ColumnStatistics] = {}
    for name, first in parts[0].columns.items():
        group = [p.columns[name] for p in parts]
        if first.kind == "categorical":
            totals: dict = {}
            for col in group:
                for category, count in zip(col.categories, col.counts, strict=True):
                    totals[category] = totals.get(category, 0.0) + float(count)
            categories = list(totals)
            counts = np.array([totals[c] for c in categories], dtype=float)
        else:
            categories = None
            counts = np.sum([c.counts for c in group], axis=0)
        columns[name] = ColumnStatistics(
            kind=first.kind,
            counts=counts,
            missing=sum(c.missing for c in group),
            noise_var=sum(c.noise_var for c in group),
            categories=categories,
            public_domain=first.public_domain,
            grid=first.grid,
            decimals=None
            if first.decimals is None
            else np.sum([c.decimals for c in group], axis=0),
        )
    return TableStatistics(
        columns=columns,
        row_count=sum(p.row_count for p in parts),
        row_count_var=sum(p.row_count_var for p in parts),
        contributors=sum(p.contributors for p in parts),
    )


def count_decimals(values: np.ndarray) -> np.ndarray:
    """Smallest number of decimals (capped at MAX_DECIMALS) that represents each value."""
    decimals = np.full(values.shape, MAX_DECIMALS, dtype=int)
    for d in range(MAX_DECIMALS - 1, -1, -1):
        exact = np.isclose(np.round(values, d), values, rtol=0, atol=1e-9)
        decimals[exact] = d
    return decimals


def num_histograms(columns: dict[str, CategoricalInput | NumericInput]) -> int:
    """Histograms one row contributes to, the row count included."""
    k = 1
    for spec in columns.values():
        k += 1 + int(isinstance(spec, NumericInput) and spec.count_decimals)
    return k


def discrete_gaussian_tail(m: int, sigma: float) -> float:
    """An upper bound on P[X >= m] for X ~ N_Z(0, sigma^2), integer m >= 1: the smaller of
    exp(-m^2 / (2 sigma^2)) (the discrete Gaussian is sigma^2-subgaussian: Canonne, Kamath &
    Steinke 2020) and Q(m / sigma) + phi(m / sigma) / sigma (the tail sum is at most its first
    term plus the integral past it, and the normalizer is at least sigma sqrt(2 pi) by Poisson
    summation)."""
    z = m / sigma
    return min(math.exp(-(z**2) / 2), float(norm.sf(z) + norm.pdf(z) / sigma))


def sparse_threshold(noise_std: float, *, delta: float, num_sparse: int) -> float:
    """Threshold so that a category held by one row survives with probability at most
    ``delta / num_sparse`` in each of ``num_sparse`` sparse releases (union bound: ``delta``).
    Counts and noise are integers: a count of 1 passes ``> m`` only when the noise is
    ``>= m``, so the threshold is the smallest such ``m`` whose tail bound is small enough."""
    target = delta / num_sparse
    high = max(1, math.ceil(noise_std * math.sqrt(2 * math.log(1 / target))))
    low = 0  # the subgaussian bound holds at ``high``; the smallest m passing is in (low, high]
    while high - low > 1:
        mid = (low + high) // 2
        if discrete_gaussian_tail(mid, noise_std) <= target:
            high = mid
        else:
            low = mid
    return float(high)


def release_statistics(
    columns: dict[str, CategoricalInput | NumericInput],
    *,
    noise_multiplier: float,
    threshold_delta: float,
    noise: NoiseSource | None = None,
    label: str = "encoder-statistics",
) -> tuple[TableStatistics, MechanismRecord]:
    """Release DP statistics of one table and the mechanism that did it (for the ledger).
    The noise is discrete Gaussian from ``noise`` (default: ``SecureNoise()``, the OS CSPRNG;
    ``SeededNoise`` is for tests only)."""
    if noise_multiplier < 0:
        raise ValueError("noise_multiplier must be >= 0 (0: exact, non-private statistics)")
    noise_std = noise_multiplier * math.sqrt(num_histograms(columns))
    var = noise_std**2
    num_sparse = sum(isinstance(s, CategoricalInput) and s.domain is None for s in columns.values())
    threshold = (
        sparse_threshold(noise_std, delta=threshold_delta, num_sparse=max(num_sparse, 1))
        if noise_std > 0
        else 0.5  # non-private: every observed category
    )

    noise = SecureNoise() if noise is None else noise
    cells = 0

    def noisy(counts: np.ndarray) -> np.ndarray:
        nonlocal cells
        counts = np.asarray(counts).astype(np.int64)  # numbers of rows
        cells += counts.size
        return (counts + noise.discrete_gaussian(noise_std, counts.shape)).astype(float)

    released: dict[str, ColumnStatistics] = {}
    n_rows = None
    for name, spec in columns.items():
        if isinstance(spec, CategoricalInput):
            values = spec.values
            n_rows = len(values)
            missing = float(values.isna().sum())
            observed = values.dropna().value_counts(sort=False)
            if spec.domain is not None:
                categories = list(spec.domain)
                counts = noisy(np.array([observed.get(c, 0) for c in categories], dtype=float))
            else:
                noisy_counts = noisy(observed.to_numpy(dtype=float))
                keep = noisy_counts > threshold
                # Canonical order: first-appearance order would tell which row came first.
                ordered = sorted(
                    zip([_plain(c) for c in observed.index[keep]], noisy_counts[keep], strict=True),
                    key=lambda pair: canonical_order(pair[0]),
                )
                categories = [c for c, _ in ordered]
                counts = np.array([n for _, n in ordered], dtype=float)
            released[name] = ColumnStatistics(
                kind="categorical",
                counts=counts,
                missing=float(noisy(missing)),
                noise_var=var,
                categories=categories,
                public_domain=spec.domain is not None,
            )
        else:
            values = np.asarray(spec.values, dtype=float)
            n_rows = len(values)
            present = values[~np.isnan(values)]
            hist = np.bincount(spec.grid.bin_index(present), minlength=spec.grid.num_bins)
            decimals = None
            if spec.count_decimals:
                decimals = noisy(np.bincount(count_decimals(present), minlength=MAX_DECIMALS + 1))
            released[name] = ColumnStatistics(
                kind="numeric",
                counts=noisy(hist),
                missing=float(noisy(np.isnan(values).sum())),
                noise_var=var,
                grid=spec.grid,
                decimals=decimals,
            )
    if n_rows is None:
        raise ValueError("no columns to release statistics for")
    stats = TableStatistics(
        columns=released, row_count=float(noisy(n_rows)), row_count_var=var, contributors=1
    )
    extra_delta = threshold_delta if num_sparse else 0.0
    record = MechanismRecord(
        label,
        noise_multiplier,
        1.0,
        1,
        extra_delta,
        mechanism=DISCRETE_GAUSSIAN,
        l2_sensitivity=math.sqrt(num_histograms(columns)),
        dimension=0 if num_sparse else cells,  # a sparse domain's size is not public
    )
    return stats, record


def _plain(value):
    """numpy scalars to Python scalars, so that categories survive JSON."""
    return value.item() if isinstance(value, np.generic) else value


def canonical_order(value) -> tuple:
    """Sort key of released category labels: numbers (by value) before strings (by text), so
    a released list's order says nothing about which row came first."""
    if isinstance(value, bool | int | float):
        return (0, float(value), "")
    return (1, 0.0, str(value))
