"""Differentially private column statistics: the only thing about a table the shared encoder sees.

Each row adds exactly 1 to one bin of every histogram released here (a category or the missing
bin; a numeric grid bin or the missing bin; a decimals bin) and to the row count. With ``k``
histograms the L2 sensitivity of all of them together (add/remove one row) is ``sqrt(k)``, so one
discrete Gaussian mechanism with noise ``noise_multiplier * sqrt(k)`` per bin covers the whole
release: integer counts plus integer noise from a source nobody else can seed
(``privacy.noise``).

Numeric values go to a fixed, data-independent grid (never the data's own min/max). Categories
of a public domain are counted densely. Released categories are sorted canonically, so that
their order tells nothing about the rows. Statistics are additive: merchants' releases sum.

Undeclared ("open") categorical domains, discovered for a union of merchants. The design is
partition selection with public partitions (Wilson et al. 2020, "Differentially Private SQL
with Bounded User Contribution", PoPETs 2020(2); Desfontaines et al. 2022, "Differentially
Private Partition Selection", PoPETs 2022(1)) run by each merchant on its own rows, whose
union the server takes as post-processing (as DP set union does: Gopi et al. 2020, ICML):

* Public cells (``OPEN_VOCABULARY``: small integers and boolean words, labels anyone could
  guess) are counted densely in every open column, zeros included, with no threshold and no
  extra delta. Every merchant releases every such cell, so the server sees the *pooled* count
  of a flag or a small code with noise ``sqrt(merchants)`` times one merchant's: a value is
  found when it holds a meaningful share of the pooled rows, wherever they are.
* Any other label is released by a merchant only when its noisy count passes a threshold
  (Gaussian partition selection; the extra ``delta`` is the chance that a label held by one
  row passes it). No merchant can release a label that only a few of its own rows hold, so
  such labels, and all those rarer than ``MIN_OPEN_SHARE`` of the pooled rows, go to one
  explicit value, ``OTHER``, whose count is the noisy row count less the missing and kept
  counts (post-processing: :func:`close_open_domains`). Nothing aborts: a column where no label
  is found is all ``OTHER``. The marginal model's rounds then count every merchant's rows on
  the union (``OTHER`` included), densely: the second stage of "select, then measure".
* Open columns take ``DISCOVERY_SHARE`` of the release's precision (``1 / std**2``): a label
  not released is lost for good, a noisy numeric bin is only blurrier. With ``d`` other
  histograms and ``s`` open ones each open histogram gets weight ``w = max(1, d / s)``, noise
  ``std / sqrt(w)``; the release's L2 sensitivity in units of ``std`` is ``sqrt(d + w s)``,
  its RDP that of one Gaussian of noise multiplier ``std / sqrt(d + w s)``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import norm

from privacy.ledger import DISCRETE_GAUSSIAN, MechanismRecord
from privacy.noise import NoiseSource, SecureNoise

MAX_DECIMALS = 6

# -- open (undeclared) categorical domains ---------------------------------------------------
OTHER = "(other)"  # the value of every label an open domain does not keep
BOOLEAN_WORDS = (
    "F", "FALSE", "False", "N", "NO", "No", "T", "TRUE", "True", "Y", "YES", "Yes",
    "f", "false", "n", "no", "t", "true", "y", "yes",
)  # fmt: skip
# Public cells of every open column, counted densely: labels anyone could guess.
OPEN_VOCABULARY: tuple = (False, True, *range(-1, 101), *BOOLEAN_WORDS)
DISCOVERY_SHARE = 0.5  # of the release's precision, for the open columns' histograms
MIN_OPEN_SHARE = 1e-3  # of the pooled present rows: rarer kept labels go to OTHER
MAX_OPEN_CATEGORIES = 256  # kept labels per open column (the most frequent); the rest: OTHER
SPURIOUS_CELLS = 0.01  # expected number of noise-only public cells kept per open column


@dataclass(frozen=True)
class Grid:
    """Bin edges known before any data is seen.

    ``log``: symmetric geometric bins from ``low`` to ``high`` in magnitude, ``per_decade`` bins
    per decade, one bin for ``|x| < low`` and open overflow bins. ``uniform``: ``bins`` equal bins
    on ``[low, high]`` (public bounds).

    16 bins per decade (15% wide): every bin's count carries the same noise, so a finer grid
    spreads a column's rows over more noisy bins; a heavy tail at 32 per decade sank into the
    noise of twice as many bins (``encoder.numeric_shape`` finds the resolution the counts
    allow, but cannot undo noise)."""

    kind: str = "log"
    low: float = 1e-3
    high: float = 1e9
    per_decade: int = 16
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
    """Sum merchants' releases: counts add, noise variances add, category domains unite (an
    open domain's in canonical order, whatever the merchants' order). The sum stays a sum (open
    domains are closed by the encoder: :func:`close_open_domains`)."""
    if not parts:
        raise ValueError("no statistics to merge")
    columns: dict[str, ColumnStatistics] = {}
    for name, first in parts[0].columns.items():
        group = [p.columns[name] for p in parts]
        if first.kind == "categorical":
            totals: dict = {}  # by typed key: True and 1 are different labels
            for col in group:
                for category, count in zip(col.categories, col.counts, strict=True):
                    key = category_key(category)
                    label, total = totals.get(key, (category, 0.0))
                    totals[key] = (label, total + float(count))
            ordered = sorted(totals.values(), key=lambda pair: canonical_order(pair[0]))
            if first.public_domain:  # the declared order, which the encoder keeps
                ordered = list(totals.values())
            categories = [label for label, _ in ordered]
            counts = np.array([total for _, total in ordered], dtype=float)
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


def num_open_columns(columns: dict[str, CategoricalInput | NumericInput]) -> int:
    """Categorical columns without a declared domain (each one histogram)."""
    return sum(isinstance(s, CategoricalInput) and s.domain is None for s in columns.values())


def open_column_weight(*, histograms: int, open_columns: int) -> float:
    """Precision weight of each open column's histogram among ``histograms`` in all (the other
    ones weigh 1): together the open ones take at least ``DISCOVERY_SHARE`` of the release's
    precision, and each at least an ordinary histogram's."""
    if open_columns <= 0:
        return 1.0
    dense = histograms - open_columns
    return max(1.0, DISCOVERY_SHARE / (1.0 - DISCOVERY_SHARE) * dense / open_columns)


def squared_sensitivity(*, histograms: int, open_columns: int) -> float:
    """The release's squared L2 sensitivity in units of an ordinary histogram's noise std:
    ``noise_std = noise_multiplier * sqrt(this)``, an open histogram's ``noise_std / sqrt(w)``."""
    weight = open_column_weight(histograms=histograms, open_columns=open_columns)
    return histograms - open_columns + weight * open_columns


def category_key(value) -> tuple:
    """A label's identity with its type: ``True`` and ``1`` (equal in Python) are two labels."""
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    return (type(value).__name__, value)


_VOCABULARY_KEYS = frozenset(category_key(v) for v in OPEN_VOCABULARY)


def in_open_vocabulary(value) -> bool:
    return category_key(value) in _VOCABULARY_KEYS


def close_open_domains(stats: TableStatistics) -> TableStatistics:
    """Post-processing of (summed) DP statistics: every open categorical column keeps its
    public cells that stand out of the noise and its released labels, those holding at least
    ``MIN_OPEN_SHARE`` of the present rows (at most ``MAX_OPEN_CATEGORIES``, the most frequent),
    in canonical order, then ``OTHER`` with the rest: the noisy row count less the missing and
    kept counts, at least 0. A column that already holds ``OTHER`` is closed (a release never
    holds it: :func:`release_statistics` leaves that label to the remainder)."""
    columns = dict(stats.columns)
    for name, column in stats.columns.items():
        if column.kind != "categorical" or column.public_domain:
            continue
        if any(category_key(c) == category_key(OTHER) for c in column.categories):
            continue
        counts = np.asarray(column.counts, dtype=float)
        public = np.array([in_open_vocabulary(c) for c in column.categories], dtype=bool)
        std = math.sqrt(max(column.noise_var, 0.0))
        cut = std * norm.isf(SPURIOUS_CELLS / max(int(public.sum()), 1))
        present = max(stats.row_count - column.missing, 0.0)
        # A released label already passed a merchant's threshold: only the share floor applies.
        keep = np.where(public, counts > cut, counts > 0) & (counts >= MIN_OPEN_SHARE * present)
        kept = np.flatnonzero(keep)
        if len(kept) > MAX_OPEN_CATEGORIES:
            kept = np.sort(kept[np.argsort(-counts[kept], kind="stable")[:MAX_OPEN_CATEGORIES]])
        other = max(present - float(counts[kept].sum()), 0.0)
        columns[name] = ColumnStatistics(
            kind="categorical",
            counts=np.append(counts[kept], other),
            missing=column.missing,
            noise_var=column.noise_var,
            categories=[column.categories[i] for i in kept] + [OTHER],
            public_domain=False,
        )
    return TableStatistics(
        columns=columns,
        row_count=stats.row_count,
        row_count_var=stats.row_count_var,
        contributors=stats.contributors,
    )


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
    num_sparse = num_open_columns(columns)
    sensitivity_squared = squared_sensitivity(
        histograms=num_histograms(columns), open_columns=num_sparse
    )
    noise_std = noise_multiplier * math.sqrt(sensitivity_squared)
    var = noise_std**2
    # Open columns' histograms (their missing bins included) are weighted: less noise.
    open_std = noise_std / math.sqrt(
        open_column_weight(histograms=num_histograms(columns), open_columns=num_sparse)
    )
    threshold = (
        sparse_threshold(open_std, delta=threshold_delta, num_sparse=max(num_sparse, 1))
        if open_std > 0
        else 0.5  # non-private: every observed category
    )

    noise = SecureNoise() if noise is None else noise
    cells = 0

    def noisy(counts: np.ndarray, std: float = noise_std) -> np.ndarray:
        nonlocal cells
        counts = np.asarray(counts).astype(np.int64)  # numbers of rows
        cells += counts.size
        return (counts + noise.discrete_gaussian(std, counts.shape)).astype(float)

    released: dict[str, ColumnStatistics] = {}
    n_rows = None
    for name, spec in columns.items():
        if isinstance(spec, CategoricalInput):
            values = spec.values
            n_rows = len(values)
            missing = float(values.isna().sum())
            if spec.domain is not None:
                observed = values.dropna().value_counts(sort=False)
                categories = list(spec.domain)
                counts = noisy(np.array([observed.get(c, 0) for c in categories], dtype=float))
                column_std = noise_std
            else:
                categories, counts = _open_release(values.dropna(), noisy, open_std, threshold)
                column_std = open_std
            released[name] = ColumnStatistics(
                kind="categorical",
                counts=counts,
                missing=float(noisy(missing, column_std)),
                noise_var=column_std**2,
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
        l2_sensitivity=math.sqrt(sensitivity_squared),
        dimension=0 if num_sparse else cells,  # a sparse domain's size is not public
    )
    return stats, record


def _plain(value):
    """numpy scalars to Python scalars, so that categories survive JSON."""
    return value.item() if isinstance(value, np.generic) else value


def canonical_order(value) -> tuple:
    """Sort key of released category labels: booleans, numbers (by value), strings (by text),
    then ``OTHER`` (last in a closed domain), so a released list's order says nothing about
    which row came first."""
    value = _plain(value)
    if isinstance(value, bool):
        return (0, float(value), "")
    if isinstance(value, int | float):
        return (1, float(value), "")
    if isinstance(value, str) and value == OTHER:
        return (3, 0.0, "")
    return (2, 0.0, str(value))


def _open_release(
    values: pd.Series, noisy, std: float, threshold: float
) -> tuple[list, np.ndarray]:
    """One open column's labels and noisy counts: every public cell of ``OPEN_VOCABULARY``
    (zeros included: public partitions need no threshold), and each other label whose noisy
    count passes ``threshold``, in canonical order. ``OTHER`` itself is never released: rows
    holding it stay in the remainder, which is what ``OTHER`` counts."""
    observed = Counter(map(category_key, values))
    public = noisy(np.array([observed.get(category_key(v), 0) for v in OPEN_VOCABULARY]), std)
    hidden = {*_VOCABULARY_KEYS, category_key(OTHER)}
    keys = [k for k in observed if k not in hidden]
    private = noisy(np.array([observed[k] for k in keys], dtype=np.int64), std)
    pairs = [*zip(OPEN_VOCABULARY, public, strict=True)]
    pairs += [(k[1], n) for k, n in zip(keys, private, strict=True) if n > threshold]
    # Canonical order: first-appearance order would tell which row came first.
    pairs.sort(key=lambda pair: canonical_order(pair[0]))
    return [label for label, _ in pairs], np.array([n for _, n in pairs], dtype=float)
