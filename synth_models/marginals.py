"""Noisy marginals of a discretized table: the measurements of the marginal (MST-style) model.

A table is discretized column by column with the shared encoder, which was built from DP
statistics only: a categorical column's values are its categories (plus the missing slot); a
numeric or datetime column's values are groups of the encoder's DP bins, taken in unit space
(``u = F(x)``, the DP CDF), at most ``max_bins`` of them of about equal DP mass (public
post-processing). Either way the discretization is known to everyone before a row is read.

A release measures the count tables of ``k`` cliques (one column or a pair) at once. Each row
adds exactly 1 to one cell of every table, so the tables together have L2 sensitivity
``sqrt(k)`` under adding or removing a row, and one discrete Gaussian mechanism with noise
``noise_multiplier * sqrt(k)`` per cell covers them: one ledger record, ``sample_rate = 1``,
one step. The noise is integer and comes from a source nobody else can seed
(``privacy.noise``). Releases are additive: merchants' tables and noise variances sum.

Pair selection (as in MST) keeps the maximum spanning tree of the pairs' mutual information,
computed from noisy pair tables only: post-processing of a DP release, in a federation of the
merchants' summed releases (no pooled rows are ever needed).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from privacy.calibration import calibrate_noise_multiplier
from privacy.ledger import DISCRETE_GAUSSIAN, MechanismRecord, PrivacyLedger
from privacy.noise import NoiseSource, SecureNoise
from synth_models.encoder import (
    END_ATOM_MASS,
    CategoricalTransform,
    QuantileTransform,
    TableEncoder,
    _denoise,
    atom_range,
    grid_for,
    numeric_shape,
)
from synth_models.schema import DATETIME, datetime_seconds, numeric_values

SELECTION_LABEL = "marginals-selection"
MEASUREMENT_LABEL = "marginals-measurement"
SELECTION, MEASUREMENT = "selection", "measurement"

Clique = tuple[int, ...]


@dataclass(frozen=True)
class ColumnDomain:
    """The discrete values of one column. Numeric: ``edges`` are the unit-space bounds of each
    group of DP bins (``size + 1`` of them; the missing slot, if any, is the last value)."""

    name: str
    kind: str  # "categorical" | "numeric"
    size: int
    edges: tuple[float, ...] = ()
    has_missing: bool = False

    @property
    def groups(self) -> int:
        return self.size - int(self.has_missing) if self.kind == "numeric" else self.size


def _group_edges(transform: QuantileTransform, max_bins: int) -> tuple[float, ...]:
    """Unit-space edges of at most ``max_bins`` groups of consecutive DP bins of about equal
    DP mass (each bin its own group when there are few enough)."""
    cdf = transform.cdf
    if len(transform.masses) <= max_bins:
        return tuple(float(c) for c in cdf)
    middles = (cdf[:-1] + cdf[1:]) / 2
    group = np.minimum((middles * max_bins).astype(np.int64), max_bins - 1)
    starts = np.flatnonzero(np.diff(group, prepend=-1))
    return (*(float(cdf[i]) for i in starts), 1.0)


def column_domains(encoder: TableEncoder, *, max_bins: int) -> list[ColumnDomain]:
    """The discrete domain of every column, in the encoder's column order."""
    if max_bins < 1:
        raise ValueError(f"max_bins must be >= 1, got {max_bins}")
    domains = []
    for name, t in encoder.transforms.items():
        if isinstance(t, CategoricalTransform):
            domains.append(ColumnDomain(name, "categorical", t.width, has_missing=t.has_missing))
        else:
            edges = _group_edges(t, max_bins)
            size = len(edges) - 1 + int(t.has_missing)
            domains.append(ColumnDomain(name, "numeric", size, edges, t.has_missing))
    return domains


def discretize(
    data: pd.DataFrame,
    encoder: TableEncoder,
    domains: list[ColumnDomain],
    *,
    source: str | None = None,
) -> np.ndarray:
    """Integer codes (rows x columns) of a validated table. A value outside an open (DP-found)
    categorical domain counts as that column's ``OTHER`` value, so every merchant's rows count
    on the server's domains; rows that the encoder cannot hold (a missing value without a
    missing slot) are left out, as the encoder leaves them out of the other models' training."""
    codes = np.zeros((len(data), len(domains)), dtype=np.int64)
    keep = np.ones(len(data), dtype=bool)
    for j, domain in enumerate(domains):
        t = encoder.transforms[domain.name]
        values = data[domain.name]
        if isinstance(t, CategoricalTransform):
            column = t.codes(values)
            keep &= column >= 0
        else:
            spec = encoder.schema[domain.name]
            x = (
                datetime_seconds(values, spec, source)
                if spec.kind == DATETIME
                else numeric_values(values, spec, source)
            )
            missing = np.isnan(x)
            u = t.to_unit(np.where(missing, t.lows[0], x))
            column = np.searchsorted(np.asarray(domain.edges[1:-1]), u, side="right")
            if domain.has_missing:
                column[missing] = domain.size - 1
            else:
                keep &= ~missing
        codes[:, j] = np.maximum(column, 0)
    return codes[keep]


def all_pairs(num_columns: int) -> list[Clique]:
    return list(itertools.combinations(range(num_columns), 2))


def count_marginals(codes: np.ndarray, sizes: list[int], cliques: list[Clique]) -> list[np.ndarray]:
    """Exact count table of each clique."""
    tables = []
    for clique in cliques:
        shape = tuple(sizes[j] for j in clique)
        flat = np.ravel_multi_index(tuple(codes[:, j] for j in clique), shape)
        tables.append(np.bincount(flat, minlength=math.prod(shape)).reshape(shape).astype(float))
    return tables


@dataclass
class MarginalRelease:
    """Noisy count tables of ``cliques`` (one owner's, or the sum over several owners')."""

    cliques: list[Clique]
    tables: list[np.ndarray]
    noise_var: float  # per cell of every clique table; an atom table's: over the atom weight
    contributors: int = 1
    # 1-way counts over the whole declared atom grid of the model's atom-grid columns, in
    # ``atom_grid_columns`` order. In a document they travel as 1-way tables of cliques
    # ``[-1]``, ``[-2]``, ... (no column of the model has a negative index).
    atom_tables: list[np.ndarray] = field(default_factory=list)

    @property
    def num_tables(self) -> int:
        return len(self.tables) + len(self.atom_tables)

    def sensitivity_squared(self, atom_weight: float) -> float:
        """Tables' worth of budget: each atom table counts ``atom_weight`` times."""
        return len(self.tables) + atom_weight * len(self.atom_tables)

    def to_dict(self) -> dict:
        cliques = [list(c) for c in self.cliques] + [[-1 - i] for i in range(len(self.atom_tables))]
        tables = [*self.tables, *self.atom_tables]
        return {
            "cliques": cliques,
            "shapes": [list(t.shape) for t in tables],
            "tables": [t.tolist() for t in tables],
            "noise_var": self.noise_var,
            "contributors": self.contributors,
        }

    @classmethod
    def from_dict(cls, d: dict) -> MarginalRelease:
        cliques = [tuple(int(j) for j in c) for c in d["cliques"]]
        tables = [
            np.asarray(t, dtype=float).reshape(shape)
            for t, shape in zip(d["tables"], d["shapes"], strict=True)
        ]
        atoms = [i for i, c in enumerate(cliques) if min(c, default=0) < 0]
        if [cliques[i] for i in atoms] != [(-1 - k,) for k in range(len(atoms))]:
            raise ValueError("atom tables must be 1-way tables of cliques [-1], [-2], ...")
        return cls(
            cliques=[c for i, c in enumerate(cliques) if i not in atoms],
            tables=[t for i, t in enumerate(tables) if i not in atoms],
            noise_var=float(d["noise_var"]),
            contributors=int(d.get("contributors", 1)),
            atom_tables=[tables[i] for i in atoms],
        )


def merge_releases(parts: list[MarginalRelease]) -> MarginalRelease:
    """Sum owners' releases of the same cliques: counts add, noise variances add."""
    if not parts:
        raise ValueError("no marginals to merge")
    first = parts[0]
    for part in parts[1:]:
        shapes = [t.shape for t in part.tables]
        if part.cliques != first.cliques or shapes != [t.shape for t in first.tables]:
            raise ValueError("releases measure different cliques or domains")
        if [t.shape for t in part.atom_tables] != [t.shape for t in first.atom_tables]:
            raise ValueError("releases measure different atom grids")
    return MarginalRelease(
        cliques=list(first.cliques),
        tables=[np.sum([p.tables[i] for p in parts], axis=0) for i in range(len(first.tables))],
        noise_var=sum(p.noise_var for p in parts),
        contributors=sum(p.contributors for p in parts),
        atom_tables=[
            np.sum([p.atom_tables[i] for p in parts], axis=0) for i in range(len(first.atom_tables))
        ],
    )


def measure_marginals(
    codes: np.ndarray,
    *,
    sizes: list[int],
    cliques: list[Clique],
    noise_multiplier: float,
    label: str,
    atom_counts: dict[str, np.ndarray] | None = None,
    atom_weight: float = 1.0,
    noise: NoiseSource | None = None,
) -> tuple[MarginalRelease, MechanismRecord]:
    """One discrete Gaussian release of the count tables of ``cliques`` (and of the exact
    atom-grid 1-way counts ``atom_counts``, each row adding at most 1 to each, with noise
    variance ``noise_var / atom_weight``) and its ledger record. The noise comes from
    ``noise`` (default: ``SecureNoise()``; ``SeededNoise`` is for tests only)."""
    if noise_multiplier < 0:
        raise ValueError("noise_multiplier must be >= 0 (0: exact counts, no DP)")
    if not cliques:
        raise ValueError("no cliques to measure")
    atom_counts = atom_counts or {}
    if atom_weight <= 0:
        raise ValueError("atom_weight must be > 0")
    noise = SecureNoise() if noise is None else noise
    # Each table has sensitivity 1; a table with noise std / sqrt(w) counts w times in the
    # release's RDP (alpha / 2 * sum of 1 / std_i^2, exact for independent discrete Gaussian
    # cells too), so ``k + w * atoms`` tables' worth: that is the recorded L2 sensitivity.
    sensitivity = math.sqrt(len(cliques) + atom_weight * len(atom_counts))
    std = noise_multiplier * sensitivity
    atom_std = std / math.sqrt(atom_weight)

    def noisy(counts: np.ndarray, sigma: float) -> np.ndarray:
        counts = np.asarray(counts).astype(np.int64)  # numbers of rows
        return (counts + noise.discrete_gaussian(sigma, counts.shape)).astype(float)

    tables = [noisy(t, std) for t in count_marginals(codes, sizes, cliques)]
    atoms = [noisy(c, atom_std) for c in atom_counts.values()]
    release = MarginalRelease(list(cliques), tables, std**2, 1, atoms)
    record = MechanismRecord(
        label,
        noise_multiplier,
        1.0,
        1,
        mechanism=DISCRETE_GAUSSIAN,
        l2_sensitivity=sensitivity,
        dimension=sum(t.size for t in tables) + sum(a.size for a in atoms),
    )
    return release, record


# -- the numeric columns' own values ------------------------------------------------------------
def atom_grid_columns(encoder: TableEncoder) -> list[str]:
    """Numeric (not datetime) columns: the marginal model counts them again over their whole
    statistics grid (``grid_for``: the declared atom grid, declared bins or the log grid)."""
    return [
        name
        for name, t in encoder.transforms.items()
        if isinstance(t, QuantileTransform) and encoder.schema[name].kind != DATETIME
    ]


def count_atoms(
    data: pd.DataFrame, encoder: TableEncoder, names: list[str], *, source: str | None = None
) -> dict[str, np.ndarray]:
    """Exact counts of each column over its whole statistics grid (missing rows left out;
    values past declared bounds go to the end bins)."""
    out = {}
    for name in names:
        spec = encoder.schema[name]
        grid = grid_for(spec)
        x = numeric_values(data[name], spec, source)
        index = grid.bin_index(x[~np.isnan(x)])
        out[name] = np.bincount(index, minlength=grid.num_bins).astype(float)
    return out


def rebin_from_atoms(
    encoder: TableEncoder,
    names: list[str],
    release: MarginalRelease,
    atom_weight: float = 1.0,
    end_share: float = END_ATOM_MASS,
) -> list[str]:
    """Post-processing: replace each column's transform by one whose bins are those of its
    grid that stand out of ``release``'s noise, denoised as the encoder denoises its
    statistics: atoms one by one (plus the declared end values, kept with at least
    ``end_share`` of the mass), other grids at the finest resolution that shows mass. Returns
    the columns replaced (a column whose grid table shows nothing above the noise keeps its
    transform, and with it the note that says so)."""
    if len(names) != len(release.atom_tables):
        raise ValueError(f"{len(release.atom_tables)} grid tables for the columns {names}")
    replaced = []
    for name, counts in zip(names, release.atom_tables, strict=True):
        old = encoder.transforms[name]
        spec = encoder.schema[name]
        counts = np.asarray(counts, dtype=float)
        if atom_range(spec) is not None:
            masses = _denoise(counts, release.noise_var / atom_weight)
            ends = masses[[0, -1]]
            masses[[0, -1]] = np.maximum(ends, masses.sum() * end_share)
        else:
            shape = numeric_shape(counts, release.noise_var / atom_weight)
            if not shape.described:
                continue  # nothing stands out here: the statistics' transform (and note) stay
            masses = shape.masses
        lows, highs = grid_for(spec).bin_bounds()
        if spec.bounds is not None:
            lows, highs = np.maximum(lows, spec.bounds[0]), np.minimum(highs, spec.bounds[1])
        keep = masses > 0
        encoder.transforms[name] = QuantileTransform(
            spec,
            lows[keep],
            highs[keep],
            masses[keep] / masses[keep].sum(),
            old.decimals,
            old.n_modes,
            old.has_missing,
        )
        replaced.append(name)
    return replaced


def plan_noise_multiplier(
    ledger: PrivacyLedger | None,
    *,
    phase: str,
    selection_share: float,
    target_epsilon: float | None = None,
) -> float:
    """Noise of the next marginal release, so that selection then measurement end exactly at
    the ledger's budget. Both are discrete Gaussian (``sample_rate = 1``), whose RDP is
    ``alpha / (2 sigma^2)``: the remaining budget is one release of noise ``s`` split into
    ``1/s^2 = share/s^2 + (1 - share)/s^2``. Selection takes ``share`` of it; measurement takes
    what is left, calibrated on the ledger itself (0 without a ledger: exact counts). Both end at
    ``target_epsilon`` instead when given (a share of the budget, e.g. for a warm start)."""
    if phase not in (SELECTION, MEASUREMENT):
        raise ValueError(f"unknown phase {phase!r}")
    if not 0 < selection_share < 1:
        raise ValueError("selection_share must be in (0, 1)")
    if ledger is None:
        return 0.0
    label = SELECTION_LABEL if phase == SELECTION else MEASUREMENT_LABEL
    target = ledger.epsilon_budget if target_epsilon is None else target_epsilon
    remaining = calibrate_noise_multiplier(
        ledger, target_epsilon=min(target, ledger.epsilon_budget), sample_rate=1.0, steps=1,
        label=label, mechanism=DISCRETE_GAUSSIAN,
    )  # fmt: skip
    return remaining / math.sqrt(selection_share) if phase == SELECTION else remaining


def project_to_simplex(values: np.ndarray, total: float) -> np.ndarray:
    """The non-negative array summing to ``total`` nearest to ``values`` (Euclidean). It
    subtracts one common threshold and clips: cells made of noise alone mostly go to zero."""
    flat = np.asarray(values, dtype=float).ravel()
    if total <= 0 or flat.size == 0:
        return np.zeros_like(values, dtype=float)
    ordered = np.sort(flat)[::-1]
    cumulative = np.cumsum(ordered) - total
    index = np.arange(1, flat.size + 1)
    rho = np.flatnonzero(ordered - cumulative / index > 0)[-1]
    threshold = cumulative[rho] / (rho + 1)
    return np.maximum(flat - threshold, 0.0).reshape(np.shape(values))


def mutual_information(table: np.ndarray) -> float:
    """Mutual information (nats) of a (noisy) 2-way count table, negative counts clipped."""
    joint = np.clip(np.asarray(table, dtype=float), 0.0, None)
    total = joint.sum()
    if total <= 0:
        return 0.0
    joint = joint / total
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    mask = joint > 0
    return float(np.sum(joint[mask] * np.log(joint[mask] / outer[mask])))


def pair_scores(release: MarginalRelease, *, draws: int = 3, seed: int = 0) -> dict[Clique, float]:
    """Noisy mutual information of each pair in a release, less what noise alone shows: the
    mean mutual information of tables of independent columns with the same (noisy) margins
    and the same noise, clipped the same way. Without it, pairs with large domains would win
    on noise. Post-processing only (the simulated noise is seeded, not the data's)."""
    rng = np.random.default_rng(seed)
    std = math.sqrt(release.noise_var)
    scores = {}
    for clique, table in zip(release.cliques, release.tables, strict=True):
        if len(clique) != 2:
            continue
        clipped = np.clip(table, 0.0, None)
        total = max(clipped.sum(), 1.0)
        independent = np.outer(clipped.sum(1), clipped.sum(0)) / total
        noise_only = np.mean(
            [
                mutual_information(independent + rng.normal(0.0, std, table.shape))
                for _ in range(draws if std > 0 else 1)
            ]
        )
        scores[clique] = mutual_information(table) - float(noise_only)
    return scores


def select_tree(scores: dict[Clique, float], num_columns: int) -> list[Clique]:
    """Kruskal: the maximum spanning tree (a forest if pairs are missing) of ``scores``."""
    parent = list(range(num_columns))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    tree = []
    for (a, b), _ in sorted(scores.items(), key=lambda item: (-item[1], item[0])):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[ra] = rb
            tree.append((min(a, b), max(a, b)))
    return tree


def three_way(pg: np.ndarray, pc: np.ndarray, gc: np.ndarray, iterations: int = 50) -> np.ndarray:
    """The maximum-entropy ``(p, g, c)`` table whose pair margins are ``pg``, ``pc`` and ``gc``
    (iterative proportional fitting from a uniform table; the pairs should agree on their
    shared columns)."""
    cube = np.ones((pg.shape[0], pg.shape[1], pc.shape[1]))
    for _ in range(iterations):
        for target, axis in ((pg, 2), (pc, 1), (gc, 0)):
            sums = cube.sum(axis)
            ratio = np.divide(target, sums, out=np.zeros_like(sums), where=sums > 0)
            cube *= np.expand_dims(ratio, axis)
    return cube


def conditional_mutual_information(cube: np.ndarray) -> float:
    """``I(g; c | p)`` in nats of a ``(p, g, c)`` count table."""
    total = cube.sum()
    if total <= 0:
        return 0.0
    joint = cube / total
    p = joint.sum((1, 2), keepdims=True)
    pg = joint.sum(2, keepdims=True)
    pc = joint.sum(1, keepdims=True)
    mask = joint > 0
    ratio = joint * p / np.where(pg * pc > 0, pg * pc, 1.0)
    return float(np.sum(joint[mask] * np.log(ratio[mask])))


def _projected_pair(release: MarginalRelease, a: int, b: int, total: float) -> np.ndarray:
    for clique, table in zip(release.cliques, release.tables, strict=True):
        if clique == (a, b):
            return project_to_simplex(table, total)
        if clique == (b, a):
            return project_to_simplex(table, total).T
    raise KeyError(f"the release does not measure the pair {(a, b)}")


def chord_scores(
    release: MarginalRelease, parents: list[int], order: list[int], *, draws: int = 2, seed: int = 0
) -> dict[tuple[int, int], float]:
    """For each pair ``(child, other)`` outside the tree (``other`` sampled before ``child``,
    which has a parent ``p``): how much ``other`` tells about ``child`` beyond ``p``, ``I(child;
    other | p)`` of the three-way table fitted to the release's three pair tables, less what
    noise alone shows (the same score on simulated tables with ``child`` and ``other``
    independent given ``p``, with the release's noise). Post-processing of the release."""
    rng = np.random.default_rng(seed)
    std = math.sqrt(release.noise_var)
    rank = {j: i for i, j in enumerate(order)}
    tree = {(min(c, p), max(c, p)) for c, p in enumerate(parents) if p >= 0}
    total = float(np.median([t.sum() for t in release.tables]))
    scores = {}
    for a, b in all_pairs(len(parents)):
        child, other = (a, b) if rank[a] > rank[b] else (b, a)
        parent = parents[child]
        if (a, b) in tree or parent < 0 or parent == other:
            continue
        pg = _projected_pair(release, parent, other, total)
        pc = _projected_pair(release, parent, child, total)
        gc = _projected_pair(release, other, child, total)
        raw = conditional_mutual_information(three_way(pg, pc, gc))
        # Tables with child and other independent given the parent, measured with this noise.
        rows = np.maximum(pg.sum(1), 1e-12)
        null = pg[:, :, None] * pc[:, None, :] / rows[:, None, None]
        margins = (null.sum(2), null.sum(1), null.sum(0))

        def noisy(t: np.ndarray) -> np.ndarray:
            return project_to_simplex(t + rng.normal(0.0, std, t.shape), total)

        noise = [
            conditional_mutual_information(three_way(*map(noisy, margins)))
            for _ in range(draws if std > 0 else 1)
        ]
        scores[(child, other)] = raw - float(np.mean(noise))
    return scores
