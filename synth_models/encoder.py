"""The shared table encoder, built only from public metadata and DP statistics.

Categorical columns become one-hot spans. Numeric and datetime columns use a quantile transform
whose CDF is the (noisy, post-processed) DP histogram: a value ``x`` maps to ``u = F(x)`` in
[0, 1], represented CTGAN-style as a one-hot "mode" (which of ``n_modes`` equal-mass slices of the
distribution ``u`` falls in) plus a scalar offset inside the slice in [-1, 1]. Multi-modal and
spiky distributions keep their shape because ``F`` is learnt from the histogram, never from a
mixture fitted on raw rows. Missing values get an explicit indicator span.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from privacy.statistics import (
    OTHER,
    CategoricalInput,
    ColumnStatistics,
    Grid,
    NumericInput,
    TableStatistics,
    category_key,
    close_open_domains,
)
from synth_models.schema import (
    CATEGORICAL,
    DATETIME,
    ColumnSpec,
    DataError,
    TableSchema,
    datetime_seconds,
    numeric_values,
)

logger = logging.getLogger(__name__)

# Months from 1970 to 2050: the default, data-independent grid for undeclared datetimes.
DATETIME_GRID = Grid(kind="uniform", low=0.0, high=2524608000.0, bins=960)
SPURIOUS_BINS = 0.05  # expected number of pure-noise bins that survive denoising
# The same for a numeric histogram's outermost stretches, at any distance from the column's
# values: at 0.05 (4.8 standard deviations over the log grid's 75,000 intervals) about one
# column in 300 got a noise stretch decades away (a code of 1-41 decoded up to 4e8); 1e-3
# asks 5.6.
SPURIOUS_STRETCHES = 1e-3
# An open categorical column is flagged id-like when this share of its rows is OTHER, or
# when its name ends like an identifier's ("id", "customer_id", "orderID", "uuid").
ID_LIKE_OTHER_SHARE = 0.9
ID_LIKE_NAME = re.compile(r"(?i:(^|[_\-\s.])(id|uuid|guid)$)|[a-z0-9](ID|Id)$|(?i:uuid|guid)")
# Tails past a numeric histogram's shown stretches (``numeric_shape``): candidate decay rates
# per bin (from 0.999 to nearly 0), the least height kept, the least reach in bins.
TAIL_RATES = 1.0 - np.geomspace(1e-3, 1.0, 40)[:-1]
TAIL_FLOOR = 1e-3
MIN_TAIL_BINS = 8
# At most a decade of the log grid (16 bins): past the shown stretches the counts are mostly
# noise, and a slowly decaying tail fitted to it sent a code of 1-41 to 133 and amounts of
# 1-10,000 to 457,000.
MAX_TAIL_BINS = 16
# A tail is kept only when its fit beats no tail by this many standard deviations of the
# fit's own noise: a fit that merely beats nothing (half of the time on pure noise) gave
# hard-edged columns (codes, capped counts) tails past their largest value.
TAIL_MARGIN = 1.0
DECIMALS_LEVEL = 0.01  # one-sided level of the decimals test (``_dp_decimals``)
UNKNOWN_DECIMALS = 2  # decimals of a column whose decimals histogram shows nothing
# Distance (times n_modes) of an encoded u from its bin's ends: above the float32 resolution
# of the decoded u, about 6e-8 / n_modes.
UNIT_MARGIN = 1e-7
# Declared bounds and decimals with at most this many lattice values: one bin per value.
MAX_ATOMS = 4096
BOUNDED_BINS = 256  # bins over declared bounds otherwise
ATOM_TOLERANCE = 1e-6  # in units of the last declared decimal
# Relative mass kept at a declared bound's atom that the DP histogram does not show. A
# declared range is one the column covers (as SDV 2.x reads range_min/range_max), so samples
# should reach both ends, about twice per 10,000 rows; a rare end value (pizzaplace's dearest
# pizza, 28 of 49,574 rows) is otherwise lost to the noise, and SDMetrics, which bins each
# table's numeric column over its own min-max, then misaligns every bin of that column.
END_ATOM_MASS = 2e-4


@dataclass(frozen=True)
class Span:
    """A slice of the encoded matrix and the activation the generator uses for it."""

    start: int
    width: int
    activation: str  # "softmax" | "tanh"
    column: str


def grid_for(spec: ColumnSpec) -> Grid:
    """The data-independent grid a numeric or datetime column is counted on.

    Declared bounds and decimals make the column's values a public lattice (``low``,
    ``low + 10**-decimals``, ... ``high``); with at most ``MAX_ATOMS`` of them each gets its
    own bin, centred on it ("atoms"), so decoded values are exact lattice values. Otherwise
    declared bounds get ``BOUNDED_BINS`` equal bins, and undeclared ones the log grid."""
    if spec.bounds is not None:
        low, high = spec.bounds
        atoms = atom_range(spec)
        if atoms is not None:
            first, last = atoms
            step = 10.0**-spec.decimals
            return Grid(
                kind="uniform",
                low=(first - 0.5) * step,
                high=(last + 0.5) * step,
                bins=last - first + 1,
            )
        return Grid(kind="uniform", low=low, high=high, bins=BOUNDED_BINS)
    return DATETIME_GRID if spec.kind == DATETIME else Grid()


def atom_range(spec: ColumnSpec) -> tuple[int, int] | None:
    """First and last declared lattice value of a numeric column, in units of
    ``10**-decimals`` (None without declared bounds and decimals, or past ``MAX_ATOMS``)."""
    if spec.kind == DATETIME or spec.bounds is None or spec.decimals is None:
        return None
    scale = 10.0**spec.decimals
    low, high = spec.bounds
    first = math.ceil(low * scale - ATOM_TOLERANCE)
    last = math.floor(high * scale + ATOM_TOLERANCE)
    if last < first or last - first + 1 > MAX_ATOMS:
        return None
    return first, last


def statistics_inputs(
    data: pd.DataFrame, schema: TableSchema, *, source: str | None = None
) -> dict[str, CategoricalInput | NumericInput]:
    """What each column contributes to the DP statistics release."""
    inputs: dict[str, CategoricalInput | NumericInput] = {}
    for spec in schema.columns:
        values = data[spec.name]
        if spec.kind == CATEGORICAL:
            inputs[spec.name] = CategoricalInput(values.map(_plain), domain=_domain(spec))
        else:
            array = (
                datetime_seconds(values, spec, source)
                if spec.kind == DATETIME
                else numeric_values(values, spec, source)
            )
            inputs[spec.name] = NumericInput(
                array,
                grid=grid_for(spec),
                count_decimals=spec.kind != DATETIME and spec.decimals is None,
            )
    return inputs


def _domain(spec: ColumnSpec) -> list | None:
    return None if spec.categories is None else list(spec.categories)


def _denoise(counts: np.ndarray, noise_var: float) -> np.ndarray:
    """Post-processing: drop bins indistinguishable from noise, keep non-negative mass."""
    cut = np.sqrt(noise_var) * norm.isf(SPURIOUS_BINS / max(len(counts), 1))
    kept = np.where(counts > cut, counts, 0.0)
    if kept.sum() <= 0 and len(counts):
        kept = np.zeros_like(counts, dtype=float)
        kept[int(np.argmax(counts))] = 1.0
    return kept


@dataclass(frozen=True)
class NumericShape:
    """Denoised masses of a numeric histogram's bins; ``described``: False when no stretch of
    bins stood out of the noise (or no value was counted) and the masses are a coarse guess."""

    masses: np.ndarray
    described: bool


def numeric_shape(
    counts: np.ndarray, noise_var: float, *, total: float | None = None
) -> NumericShape:
    """Post-processing of a noisy numeric histogram into bin masses that keep its range and
    shape. The bins are split into stretches of constant height (least squares with a penalty
    per stretch: a stretch is only split off where the noise cannot explain it), so a wide,
    light region (a heavy tail) is found at the resolution its total mass allows and a spike at
    a single bin; a stretch is kept when its total stands out of its noise (an outermost one
    in about ``SPURIOUS_STRETCHES`` noise-only histograms, one between them in about
    ``SPURIOUS_BINS``), so hundreds of empty bins add no noise mass. Past the outermost kept
    stretches the tails go on, geometrically decaying from their height at the rate the
    neighbouring noisy counts fit best (least squares), for at most ``MAX_TAIL_BINS`` and only
    when that fit stands out of its own noise: a tail too light for any stretch to stand out
    is thinned, not cut off, and noise past a hard edge is not taken for one. When nothing
    stands out, ``described`` is False and one window of bins gets all the mass: the one that
    best fits ``total`` rows (a DP estimate of the values counted) by least squares, or
    without it the one whose count stands out most."""
    counts = np.asarray(counts, dtype=float)
    if len(counts) == 0:
        return NumericShape(counts.copy(), False)
    if noise_var <= 0:  # exact counts
        kept = np.clip(counts, 0.0, None)
        if kept.sum() > 0:
            return NumericShape(kept, True)
        return NumericShape(np.ones_like(counts), False)
    std = math.sqrt(noise_var)
    n = len(counts)
    # A stretch is an interval of bins chosen from the data: an outermost one must stand out
    # among all n (n + 1) / 2 intervals; between two such, one among the n bins' worth is
    # enough.
    outer_cut = norm.isf(SPURIOUS_STRETCHES / (n * (n + 1) / 2))
    inner_cut = norm.isf(SPURIOUS_BINS / n)
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    stretches = [
        (start, end, (cumulative[end] - cumulative[start]) / (end - start))
        for start, end in _constant_stretches(counts, noise_var)
    ]
    strength = [mean * math.sqrt(end - start) / std for start, end, mean in stretches]
    strong = [i for i, z in enumerate(strength) if z > outer_cut]
    masses = np.zeros_like(counts)
    if not strong:
        start, end = _strongest_window(counts, std, total=total)
        masses[start:end] = 1.0
        return NumericShape(masses, False)
    for i in range(strong[0], strong[-1] + 1):
        start, end, mean = stretches[i]
        if strength[i] > inner_cut:
            masses[start:end] = mean
    first, last = stretches[strong[0]][0], stretches[strong[-1]][1]
    # A tail reaches at most as far again as the unbroken run of mass it continues: a spike
    # far from the rest (zeros in a column of amounts) must not send noise decades away.
    gaps = np.flatnonzero(masses[first:last] <= 0) + first
    right_run = last - (gaps[-1] + 1 if len(gaps) else first)
    left_run = (gaps[0] if len(gaps) else last) - first
    right = _geometric_tail(counts[last:], masses[last - 1], _tail_reach(right_run), std)
    masses[last : last + len(right)] = right
    left = _geometric_tail(counts[:first][::-1], masses[first], _tail_reach(left_run), std)
    masses[first - len(left) : first] = left[::-1]
    return NumericShape(masses, True)


def _constant_stretches(counts: np.ndarray, noise_var: float) -> list[tuple[int, int]]:
    """Optimal partition of the bins into stretches ``[start, end)``, each fitted by its mean:
    least squares plus ``2 noise_var log(bins)`` per stretch (BIC with known noise), by
    dynamic programming over every split (quadratic in the bins: 0.1 s for 4096)."""
    n = len(counts)
    penalty = 2.0 * noise_var * math.log(max(n, 2))
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    best = np.zeros(n + 1)
    best[0] = -penalty
    previous = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        starts = np.arange(end)
        # Squared error of a stretch is sum(y^2) - total^2 / length; sum(y^2) is the same for
        # every partition, so only the second term and the penalty count.
        cost = best[:end] - (cumulative[end] - cumulative[:end]) ** 2 / (end - starts) + penalty
        previous[end] = int(np.argmin(cost))
        best[end] = cost[previous[end]]
    stretches, end = [], n
    while end > 0:
        stretches.append((int(previous[end]), end))
        end = int(previous[end])
    return stretches[::-1]


def _tail_reach(run: int) -> int:
    """Bins a tail may cover past a run of ``run`` bins holding mass."""
    return min(max(run, MIN_TAIL_BINS), MAX_TAIL_BINS)


def _geometric_tail(outward: np.ndarray, height: float, reach: int, std: float) -> np.ndarray:
    """Masses of the bins past a shown edge of height ``height`` (``outward``: their noisy
    counts, nearest first, each with noise ``std``): ``height * rate**k``, the rate that fits
    them best by least squares, stopped at ``reach`` bins or a thousandth of the height. No
    tail when none beats nothing by ``TAIL_MARGIN`` standard deviations of its fit's noise
    (the gain ``2 y.t - t.t`` of a tail ``t`` has noise ``2 std |t|``)."""
    if height <= 0 or len(outward) == 0:
        return np.zeros(0)
    steps = np.arange(1, min(reach, len(outward)) + 1)
    best, best_gain = np.zeros(0), 0.0
    for rate in TAIL_RATES:
        tail = height * rate**steps
        tail = tail[tail >= TAIL_FLOOR * height]
        gain = float(np.sum(2.0 * outward[: len(tail)] * tail - tail**2))
        gain -= 2.0 * TAIL_MARGIN * std * float(np.sqrt(np.sum(tail**2)))
        if gain > best_gain:
            best, best_gain = tail, gain
    return best


def _strongest_window(
    counts: np.ndarray, std: float, *, total: float | None = None
) -> tuple[int, int]:
    """``[start, end)`` of the window of 2**k bins that best explains the counts: with
    ``total`` (rows in all), the window whose even spread of them fits best (least squares),
    otherwise the one whose count stands out most from its noise (the whole grid when no
    window's count is positive)."""
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    best, window, width = 0.0, (0, len(counts)), 1
    while width <= len(counts):
        sums = cumulative[width:] - cumulative[:-width]
        if total is not None and total > 0:
            # Squared error saved by spreading ``total`` evenly over the window.
            scores = (2.0 * sums * total - total**2) / width
        else:
            scores = sums / (std * math.sqrt(width))
        i = int(np.argmax(scores))
        if scores[i] > best:
            best, window = float(scores[i]), (i, i + width)
        width *= 2
    return window


def _has_missing(spec: ColumnSpec, stats: ColumnStatistics) -> bool:
    if spec.nullable is not None:
        return bool(spec.nullable)
    return bool(stats.missing > np.sqrt(stats.noise_var) * norm.isf(0.01))


class CategoricalTransform:
    """One-hot categories. A declared domain is used as declared. An open (undeclared) domain
    holds the labels the DP statistics found, then ``OTHER`` (``other``): every value outside
    the found labels is encoded as ``OTHER``, and synthetic rows may hold the string
    ``"(other)"`` (the column is then of object dtype, whatever its labels' type)."""

    def __init__(
        self,
        spec: ColumnSpec,
        categories: list,
        frequencies: np.ndarray,
        has_missing: bool,
        *,
        other: bool = False,
        id_like: bool = False,
    ) -> None:
        if other and (not categories or category_key(categories[-1]) != category_key(OTHER)):
            raise ValueError(f"column {spec.name!r}: an open domain ends with {OTHER!r}")
        self.spec = spec
        self.categories = categories
        self.frequencies = frequencies  # DP, normalized, aligned with categories
        self.has_missing = has_missing
        self.other = other  # the last category is OTHER, the slot of every unknown value
        self.id_like = id_like  # flagged: most rows are OTHER, or the name says identifier
        self._index = {category_key(c): i for i, c in enumerate(categories)}
        self._labels = categories[:-1] if other else categories  # the found labels
        self._typed = _typed_array(self._labels)

    @property
    def width(self) -> int:
        return len(self.categories) + int(self.has_missing)

    @property
    def other_share(self) -> float:
        """DP share of ``OTHER`` among present values (0 for a declared domain)."""
        return float(self.frequencies[-1]) if self.other else 0.0

    @classmethod
    def from_statistics(
        cls, spec: ColumnSpec, stats: ColumnStatistics, *, row_count_var: float = 0.0
    ) -> CategoricalTransform:
        """From a declared domain's counts, or an open domain closed by
        ``privacy.statistics.close_open_domains`` (its last category ``OTHER``, whose count
        has the noise of the row count, ``row_count_var``, and of the missing and kept counts).
        Never fails for lack of categories: a column where nothing was found is all ``OTHER``."""
        has_missing = _has_missing(spec, stats)
        if spec.categories is not None:
            categories = list(spec.categories)
            counts = np.clip(stats.counts, 0.0, None)
            frequencies = (
                counts / counts.sum() if counts.sum() > 0 else np.full(len(counts), 1 / len(counts))
            )
            return cls(spec, categories, frequencies, has_missing)
        if not stats.categories or category_key(stats.categories[-1]) != category_key(OTHER):
            raise ValueError(
                f"column {spec.name!r}: an open domain must be closed first "
                "(privacy.statistics.close_open_domains)"
            )
        labels = list(stats.categories[:-1])
        counts = np.clip(np.asarray(stats.counts[:-1], dtype=float), 0.0, None)
        other_var = row_count_var + stats.noise_var * (1 + len(labels))
        other = float(stats.counts[-1])
        # A remainder within the noise of the counts it is derived from is taken as empty.
        other = other if other > math.sqrt(other_var) * norm.isf(SPURIOUS_BINS) else 0.0
        masses = np.append(counts, other)
        if masses.sum() <= 0:
            masses[-1] = 1.0  # nothing found, nothing shown: all OTHER
        frequencies = masses / masses.sum()
        # Nothing found says as much about the rows per merchant as about the column: only a
        # column with found values and still mostly OTHER is id-like by its shares.
        id_like = bool(ID_LIKE_NAME.search(spec.name)) or (
            bool(labels) and frequencies[-1] >= ID_LIKE_OTHER_SHARE
        )
        transform = cls(
            spec, [*labels, OTHER], frequencies, has_missing, other=True, id_like=id_like
        )
        if transform.note:
            logger.warning("%s", transform.note)
        return transform

    @property
    def note(self) -> str | None:
        """What the run log and report should say about this column (None: nothing)."""
        if not self.other:
            return None
        name, notes = self.spec.name, []
        if not self._labels:
            notes.append(
                f"column {name!r}: no value is frequent enough at any merchant to be found "
                f"under DP (too few rows per merchant, or identifier-like values); every "
                f"synthetic value is {OTHER!r}. Declare range_values in the metadata, sdtype "
                "'id' for an identifier, or give the statistics more rows or budget."
            )
        if self.id_like:
            notes.append(
                f"column {name!r} looks like an identifier ({self.other_share:.0%} of its rows "
                f"are {OTHER!r}, rarer than DP discovery can see, or its name says so): "
                f"modelled as {len(self._labels)} found value(s) and {OTHER!r}; declare "
                "sdtype 'id' in the metadata to leave it out"
            )
        return " ".join(notes) or None

    def codes(self, values: pd.Series) -> np.ndarray:
        """Index of each value's slot: an open domain's unknown values go to ``OTHER``, a
        declared domain's to -1 (validation has refused them already)."""
        missing_code = len(self.categories) if self.has_missing else -1
        unknown = len(self.categories) - 1 if self.other else -1
        index = self._index
        mapped = values.map(
            lambda v: index.get(category_key(_plain(v)), unknown) if pd.notna(v) else -2
        )
        codes = mapped.to_numpy(dtype=np.int64)
        codes[codes == -2] = missing_code
        return codes

    def encode(self, values: pd.Series) -> np.ndarray:
        codes = self.codes(values)
        out = np.zeros((len(values), self.width), dtype=np.float32)
        ok = codes >= 0
        out[np.flatnonzero(ok), codes[ok]] = 1.0
        return out

    def decode(self, block: np.ndarray) -> pd.Series:
        codes = block.argmax(axis=1)
        found = len(self._labels)
        missing = codes >= len(self.categories)
        other = ~missing & (codes >= found)
        if found:
            values = pd.Series(self._typed[np.minimum(codes, found - 1)], name=self.spec.name)
        else:
            values = pd.Series(np.full(len(codes), OTHER, dtype=object), name=self.spec.name)
        if other.any():  # the labels' own dtype only while no OTHER is drawn
            values = values.astype(object)
            values[other] = OTHER
        if missing.any():
            values = values.astype({"b": "boolean", "i": "Int64"}.get(values.dtype.kind, object))
            values[missing] = None
        return values

    def to_dict(self) -> dict:
        return {
            "categories": self.categories,
            "frequencies": self.frequencies.tolist(),
            "has_missing": self.has_missing,
            **({"other": True} if self.other else {}),
            **({"id_like": True} if self.id_like else {}),
        }

    @classmethod
    def from_dict(cls, spec: ColumnSpec, d: dict) -> CategoricalTransform:
        return cls(
            spec,
            list(d["categories"]),
            np.asarray(d["frequencies"]),
            d["has_missing"],
            other=bool(d.get("other", False)),
            id_like=bool(d.get("id_like", False)),
        )


class QuantileTransform:
    """Numeric or datetime column: piecewise-linear DP CDF, quantile modes, offset."""

    def __init__(
        self,
        spec: ColumnSpec,
        lows: np.ndarray,
        highs: np.ndarray,
        masses: np.ndarray,
        decimals: int,
        n_modes: int,
        has_missing: bool,
        *,
        value_modes: bool = False,
    ) -> None:
        if value_modes and n_modes != len(lows):
            raise ValueError("value modes need one mode per bin")
        self.spec = spec
        # One mode per bin (each bin one value of a lattice) instead of equal-mass slices: a
        # network's softmax then gives even a rare value its share (see ``with_value_modes``).
        self.value_modes = value_modes
        self.lows, self.highs = lows, highs  # the bins holding mass, in increasing order
        self.masses = masses  # normalized
        self.cdf = np.concatenate([[0.0], np.cumsum(masses)])
        self.cdf[-1] = 1.0
        self.decimals = decimals
        self.n_modes = n_modes
        self.has_missing = has_missing
        self.atoms = _bin_atoms(lows, highs, decimals)
        # Set when the DP histogram could not describe the column (``undescribed_note``).
        self.note: str | None = None
        # A saturated generator output (u exactly 0 or 1) decodes into the outermost bins the
        # DP histogram showed, never into a declared bound kept only with END_ATOM_MASS.
        shown = np.flatnonzero(self.masses > 1.5 * END_ATOM_MASS)
        self._saturated = (
            (self.cdf[shown[0]], np.nextafter(self.cdf[shown[-1] + 1], 0.0))
            if len(shown)
            else (0.0, 1.0)
        )

    @property
    def width(self) -> int:
        return self.n_modes + 1 + 2 * int(self.has_missing)

    @classmethod
    def from_statistics(
        cls, spec: ColumnSpec, stats: ColumnStatistics, n_modes: int
    ) -> QuantileTransform:
        # The decimals histogram counts every present value once: a DP total for the fallback.
        present = None if stats.decimals is None else float(np.clip(stats.decimals, 0, None).sum())
        shape = numeric_shape(stats.counts, stats.noise_var, total=present)
        masses = shape.masses
        if atom_range(spec) is not None and stats.grid == grid_for(spec):
            # The declared bounds are public values of the column's lattice: they stay in the
            # domain, with END_ATOM_MASS when the noisy histogram does not show them.
            ends = masses[[0, -1]]
            masses[[0, -1]] = np.where(ends > 0, ends, masses.sum() * END_ATOM_MASS)
        lows, highs = stats.grid.bin_bounds()
        if spec.bounds is not None:
            lows, highs = np.maximum(lows, spec.bounds[0]), np.minimum(highs, spec.bounds[1])
        keep = masses > 0
        decimals = spec.decimals
        if decimals is None:
            decimals = 0 if spec.kind == DATETIME else _dp_decimals(stats)
        transform = cls(
            spec,
            lows[keep],
            highs[keep],
            masses[keep] / masses[keep].sum(),
            decimals,
            n_modes,
            _has_missing(spec, stats),
        )
        if not shape.described:
            transform.note = undescribed_note(spec.name, transform.lows[0], transform.highs[-1])
            logger.warning("%s", transform.note)
        return transform

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        """CDF: value -> u in [0, 1] (values in suppressed bins go to the nearest mass)."""
        i = np.clip(np.searchsorted(self.highs, x, side="left"), 0, len(self.lows) - 1)
        # In a gap between bins holding mass: the nearer of the bins on either side.
        below = np.maximum(i - 1, 0)
        nearer_below = (i > 0) & (x < self.lows[i]) & (x - self.highs[below] < self.lows[i] - x)
        i = np.where(nearer_below, below, i)
        width = np.maximum(self.highs[i] - self.lows[i], 1e-12)
        # Keep u off the ends of its bin by more than the float32 resolution of the encoded
        # offset: past empty (dropped) bins the inverse CDF jumps, and a value on a bin's lower
        # edge (1, 10, 100 on the log grid) would otherwise decode as the previous bin's top.
        margin = np.minimum(0.5, UNIT_MARGIN / self.n_modes / np.maximum(self.masses[i], 1e-12))
        inside = np.clip((x - self.lows[i]) / width, margin, 1.0 - margin)
        return self.cdf[i] + self.masses[i] * inside

    def bin_of_unit(self, u: np.ndarray) -> np.ndarray:
        """Index (among the bins holding mass) of the bin each ``u`` falls in."""
        u = np.clip(u, 0.0, 1.0)
        return np.clip(np.searchsorted(self.cdf, u, side="right") - 1, 0, len(self.lows) - 1)

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """Inverse CDF, linear inside each bin."""
        u = np.clip(u, 0.0, 1.0)
        i = self.bin_of_unit(u)
        inside = np.clip((u - self.cdf[i]) / np.maximum(self.masses[i], 1e-12), 0.0, 1.0)
        return self.lows[i] + inside * (self.highs[i] - self.lows[i])

    def value_of_unit(self, u: np.ndarray) -> np.ndarray:
        """Inverse CDF rounded to the column's decimals. A bin that holds a single value at
        that precision (an atom: declared bounds and decimals give one bin per value) gives
        exactly that value, also from its very edges, where rounding could tip either way."""
        low, high = self._saturated
        u = np.where(u <= 0.0, low, np.where(u >= 1.0, high, u))
        x = np.round(self.from_unit(u), self.decimals)
        atoms = self.atoms[self.bin_of_unit(u)]
        return np.where(np.isnan(atoms), x, atoms) + 0.0

    def encode(self, x: np.ndarray) -> np.ndarray:
        missing = np.isnan(x)
        u = self.to_unit(np.where(missing, self.lows[0], x))
        if self.value_modes:
            mode = self.bin_of_unit(u)
            inside = (u - self.cdf[mode]) / np.maximum(self.masses[mode], 1e-12)
        else:
            u = u * self.n_modes
            mode = np.clip(np.floor(u).astype(np.int64), 0, self.n_modes - 1)
            inside = u - mode
        out = np.zeros((len(x), self.width), dtype=np.float32)
        out[np.arange(len(x)), mode] = 1.0
        out[:, self.n_modes] = np.clip(inside * 2.0 - 1.0, -1.0, 1.0)
        if self.has_missing:
            out[:, self.n_modes + 1] = ~missing
            out[:, self.n_modes + 2] = missing
        return out

    def decode(self, block: np.ndarray) -> pd.Series:
        mode = block[:, : self.n_modes].argmax(axis=1)
        offset = (np.clip(block[:, self.n_modes], -1.0, 1.0) + 1.0) / 2.0
        if self.value_modes:  # the mode is the bin, hence the value
            inside = self.lows[mode] + offset * (self.highs[mode] - self.lows[mode])
            x = np.round(inside, self.decimals)
            x = np.where(np.isnan(self.atoms[mode]), x, self.atoms[mode]) + 0.0
        else:
            x = self.value_of_unit((mode + offset) / self.n_modes)
        missing = (
            block[:, self.n_modes + 2] > block[:, self.n_modes + 1]
            if self.has_missing
            else np.zeros(len(x), dtype=bool)
        )
        return self._series(x, missing)

    def _series(self, x: np.ndarray, missing: np.ndarray) -> pd.Series:
        name = self.spec.name
        if self.spec.kind == DATETIME:
            stamps = pd.Series(pd.to_datetime(np.round(x).astype("int64"), unit="s"), name=name)
            stamps[missing] = pd.NaT
            if self.spec.datetime_format:
                unit = _format_resolution(self.spec.datetime_format)
                if unit is not None:
                    stamps = stamps.dt.round(unit)
                if "%z" in self.spec.datetime_format or "%Z" in self.spec.datetime_format:
                    stamps = stamps.dt.tz_localize("UTC")  # decoded instants are UTC: "+0000"
                return stamps.dt.strftime(self.spec.datetime_format).where(~missing, None)
            return stamps
        if self.decimals == 0:
            values = pd.array(np.round(x).astype("int64"), dtype="Int64")
            if not missing.any():
                return pd.Series(values.astype("int64"), name=name)
            values[missing] = pd.NA
            return pd.Series(values, name=name)
        return pd.Series(np.where(missing, np.nan, x), name=name)

    def to_dict(self) -> dict:
        return {
            "lows": self.lows.tolist(),
            "highs": self.highs.tolist(),
            "masses": self.masses.tolist(),
            "decimals": self.decimals,
            "n_modes": self.n_modes,
            "has_missing": self.has_missing,
            **({"value_modes": True} if self.value_modes else {}),
            **({"note": self.note} if self.note else {}),
        }

    @classmethod
    def from_dict(cls, spec: ColumnSpec, d: dict) -> QuantileTransform:
        transform = cls(
            spec,
            np.asarray(d["lows"]),
            np.asarray(d["highs"]),
            np.asarray(d["masses"]),
            int(d["decimals"]),
            int(d["n_modes"]),
            bool(d["has_missing"]),
            value_modes=bool(d.get("value_modes", False)),
        )
        note = d.get("note")
        transform.note = str(note) if note else None
        return transform


def _format_resolution(fmt: str) -> str | None:
    """The finest unit a datetime format shows (None: seconds or finer). Decoded stamps are
    rounded to it before formatting: the float32 offset is only precise to a few seconds in a
    wide, light bin, and ``strftime`` truncates, so a date at midnight would otherwise come back
    as the day before."""
    if any(d in fmt for d in ("%S", "%s", "%T", "%X", "%c", "%f")):
        return None
    if "%M" in fmt or "%R" in fmt:
        return "min"
    if any(d in fmt for d in ("%H", "%I", "%k", "%l", "%p")):
        return "h"
    return "D"


def _bin_atoms(lows: np.ndarray, highs: np.ndarray, decimals: int) -> np.ndarray:
    """The one value at ``decimals`` precision that every point of each bin rounds to, or NaN
    for a bin that spans more than one (e.g. a log-grid bin, or a coarse bounded bin)."""
    scale = 10.0**decimals
    lo, hi = np.asarray(lows, dtype=float) * scale, np.asarray(highs, dtype=float) * scale
    units = np.round((lo + hi) / 2)
    single = (lo >= units - 0.5 - ATOM_TOLERANCE) & (hi <= units + 0.5 + ATOM_TOLERANCE)
    return np.where(single, np.round(units / scale, decimals), np.nan)


def _dp_decimals(stats: ColumnStatistics, coverage: float = 0.95) -> int:
    """Fewest decimals that represent ``coverage`` of the values, from the noisy decimals
    histogram: the first ``d`` whose rows needing more decimals are not significantly more
    than ``1 - coverage`` of all (a one-sided test at ``DECIMALS_LEVEL`` against the noise of
    that tail). A cumulative share of raw noisy counts instead lets the noise of six empty
    bins pass for decimals: integer columns came out with four. No significant count at all
    (too few rows for the noise) gives ``UNKNOWN_DECIMALS``."""
    counts = np.asarray(stats.decimals, dtype=float)
    std = math.sqrt(max(stats.noise_var, 0.0))
    present = float(np.clip(counts, 0.0, None).sum())
    z = norm.isf(DECIMALS_LEVEL)
    if present <= z * std * math.sqrt(len(counts)):
        return UNKNOWN_DECIMALS
    for decimals in range(len(counts)):
        more = counts[decimals + 1 :]
        if more.sum() <= (1.0 - coverage) * present + z * std * math.sqrt(len(more)):
            return decimals
    return len(counts) - 1


def undescribed_note(name: str, low: float, high: float) -> str:
    """What the run log and the report say about a numeric column whose DP histogram showed
    nothing above the noise."""
    return (
        f"column {name!r}: the DP statistics cannot describe its values (no bin stands out of "
        f"the noise); its synthetic values are a coarse guess in [{low:.6g}, {high:.6g}]. "
        "Declare range_min/range_max (and decimal_places) in the metadata, or give the "
        "statistics more rows or budget."
    )


class TableEncoder:
    """Encodes a table into the model's matrix and decodes generated matrices back.

    Built by :meth:`from_statistics` on the (merged) DP statistics; serializable to JSON."""

    def __init__(
        self, schema: TableSchema, transforms: dict[str, CategoricalTransform | QuantileTransform]
    ) -> None:
        self.schema = schema
        self.transforms = transforms
        self.spans: list[Span] = []
        start = 0
        for name, t in transforms.items():
            if isinstance(t, CategoricalTransform):
                self.spans.append(Span(start, t.width, "softmax", name))
            else:
                self.spans.append(Span(start, t.n_modes, "softmax", name))
                self.spans.append(Span(start + t.n_modes, 1, "tanh", name))
                if t.has_missing:
                    self.spans.append(Span(start + t.n_modes + 1, 2, "softmax", name))
            start += t.width
        self.width = start

    @classmethod
    def from_statistics(
        cls, schema: TableSchema, stats: TableStatistics, *, n_modes: int = 8
    ) -> TableEncoder:
        transforms: dict[str, CategoricalTransform | QuantileTransform] = {}
        stats = close_open_domains(stats)  # open domains: found labels, then OTHER
        for spec in schema.columns:
            column_stats = stats.columns[spec.name]
            if spec.kind == CATEGORICAL:
                transforms[spec.name] = CategoricalTransform.from_statistics(
                    spec, column_stats, row_count_var=stats.row_count_var
                )
            else:
                transforms[spec.name] = QuantileTransform.from_statistics(
                    spec, column_stats, n_modes
                )
        return cls(schema, transforms)

    @property
    def notes(self) -> dict[str, str]:
        """What the DP statistics could not describe, by column (for the run log and report)."""
        return {name: t.note for name, t in self.transforms.items() if getattr(t, "note", None)}

    @property
    def categorical_columns(self) -> list[str]:
        return [n for n, t in self.transforms.items() if isinstance(t, CategoricalTransform)]

    def column_offset(self, name: str) -> int:
        return next(s.start for s in self.spans if s.column == name)

    def transform(self, data: pd.DataFrame, *, source: str | None = None) -> np.ndarray:
        """Encode rows. A value an open categorical domain does not know (a label too rare
        for DP discovery) is encoded as ``OTHER``; rows that no slot can hold (a missing value
        without a missing slot) are left out."""
        blocks, keep = [], np.ones(len(data), dtype=bool)
        for name, t in self.transforms.items():
            spec = self.schema[name]
            values = data[name]
            if isinstance(t, CategoricalTransform):
                keep &= t.codes(values) >= 0
                blocks.append(t.encode(values))
            else:
                array = (
                    datetime_seconds(values, spec, source)
                    if spec.kind == DATETIME
                    else numeric_values(values, spec, source)
                )
                if not t.has_missing:
                    keep &= ~np.isnan(array)
                blocks.append(t.encode(array))
        if not keep.all():
            logger.debug(  # exact counts: the owner's own debug log only
                "%d of %d rows hold values outside the DP domain and are not used",
                int((~keep).sum()),
                len(data),
            )
        return np.concatenate(blocks, axis=1)[keep]

    def inverse_transform(self, matrix: np.ndarray) -> pd.DataFrame:
        columns, start = {}, 0
        for name, t in self.transforms.items():
            columns[name] = t.decode(matrix[:, start : start + t.width]).reset_index(drop=True)
            start += t.width
        return pd.DataFrame(columns)

    def to_dict(self) -> dict:
        return {
            "schema": self.schema.to_dict(),
            "transforms": {
                name: {"type": type(t).__name__, **t.to_dict()}
                for name, t in self.transforms.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict) -> TableEncoder:
        schema = TableSchema.from_dict(d["schema"])
        kinds = {
            "CategoricalTransform": CategoricalTransform,
            "QuantileTransform": QuantileTransform,
        }
        transforms = {}
        for name, td in d["transforms"].items():
            if td["type"] not in kinds:
                raise DataError(f"unknown transform type {td['type']!r}", column=name)
            transforms[name] = kinds[td["type"]].from_dict(schema[name], td)
        return cls(schema, transforms)


def _typed_array(categories: list) -> np.ndarray:
    """Categories as a numpy array of their own type (bool, int or object)."""
    if all(isinstance(c, bool) for c in categories):
        return np.array(categories, dtype=bool)
    if all(isinstance(c, int) and not isinstance(c, bool) for c in categories):
        return np.array(categories, dtype=np.int64)
    return np.array(categories, dtype=object)


def _plain(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


MAX_VALUE_MODES = 64


def with_value_modes(encoder: TableEncoder, *, max_modes: int = MAX_VALUE_MODES) -> TableEncoder:
    """A copy of ``encoder`` in which every numeric column whose bins are single values (a
    declared lattice), at most ``max_modes`` of them, has one mode per value. Equal-mass modes
    leave a value holding 0.07% of the rows (pizzaplace's dearest pizza) a sliver of one
    mode's offset, which a network almost never hits; its own mode gets it sampled."""
    transforms = dict(TableEncoder.from_dict(encoder.to_dict()).transforms)
    for name, t in transforms.items():
        if (
            isinstance(t, QuantileTransform)
            and len(t.lows) <= max_modes
            and not np.isnan(t.atoms).any()
        ):
            transforms[name] = QuantileTransform(
                t.spec, t.lows, t.highs, t.masses, t.decimals, len(t.lows), t.has_missing,
                value_modes=True,
            )  # fmt: skip
            transforms[name].note = t.note
    return TableEncoder(encoder.schema, transforms)
