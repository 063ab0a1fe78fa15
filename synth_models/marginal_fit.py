"""What a data owner runs for the marginal model, and the one-owner fit.

An owner releases noisy marginals twice: every pair, and each numeric column's counts over its
whole statistics grid (selection), then the selected tree's pairs and chords (measurement).
Between the two, the numeric columns take the grid bins that stand out of the selection's
noise as their values (``MarginalModel.rebin``: post-processing; the encoder's own
statistics had only a tenth of the budget), so the measurement and the model use them. Each
release is one Gaussian mechanism, checked against and recorded in the owner's ledger; the
noise is planned so that the two end exactly at the budget
(:func:`marginals.plan_noise_multiplier`). In a federation each merchant runs
:func:`release_marginals` and the server sums the releases; a single owner is a federation of
one (:func:`fit_marginal_model`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from privacy.ledger import BudgetExceededError, PrivacyLedger
from privacy.noise import NoiseSource
from synth_models.encoder import grid_for
from synth_models.marginal_model import MarginalModel, orient_tree, sampling_order
from synth_models.marginals import (
    MEASUREMENT,
    MEASUREMENT_LABEL,
    SELECTION,
    SELECTION_LABEL,
    Clique,
    MarginalRelease,
    all_pairs,
    chord_scores,
    count_atoms,
    discretize,
    measure_marginals,
    pair_scores,
    plan_noise_multiplier,
    select_tree,
)
from synth_models.schema import DataError

logger = logging.getLogger(__name__)
# A release with less budget left than this share would be noise alone: refused instead.
MIN_REMAINING_SHARE = 0.01
# Nats of conditional information (above noise) a second parent must add to be measured.
MIN_CHORD_INFORMATION = 0.03


def release_marginals(
    data: pd.DataFrame,
    *,
    model: MarginalModel,
    ledger: PrivacyLedger | None,
    phase: str,
    tree: list[Clique] | None = None,
    source: str | None = None,
    target_epsilon: float | None = None,
    noise: NoiseSource | None = None,
) -> MarginalRelease:
    """This owner's noisy marginals for ``phase`` (selection: all pairs; measurement: the
    ``tree``), recorded in ``ledger`` (None: exact counts, no DP). The two phases together end
    at ``target_epsilon`` (default: the ledger's budget). Raises BudgetExceededError, before
    touching a row, when the budget cannot pay for it. ``noise``: see ``measure_marginals``."""
    if phase == SELECTION:
        cliques = all_pairs(len(model.sizes))
    else:
        if tree is None:
            raise ValueError("the measurement phase needs the selected tree")
        cliques = model.measurement_cliques(tree)
    if not cliques:
        raise DataError("the marginal model needs at least one column pair", source=source)
    if ledger is not None and ledger.remaining < ledger.epsilon_budget * MIN_REMAINING_SHARE:
        raise BudgetExceededError(
            f"privacy budget of {ledger.owner!r} is spent (epsilon {ledger.epsilon():.4f} of "
            f"{ledger.epsilon_budget:.4f}); refusing the marginals' {phase}"
        )
    try:
        multiplier = plan_noise_multiplier(
            ledger,
            phase=phase,
            selection_share=model.selection_share,
            target_epsilon=target_epsilon,
        )
    except ValueError as exc:  # what is left cannot pay for a useful release
        raise BudgetExceededError(f"{ledger.owner!r}: {exc}; refusing the marginals") from exc
    codes = discretize(data, model.encoder, model.domains, source=source)
    # Under DP no fitting row is released as noisy zeros: an error would tell a server that
    # crafted the encoder's domains that no row holds the values it guessed.
    if len(codes) == 0 and ledger is None:
        raise DataError("no row fits the shared encoder", source=source)
    label = SELECTION_LABEL if phase == SELECTION else MEASUREMENT_LABEL
    atoms = (
        count_atoms(data, model.encoder, model.atom_columns(), source=source)
        if phase == SELECTION
        else {}
    )
    release, record = measure_marginals(
        codes,
        sizes=model.sizes,
        cliques=cliques,
        noise_multiplier=multiplier,
        label=label,
        atom_counts=atoms,
        atom_weight=model.atom_weight,
        noise=noise,
    )
    if ledger is not None:
        ledger.check([record])
        ledger.record(record)
    logger.info(
        "marginals %s: %d tables, noise multiplier %.3f (std per cell %.2f)",
        phase,
        release.num_tables,
        multiplier,
        release.noise_var**0.5,
    )
    return release


def without_columns(release: MarginalRelease, columns: list[int]) -> MarginalRelease:
    """``release`` without its tables that hold one of ``columns`` (measured on a domain
    since replaced by :meth:`MarginalModel.rebin`), nor its atom tables."""
    keep = [i for i, c in enumerate(release.cliques) if not set(c) & set(columns)]
    return MarginalRelease(
        [release.cliques[i] for i in keep],
        [release.tables[i] for i in keep],
        release.noise_var,
        release.contributors,
    )


def atom_measurements(model: MarginalModel, selection: MarginalRelease) -> list[MarginalRelease]:
    """The selection's atom tables as 1-way measurements of the rebinned columns whose values
    are exactly the kept atoms (post-processing): they replace the selection's pair tables of
    those columns, dropped as measured on the old domains."""
    names = model.atom_columns()
    cliques, tables = [], []
    for name, counts in zip(names, selection.atom_tables, strict=True):
        j = next(i for i, d in enumerate(model.domains) if d.name == name)
        domain, t = model.domains[j], model.encoder.transforms[name]
        if domain.has_missing or domain.size != len(t.lows):
            continue  # a missing slot, or groups of several bins: no 1:1 cells
        index = grid_for(model.encoder.schema[name]).bin_index((t.lows + t.highs) / 2)
        cliques.append((j,))
        tables.append(np.asarray(counts, dtype=float)[index])
    if not cliques:
        return []
    noise_var = selection.noise_var / model.atom_weight
    return [MarginalRelease(cliques, tables, noise_var, selection.contributors)]


def choose_tree(selection: MarginalRelease, num_columns: int) -> list[Clique]:
    """The pairs to measure: maximum spanning tree of the noisy mutual information."""
    return select_tree(pair_scores(selection), num_columns)


def choose_chords(
    selection: MarginalRelease, tree: list[Clique], *, max_chords: int
) -> list[Clique]:
    """Second parents ``(child, second)``, at most one per child and ``max_chords`` in all,
    whose noisy conditional information (:func:`marginals.chord_scores`) beats
    ``MIN_CHORD_INFORMATION``: the dependences a tree misses (post-processing)."""
    if max_chords <= 0:
        return []
    num_columns = max(max(c) for c in selection.cliques) + 1
    parents = orient_tree(tree, num_columns)
    scores = chord_scores(selection, parents, sampling_order(parents))
    chosen, children = [], set()
    for (child, second), score in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])):
        if score < MIN_CHORD_INFORMATION or len(chosen) >= max_chords:
            break
        if child not in children:
            chosen.append((child, second))
            children.add(child)
    return chosen


def fit_marginal_model(
    model: MarginalModel,
    data: pd.DataFrame,
    *,
    ledger: PrivacyLedger | None,
    source: str | None = None,
    target_epsilon: float | None = None,
    noise: NoiseSource | None = None,
) -> list[dict]:
    """Fit ``model`` on one owner's table: select, measure, estimate (spending up to
    ``target_epsilon``, default the whole budget). Returns a history."""
    release = functools.partial(
        release_marginals, data, model=model, ledger=ledger, source=source,
        target_epsilon=target_epsilon, noise=noise,
    )  # fmt: skip
    selection = release(phase=SELECTION)
    structure = choose_structure(model, selection)
    measurement = release(phase=MEASUREMENT, tree=structure.measured_pairs)
    fit_structure(model, structure, selection, measurement)
    return [
        {
            **structure.describe(model),
            "epsilon": ledger.epsilon() if ledger is not None else float("inf"),
        }
    ]


@dataclass
class MarginalStructure:
    """What the server reads from the (summed) selection release, post-processing only: the
    tree, the chords ``(child, second parent)`` and the columns whose values
    :meth:`MarginalModel.rebin` re-chose (their selection tables no longer fit)."""

    tree: list[Clique]
    chords: list[Clique]
    rebinned: list[int]

    @property
    def measured_pairs(self) -> list[Clique]:
        """The pairs the measurement release counts: the tree's and each chord's."""
        return [*self.tree, *((min(c), max(c)) for c in self.chords)]

    def describe(self, model: MarginalModel) -> dict:
        """The structure by column names, for logs and histories."""
        names = [d.name for d in model.domains]
        return {
            "tree": [f"{names[a]}|{names[b]}" for a, b in self.tree],
            "second_parents": [f"{names[c]}<-{names[g]}" for c, g in self.chords],
        }


def choose_structure(model: MarginalModel, selection: MarginalRelease) -> MarginalStructure:
    """Tree and chords from ``selection``, then the atom-grid columns' values from the same
    release (``model`` is rebinned in place, so the encoder it holds describes them)."""
    tree = choose_tree(selection, len(model.sizes))
    chords = choose_chords(selection, tree, max_chords=model.max_chords)
    return MarginalStructure(tree, chords, model.rebin(selection))


def fit_structure(
    model: MarginalModel,
    structure: MarginalStructure,
    selection: MarginalRelease,
    measurement: MarginalRelease,
) -> None:
    """Fit ``model`` from both releases: the selection's tables that still fit the domains,
    its grid counts as 1-way tables, and the measurement."""
    model.fit_releases(
        [
            without_columns(selection, structure.rebinned),
            *atom_measurements(model, selection),
            measurement,
        ],
        structure.tree,
        structure.chords,
    )
