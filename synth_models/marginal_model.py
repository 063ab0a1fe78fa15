"""The marginal model: a tree of noisy 2-way marginals (MST-style) with a few second parents,
fitted and sampled.

Fitting is post-processing of noisy count tables (``marginals.MarginalRelease``), from one
owner or summed over merchants: every measurement of a column or pair is combined by
inverse-variance weighting (a pair table summed over one column is also a measurement of the
other column), the estimates are projected onto non-negative tables of the estimated row
count, and each tree pair is scaled (iterative proportional fitting) to the column estimates,
so that pairs sharing a column agree on it. Sampling walks the tree: the root from its 1-way
marginal, every other column from ``P(column | parent)``, or from ``P(column | parent,
second)`` where a chord gives it a second parent: a tree keeps only pairs, so a column that
two others determine together (a pizza's price: its name and size) needs both.

The learnt state lives in buffers (``parents``, ``second_parents``, ``one_way``,
``conditionals``), so the model
saves, loads and travels like the networks' weights; ``conditionals`` changes length with the
tree and is resized on load.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import nn

from synth_models.encoder import (
    END_ATOM_MASS,
    UNIT_MARGIN,
    CategoricalTransform,
    TableEncoder,
    atom_range,
)
from synth_models.marginals import (
    Clique,
    ColumnDomain,
    MarginalRelease,
    atom_grid_columns,
    column_domains,
    count_marginals,
    project_to_simplex,
    rebin_from_atoms,
    three_way,
)

IPF_ITERATIONS = 50
# Rows drawn from the model to get its own joint of a child's two parents.
MODEL_JOINT_ROWS = 200_000


# -- estimation (plain functions on noisy tables) ----------------------------------------------
def _pair_view(clique: Clique, table: np.ndarray, pair: Clique) -> np.ndarray | None:
    if clique == pair:
        return table
    if clique == pair[::-1]:
        return table.T
    return None


def estimate_total(releases: list[MarginalRelease]) -> float:
    """Row count: the inverse-variance weighted mean of every table's sum."""
    values, weights = [], []
    for release in releases:
        for table in release.tables:
            values.append(table.sum())
            weights.append(1.0 / max(release.noise_var * table.size, 1e-12))
    return max(float(np.average(values, weights=weights)), 1.0)


def estimate_one_way(
    releases: list[MarginalRelease], sizes: list[int], total: float
) -> list[np.ndarray]:
    """Each column's counts from every table that holds it (inverse-variance weighted)."""
    estimates = []
    for j, size in enumerate(sizes):
        acc, weight = np.zeros(size), 0.0
        for release in releases:
            for clique, table in zip(release.cliques, release.tables, strict=True):
                if j not in clique:
                    continue
                axis = clique.index(j)
                vector = table.sum(axis=tuple(a for a in range(table.ndim) if a != axis))
                w = 1.0 / max(release.noise_var * table.size / size, 1e-12)
                acc, weight = acc + w * vector, weight + w
        vector = acc / weight if weight else np.full(size, total / size)
        estimates.append(project_to_simplex(vector, total))
    return estimates


def estimate_pair(
    releases: list[MarginalRelease], pair: Clique, one_way: list[np.ndarray], total: float
) -> np.ndarray:
    """The pair's counts: its measurements combined, made non-negative and consistent with the
    columns' estimates ``one_way``."""
    a, b = pair
    acc, weight = np.zeros((len(one_way[a]), len(one_way[b]))), 0.0
    for release in releases:
        for clique, table in zip(release.cliques, release.tables, strict=True):
            view = _pair_view(clique, table, pair)
            if view is not None:
                w = 1.0 / max(release.noise_var, 1e-12)
                acc, weight = acc + w * view, weight + w
    if weight == 0:  # never measured: independence
        return np.outer(one_way[a], one_way[b]) / max(total, 1e-12)
    return proportional_fit(project_to_simplex(acc / weight, total), one_way[a], one_way[b])


def proportional_fit(
    table: np.ndarray, rows: np.ndarray, cols: np.ndarray, iterations: int = IPF_ITERATIONS
) -> np.ndarray:
    """Scale ``table`` to the row and column sums ``rows``/``cols`` (IPF). A row or column the
    table has no mass in, but the target has, starts from independence."""
    table = np.array(table, dtype=float)
    independent = np.outer(rows, cols) / max(rows.sum(), 1e-12)
    empty_rows = (table.sum(1) <= 0) & (rows > 0)
    table[empty_rows] = independent[empty_rows]
    empty_cols = (table.sum(0) <= 0) & (cols > 0)
    table[:, empty_cols] = independent[:, empty_cols]
    for _ in range(iterations):
        sums = table.sum(1)
        table *= np.divide(rows, sums, out=np.zeros_like(rows), where=sums > 0)[:, None]
        sums = table.sum(0)
        table *= np.divide(cols, sums, out=np.zeros_like(cols), where=sums > 0)[None, :]
    return table


def orient_tree(tree: list[Clique], num_columns: int) -> list[int]:
    """Parent of each column (-1 for a root), breadth first from the lowest column of each
    connected part."""
    neighbours: dict[int, list[int]] = {j: [] for j in range(num_columns)}
    for a, b in tree:
        neighbours[a].append(b)
        neighbours[b].append(a)
    parents, seen = [-1] * num_columns, set()
    for start in range(num_columns):
        if start in seen:
            continue
        seen.add(start)
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for other in sorted(neighbours[node]):
                if other not in seen:
                    seen.add(other)
                    parents[other] = node
                    queue.append(other)
    return parents


def sampling_order(parents: list[int], seconds: list[int] | None = None) -> list[int]:
    """Columns in an order where both parents come before their children."""
    seconds = seconds or [-1] * len(parents)
    order, placed = [], set()
    pending = list(range(len(parents)))
    while pending:
        ready = [
            j
            for j in pending
            if (parents[j] < 0 or parents[j] in placed) and (seconds[j] < 0 or seconds[j] in placed)
        ]
        if not ready:
            raise ValueError(f"parents {parents} do not form a tree")
        order += ready
        placed.update(ready)
        pending = [j for j in pending if j not in placed]
    return order


# -- the model ---------------------------------------------------------------------------------
class MarginalModel(nn.Module):
    """A tree-shaped graphical model over the discretized columns.

    ``max_bins``: most values of a numeric column; ``selection_share``: the share of the
    marginals' budget (in RDP terms) spent selecting the tree; ``one_way``: which columns'
    1-way marginals are measured again with the tree pairs: ``False`` (none: each column is
    in the selection's pair tables, numeric ones also in their grid counts, and one table
    less gives the others less noise: pizzaplace at ε = 1, 5 merchants, 0.976 -> 0.979 over
    6 seeds), ``"numeric"`` (numeric and datetime columns) or ``True`` (every column);
    ``atom_grid``: the selection
    release also counts each numeric column over its whole statistics grid, and the column's
    values are re-chosen from those counts (:meth:`rebin`) before the measurement;
    ``atom_weight``: how many pair tables' worth of the selection's budget each of those counts
    gets (its noise variance is the pairs' divided by it); ``chords``: most second parents
    (:func:`marginal_fit.choose_chords`); ``end_share``: least share of rows each declared
    bound of a lattice column keeps."""

    def __init__(
        self,
        encoder: TableEncoder,
        *,
        max_bins: int = 64,
        selection_share: float = 0.3,
        one_way: bool | str = False,
        atom_grid: bool = True,
        atom_weight: float = 8.0,
        chords: int = 2,
        end_share: float = END_ATOM_MASS,
        systematic: bool = True,
    ) -> None:
        super().__init__()
        if one_way not in (True, False, "numeric"):
            raise ValueError(f"one_way must be True, False or 'numeric', got {one_way!r}")
        self.encoder = encoder
        self.max_bins = max_bins
        self.atom_grid = atom_grid
        self.atom_weight = float(atom_weight)
        self.max_chords = chords
        self.systematic = systematic
        self.end_share = end_share
        self.domains: list[ColumnDomain] = column_domains(encoder, max_bins=max_bins)
        self.sizes = [d.size for d in self.domains]
        self.selection_share = selection_share
        self.measure_one_way = one_way
        self.register_buffer("parents", torch.full((len(self.sizes),), -1, dtype=torch.long))
        self.register_buffer(
            "one_way",
            torch.cat([torch.full((s,), 1.0 / s, dtype=torch.float64) for s in self.sizes]),
        )
        self.register_buffer("second_parents", torch.full((len(self.sizes),), -1, dtype=torch.long))
        self.register_buffer("conditionals", torch.zeros(0, dtype=torch.float64))

    # -- what to measure -----------------------------------------------------------------------
    def measurement_cliques(self, tree: list[Clique]) -> list[Clique]:
        singles = [
            (j,)
            for j, domain in enumerate(self.domains)
            if self.measure_one_way is True
            or (self.measure_one_way == "numeric" and domain.kind == "numeric")
        ]
        return [*singles, *tree]

    def atom_columns(self) -> list[str]:
        """Numeric columns whose selection release also counts the whole declared atom grid."""
        return atom_grid_columns(self.encoder) if self.atom_grid else []

    def rebin(self, selection: MarginalRelease) -> list[int]:
        """Post-processing of the (summed) selection release: the atom-grid columns take the
        atoms that stand out of its noise as their values (their encoder transforms are
        replaced in place, so the encoder saved or sent with the model describes them). Returns
        the indices of the columns whose domain changed; tables of the old domains that hold
        them must not be used for fitting."""
        replaced = rebin_from_atoms(
            self.encoder, self.atom_columns(), selection, self.atom_weight, self.end_share
        )
        if not replaced:
            return []
        self.domains = column_domains(self.encoder, max_bins=self.max_bins)
        self.sizes = [d.size for d in self.domains]
        self.one_way = torch.cat(
            [torch.full((s,), 1.0 / s, dtype=torch.float64) for s in self.sizes]
        )
        return [j for j, d in enumerate(self.domains) if d.name in replaced]

    # -- fitting -------------------------------------------------------------------------------
    def fit_releases(
        self,
        releases: list[MarginalRelease],
        tree: list[Clique],
        chords: list[Clique] = (),
        *,
        seed: int = 0,
    ) -> None:
        """Set the model from noisy measurements (post-processing only), the tree and the
        chords ``(child, second parent)``. A child with a second parent is drawn from
        ``P(child | parent, second)``: the three-way table fitted (IPF) to the pair estimates
        of child and parent, child and second, and the model's own joint of parent and second
        (from ``MODEL_JOINT_ROWS`` rows drawn from the columns before; seeded)."""
        total = estimate_total(releases)
        one_way = self._with_declared_ends(estimate_one_way(releases, self.sizes, total), total)
        parents = orient_tree(tree, len(self.sizes))
        seconds = [-1] * len(self.sizes)
        for child, second in chords:
            seconds[child] = second
        self.parents = torch.tensor(parents, dtype=torch.long)
        self.second_parents = torch.full((len(self.sizes),), -1, dtype=torch.long)
        self.one_way = torch.from_numpy(np.concatenate([_normalized(v) for v in one_way])).double()
        pairs = {}
        for child, parent in enumerate(parents):
            if parent >= 0:
                pairs[child] = estimate_pair(releases, (parent, child), one_way, total)
        self.conditionals = torch.from_numpy(
            np.concatenate([_conditional(pairs[c], one_way[c]).ravel() for c in sorted(pairs)])
            if pairs
            else np.zeros(0)
        ).double()
        generator = torch.Generator().manual_seed(seed)
        for child in sampling_order(parents):
            second = seconds[child]
            if second < 0:
                continue
            codes = self.sample_codes(MODEL_JOINT_ROWS, generator).numpy()
            parent = parents[child]
            model_joint = count_marginals(codes, self.sizes, [(parent, second)])[0]
            pg = model_joint * (total / MODEL_JOINT_ROWS)
            gc = estimate_pair(releases, (second, child), one_way, total)
            cube = three_way(pg, _smoothed(pairs[child]), _smoothed(gc))
            fallback = _conditional(pairs[child], one_way[child])[:, None, :]
            sums = cube.sum(2, keepdims=True)
            block = np.where(sums > 0, cube / np.where(sums > 0, sums, 1.0), fallback)
            self._set_block(child, block, second)

    def _with_declared_ends(self, one_way: list[np.ndarray], total: float) -> list[np.ndarray]:
        """Declared bounds of a lattice column are values it takes (SDV 2.x reads
        ``range_min``/``range_max`` as the range the data covers): each keeps at least
        ``end_share`` of the rows, which noise alone would often take from a rare end value
        (pizzaplace's dearest pizza: 28 of 49,574 rows). Public knowledge, no data used."""
        for j, domain in enumerate(self.domains):
            if domain.kind == "numeric" and atom_range(self.encoder.schema[domain.name]):
                ends = [0, domain.groups - 1]
                one_way[j][ends] = np.maximum(one_way[j][ends], self.end_share * total)
        return one_way

    def _set_block(self, child: int, block: np.ndarray, second: int) -> None:
        """Replace ``child``'s conditional by ``block`` (parent x second x child)."""
        start, end = self._offsets(self.parents.tolist(), self.second_parents.tolist())[child]
        self.second_parents[child] = second
        flat = torch.from_numpy(np.asarray(block, dtype=float).ravel()).double()
        self.conditionals = torch.cat([self.conditionals[:start], flat, self.conditionals[end:]])

    def _offsets(self, parents: list[int], seconds: list[int]) -> dict[int, tuple[int, int]]:
        """Start and end of each child's block in ``conditionals`` (children in column order)."""
        offsets, start = {}, 0
        for child, parent in enumerate(parents):
            if parent >= 0:
                size = self.sizes[parent] * self.sizes[child]
                if seconds[child] >= 0:
                    size *= self.sizes[seconds[child]]
                offsets[child] = (start, start + size)
                start += size
        return offsets

    @property
    def chords(self) -> list[Clique]:
        """``(child, second parent)`` of every child drawn from two parents."""
        return [(c, g) for c, g in enumerate(self.second_parents.tolist()) if g >= 0]

    @property
    def tree(self) -> list[Clique]:
        return [(min(p, c), max(p, c)) for c, p in enumerate(self.parents.tolist()) if p >= 0]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "conditionals"
        if key in state_dict:  # its length follows the fitted tree
            self.conditionals = torch.zeros_like(state_dict[key], dtype=torch.float64)
        # Saved before second parents existed: a tree.
        state_dict.setdefault(prefix + "second_parents", torch.full_like(self.parents, -1))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- sampling ------------------------------------------------------------------------------
    def _tables(self) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
        one_way, start = [], 0
        for size in self.sizes:
            one_way.append(self.one_way[start : start + size])
            start += size
        parents, seconds = self.parents.tolist(), self.second_parents.tolist()
        pairs = zip(parents, seconds, strict=True)
        if any(max(p, g) >= len(parents) or g >= 0 > p for p, g in pairs):
            raise ValueError("parents do not index the model's columns")
        offsets = self._offsets(parents, seconds)
        if max((end for _, end in offsets.values()), default=0) != len(self.conditionals):
            raise ValueError("conditionals do not match the tree and the encoder's domains")
        conditionals = {}
        for child, (start, end) in offsets.items():
            shape = (self.sizes[parents[child]], self.sizes[child])
            if seconds[child] >= 0:
                shape = (shape[0], self.sizes[seconds[child]], shape[1])
            conditionals[child] = self.conditionals[start:end].reshape(shape)
        return one_way, conditionals

    @torch.no_grad()
    def sample_codes(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Discrete codes (n x columns) drawn from the tree."""
        one_way, conditionals = self._tables()
        parents, seconds = self.parents.tolist(), self.second_parents.tolist()
        codes = torch.zeros((n, len(self.sizes)), dtype=torch.long)
        for j in sampling_order(parents, seconds):
            if parents[j] < 0:
                probabilities, group = one_way[j].expand(n, -1), torch.zeros(n, dtype=torch.long)
            elif seconds[j] < 0:
                group = codes[:, parents[j]]
                probabilities = conditionals[j][group]
            else:
                parent, second = codes[:, parents[j]], codes[:, seconds[j]]
                probabilities = conditionals[j][parent, second]
                group = parent * self.sizes[seconds[j]] + second
            draw = _draw_systematic if self.systematic else _draw
            codes[:, j] = draw(probabilities, group, generator)
        return codes

    @torch.no_grad()
    def generate(
        self, n: int, generator: torch.Generator, cond_index: int | None = None
    ) -> torch.Tensor:
        """``n`` rows in the encoder's matrix layout (conditions: rejection, by the caller)."""
        del cond_index
        codes = self.sample_codes(n, generator)
        blocks = []
        for j, domain in enumerate(self.domains):
            t = self.encoder.transforms[domain.name]
            column = codes[:, j]
            if isinstance(t, CategoricalTransform):
                blocks.append(nn.functional.one_hot(column, t.width).float())
            else:
                blocks.append(_numeric_block(column, domain, t.n_modes, t.width, generator))
        return torch.cat(blocks, dim=1)


def _smoothed(joint: np.ndarray, weight: float = 1e-3) -> np.ndarray:
    """``joint`` with ``weight`` of its mass spread as under independence: noisy pair tables
    of a three-way fit can disagree on which cells are empty, and IPF then empties a value
    that both hold (such as a rare declared end value)."""
    total = max(joint.sum(), 1e-12)
    independent = np.outer(joint.sum(1), joint.sum(0)) / total
    return (1 - weight) * joint + weight * independent


def _normalized(vector: np.ndarray) -> np.ndarray:
    total = vector.sum()
    return vector / total if total > 0 else np.full(len(vector), 1.0 / len(vector))


def _conditional(joint: np.ndarray, child: np.ndarray) -> np.ndarray:
    """Rows of ``P(child | parent)``; a parent value without mass falls back to the child's
    own marginal."""
    sums = joint.sum(1, keepdims=True)
    fallback = _normalized(child)[None, :]
    return np.where(sums > 0, joint / np.where(sums > 0, sums, 1.0), fallback)


def _draw(
    probabilities: torch.Tensor, group: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """One category per row by inverting each row's CDF at an independent uniform."""
    del group
    u = torch.rand(len(probabilities), generator=generator, dtype=torch.float64)
    return _invert(probabilities, u)


def _draw_systematic(
    probabilities: torch.Tensor, group: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Systematic sampling within each group of rows that share their parents' values (and so
    their distribution): the k rows of a group, in random order, invert the CDF at
    ``(U + 0, 1, ..., k - 1) / k`` for one uniform ``U``. Each row is still a draw from its
    distribution, but a group's counts are within one of their expectation per category, so
    the sample shows the model instead of the model plus multinomial noise."""
    n = len(group)
    # By group, in random order within (unique keys: any sort will do; numpy's is ~50x
    # faster than torch's on CPU here).
    keys = group * n + torch.randperm(n, generator=generator)
    order = torch.from_numpy(np.argsort(keys.numpy()))
    sorted_group = group[order]
    sizes = torch.bincount(sorted_group)
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(n) - starts[sorted_group]
    offset = torch.rand(len(sizes), generator=generator, dtype=torch.float64)[sorted_group]
    u = torch.empty(n, dtype=torch.float64)
    u[order] = (offset + rank) / sizes[sorted_group]
    return _invert(probabilities, u)


def _invert(probabilities: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    cdf = probabilities.cumsum(dim=1)
    u = (u.to(cdf.dtype) * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probabilities.shape[1] - 1)[:, 0]


def _numeric_block(
    codes: torch.Tensor,
    domain: ColumnDomain,
    n_modes: int,
    width: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """The encoder's mode/offset (and missing pair) of a value drawn uniformly in unit space
    within each row's group of DP bins: the DP CDF restricted to the group."""
    n = len(codes)
    groups = domain.groups
    missing = codes >= groups
    group = codes.clamp(max=groups - 1)
    edges = torch.tensor(domain.edges, dtype=torch.float64)
    low, high = edges[group], edges[group + 1]
    span = (high - low).clamp(min=1e-12)
    # Off the group's ends by more than the float32 resolution of the encoded offset.
    margin = (UNIT_MARGIN / n_modes / span).clamp(max=0.5)
    inside = torch.rand(n, generator=generator, dtype=torch.float64)
    u = (low + span * (margin + inside * (1 - 2 * margin))) * n_modes
    mode = u.floor().clamp(0, n_modes - 1)
    out = torch.zeros((n, width), dtype=torch.float32)
    out[torch.arange(n), mode.long()] = 1.0
    out[:, n_modes] = ((u - mode) * 2.0 - 1.0).clamp(-1.0, 1.0).float()
    if domain.has_missing:
        out[:, n_modes + 1] = (~missing).float()
        out[:, n_modes + 2] = missing.float()
    return out
