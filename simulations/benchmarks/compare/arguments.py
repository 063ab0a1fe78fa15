"""The ``fedsynth benchmark`` command line: its options, and the command that reruns a config.

:func:`add_arguments` and :func:`command_line` are the two directions of the same flags: keep
them together when adding one. The data options (``--dataset``/``--data``...) are the CLI's
shared ones (``simulations/cli.py``)."""

from __future__ import annotations

import argparse
import json
import math
import shlex
from pathlib import Path

from simulations.benchmarks.compare.config import BenchmarkConfig, epsilon_slug


def _list(text: str) -> tuple[str, ...]:
    return tuple(x.strip().lower() for x in text.replace(",", " ").split() if x.strip())


def _epsilons(text: str) -> tuple[float, ...]:
    return tuple(math.inf if x in ("inf", "infinity", "none") else float(x) for x in _list(text))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's own options (the data options come from the CLI's shared ones)."""
    parser.add_argument(
        "--models",
        type=_list,
        default=None,
        help="comma-separated: gaussiancopula, ctgan, tvae and fedsynth kinds "
        "(default: all SDV and every fedsynth model kind)",
    )
    parser.add_argument(
        "--epsilons",
        type=_epsilons,
        default=None,
        help="fedsynth budgets, comma-separated, 'inf' = no DP (default 1,3,10,inf; quick 1,inf)",
    )
    parser.add_argument(
        "--federated",
        type=_list,
        default=None,
        help="none | iid | dirichlet, comma-separated: federated setups besides central "
        "(default iid,dirichlet; quick dirichlet)",
    )
    parser.add_argument("--merchants", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    parser.add_argument(
        "--partition-column", default=None, help="Dirichlet column (default: the target)"
    )
    parser.add_argument(
        "--rows", type=int, default=None, help="subsample the table first (quick: 2000)"
    )
    parser.add_argument("--holdout", type=float, default=0.2, help="share held out for scoring")
    parser.add_argument(
        "--epochs", type=int, default=None, help="fedsynth epochs (default 10; quick 2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="federated rounds (default 5; quick 2)"
    )
    parser.add_argument(
        "--sdv-epochs", type=int, default=None, help="CTGAN/TVAE epochs (default 50; quick 2)"
    )
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--delta", type=float, default=1e-5, help="per merchant")
    parser.add_argument(
        "--sample-rows", type=int, default=None, help="default: as many as the training rows"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per contender (default 3600)"
    )
    parser.add_argument(
        "--model-options",
        type=json.loads,
        default={},
        help='JSON per fedsynth kind, e.g. \'{"vae": {"hidden": [64, 64]}}\'',
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch/OpenMP threads per contender"
    )
    parser.add_argument(
        "--no-central",
        dest="central",
        action="store_false",
        help="fedsynth models only federated (e.g. to split a long benchmark in two runs)",
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized run (minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output folder (default: runs/<time>-benchmark-...)")


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    """The resolved configuration of parsed :func:`add_arguments` options."""
    return BenchmarkConfig(
        models=args.models,
        epsilons=args.epsilons,
        federated=args.federated,
        merchants=args.merchants,
        alpha=args.alpha,
        partition_column=args.partition_column,
        rows=args.rows,
        holdout=args.holdout,
        epochs=args.epochs,
        rounds=args.rounds,
        sdv_epochs=args.sdv_epochs,
        batch_size=args.batch_size,
        delta=args.delta,
        sample_rows=args.sample_rows,
        seed=args.seed,
        timeout=args.timeout,
        model_options=args.model_options,
        threads=args.threads,
        central=args.central,
        quick=args.quick,
    ).resolved()


def command_line(
    config: BenchmarkConfig, *, out: Path, data_args: argparse.Namespace | None = None
) -> str:
    """The ``fedsynth benchmark`` command that reruns this (resolved) configuration.

    Every resolved value is spelled out (no ``--quick``), so the command keeps meaning the same
    run when defaults change. ``data_args`` (the CLI's namespace) names the data; without it,
    the default dataset."""
    parts = ["fedsynth", "benchmark"]
    data = getattr(data_args, "data", None)
    if data:
        parts += ["--data", data, "--metadata", str(data_args.metadata)]
        parts += ["--target", data_args.target] if data_args.target else []
    else:
        parts += ["--dataset", getattr(data_args, "dataset", None) or "pizzaplace"]
    epsilons = ",".join(epsilon_slug(e) for e in config.epsilons)
    parts += ["--models", ",".join(config.models), "--epsilons", epsilons]
    parts += ["--federated", ",".join(config.federated) or "none"]
    parts += [] if config.central else ["--no-central"]
    for flag, value in (
        ("--merchants", config.merchants),
        ("--alpha", config.alpha),
        ("--partition-column", config.partition_column),
        ("--rows", config.rows),
        ("--holdout", config.holdout),
        ("--epochs", config.epochs),
        ("--rounds", config.rounds),
        ("--sdv-epochs", config.sdv_epochs),
        ("--batch-size", config.batch_size),
        ("--delta", config.delta),
        ("--sample-rows", config.sample_rows),
        ("--timeout", config.timeout),
        ("--model-options", json.dumps(config.model_options) if config.model_options else None),
        ("--threads", config.threads),
        ("--seed", config.seed),
        ("--out", str(out)),
    ):
        if value is not None:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(parts)
