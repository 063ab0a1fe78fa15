"""Per-round time: Flower's deployment engine (local) against its simulation engine, same job.

    python -m simulations.benchmarks.deployment --out /tmp/compare [--rows-per-merchant 300]

Three runs of the same job (3 IID merchants, tiny VAE, 1 local epoch per round, batch 100, no
audit): deployment with Flower's own SuperExec (a new Python process per message, "cold"),
deployment with fedsynth's forking SuperExec (``client.warm_exec``, "warm"), and simulation.
Writes ``compare.json`` in ``--out``; "rounds_seconds" are the server's ``rounds.jsonl``
times (seconds since the end of the schema round, after each round).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import time
from pathlib import Path

from simulations.deploy import local

TINY = {
    "model": "vae",
    "model-options": '{"hidden": [32, 32], "latent_dim": 8}',
    "batch-size": 100,
    "local-epochs": 1,
    "audit": False,
}


def simulate(settings: local.DeploymentSettings) -> dict:
    """The same job on a local simulation SuperLink (``flwr run``, as ``fedsynth simulate``)."""
    from simulations.runner import simulate as run_app
    from simulations.runner import simulated_policy, write_simulated_policy

    run_dir = Path(settings.out).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    data_paths, metadata, dataset = local.prepare_data(settings, run_dir)
    overrides = {
        "run-dir": str(run_dir),
        "metadata-path": str(metadata),
        "table-name": dataset.table_name,
        "target": dataset.target or "",
        "num-rounds": settings.rounds,
        "min-nodes": settings.merchants,
        **settings.run_config,
    }
    write_simulated_policy(run_dir / "state", simulated_policy(overrides))
    run_config = {
        **overrides,
        "data-dir": str(data_paths[0].parent),
        "state-dir": str(run_dir / "state"),
        "torch-threads": 1,
        "holdout-fraction": settings.holdout_fraction,
    }
    started = time.perf_counter()
    run_app(run_dir, run_config=run_config, num_supernodes=settings.merchants)
    return {
        "seconds": time.perf_counter() - started,
        "rounds_seconds": local.rounds_seconds(run_dir),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows-per-merchant", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    def settings(name: str, warm: bool = True) -> local.DeploymentSettings:
        return local.DeploymentSettings(
            merchants=3,
            rounds=args.rounds,
            out=args.out / name,
            insecure=True,
            rows_per_merchant=args.rows_per_merchant,
            warm=warm,
            run_config=TINY,
        )

    results = {}
    for name, warm in (("deployment-cold", False), ("deployment-warm", True)):
        deployed = local.run_local_deployment(settings(name, warm))
        results[name] = {"seconds": deployed.seconds, "rounds_seconds": deployed.rounds_seconds}
    results["simulation"] = simulate(settings("simulation"))
    for entry in results.values():
        # Rounds after the first: the first one also pays the noise calibration.
        later = [b - a for a, b in itertools.pairwise(entry["rounds_seconds"])]
        entry["seconds_per_later_round"] = sum(later) / len(later) if later else None
    sim = results["simulation"]["seconds_per_later_round"]
    for name in ("deployment-cold", "deployment-warm"):
        per_round = results[name]["seconds_per_later_round"]
        if per_round is not None and sim is not None:
            results[name]["overhead_per_round_vs_simulation"] = per_round - sim
    (args.out / "compare.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
