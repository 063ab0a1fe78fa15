"""Per-round time: Flower's deployment engine (local) against ``run_simulation``, same job.

    python -m simulations.benchmarks.deployment --out /tmp/compare [--rows-per-merchant 300]

Both runs: 3 IID merchants, tiny VAE, 2 rounds x 1 local epoch, batch 100, no audit.
Writes ``compare.json`` in ``--out``; "rounds_seconds" are the server's ``rounds.jsonl``
times (seconds since the end of the schema round, after each round).
"""

from __future__ import annotations

import argparse
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
    from flwr.simulation import run_simulation

    from client.app import make_client_app
    from server.app import make_server_app

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
    started = time.perf_counter()
    run_simulation(
        server_app=make_server_app(overrides),
        client_app=make_client_app(
            data_dir=str(data_paths[0].parent),
            state_dir=str(run_dir / "state"),
            torch_threads=1,
            holdout_fraction=settings.holdout_fraction,
        ),
        num_supernodes=settings.merchants,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    return {
        "seconds": time.perf_counter() - started,
        "rounds_seconds": local._rounds_seconds(run_dir),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows-per-merchant", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    def settings(name: str) -> local.DeploymentSettings:
        return local.DeploymentSettings(
            merchants=3,
            rounds=args.rounds,
            out=args.out / name,
            insecure=True,
            rows_per_merchant=args.rows_per_merchant,
            run_config=TINY,
        )

    deployed = local.run_local_deployment(settings("deploy"))
    results = {
        "deployment": {"seconds": deployed.seconds, "rounds_seconds": deployed.rounds_seconds},
        "simulation": simulate(settings("simulation")),
    }
    (args.out / "compare.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
