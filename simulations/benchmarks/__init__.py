"""Micro-benchmarks of fedsynth's hot paths, runnable as ``python -m simulations.benchmarks.NAME``.

* :mod:`simulations.benchmarks.dp_step`: one DP-SGD training step (Opacus ghost clipping, and
  Opacus' default hook mode) against one plain step of the same model on the same batch.
* :mod:`simulations.benchmarks.sampling`: rows per second of ``TabularSynthesizer.sample``,
  split into model generation and decoding back to a DataFrame.

Each prints a Markdown table and writes its results as JSON (``--out``, by default under
``runs/benchmarks/``). Machines running them are often shared, so variants are never timed one
after the other: :func:`interleaved_timings` times one call of each variant per round, rotating
the order every round, and the benchmarks report medians, so that load from other processes
weighs on all variants alike. Ratios are taken both as ratio of medians and as the median of the
per-round ratios (each round's variants ran within milliseconds of each other).

This module holds the helpers the benchmarks share.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


def interleaved_timings(
    variants: dict[str, Callable[[], object]],
    *,
    rounds: int,
    warmup: int = 0,
    label: str = "",
) -> dict[str, list[float]]:
    """Seconds per call of each variant, one call of each per round, in a rotating order.

    ``warmup`` untimed rounds run first. Python's garbage collector is paused while timing (as
    :mod:`timeit` does) so that a collection triggered by one variant does not land on
    another."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - start)
            if (r + 1) % max(1, rounds // 5) == 0:
                logger.info("%s: round %d/%d", label or "timing", r + 1, rounds)
    finally:
        if was_enabled:
            gc.enable()
    return times


def summarize(seconds: Sequence[float]) -> dict:
    """Median, quartiles, mean and the raw values, in milliseconds."""
    ms = np.asarray(seconds, dtype=float) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p25_ms": float(np.percentile(ms, 25)),
        "p75_ms": float(np.percentile(ms, 75)),
        "mean_ms": float(np.mean(ms)),
        "n": len(ms),
        "times_ms": [round(float(t), 4) for t in ms],
    }


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> dict:
    """Ratio of the medians, and median (with quartiles) of the per-round ratios."""
    per_round = np.asarray(numerator, dtype=float) / np.asarray(denominator, dtype=float)
    return {
        "ratio_of_medians": statistics.median(numerator) / statistics.median(denominator),
        "median_of_ratios": float(np.median(per_round)),
        "ratio_p25": float(np.percentile(per_round, 25)),
        "ratio_p75": float(np.percentile(per_round, 75)),
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; floats are printed as given (format them first)."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def environment() -> dict:
    """What the numbers depend on: versions, threads, CPU."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "versions": {p: _version(p) for p in ("fedsynth", "torch", "opacus", "numpy", "pandas")},
    }


def set_threads(threads: int | None) -> int:
    """``torch.set_num_threads`` when given; returns the thread count in force."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s", path)
    return path


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
