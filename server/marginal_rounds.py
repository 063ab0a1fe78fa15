"""The marginal model's federation: two rounds of noisy marginals instead of training rounds.

1. Selection: every merchant measures all column pairs with its own Gaussian noise; the server
   sums them (counts add, noise variances add) and keeps the maximum spanning tree of the
   summed tables' noisy mutual information, and the chords (second parents) whose noisy
   conditional information stands out. No pooled row is ever needed.
   The selection also counts each numeric column over its whole statistics grid; from their
   sum the server picks the columns' values (``MarginalModel.rebin``, post-processing) and
   sends the encoder that describes them with the measurement query.
2. Measurement: the merchants that answered the selection measure the tree's and the chords'
   pairs again.
3. The server fits the model from both sums over the merchants that answered both (their rows
   are the population both sums describe).

Merchants that fail or refuse are reported in the round log like in the training rounds; the
federation goes on without them as long as ``min_replies`` answer. A release that is
unreadable, holds a non-finite count, or a non-finite or negative noise variance
(``release_problem``) fails its merchant, with the server's own reason, before any sum:
``merge_releases`` never sees a NaN.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from flwr.serverapp import Grid

from server.schema_round import FederationError, query_merchants, wait_for_nodes
from server.strategy import reply_document
from synth_models.encoder import TableEncoder
from synth_models.federation import MARGINALS, MARGINALS_MESSAGE
from synth_models.marginal_fit import choose_structure, fit_structure
from synth_models.marginal_model import MarginalModel
from synth_models.marginals import (
    MEASUREMENT,
    SELECTION,
    Clique,
    MarginalRelease,
    merge_releases,
)

logger = logging.getLogger(__name__)
ROUNDS = {SELECTION: 1, MEASUREMENT: 2}


@dataclass
class MarginalRounds:
    """What the two rounds produced: the fitted model's state, the tree, a log entry per
    round (``round``, ``phase``, each merchant's outcome) and the two summed releases the model
    was fitted from (over the merchants that answered both), each with the encoder (as a dict)
    it was measured on."""

    weights: dict
    tree: list[Clique]
    round_log: list[dict] = field(default_factory=list)
    releases: dict[str, tuple[MarginalRelease, dict]] = field(default_factory=dict)


def marginal_round(
    grid: Grid,
    *,
    phase: str,
    nodes: list[int],
    document: dict,
    timeout: float,
    ledgers: dict[str, dict],
    owners: dict[str, int],
) -> tuple[dict[str, MarginalRelease], dict[str, dict]]:
    """Send one phase's query to ``nodes``; each successful merchant's release and every
    merchant's outcome."""
    accepted, outcome = query_merchants(
        grid,
        nodes=nodes,
        message_type=MARGINALS_MESSAGE,
        document={**document, "phase": phase},
        timeout=timeout,
        ledgers=ledgers,
        owners=owners,
        label=f"marginals {phase}",
    )
    releases = {}
    for msg, merchant in accepted:
        try:
            release = MarginalRelease.from_dict(reply_document(msg, MARGINALS))
        except (KeyError, TypeError, ValueError) as exc:
            outcome[merchant] = {"state": "failed", "reason": f"unreadable marginals ({exc})"}
            logger.warning("marginals %s: %s failed: unreadable marginals", phase, merchant)
            continue
        problem = release_problem(release)
        if problem:
            outcome[merchant] = {"state": "failed", "reason": f"marginals rejected: {problem}"}
            logger.warning(
                "marginals %s: %s failed: marginals rejected: %s", phase, merchant, problem
            )
        else:
            releases[merchant] = release
    return releases, outcome


def release_problem(release: MarginalRelease) -> str | None:
    """Why a merchant's marginal release cannot be summed (None: it can)."""
    if not np.isfinite(release.noise_var) or release.noise_var < 0:
        return "non-finite or negative noise variance"
    if not all(np.isfinite(t).all() for t in [*release.tables, *release.atom_tables]):
        return "non-finite counts"
    return None


def _sum(releases: dict[str, MarginalRelease], phase: str, minimum: int) -> MarginalRelease:
    if len(releases) < minimum:
        raise FederationError(
            f"marginals {phase}: {len(releases)} merchant(s) answered, at least {minimum} needed"
        )
    try:
        return merge_releases(list(releases.values()))
    except ValueError as exc:
        raise FederationError(f"marginals {phase}: {exc}") from exc


def run_marginal_rounds(
    grid: Grid,
    *,
    encoder: TableEncoder,
    model: MarginalModel,
    document: dict,
    min_replies: int,
    min_nodes: int,
    timeout: float,
    ledgers: dict[str, dict],
    owners: dict[str, int],
) -> MarginalRounds:
    """Selection, measurement and fit (see the module docstring)."""
    document = {**document, "encoder": encoder.to_dict(), "schema": encoder.schema.to_dict()}
    encoders = {SELECTION: document["encoder"]}
    nodes = wait_for_nodes(grid, min_nodes, timeout)
    selected, outcome = marginal_round(
        grid,
        phase=SELECTION,
        nodes=nodes,
        document=document,
        timeout=timeout,
        ledgers=ledgers,
        owners=owners,
    )
    log = [{"round": ROUNDS[SELECTION], "phase": SELECTION, "merchants": outcome}]
    summed = _sum(selected, SELECTION, min_replies)
    # The atom-grid columns' values come from the same sum (post-processing); the
    # measurement round is sent the encoder that describes them.
    structure = choose_structure(model, summed)
    document = {**document, "encoder": encoder.to_dict()}
    encoders[MEASUREMENT] = document["encoder"]
    logger.info("marginals: structure %s", structure.describe(model))
    measured, outcome = marginal_round(
        grid,
        phase=MEASUREMENT,
        nodes=[owners[m] for m in selected],
        document={**document, "tree": [list(pair) for pair in structure.measured_pairs]},
        timeout=timeout,
        ledgers=ledgers,
        owners=owners,
    )
    log.append({"round": ROUNDS[MEASUREMENT], "phase": MEASUREMENT, "merchants": outcome})
    both = sorted(set(selected) & set(measured))
    selection = _sum({m: selected[m] for m in both}, SELECTION, min_replies)
    measurement = _sum({m: measured[m] for m in both}, MEASUREMENT, min_replies)
    fit_structure(model, structure, selection, measurement)
    logger.info("marginals: model fitted from %d merchant(s)", len(both))
    return MarginalRounds(
        weights=model.state_dict(),
        tree=structure.tree,
        round_log=log,
        releases={
            SELECTION: (selection, encoders[SELECTION]),
            MEASUREMENT: (measurement, encoders[MEASUREMENT]),
        },
    )
