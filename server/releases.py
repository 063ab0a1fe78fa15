"""The merged DP releases a federation's server holds, persisted in ``<run-dir>/releases/``.

The federated report is built from these alone (and the ledgers): the summed column statistics
of the schema round (``statistics.json``) and, for the marginal model and a GAN's or VAE's warm
start, the summed noisy marginals of the selection (every pair) and measurement rounds, each
with the encoder and ``max_bins`` that give the discretization they were measured on
(``marginals-selection.json``, ``warm-start-measurement.json``, ...). They are DP releases the
merchants' ledgers already account for: keeping them costs nothing. ``resume`` keeps them; a
fresh run in the same folder starts with none.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from privacy.statistics import TableStatistics
from synth_models.encoder import TableEncoder
from synth_models.marginals import MarginalRelease

logger = logging.getLogger(__name__)
RELEASES = "releases"
STATISTICS_FILE = "statistics.json"


@dataclass
class MarginalsRecord:
    """A summed marginal release and the discretization it was measured on."""

    release: MarginalRelease
    encoder: TableEncoder
    max_bins: int


def _write(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(document))
    os.replace(partial, path)


def clear_releases(run_dir: Path) -> None:
    """Forget a previous run's releases (a fresh run, not a resume)."""
    shutil.rmtree(run_dir / RELEASES, ignore_errors=True)


def save_statistics(run_dir: Path, statistics: TableStatistics) -> Path:
    path = run_dir / RELEASES / STATISTICS_FILE
    _write(path, statistics.to_dict())
    return path


def save_marginals(
    run_dir: Path, name: str, release: MarginalRelease, encoder: dict, max_bins: int
) -> Path:
    """``release`` as ``<name>.json``; ``encoder`` is the encoder's dict as it was sent with
    the query (the marginal model re-chooses numeric values between the two rounds)."""
    path = run_dir / RELEASES / f"{name}.json"
    _write(path, {"release": release.to_dict(), "encoder": encoder, "max_bins": max_bins})
    return path


def load_releases(run_dir: Path) -> tuple[TableStatistics | None, dict[str, MarginalsRecord]]:
    """The persisted column statistics (None if absent) and marginal releases by name."""
    folder = run_dir / RELEASES
    statistics_path = folder / STATISTICS_FILE
    statistics = (
        TableStatistics.from_dict(json.loads(statistics_path.read_text()))
        if statistics_path.exists()
        else None
    )
    marginals = {}
    for path in sorted(folder.glob("*.json")):
        if path.name == STATISTICS_FILE:
            continue
        document = json.loads(path.read_text())
        marginals[path.stem] = MarginalsRecord(
            MarginalRelease.from_dict(document["release"]),
            TableEncoder.from_dict(document["encoder"]),
            int(document["max_bins"]),
        )
    return statistics, marginals
