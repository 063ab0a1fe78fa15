"""What the federation costs on top of the training itself.

* ``overhead``: the same DP training run twice, side by side in one process and alternating
  (``--repeats`` times each): (a) federated, ``--merchants`` IID merchants for ``--rounds``
  rounds of ``--local-epochs`` epochs through Flower's simulation engine (the whole
  ``flwr run`` on a local simulation SuperLink, ``simulations.engine``: Ray start-up, schema
  round, every round's messages, checkpoints;
  not the runner's partitioning and audit around it);
  (b) central, the same model on the pooled rows with ``rounds x local-epochs`` epochs, i.e. the
  same total number of DP-SGD steps with the same batch size and epsilon. Reports both wall
  times, the orchestration overhead ``federated / central - 1``, and the same for the training
  rounds alone (without Ray's start-up and the schema round).
* ``memory``: ``--many`` merchants with small partitions for two rounds; the peak resident
  memory of the whole process tree (this process, Ray's services and actors), sampled from
  ``/proc`` every 0.2 s.

Run: ``python -m simulations.benchmarks.federation`` (both), or ``--only overhead|memory``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from client.merchant import holdout_split
from simulations.benchmarks import environment, markdown_table, setup_logging, write_json
from simulations.datasets import load_dataset

logger = logging.getLogger(__name__)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants."""
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
        stack.extend(_children(pid))
    return total


class PeakMemory:
    """Samples the process tree's resident memory in a background thread."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(os.getpid()))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def federated_seconds(
    train,
    dataset,
    *,
    merchants: int,
    rounds: int,
    local_epochs: int,
    epsilon: float,
    model: str,
    workdir: Path,
) -> dict:
    from simulations.runner import SimulationSettings, run_simulation_job

    run_dir = workdir / f"fed-{time.monotonic_ns()}"
    settings = SimulationSettings(
        merchants=merchants,
        partition="iid",
        holdout=0.0,
        seed=0,
        sample_rows=1000,
        federation={
            "model": model,
            "epsilon": epsilon,
            "num-rounds": rounds,
            "local-epochs": local_epochs,
        },
    )
    pooled = type(dataset)(**{**dataset.__dict__, "table": train})
    started = time.perf_counter()
    summary = run_simulation_job(pooled, settings, run_dir)
    wall = time.perf_counter() - started
    rounds = _rounds_seconds(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    # "wall" is Flower's run alone: the runner's partitioning and audit around it are not
    # orchestration and have no counterpart in the central run.
    return {
        "wall": summary["simulation_seconds"],
        "runner_wall": wall,
        "rounds": rounds,
        "epsilon": summary["epsilon"],
    }


def _rounds_seconds(run_dir: Path) -> float:
    """Seconds from the first training round's start to the last checkpoint (rounds.jsonl)."""
    entries = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    return max(float(e.get("seconds") or 0.0) for e in entries)


def central_seconds(train, dataset, *, epochs: int, epsilon: float, model: str) -> dict:
    from synth_models.synthesizer import TabularSynthesizer
    from synth_models.training import TrainingConfig

    started = time.perf_counter()
    synth = TabularSynthesizer(
        dataset.metadata,
        model=model,
        epsilon=epsilon,
        delta=1e-5,
        training=TrainingConfig(epochs=epochs),
        seed=0,
    )
    synth.fit(train)
    synth.sample(1000, seed=0)
    return {"wall": time.perf_counter() - started, "epsilon": synth.epsilon_spent}


def run_overhead(args, dataset, train, workdir: Path) -> dict:
    results = {"federated": [], "central": []}
    for repeat in range(args.repeats):
        order = ["central", "federated"] if repeat % 2 == 0 else ["federated", "central"]
        for kind in order:
            logger.info("repeat %d: %s", repeat + 1, kind)
            if kind == "central":
                results[kind].append(
                    central_seconds(
                        train,
                        dataset,
                        epochs=args.rounds * args.local_epochs,
                        epsilon=args.epsilon,
                        model=args.model,
                    )
                )
            else:
                results[kind].append(
                    federated_seconds(
                        train,
                        dataset,
                        merchants=args.merchants,
                        rounds=args.rounds,
                        local_epochs=args.local_epochs,
                        epsilon=args.epsilon,
                        model=args.model,
                        workdir=workdir,
                    )
                )
    fed = statistics.median(r["wall"] for r in results["federated"])
    fed_after = statistics.median(r["rounds"] for r in results["federated"])
    central = statistics.median(r["wall"] for r in results["central"])
    summary = {
        "federated_wall_s": fed,
        "federated_after_startup_s": fed_after,
        "central_wall_s": central,
        "overhead": fed / central - 1,
        "overhead_after_startup": fed_after / central - 1,
        "runs": results,
    }
    print(
        markdown_table(
            ["run", "wall s (median)", "x central"],
            [
                ["central (pooled rows, same steps)", f"{central:.1f}", "1.00"],
                [
                    f"federated, {args.merchants} merchants (whole simulation)",
                    f"{fed:.1f}",
                    f"{fed / central:.2f}",
                ],
                [
                    "federated, training rounds only (no start-up, schema round)",
                    f"{fed_after:.1f}",
                    f"{fed_after / central:.2f}",
                ],
            ],
        )
    )
    return summary


def run_memory(args, dataset, train, workdir: Path) -> dict:
    from simulations.runner import SimulationSettings, run_simulation_job

    settings = SimulationSettings(
        merchants=args.many,
        partition="iid",
        holdout=0.0,
        seed=0,
        min_rows=1,
        sample_rows=1000,
        federation={
            "model": args.model,
            "epsilon": args.epsilon,
            "num-rounds": 2,
            "local-epochs": 1,
            "batch-size": 100,
        },
    )
    pooled = type(dataset)(**{**dataset.__dict__, "table": train})
    run_dir = workdir / "many"
    started = time.perf_counter()
    with PeakMemory() as peak:
        summary = run_simulation_job(pooled, settings, run_dir)
    seconds = time.perf_counter() - started
    trained = summary["epsilon_per_merchant"]
    result = {
        "merchants": args.many,
        "peak_rss_gb": peak.peak / 2**30,
        "seconds": seconds,
        "merchants_with_ledger": len(trained),
        "max_epsilon": max(trained.values()) if trained else math.nan,
    }
    print(
        markdown_table(
            [
                "merchants",
                "rows each",
                "peak RSS (GB, process tree)",
                "wall s",
                "ledgers in artifact",
            ],
            [
                [
                    args.many,
                    len(train) // args.many,
                    f"{result['peak_rss_gb']:.2f}",
                    f"{seconds:.0f}",
                    len(trained),
                ]
            ],
        )
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("overhead", "memory"))
    parser.add_argument("--model", default="vae", choices=("vae", "gan"))
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--merchants", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--many", type=int, default=100)
    parser.add_argument("--out", default="runs/benchmarks/federation.json")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    dataset = load_dataset("pizzaplace")
    train, _ = holdout_split(dataset.table, 0.2, seed=0)
    payload = {"environment": environment(), "settings": vars(args)}
    with tempfile.TemporaryDirectory(prefix="fedsynth-bench-") as tmp:
        if args.only in (None, "overhead"):
            payload["overhead"] = run_overhead(args, dataset, train, Path(tmp))
        if args.only in (None, "memory"):
            payload["memory"] = run_memory(args, dataset, train, Path(tmp))
    write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
