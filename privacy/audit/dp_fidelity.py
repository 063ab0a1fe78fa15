"""Fidelity of a synthetic sample against noisy DP releases: post-processing only.

A federated server holds no real row, only what the merchants released under DP and recorded
in their ledgers: the summed column statistics of the schema round and, for the marginal model
(and a GAN's or VAE's warm start), the summed noisy marginal tables. These functions score a
synthetic sample against such a release: per column (or pair, or any count table),
``1 - TV``, the total-variation similarity between the synthetic sample's counts on the
release's cells and the release's noisy counts, both clipped at zero and normalized. The inputs
are the release and the synthetic sample's counts on the same cells, nothing else: no real row
is read, so a score costs no privacy budget.

Noise biases the score down: clipped noise puts mass on cells the data leaves empty, so even a
sample drawn from the real distribution scores below 1 against a noisy release. Each block
therefore states the release's noise std per cell, its (noisy) total count and contributors,
and each score its number of cells and a ``reference``: the score the sample would get if the
real data were distributed exactly as the sample, measured with the release's total and noise
(simulated, seeded noise: post-processing too). A score near its reference means the sample is
as close to the release as the noise allows; well below it, the sample differs from the data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from privacy.statistics import (
    ColumnStatistics,
    TableStatistics,
    category_key,
    close_open_domains,
)

DP_LABEL = (
    "computed against a noisy DP release already in the merchants' ledgers "
    "(post-processing: no real row read, no extra privacy cost)"
)


def similarity(noisy: np.ndarray, synthetic: np.ndarray) -> float:
    """``1 - TV`` of two count arrays on the same cells (negatives clipped, both normalized);
    NaN when either has no mass."""
    noisy = np.clip(np.asarray(noisy, dtype=float).ravel(), 0.0, None)
    synthetic = np.clip(np.asarray(synthetic, dtype=float).ravel(), 0.0, None)
    if noisy.shape != synthetic.shape:
        raise ValueError(f"{noisy.shape} noisy cells vs {synthetic.shape} synthetic cells")
    total, synthetic_total = noisy.sum(), synthetic.sum()
    if total <= 0 or synthetic_total <= 0:
        return math.nan
    return float(1.0 - 0.5 * np.abs(noisy / total - synthetic / synthetic_total).sum())


def noise_reference(
    synthetic: np.ndarray, total: float, noise_std: float, *, draws: int = 3, seed: int = 0
) -> float:
    """The score ``synthetic`` would get if the real data were distributed exactly as it: the
    mean similarity of its shares against ``total`` rows of them plus the release's noise."""
    synthetic = np.clip(np.asarray(synthetic, dtype=float).ravel(), 0.0, None)
    if synthetic.sum() <= 0:
        return math.nan
    if noise_std <= 0:
        return 1.0
    expected = synthetic / synthetic.sum() * max(total, 1.0)
    rng = np.random.default_rng(seed)
    scores = [
        similarity(expected + rng.normal(0.0, noise_std, expected.shape), expected)
        for _ in range(draws)
    ]
    return float(np.mean(scores))


def _score(noisy: np.ndarray, synthetic: np.ndarray, noise_std: float) -> dict:
    return {
        "score": similarity(noisy, synthetic),
        "reference": noise_reference(synthetic, float(np.sum(noisy)), noise_std),
        "cells": int(np.size(noisy)),
    }


def _block(kind: str, scores: dict, *, noise_std: float, total: float, contributors: int) -> dict:
    values = [s["score"] for s in scores.values() if math.isfinite(s["score"])]
    references = [s["reference"] for s in scores.values() if math.isfinite(s["reference"])]
    return {
        "kind": kind,
        "label": DP_LABEL,
        "noise_std": noise_std,
        "total": total,
        "contributors": contributors,
        "scores": scores,
        "mean": float(np.mean(values)) if values else None,
        "reference_mean": float(np.mean(references)) if references else None,
    }


def _column_cells(
    released: ColumnStatistics, synthetic: ColumnStatistics
) -> tuple[np.ndarray, np.ndarray]:
    """Both columns' counts on the release's cells (a category the release does not hold is a
    cell of its own, released count 0), missing values last."""
    if released.kind == "categorical":
        keys = map(category_key, released.categories)
        noisy = dict(zip(keys, released.counts, strict=True))
        keys = map(category_key, synthetic.categories or [])
        counts = dict(zip(keys, synthetic.counts, strict=True))
        cells = [*noisy, *(c for c in counts if c not in noisy and counts[c] > 0)]
        left = [noisy.get(c, 0.0) for c in cells]
        right = [counts.get(c, 0.0) for c in cells]
    else:
        if released.grid != synthetic.grid:
            raise ValueError("the synthetic counts are not on the release's grid")
        left, right = list(released.counts), list(synthetic.counts)
    return np.array([*left, released.missing]), np.array([*right, synthetic.missing])


def column_fidelity(release: TableStatistics, synthetic: TableStatistics) -> dict:
    """Per column, ``1 - TV`` of the synthetic sample's exact statistics (``synthetic``: the
    same statistics computed without noise on the synthetic rows) against the DP statistics
    ``release`` (categories or grid bins, and the missing bin). An open domain is closed first,
    as the encoder closes it (post-processing): its found labels and ``OTHER``."""
    release = close_open_domains(release)
    scores = {}
    for name, released in release.columns.items():
        if name not in synthetic.columns:
            continue
        noisy, counts = _column_cells(released, synthetic.columns[name])
        scores[name] = _score(noisy, counts, math.sqrt(released.noise_var))
    stds = [math.sqrt(c.noise_var) for c in release.columns.values()]
    return _block(
        "columns",
        scores,
        noise_std=max(stds, default=0.0),
        total=release.row_count,
        contributors=release.contributors,
    )


def table_fidelity(
    noisy: Mapping[str, np.ndarray],
    synthetic: Mapping[str, np.ndarray],
    *,
    noise_var: float,
    contributors: int = 1,
) -> dict:
    """Per count table (a column's or a pair's, keyed by name), ``1 - TV`` of the synthetic
    sample's exact counts against the release's noisy counts on the same cells."""
    std = math.sqrt(noise_var)
    scores = {name: _score(noisy[name], synthetic[name], std) for name in noisy}
    totals = [float(np.asarray(t).sum()) for t in noisy.values()]
    kind = "pairs" if all(np.ndim(t) == 2 for t in noisy.values()) else "tables"
    return _block(
        kind,
        scores,
        noise_std=std,
        total=float(np.median(totals)) if totals else 0.0,
        contributors=contributors,
    )


def summarize(blocks: Mapping[str, dict]) -> dict:
    """The DP fidelity section: every release's block, the mean column score (the column
    statistics) and the mean pair score (the release that holds the most pairs), each with its
    mean reference."""
    columns = [b for b in blocks.values() if b["kind"] == "columns"]
    pairs = sorted(
        (b for b in blocks.values() if b["kind"] == "pairs"), key=lambda b: -len(b["scores"])
    )
    return {
        "label": DP_LABEL,
        "column_mean": columns[0]["mean"] if columns else None,
        "column_reference": columns[0]["reference_mean"] if columns else None,
        "pair_mean": pairs[0]["mean"] if pairs else None,
        "pair_reference": pairs[0]["reference_mean"] if pairs else None,
        "releases": dict(blocks),
    }
