"""Fit one contender on the training rows and sample its synthetic rows (inside its process).

Each ``_fit_*`` returns the synthetic rows and an ``info`` dict of what the results record about
the fit: ``import_rss_mb`` (the process's memory before fitting: interpreter and libraries),
``fit_seconds`` (the fit call alone), ``sample_seconds``, ``epsilon_spent`` and ``delta``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pandas as pd

from simulations.benchmarks.compare.config import SDV_MODELS, Contender, ContenderJob
from simulations.benchmarks.compare.proctree import rss_bytes

logger = logging.getLogger(__name__)

T = TypeVar("T")


def fit_and_sample(
    contender: Contender, *, job: ContenderJob, train: pd.DataFrame, work_dir: Path
) -> tuple[pd.DataFrame, dict]:
    """Fit ``contender`` on ``train`` and sample ``job.sample_rows`` rows from it.

    ``work_dir`` is the contender's scratch folder (a federation's run folder goes there)."""
    if contender.family == "sdv":
        return _fit_sdv(contender, job, train)
    if contender.setup == "central":
        return _fit_central(contender, job, train)
    return _fit_federated(contender, job, train, work_dir)


def _timed(call: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def _import_rss_mb() -> float:
    return rss_bytes(os.getpid()) / 2**20


def _fit_sdv(contender: Contender, job: ContenderJob, train: pd.DataFrame) -> tuple:
    import numpy as np
    import sdv.single_table
    import torch
    from sdv.metadata import Metadata

    config = job.config
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    metadata = Metadata.load_from_dict(job.metadata)
    options = {"epochs": config.sdv_epochs} if contender.model in ("ctgan", "tvae") else {}
    if contender.model == "ctgan":
        options["enable_gpu"] = False  # a fair fight: fedsynth trains on the CPU
    synthesizer = getattr(sdv.single_table, SDV_MODELS[contender.model])(metadata, **options)
    info = {"import_rss_mb": _import_rss_mb(), "options": options}
    logger.info("fitting %s on %d rows", contender.label, len(train))
    _, info["fit_seconds"] = _timed(lambda: synthesizer.fit({job.table_name: train}))
    synthetic, info["sample_seconds"] = _timed(lambda: synthesizer.sample(job.sample_rows))
    if isinstance(synthetic, dict):  # multi-table API: one table here
        synthetic = synthetic[job.table_name]
    info["epsilon_spent"] = math.inf
    return synthetic, info


def _fit_central(contender: Contender, job: ContenderJob, train: pd.DataFrame) -> tuple:
    from synth_models.synthesizer import TabularSynthesizer
    from synth_models.training import TrainingConfig

    config = job.config
    training = TrainingConfig(epochs=config.epochs, batch_size=config.batch_size)
    synth = TabularSynthesizer(
        job.metadata,
        model=contender.model,
        epsilon=contender.epsilon,
        delta=config.delta,
        training=training,
        model_options=config.model_options.get(contender.model),
        table_name=job.table_name,
        seed=config.seed,
    )
    info = {"import_rss_mb": _import_rss_mb()}

    def progress(epoch: int, summary: dict) -> None:
        losses = " ".join(f"{k}={v:.4f}" for k, v in summary.items() if k != "epoch")
        logger.info("epoch %d/%d %s", epoch + 1, training.epochs, losses)

    _, info["fit_seconds"] = _timed(lambda: synth.fit(train, on_epoch=progress))
    synthetic, info["sample_seconds"] = _timed(
        lambda: synth.sample(job.sample_rows, seed=config.seed)
    )
    info["epsilon_spent"] = synth.epsilon_spent
    info["delta"] = None if math.isinf(contender.epsilon) else config.delta
    return synthetic, info


def _partition(contender: Contender, job: ContenderJob) -> str:
    """The runner's partition spec for the contender's setup."""
    if contender.setup != "dirichlet":
        return "iid"
    if not job.partition_column:
        raise ValueError("a Dirichlet split needs --partition-column (the data has no target)")
    return f"dirichlet:{job.partition_column}:{job.config.alpha:g}"


def _fit_federated(
    contender: Contender, job: ContenderJob, train: pd.DataFrame, work_dir: Path
) -> tuple:
    from server.app import ARTIFACT
    from simulations.datasets import Dataset
    from simulations.runner import SimulationSettings, run_simulation_job
    from synth_models.synthesizer import TabularSynthesizer

    config = job.config
    partition = _partition(contender, job)
    federation = {
        "model": contender.model,
        "epsilon": contender.epsilon,
        "delta": config.delta,
        "num-rounds": config.rounds,
        "local-epochs": config.local_epochs,
        "batch-size": config.batch_size,
        "audit": False,  # scored centrally by the benchmark, like every other contender
    }
    if config.model_options.get(contender.model):
        federation["model-options"] = json.dumps(config.model_options[contender.model])
    dataset = Dataset(
        name=job.dataset,
        table=train,
        metadata=job.metadata,
        table_name=job.table_name,
        target=job.target,
    )
    settings = SimulationSettings(
        merchants=config.merchants,
        partition=partition,
        holdout=0.0,  # the benchmark's holdout is already out of the training rows
        seed=config.seed,
        # the runner's own quick score; the benchmark samples its rows below
        sample_rows=min(job.sample_rows, 1000),
        federation=federation,
    )
    info = {
        "import_rss_mb": _import_rss_mb(),
        "partition": partition,
        "rounds": config.rounds,
        "local_epochs": config.local_epochs,
    }
    logger.info(
        "federation of %d merchants (%s): %d rounds x %d local epochs",
        config.merchants,
        partition,
        config.rounds,
        config.local_epochs,
    )
    run_dir = work_dir / "run"
    summary, info["runner_seconds"] = _timed(lambda: run_simulation_job(dataset, settings, run_dir))
    # Flower's whole run (Ray start-up, schema round, every round, checkpoints) is the fit;
    # the runner's partitioning, sampling and files around it are not.
    info["fit_seconds"] = summary["simulation_seconds"]
    synth = TabularSynthesizer.load(run_dir / ARTIFACT)
    synthetic, info["sample_seconds"] = _timed(
        lambda: synth.sample(job.sample_rows, seed=config.seed)
    )
    info["epsilon_spent"] = synth.epsilon_spent
    info["delta"] = summary["delta"]
    info["merchants"] = summary["merchants"]
    info["epsilon_per_merchant"] = summary["epsilon_per_merchant"]
    info["merchant_rows"] = [len(pd.read_csv(p)) for p in sorted((run_dir / "merchants").glob("*"))]
    return synthetic, info
