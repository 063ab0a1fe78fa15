"""GAN and VAE federations, fast: the rounds replayed in-process, for tuning on public tables.

Each merchant runs the client's own ``statistics_round``, ``marginals_round`` (the warm start's
two releases) and ``train_round`` (its ledger, its DP row count, its noise: ``SecureNoise``, so
a seed fixes partition, initial weights and sampling, not the DP noise) on a Dirichlet (or
IID) share of pizzaplace's 80/20 training split; the server's part is the warm start
(``synth_models/warm_start.py``) and the weighted average ``MerchantFedAvg`` computes. Without
Flower and Ray a federation takes about as long as its training. ``fedsynth benchmark``
remains the reference measurement; ``--merchants 1`` is the central fit with the same rounds.

Run: ``python -m simulations.benchmarks.neural_replay --model vae --epsilon 1 --seeds 0-1
[--merchants 5] [--partition dirichlet:type:0.5] [--rounds 5] [--local-epochs 2] [--training
'{"batch_size": 100}'] [--options '{"latent_dim": 16}']``. Prints one JSON line per seed:
SDMetrics quality (default and all pairs), TSTR/TRTR for ``type``, epsilon spent, fit seconds,
for the warm-started network (``warm_start``) and after the training rounds.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from client.merchant import holdout_split, marginals_round, statistics_round, train_round
from client.state import MerchantState
from privacy.audit.fidelity import quality_scores
from privacy.audit.utility import utility
from privacy.statistics import merge_statistics
from simulations.benchmarks.marginal_replay import parse_seeds
from simulations.datasets import load_dataset
from simulations.partition import partition_table
from synth_models.encoder import TableEncoder
from synth_models.marginal_fit import choose_structure, fit_structure
from synth_models.marginals import MEASUREMENT, SELECTION, MarginalRelease, merge_releases
from synth_models.synthesizer import TabularSynthesizer, build_model
from synth_models.training import TrainingConfig
from synth_models.warm_start import (
    marginal_for_warm_start,
    network_encoder,
    uses_warm_start,
    warm_start,
    warm_start_target,
)


def weighted_average(
    replies: list[tuple[dict[str, torch.Tensor], float]],
) -> dict[str, torch.Tensor]:
    """FedAvg of state dicts weighted by ``num-examples`` (each tensor keeps its dtype)."""
    total = sum(weight for _, weight in replies)
    first = replies[0][0]
    return {
        name: (sum(w[name].double() * n for w, n in replies) / total).to(tensor.dtype)
        for name, tensor in first.items()
    }


def replay(
    *,
    model: str,
    epsilon: float,
    seed: int,
    merchants: int = 5,
    partition: str = "dirichlet:type:0.5",
    rounds: int = 5,
    training: TrainingConfig | None = None,
    options: dict | None = None,
    statistics_share: float = 0.1,
) -> dict:
    """One federation; its synthesizer scored against the training rows and the holdout."""
    dataset = load_dataset("pizzaplace")
    train, holdout = holdout_split(dataset.table, 0.2, seed=0)
    parts = (
        partition_table(train, partition, num_merchants=merchants, seed=seed)
        if merchants > 1
        else [train]
    )
    schema, options = dataset.schema(), options or {}
    training = training or TrainingConfig(epochs=2)
    states = [MerchantState(merchant=f"merchant-{i}") for i in range(merchants)]
    stats = [
        statistics_round(
            part, schema=schema, state=state, epsilon=epsilon, delta=1e-5,
            statistics_share=statistics_share, source=state.merchant,
        )
        for part, state in zip(parts, states, strict=True)
    ]  # fmt: skip

    def score(weights: dict[str, torch.Tensor]) -> dict:
        synth = TabularSynthesizer.from_fitted(
            dataset.metadata, model=model, encoder=encoder, weights=weights, ledgers={},
            epsilon=epsilon, model_options=options,
        )  # fmt: skip
        synthetic = synth.sample(len(train), seed=seed)
        quality = quality_scores(train, synthetic, dataset.metadata, dataset.table_name)
        useful = utility(
            train, holdout, synthetic, target=dataset.target, metadata=dataset.metadata,
            table_name=dataset.table_name, seed=seed,
        )  # fmt: skip
        return {
            "quality": round(quality["quality"], 4),
            "quality_all_pairs": round(quality["quality_all_pairs"], 4),
            "tstr_over_trtr": round(useful["ratio"], 3),
            # The default score bins each table's numeric columns over its own min-max.
            "price_range": [float(synthetic["price"].min()), float(synthetic["price"].max())],
        }

    merged = merge_statistics(stats)
    encoder = TableEncoder.from_statistics(schema, merged)
    started = time.perf_counter()
    marginal = None
    if uses_warm_start(model, training, schema):
        marginal = marginal_for_warm_start(encoder)
        target = warm_start_target(epsilon, statistics_share=statistics_share, config=training)

        def release(phase: str, tree=None) -> MarginalRelease:
            return merge_releases([
                marginals_round(
                    part, encoder=marginal.encoder, model_options={}, state=state,
                    epsilon=epsilon, delta=1e-5, phase=phase, tree=tree, source=state.merchant,
                    target_epsilon=target,
                )[0]
                for part, state in zip(parts, states, strict=True)
            ])  # fmt: skip

        selection = release(SELECTION)
        structure = choose_structure(marginal, selection)
        measurement = release(MEASUREMENT, structure.measured_pairs)
        fit_structure(marginal, structure, selection, measurement)
        encoder = network_encoder(marginal)
    torch.manual_seed(seed)
    network = build_model(model, encoder, options)
    scores = {}
    if marginal is not None:
        warm_start(
            network, encoder, marginal, num_rows=merged.row_count, config=training, seed=seed
        )
        scores["warm_start"] = score(network.state_dict())
    weights = network.state_dict()
    for number in range(1, rounds + 1):
        replies = []
        for part, state in zip(parts, states, strict=True):
            new, metrics = train_round(
                part, encoder=encoder, weights=weights, model=model, model_options=options,
                training=training, state=state, epsilon=epsilon, delta=1e-5,
                server_round=number, num_rounds=rounds, source=state.merchant,
            )  # fmt: skip
            replies.append((new, metrics["num-examples"]))
        weights = weighted_average(replies)
    fit_seconds = time.perf_counter() - started
    return {
        "model": model,
        "epsilon": epsilon,
        "seed": seed,
        "merchants": merchants,
        **score(weights),
        **scores,
        "epsilon_spent": round(max(state.epsilon for state in states), 4),
        "fit_seconds": round(fit_seconds, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("vae", "gan"), default="vae")
    parser.add_argument("--epsilon", default="1", help='a number or "inf"')
    parser.add_argument("--seeds", default="0", help="e.g. 0-3 or 0,2")
    parser.add_argument("--merchants", type=int, default=5)
    parser.add_argument("--partition", default="dirichlet:type:0.5")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--training", default="{}", help="TrainingConfig fields, JSON")
    parser.add_argument("--options", default="{}", help="model options, JSON")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    epsilon = math.inf if args.epsilon.lower() in ("inf", "infinity") else float(args.epsilon)
    training = TrainingConfig(**{"epochs": args.local_epochs, **json.loads(args.training)})
    for seed in parse_seeds(args.seeds):
        result = replay(
            model=args.model,
            epsilon=epsilon,
            seed=seed,
            merchants=args.merchants,
            partition=args.partition,
            rounds=args.rounds,
            training=training,
            options=json.loads(args.options),
        )
        print(json.dumps({**result, "training": training.to_dict()}, default=str), flush=True)


if __name__ == "__main__":
    main()
