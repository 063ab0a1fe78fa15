"""Rows per second of ``TabularSynthesizer.sample``, split into model generation and decoding.

What is measured: wall-clock time of ``TabularSynthesizer.sample(n)`` (``--rows``, default
100,000) for the GAN and the VAE, end to end: the model generates encoded rows in batches
(``--batch-size``, the same 50,000 that ``sample`` uses by default), the ``TableEncoder``
decodes each batch back to a DataFrame with the original columns and dtypes, and the frames
are concatenated. To split that time, a second variant ("split") runs the same loop with the
pieces called directly and a timer around each:

* ``generate``: ``model_.generate(batch, generator).numpy()`` (torch);
* ``decode``: ``encoder_.inverse_transform(matrix)`` (numpy / pandas);
* ``concat``: ``pd.concat`` of the decoded frames and the index reset.

The pieces come from the same run, so their shares add up to the split loop's total, which
should match ``sample()`` (its extra work is argument handling only).

How: each synthesizer is fitted once, just to have weights (``epsilon=inf``, 1 epoch, on a
``--fit-rows`` subsample of the embedded ``pizzaplace`` table; the speed of sampling does not
depend on how well the model is trained). Then, after ``--warmup`` untimed rounds,
``--repeats`` rounds run every (model, variant) once each, in an order that rotates every round
(see :func:`interleaved_timings`), so that load from other processes on a shared machine falls
on all of them alike; medians are reported. Every call uses the same seed, so every round does
exactly the same work. ``--threads`` sets ``torch.set_num_threads`` (default: torch's own
choice); the thread count in force is reported.

Run: ``python -m simulations.benchmarks.sampling [--rows 100000] [--repeats 10]``.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from simulations.benchmarks import (
    environment,
    interleaved_timings,
    markdown_table,
    ratios,
    set_threads,
    setup_logging,
    summarize,
    write_json,
)
from simulations.datasets import load_dataset
from synth_models.synthesizer import MODELS, TabularSynthesizer
from synth_models.training import TrainingConfig

logger = logging.getLogger(__name__)

NAME = "sampling"
PIECES = ("generate", "decode", "concat")


def fit_synthesizer(kind: str, data, dataset, *, batch_size: int, seed: int) -> TabularSynthesizer:
    """A non-private synthesizer trained for one epoch: weights to sample from, nothing more."""
    synth = TabularSynthesizer(
        dataset.metadata,
        model=kind,
        epsilon=math.inf,
        training=TrainingConfig(epochs=1, batch_size=batch_size),
        table_name=dataset.table_name,
        seed=seed,
    )
    return synth.fit(data)


def batch_sizes(num_rows: int, batch_size: int) -> list[int]:
    """The batches ``TabularSynthesizer.sample`` generates for ``num_rows`` (no conditions)."""
    sizes, total = [], 0
    while total < num_rows:
        sizes.append(min(batch_size, num_rows - total))
        total += sizes[-1]
    return sizes


def variants_for(
    kind: str, synth: TabularSynthesizer, *, rows: int, batch_size: int, seed: int
) -> tuple[dict[str, Callable[[], object]], dict[str, list[float]]]:
    """``sample()`` end to end, and the same loop split into timed pieces.

    Returns the two callables and the lists that the split one appends its pieces' seconds
    to (one entry per call)."""
    sizes = batch_sizes(rows, batch_size)
    pieces: dict[str, list[float]] = {piece: [] for piece in PIECES}

    def sample() -> pd.DataFrame:
        frame = synth.sample(rows, seed=seed, batch_size=batch_size)
        if len(frame) != rows:
            raise RuntimeError(f"sample({rows}) returned {len(frame)} rows")
        return frame

    def split() -> pd.DataFrame:
        generator = torch.Generator().manual_seed(seed)
        seconds = dict.fromkeys(PIECES, 0.0)
        frames = []
        for n in sizes:
            start = time.perf_counter()
            matrix = synth.model_.generate(n, generator).numpy()
            middle = time.perf_counter()
            frames.append(synth.encoder_.inverse_transform(matrix))
            seconds["generate"] += middle - start
            seconds["decode"] += time.perf_counter() - middle
        start = time.perf_counter()
        frame = pd.concat(frames, ignore_index=True).iloc[:rows].reset_index(drop=True)
        seconds["concat"] = time.perf_counter() - start
        for piece, value in seconds.items():
            pieces[piece].append(value)
        return frame

    return {f"{kind}/sample": sample, f"{kind}/split": split}, pieces


def run(args: argparse.Namespace) -> dict:
    threads = set_threads(args.threads)
    logger.info("torch threads: %d", threads)
    dataset = load_dataset("pizzaplace")
    fit_rows = min(args.fit_rows, len(dataset.table))
    data = dataset.table.sample(n=fit_rows, random_state=args.seed).reset_index(drop=True)
    variants: dict[str, Callable[[], object]] = {}
    pieces: dict[str, dict[str, list[float]]] = {}
    fit_seconds: dict[str, float] = {}
    widths: dict[str, int] = {}
    for kind in args.models:
        start = time.perf_counter()
        synth = fit_synthesizer(kind, data, dataset, batch_size=500, seed=args.seed)
        fit_seconds[kind] = time.perf_counter() - start
        widths[kind] = synth.encoder_.width
        logger.info("fitted %s on %d rows in %.1f s", kind, fit_rows, fit_seconds[kind])
        kind_variants, pieces[kind] = variants_for(
            kind, synth, rows=args.rows, batch_size=args.batch_size, seed=args.seed
        )
        variants.update(kind_variants)
    times = interleaved_timings(variants, rounds=args.repeats, warmup=args.warmup, label=NAME)
    results: dict[str, dict] = {}
    for kind in args.models:
        split_times = times[f"{kind}/split"]
        split_median = statistics.median(split_times)
        parts = {}
        for name, seconds in (
            ("sample", times[f"{kind}/sample"]),
            ("split", split_times),
            # the split loop's pieces: drop the warm-up calls' entries
            *((piece, pieces[kind][piece][-args.repeats :]) for piece in PIECES),
        ):
            entry = summarize(seconds)
            entry["rows_per_s"] = args.rows / statistics.median(seconds)
            entry["share_of_split"] = statistics.median(seconds) / split_median
            parts[name] = entry
        # Shares from the same calls: each piece's share of its own call, median over rounds.
        for piece in PIECES:
            own = np.asarray(parts[piece]["times_ms"]) / np.asarray(parts["split"]["times_ms"])
            parts[piece]["share_per_call_median"] = float(np.median(own))
        results[kind] = {
            "fit_seconds": fit_seconds[kind],
            "encoded_width": widths[kind],
            "parts": parts,
            "split_vs_sample": ratios(split_times, times[f"{kind}/sample"]),
        }
    return {
        "benchmark": NAME,
        "config": {
            "dataset": "pizzaplace",
            "rows": args.rows,
            "batch_size": args.batch_size,
            "fit_rows": fit_rows,
            "fit": "epsilon=inf, 1 epoch, batch 500",
            "repeats": args.repeats,
            "warmup": args.warmup,
            "threads": threads,
            "seed": args.seed,
        },
        "environment": environment(),
        "results": results,
    }


def table(payload: dict) -> str:
    labels = {
        "sample": "sample() end to end",
        "split": "same loop, pieces timed:",
        "generate": "· model_.generate",
        "decode": "· encoder_.inverse_transform",
        "concat": "· concat",
    }
    rows = []
    for kind, result in payload["results"].items():
        for name, label in labels.items():
            entry = result["parts"][name]
            share = entry.get("share_per_call_median", entry["share_of_split"])
            rows.append(
                [
                    kind.upper(),
                    label,
                    f"{entry['median_ms'] / 1e3:.3f}",
                    f"{entry['p25_ms'] / 1e3:.3f}–{entry['p75_ms'] / 1e3:.3f}",
                    f"{entry['rows_per_s']:,.0f}",
                    f"{100 * share:.0f}%" if name in PIECES else "",
                ]
            )
    config = payload["config"]
    header = (
        f"Sampling throughput: {config['rows']:,} rows (batches of {config['batch_size']:,}), "
        f"median of {config['repeats']} interleaved rounds after {config['warmup']} warm-up; "
        f"torch threads {config['threads']}\n\n"
    )
    return header + markdown_table(
        ["model", "part", "s (median)", "p25–p75 s", "rows/s", "share of the loop"], rows
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m simulations.benchmarks.{NAME}",
        description="Rows/s of TabularSynthesizer.sample, split into generation and decoding.",
    )
    parser.add_argument("--rows", type=int, default=100_000, help="rows per sample() call")
    parser.add_argument(
        "--batch-size", type=int, default=50_000, help="rows generated per batch (sample's own)"
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--fit-rows", type=int, default=5_000, help="subsample to fit on")
    parser.add_argument(
        "--models", nargs="+", choices=sorted(MODELS), default=["gan", "vae"], help="models"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=f"runs/benchmarks/{NAME}.json", help="JSON results")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if min(args.rows, args.batch_size, args.repeats, args.fit_rows) < 1 or args.warmup < 0:
        parser.error("--rows, --batch-size, --repeats and --fit-rows must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    payload = run(args)
    write_json(args.out, payload)
    print(table(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
