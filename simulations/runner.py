"""Run a whole federated simulation into one run folder.

The table is split into a training part and a holdout (kept for the audit), the training
part into merchants (IID, Dirichlet over a column, or a natural column), each merchant's
table is written to ``<run>/merchants/`` (standing in for its own premises), and Flower's
simulation engine runs the same ServerApp and ClientApp as a deployment would. The run
folder then holds the artifact, per-round metrics, merchants' ledgers, a synthetic sample, the
audit scores, the resolved configuration and the logs. The simulation runs the supported way
(``simulations.engine``): this project's app folder, ``flwr run`` against a local simulation
SuperLink, exactly the bundle a deployment would run. ``<run>/state/`` stands in for the
merchants' own storage: their ledgers and their local audit reports
(``<merchant>-audit/report.html``), which a real merchant never sends.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import tomli_w

from client.policy import MerchantPolicy
from simulations.datasets import Dataset
from simulations.engine import LocalSimulation, write_app
from simulations.partition import (
    describe_partitions,
    parse_partition,
    partition_table,
    write_partitions,
)

logger = logging.getLogger(__name__)

for _name, _value in (("FLWR_TELEMETRY_ENABLED", "0"), ("FLWR_DISABLE_UPDATE_CHECK", "1")):
    os.environ.setdefault(_name, _value)


@dataclass
class SimulationSettings:
    merchants: int = 5
    partition: str = "dirichlet:type:0.5"
    holdout: float = 0.2  # share of each merchant's rows kept out of training for its audit
    min_rows: int = 10
    seed: int = 0
    sample_rows: int | None = None  # default: as many as the training rows
    federation: dict = field(default_factory=dict)  # run-config overrides (kebab-case keys)


def run_simulation_job(
    dataset: Dataset,
    settings: SimulationSettings,
    run_dir: Path,
    *,
    parts: list[pd.DataFrame] | None = None,
    engine: LocalSimulation | None = None,
) -> dict:
    """Partition, simulate, sample and score; returns the run summary (also in summary.json).
    ``parts``: the merchants' tables, when already made (``preflight.check_simulation``
    returns them) from ``dataset`` under ``settings``; ``engine``: a running
    ``LocalSimulation`` to use (default: one for this run only)."""
    from privacy.audit import quality_scores
    from server.app import ARTIFACT
    from synth_models.artifact import load_artifact
    from synth_models.synthesizer import TabularSynthesizer

    run_dir.mkdir(parents=True, exist_ok=True)
    if parts is None:
        parts = partition_table(
            dataset.table,
            settings.partition,
            num_merchants=settings.merchants,
            seed=settings.seed,
            min_rows=settings.min_rows,
        )
    column = parse_partition(settings.partition).column
    logger.info("merchants:\n%s", describe_partitions(parts, column).round(3).to_string())
    write_partitions(parts, run_dir / "merchants")
    (run_dir / "metadata.json").write_text(json.dumps(dataset.metadata, indent=1))
    overrides = {
        "run-dir": str(run_dir.resolve()),
        "metadata-path": str((run_dir / "metadata.json").resolve()),
        "table-name": dataset.table_name,
        "min-nodes": len(parts),
        "seed": settings.seed,
        "target": dataset.target or "",
        **settings.federation,
    }
    (run_dir / "config.json").write_text(
        json.dumps(
            {
                "dataset": dataset.name,
                "rows": len(dataset.table),
                **asdict(settings),
                "run_config": overrides,
            },
            indent=1,
            default=str,
        )
    )
    state_dir = run_dir / "state"  # the merchants' premises: ledgers and local audit reports
    write_simulated_policy(state_dir, simulated_policy(overrides))
    run_config = {
        **overrides,
        "data-dir": str((run_dir / "merchants").resolve()),
        "state-dir": str(state_dir.resolve()),
        "torch-threads": 1,
        "holdout-fraction": settings.holdout,
    }
    started = time.perf_counter()
    simulate(run_dir, run_config=run_config, num_supernodes=len(parts), engine=engine)
    seconds = time.perf_counter() - started
    synth = TabularSynthesizer.load(run_dir / ARTIFACT)
    progress = load_artifact(run_dir / ARTIFACT)[0]["federation"]
    synthetic = synth.sample(settings.sample_rows or len(dataset.table), seed=settings.seed)
    synthetic.to_csv(run_dir / "synthetic.csv", index=False)
    summary = {
        "dataset": dataset.name,
        "merchants": len(parts),
        "simulation_seconds": seconds,
        # Rounds run, and those that changed the model (all merchants refusing: unchanged).
        "rounds": {
            key: progress.get(key) for key in ("rounds_completed", "rounds_trained", "num_rounds")
        },
        "epsilon": synth.epsilon_spent,
        "epsilon_per_merchant": {m: lg.epsilon() for m, lg in synth.ledgers_.items()},
        "delta": max((lg.delta for lg in synth.ledgers_.values()), default=None),
        # Scored here against all merchants' rows pooled, which only a simulation can do.
        **quality_scores(dataset.table, synthetic, dataset.metadata, dataset.table_name),
        "pooled_scores": (
            "simulation only: quality, quality_all_pairs, quality_properties and diagnostic are "
            "SDMetrics scores against every merchant's rows pooled, which no party of a real "
            "federation holds"
        ),
        # The server's report: DP releases and ledgers only.
        "report": _existing(run_dir / "report" / "report.html"),
        # Each merchant's full audit on its own rows, on its premises (here: the state dir).
        "local_reports": {
            path.parent.name.removesuffix("-audit"): str(path)
            for path in sorted(state_dir.glob("*-audit/report.html"))
        },
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def simulate(
    run_dir: Path,
    *,
    run_config: dict,
    num_supernodes: int,
    engine: LocalSimulation | None = None,
    app: Path | None = None,
    timeout: float = 24 * 3600.0,
) -> None:
    """Run ``app`` (default: this project, copied to ``<run-dir>/app``) on ``engine`` (default:
    a local simulation SuperLink for this call, its state in ``<run-dir>/flwr``). Flower's
    stream goes to ``<run-dir>/logs/flwr.log``."""
    app = app or write_app(run_dir / "app")
    options = {
        "run_config": run_config,
        "num_supernodes": num_supernodes,
        "num_cpus": max(1, min(os.cpu_count() or 1, num_supernodes)),
        "timeout": timeout,
        "log": run_dir / "logs" / "flwr.log",
    }
    if engine is not None:
        engine.run(app, **options)
        return
    with LocalSimulation(run_dir / "flwr") as own:
        own.run(app, **options)


def write_simulated_policy(state_dir: Path, policy: MerchantPolicy) -> Path:
    """The simulated merchants' policy file (``client.app.simulated_policy`` reads it)."""
    from client.app import SIMULATED_POLICY

    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / SIMULATED_POLICY
    path.write_text(tomli_w.dumps(policy.to_settings()))
    return path


def _existing(path: Path) -> str | None:
    return str(path) if path.exists() else None


def simulated_policy(run_config: dict) -> MerchantPolicy:
    """The simulated merchants' own policy: the run's budget and delta, and the run's metadata
    file as the public schema they answer for (one person plays server and merchants)."""
    from server.config import FederationConfig

    config = FederationConfig.from_run_config(run_config)
    return MerchantPolicy.for_run(
        epsilon=config.epsilon,
        delta=config.delta,
        metadata_path=str(config.resolve(config.metadata_path)),
    )
