"""The benchmark itself: one split, every contender in turn, the results rewritten after each."""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from simulations.benchmarks.compare.arguments import command_line
from simulations.benchmarks.compare.config import (
    BenchmarkConfig,
    Contender,
    ContenderJob,
    contenders,
)
from simulations.benchmarks.compare.isolation import run_isolated, stop_on_sigterm
from simulations.benchmarks.compare.report import (
    epsilon_text,
    machine,
    number_text,
    write_results,
)
from simulations.benchmarks.compare.scoring import score

logger = logging.getLogger(__name__)


def split(table: pd.DataFrame, config: BenchmarkConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The one train/holdout split every contender shares (after the ``rows`` subsample)."""
    from client.merchant import holdout_split

    if config.rows is not None and config.rows < len(table):
        table = table.sample(n=config.rows, random_state=config.seed).reset_index(drop=True)
    return holdout_split(table, config.holdout, seed=config.seed)


def run_benchmark(
    dataset, config: BenchmarkConfig, out: Path, *, data_args: argparse.Namespace | None = None
) -> dict:
    """Run every contender of ``config`` on ``dataset`` (a :class:`simulations.datasets.Dataset`)
    into ``out``; returns the payload that is also written to ``out/results.json`` (rewritten
    after each contender, so a long run that dies keeps what it did). ``data_args`` (the CLI's
    namespace) only serves to write the command line into the results."""
    config = config.resolved()
    command = command_line(config, out=out, data_args=data_args)
    stop_on_sigterm()
    out.mkdir(parents=True, exist_ok=True)
    train, holdout = split(dataset.table, config)
    job = ContenderJob(
        config=config,
        dataset=dataset.name,
        metadata=dataset.metadata,
        table_name=dataset.table_name,
        target=dataset.target,
        partition_column=config.partition_column or dataset.target,
        sample_rows=config.sample_rows or len(train),
    )
    started = time.perf_counter()
    todo = contenders(config)
    payload = {
        "command": command,
        "config": asdict(config),
        "setup": {
            "dataset": dataset.name,
            "train_rows": len(train),
            "holdout_rows": len(holdout),
            "synthetic_rows": job.sample_rows,
            "target": job.target,
            "partition_column": job.partition_column,
            "contenders": [c.slug for c in todo],
        },
        "environment": machine(),
        "results": [],
    }
    logger.info(
        "benchmark on %s: %d training / %d holdout rows, %d contenders",
        dataset.name,
        len(train),
        len(holdout),
        len(todo),
    )
    work_root = out / "work"
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    for i, contender in enumerate(todo, start=1):
        tag = f"[{i}/{len(todo)}] {contender.label}, ε={epsilon_text(contender.epsilon)}"
        logger.info("%s: fitting (%.0f s into the benchmark)", tag, time.perf_counter() - started)
        record = _run_contender(
            contender,
            job=job,
            train=train,
            holdout=holdout,
            work=work_root / contender.slug,
            logs=logs,
            tag=tag,
        )
        payload["results"].append(record)
        payload["seconds"] = time.perf_counter() - started
        write_results(out=out, payload=payload, config=config)
    shutil.rmtree(work_root, ignore_errors=True)
    try:
        from simulations.benchmarks.compare.plots import write_plots

        payload["plots"] = [p.name for p in write_plots(payload["results"], out)]
    except Exception as error:  # the table matters more than the pictures
        logger.exception("plots failed")
        payload["plots_error"] = f"{type(error).__name__}: {error}"
    payload["seconds"] = time.perf_counter() - started
    write_results(out=out, payload=payload, config=config)
    logger.info("benchmark done in %.0f s: %s", payload["seconds"], out / "results.md")
    return payload


def _run_contender(
    contender: Contender,
    *,
    job: ContenderJob,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    work: Path,
    logs: Path,
    tag: str,
) -> dict:
    """Fit (in its own process) and score one contender; returns its results record."""
    shutil.rmtree(work, ignore_errors=True)
    synthetic, info = run_isolated(
        contender, job=job, train=train, work=work, timeout=job.config.timeout
    )
    shutil.copy(work / "contender.log", logs / f"{contender.slug}.log")
    record = {
        "contender": contender.slug,
        "label": contender.label,
        "family": contender.family,
        "model": contender.model,
        "setup": contender.setup,
        "epsilon": contender.epsilon,
        **info,
    }
    if synthetic is None:
        logger.error("%s failed (logs/%s.log): %s", tag, contender.slug, info["error"])
    else:
        logger.info(
            "%s: fit %.1f s, %.0f MB peak; scoring", tag, info["fit_seconds"], info["peak_rss_mb"]
        )
        record["synthetic_rows"] = len(synthetic)
        scoring = time.perf_counter()
        try:
            record.update(
                score(
                    synthetic,
                    train,
                    holdout,
                    metadata=job.metadata,
                    table_name=job.table_name,
                    target=job.target,
                    epsilon=info.get("epsilon_spent"),
                    delta=info.get("delta"),
                    seed=job.config.seed,
                    dcr_synthetic_rows=job.config.dcr_synthetic_rows,
                )
            )
        except Exception as error:  # recorded, not raised
            logger.exception("scoring %s failed", contender.slug)
            record.update(status="failed", error=f"scoring: {type(error).__name__}: {error}")
        record["score_seconds"] = time.perf_counter() - scoring
        logger.info(
            "%s: quality %s, TSTR/TRTR %s, AUC %s (scored in %.1f s)",
            tag,
            number_text(record.get("quality")),
            number_text(record.get("tstr_trtr"), 2),
            number_text(record.get("attack_auc")),
            record["score_seconds"],
        )
    shutil.rmtree(work, ignore_errors=True)
    return record
