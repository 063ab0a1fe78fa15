"""Tuning sweep on a public table: central fits of configurations, scored side by side.

Every configuration is fitted on the same split (``client.merchant.holdout_split(table, 0.2,
seed=0)``, as ``fedsynth benchmark`` does), sampled as many rows as it trained on and scored
with SDMetrics quality (default and all pairs), TSTR/TRTR on the dataset's target, and the
five strong pairs' ``ContingencySimilarity`` with numeric columns binned on the real rows'
edges for both tables ("real bins": the QualityReport bins each table over its own min-max).
Tune only on the shipped public tables; a user's table would spend privacy outside a ledger.

Run: ``python -m simulations.benchmarks.tuning --out runs/tuning.jsonl '{"model": "vae",
"epsilon": 1, "options": {"latent_dim": 16}}' '{"model": "gan", "training": {"dp_discriminator_lr":
0.003}}'``. Keys: ``model``, ``epsilon`` (a number or "inf"), ``seed``, ``statistics_share``,
``training`` (``TrainingConfig`` fields), ``options`` (model options). One JSON line per
configuration, printed and appended to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from sdmetrics.column_pairs import ContingencySimilarity

from client.merchant import holdout_split
from privacy.audit.fidelity import quality_scores
from privacy.audit.utility import utility
from simulations.datasets import load_dataset
from synth_models.synthesizer import TabularSynthesizer
from synth_models.training import TrainingConfig

STRONG_PAIRS = {
    "pizzaplace": [
        ("name", "size"), ("name", "type"), ("name", "price"), ("size", "price"), ("type", "price"),
    ],
}  # fmt: skip


def score_configuration(config: dict, *, dataset_name: str = "pizzaplace") -> dict:
    """Fit, sample and score one configuration (see the module docstring for its keys)."""
    data = load_dataset(dataset_name)
    train, holdout = holdout_split(data.table, 0.2, seed=0)
    epsilon = math.inf if config.get("epsilon") == "inf" else float(config.get("epsilon", 1))
    seed = int(config.get("seed", 0))
    synth = TabularSynthesizer(
        data.metadata,
        model=config.get("model", "vae"),
        epsilon=epsilon,
        delta=1e-5,
        statistics_share=float(config.get("statistics_share", 0.1)),
        training=TrainingConfig(**config.get("training", {})),
        model_options=config.get("options") or None,
        table_name=data.table_name,
        seed=seed,
    )
    start = time.perf_counter()
    synth.fit(train)
    fit_seconds = time.perf_counter() - start
    synthetic = synth.sample(len(train), seed=seed)
    quality = quality_scores(train, synthetic, data.metadata, data.table_name)
    useful = utility(
        train,
        holdout,
        synthetic,
        target=data.target,
        metadata=data.metadata,
        table_name=data.table_name,
        seed=seed,
    )
    columns = data.metadata["tables"][data.table_name]["columns"]
    numeric = [c for c, spec in columns.items() if spec["sdtype"] == "numerical"]
    real_bins = {
        f"{a}|{b}": float(
            ContingencySimilarity.compute(
                train[[a, b]],
                synthetic[[a, b]],
                continuous_column_names=[c for c in (a, b) if c in numeric],
            )
        )
        for a, b in STRONG_PAIRS.get(dataset_name, [])
    }
    return {
        **config,
        "quality": quality["quality"],
        "quality_all_pairs": quality["quality_all_pairs"],
        "column_shapes": quality["quality_properties"]["Column Shapes"],
        "pair_trends": quality["quality_properties"]["Column Pair Trends"],
        "pair_trends_real_bins": sum(real_bins.values()) / len(real_bins) if real_bins else None,
        "tstr_over_trtr": useful["ratio"],
        "epsilon_spent": synth.epsilon_spent,
        "fit_seconds": fit_seconds,
        "numeric_ranges": {c: [synthetic[c].min(), synthetic[c].max()] for c in numeric},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="JSON configurations")
    parser.add_argument("--dataset", default="pizzaplace", choices=sorted(STRONG_PAIRS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="append one JSON line per configuration")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for raw in args.configs:
        result = score_configuration(json.loads(raw), dataset_name=args.dataset)
        line = json.dumps(result, default=float)
        print(line, flush=True)
        if args.out is not None:
            with args.out.open("a") as handle:
                handle.write(line + "\n")


if __name__ == "__main__":
    main()
