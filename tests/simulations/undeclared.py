"""One federated run of a table whose columns are all undeclared (the undeclared-categories and
undeclared-numerics tests): real simulation path, marginal model, IID merchants, no audit."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from simulations.datasets import Dataset
from simulations.runner import SimulationSettings, run_simulation_job
from synth_models.synthesizer import TabularSynthesizer


def run_undeclared(
    table: pd.DataFrame,
    *,
    sdtype: str,
    run_dir: Path,
    merchants: int,
    epsilon: float,
    delta: float,
    statistics_share: float,
) -> tuple[dict, TabularSynthesizer]:
    """The run's summary and its synthesizer; every column is of ``sdtype``, nothing declared."""
    columns = {c: {"sdtype": sdtype} for c in table.columns}
    metadata = {
        "tables": {"accounts": {"columns": columns}},
        "relationships": [],
        "METADATA_SPEC_VERSION": "V2",
    }
    settings = SimulationSettings(
        merchants=merchants,
        partition="iid",
        holdout=0.0,  # each merchant's statistics cover exactly its partition file
        federation={
            "model": "marginal",
            "epsilon": epsilon,
            "delta": delta,
            "statistics-share": statistics_share,
            "audit": False,
        },
    )
    summary = run_simulation_job(
        Dataset("accounts", table, metadata, "accounts"), settings, run_dir
    )
    return summary, TabularSynthesizer.load(run_dir / "synthesizer")
