"""Marginal model quality over many seeds, fast: the federation's rounds replayed in-process.

It runs what the merchants and the server run for ``model = "marginal"`` (statistics,
selection, structure and rebinning, measurement, fit; the same functions as
``client.merchant`` and ``server.marginal_rounds``, each merchant with its own ledger and
noise, drawn as the merchants draw it: ``SecureNoise``, so a seed fixes the partition and the
sampling, not the DP noise) without Flower and Ray, so one seed takes seconds instead of a
minute. For tuning on the shipped public tables; ``fedsynth benchmark`` remains the reference
measurement.

Run: ``python -m simulations.benchmarks.marginal_replay --seeds 0-5 [--merchants 5]
[--epsilon 1] [--options '{"selection_share": 0.3}']``. Prints quality (SDMetrics default and
all pairs), the largest sampled price and the structure per seed, then the mean.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

from client.merchant import holdout_split
from privacy.audit.fidelity import quality_scores
from privacy.ledger import PrivacyLedger
from privacy.statistics import merge_statistics
from simulations.datasets import load_dataset
from simulations.partition import partition_table
from synth_models.encoder import TableEncoder
from synth_models.marginal_fit import choose_structure, fit_structure, release_marginals
from synth_models.marginal_model import MarginalModel
from synth_models.marginals import MEASUREMENT, SELECTION, merge_releases
from synth_models.synthesizer import build_model, release_encoder_statistics


def replay(
    *, seed: int, merchants: int, epsilon: float, options: dict, statistics_share: float = 0.3
) -> dict:
    """One federation of ``merchants`` (Dirichlet α = 0.5 over ``type``) on pizzaplace's
    80/20 training split; its scores against the training rows."""
    dataset = load_dataset("pizzaplace")
    train, _ = holdout_split(dataset.table, 0.2, seed=0)
    parts = (
        partition_table(train, "dirichlet:type:0.5", num_merchants=merchants, seed=seed)
        if merchants > 1
        else [train]
    )
    ledgers = [
        PrivacyLedger(epsilon_budget=epsilon, delta=1e-5, owner=f"merchant-{i}")
        for i in range(merchants)
    ]
    stats = [
        release_encoder_statistics(
            part, dataset.schema(), ledger, epsilon=epsilon * statistics_share
        )
        for part, ledger in zip(parts, ledgers, strict=True)
    ]
    encoder = TableEncoder.from_statistics(dataset.schema(), merge_statistics(stats))
    model = build_model("marginal", encoder, options)
    assert isinstance(model, MarginalModel)

    def release(phase: str, pairs=None):
        return merge_releases([
            release_marginals(part, model=model, ledger=ledger, phase=phase, tree=pairs)
            for part, ledger in zip(parts, ledgers, strict=True)
        ])  # fmt: skip

    selection = release(SELECTION)
    structure = choose_structure(model, selection)
    fit_structure(model, structure, selection, release(MEASUREMENT, structure.measured_pairs))
    generator = torch.Generator().manual_seed(seed)
    synthetic = encoder.inverse_transform(model.generate(len(train), generator).numpy())
    scores = quality_scores(train, synthetic, dataset.metadata, dataset.table_name)
    return {
        "seed": seed,
        "quality": scores["quality"],
        "quality_all_pairs": scores["quality_all_pairs"],
        "epsilon": max(ledger.epsilon() for ledger in ledgers),
        "max_price": float(synthetic["price"].max()),
        **structure.describe(model),
    }


def parse_seeds(spec: str) -> list[int]:
    if "-" in spec:
        first, last = spec.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(s) for s in spec.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-5", help="e.g. 0-5 or 0,3,7")
    parser.add_argument("--merchants", type=int, default=5)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--statistics-share", type=float, default=0.3)
    parser.add_argument("--options", default="{}", help="MarginalModel options, JSON")
    args = parser.parse_args(argv)
    if math.isinf(args.epsilon):
        parser.error("replays are private: give a finite --epsilon (a large one is near-exact)")
    results = []
    for seed in parse_seeds(args.seeds):
        result = replay(
            seed=seed,
            merchants=args.merchants,
            epsilon=args.epsilon,
            options=json.loads(args.options),
            statistics_share=args.statistics_share,
        )
        results.append(result)
        print(
            f"seed {seed}: quality {result['quality']:.4f} (all pairs "
            f"{result['quality_all_pairs']:.4f}), ε {result['epsilon']:.4f}, max price "
            f"{result['max_price']}, tree {result['tree']}, second {result['second_parents']}",
            flush=True,
        )
    qualities = [r["quality"] for r in results]
    print(f"mean {np.mean(qualities):.4f}, min {min(qualities):.4f} over {len(results)} seeds")


if __name__ == "__main__":
    main()
