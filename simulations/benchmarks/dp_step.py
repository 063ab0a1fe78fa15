"""Cost of one DP-SGD training step against one plain step of the same model on the same batch.

What is measured: wall-clock milliseconds per training step of fedsynth's own step functions
(``discriminator_step`` / ``generator_step`` in ``synth_models/gan.py``, ``vae_step`` in
``synth_models/vae.py``) on rows of the embedded ``pizzaplace`` table, encoded by a
``TableEncoder`` built from exact (non-private) statistics. Groups, each timed on its own:

* ``gan-full``: a whole GAN step (critic step + generator step through the frozen critic), plain
  vs DP with Opacus ghost clipping (what ``make_training_parts`` builds: its Gaussian noise from
  ``SecureNoise``, the OS CSPRNG) vs the same with Opacus' own noise from a seeded torch
  generator (``dp-ghost-torch-rng``, what fedsynth did before: not private against whoever
  knows the seed; shown for the cost of secure noise);
* ``gan-critic``: the critic step alone (the only part that is DP-trained), plain vs ghost
  clipping (secure and torch-RNG noise) vs Opacus' default ``grad_sample_mode="hooks"``
  (per-sample gradients materialized; torch-RNG noise);
* ``vae``: a VAE step (the whole model is DP-trained), plain vs ghost (both noises) vs hooks;
* ``sampling``: drawing one batch from the loader, shuffled (plain) vs fedsynth's Poisson sampler
  (masks from ``SecureNoise``) vs Opacus' (torch generator), for scale; the model steps above
  get fixed batches and do not include it.

How: every variant gets its own copy of one freshly initialized model (same weights), its own
Adam optimizers (``TrainingConfig`` defaults) and its own ``torch.Generator`` with the same
seed. Plain and ghost variants are built by ``make_training_parts`` (``noise_multiplier=None``
vs a noise multiplier, with a privacy ledger recording every DP step, as in training); the hooks
variant by ``PrivacyEngine.make_private(..., grad_sample_mode="hooks")`` directly, with the same
ledger hook. Real rows come from a pool of pre-drawn batches of exactly ``--batch-size`` rows;
step ``i`` of every variant uses the same batch, so all variants do the same arithmetic on the
same data. After ``--warmup`` untimed rounds, ``--steps`` rounds time one step of each variant
of the group, in an order that rotates every round (see :func:`interleaved_timings`), so that
load from other processes on a shared machine falls on all variants alike. Reported: median
ms/step (and quartiles) and the ratio DP / plain, both as ratio of medians and as median of the
per-round ratios. ``--threads`` sets ``torch.set_num_threads`` (default: torch's own choice);
the thread count in force is reported.

Run: ``python -m simulations.benchmarks.dp_step [--batch-size 500] [--steps 50]``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from torch import nn

from privacy.ledger import PrivacyLedger
from privacy.statistics import release_statistics
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
from synth_models.dp import TrainingParts, make_training_parts, row_loader
from synth_models.encoder import TableEncoder, statistics_inputs
from synth_models.gan import GANModel, discriminator_step, generator_step
from synth_models.schema import TableSchema
from synth_models.training import TRAINING_LABEL, TrainingConfig
from synth_models.vae import ELBOLoss, VAEModel, vae_step

logger = logging.getLogger(__name__)

NAME = "dp_step"
GROUPS = ("gan-full", "gan-critic", "vae", "sampling")
GROUP_TITLES = {
    "gan-full": "GAN full step (critic + generator)",
    "gan-critic": "GAN critic step",
    "vae": "VAE step",
    "sampling": "batch sampling (loader)",
}
PLAIN, GHOST, GHOST_TORCH, HOOKS = "plain", "dp-ghost", "dp-ghost-torch-rng", "dp-hooks"
SHUFFLED, POISSON, POISSON_TORCH = "shuffled", "poisson", "poisson-torch-rng"


@dataclass
class Variant:
    """One timed variant: a step callable and what it needs to report afterwards."""

    name: str
    step: Callable[[], object]
    parts: TrainingParts | None = None
    ledger: PrivacyLedger | None = None


def encoded_rows(seed: int) -> tuple[TableEncoder, torch.Tensor]:
    """pizzaplace rows encoded with an encoder built from exact (non-private) statistics."""
    dataset = load_dataset("pizzaplace")
    schema = TableSchema.from_metadata(dataset.metadata, dataset.table_name)
    stats, _ = release_statistics(
        statistics_inputs(dataset.table, schema),
        noise_multiplier=0.0,
        threshold_delta=0.0,
    )
    encoder = TableEncoder.from_statistics(schema, stats)
    rows = torch.as_tensor(encoder.transform(dataset.table), dtype=torch.float32)
    return encoder, rows


def batch_pool(rows: torch.Tensor, batch_size: int, count: int, seed: int) -> list[torch.Tensor]:
    """``count`` random batches of exactly ``batch_size`` rows (without replacement within one)."""
    generator = torch.Generator().manual_seed(seed)
    size = min(batch_size, len(rows))
    return [rows[torch.randperm(len(rows), generator=generator)[:size]] for _ in range(count)]


def _ledger() -> PrivacyLedger:
    # Never checked against the budget here: the ledger only records steps, as in training.
    return PrivacyLedger(epsilon_budget=1e9, delta=1e-5, owner="benchmark")


def _parts(
    mode: str,
    *,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    rows: torch.Tensor,
    batch_size: int,
    noise_multiplier: float,
    max_grad_norm: float,
    seed: int,
) -> tuple[TrainingParts, PrivacyLedger | None]:
    """Plain or ghost parts from ``make_training_parts`` (ghost with torch-RNG noise: Opacus'
    own ``add_noise`` and ``DPDataLoader`` put back); hooks parts from Opacus directly."""
    loader = row_loader(rows, batch_size=batch_size, generator=torch.Generator().manual_seed(seed))
    noise_generator = torch.Generator().manual_seed(seed + 1)
    if mode in (PLAIN, GHOST, GHOST_TORCH):
        ledger = None if mode == PLAIN else _ledger()
        parts = make_training_parts(
            module=module,
            optimizer=optimizer,
            criterion=criterion,
            loader=loader,
            noise_multiplier=None if mode == PLAIN else noise_multiplier,
            max_grad_norm=max_grad_norm,
            ledger=ledger,
            label=TRAINING_LABEL,
        )
        if mode == GHOST_TORCH:
            del parts.optimizer.add_noise  # the class's: torch.normal with its generator
            parts.optimizer.generator = noise_generator
            parts.loader = DPDataLoader(
                loader.dataset,
                sample_rate=parts.sample_rate,
                generator=noise_generator,
                collate_fn=loader.collate_fn,
            )
        return parts, ledger
    if mode != HOOKS:
        raise ValueError(f"unknown mode {mode!r}")
    ledger = _ledger()
    engine = PrivacyEngine(accountant="rdp")
    # Hook mode returns (module, optimizer, loader): the criterion stays an ordinary loss.
    dp_module, dp_optimizer, dp_loader = engine.make_private(
        module=module,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode="hooks",
        noise_generator=noise_generator,
    )
    sample_rate = dp_loader.sample_rate
    dp_optimizer.attach_step_hook(ledger.optimizer_hook(sample_rate=sample_rate))
    return TrainingParts(dp_module, dp_optimizer, criterion, dp_loader, sample_rate, True), ledger


def build_group(
    group: str,
    *,
    encoder: TableEncoder,
    rows: torch.Tensor,
    pool: list[torch.Tensor],
    config: TrainingConfig,
    noise_multiplier: float,
    seed: int,
) -> list[Variant]:
    """The variants of one group, each with its own copy of one initial model."""
    torch.manual_seed(seed)
    batch_size = len(pool[0])
    common = {
        "rows": rows,
        "batch_size": batch_size,
        "noise_multiplier": noise_multiplier,
        "max_grad_norm": config.max_grad_norm,
        "seed": seed,
    }
    if group in ("gan-full", "gan-critic"):
        base = GANModel(encoder)
        base.train()
        modes = (PLAIN, GHOST, GHOST_TORCH) + (() if group == "gan-full" else (HOOKS,))
        variants = []
        for mode in modes:
            model = copy.deepcopy(base)
            d_opt = torch.optim.Adam(
                model.discriminator.parameters(),
                lr=config.discriminator_lr,
                betas=(0.5, 0.9),
                weight_decay=config.weight_decay,
            )
            g_opt = torch.optim.Adam(
                model.generator.parameters(),
                lr=config.generator_lr,
                betas=(0.5, 0.9),
                weight_decay=config.weight_decay,
            )
            parts, ledger = _parts(
                mode,
                module=model.discriminator,
                optimizer=d_opt,
                criterion=nn.BCEWithLogitsLoss(),
                **common,
            )
            generator = torch.Generator().manual_seed(seed + 2)
            variants.append(
                Variant(
                    mode,
                    _gan_step(model, parts, g_opt, pool, generator, full=group == "gan-full"),
                    parts,
                    ledger,
                )
            )
        return variants
    if group == "vae":
        base = VAEModel(encoder)
        base.train()
        variants = []
        for mode in (PLAIN, GHOST, GHOST_TORCH, HOOKS):
            model = copy.deepcopy(base)
            optimizer = torch.optim.Adam(
                model.parameters(), lr=config.vae_lr, weight_decay=config.weight_decay
            )
            parts, ledger = _parts(
                mode, module=model, optimizer=optimizer, criterion=ELBOLoss(model.spans), **common
            )
            variants.append(Variant(mode, _vae_step(parts, pool), parts, ledger))
        return variants
    if group == "sampling":
        # Only the loaders matter here; a critic is needed to let Opacus wrap them.
        base = GANModel(encoder)
        variants = []
        for mode, name in ((PLAIN, SHUFFLED), (GHOST, POISSON), (GHOST_TORCH, POISSON_TORCH)):
            model = copy.deepcopy(base)
            optimizer = torch.optim.Adam(model.discriminator.parameters())
            parts, _ = _parts(
                mode,
                module=model.discriminator,
                optimizer=optimizer,
                criterion=nn.BCEWithLogitsLoss(),
                **common,
            )
            variants.append(Variant(name, _next_batch(parts), parts, None))
        return variants
    raise ValueError(f"unknown group {group!r}; choose from {GROUPS}")


def _gan_step(model, parts, g_optimizer, pool, generator, *, full: bool) -> Callable[[], float]:
    state = {"i": 0}
    batch_size = len(pool[0])

    def step() -> float:
        real = pool[state["i"] % len(pool)]
        state["i"] += 1
        loss = discriminator_step(model, parts, real, num_fake=batch_size, generator=generator)
        if full:
            loss += generator_step(
                model, parts, g_optimizer, batch_size=batch_size, generator=generator
            )
        return loss

    return step


def _vae_step(parts, pool) -> Callable[[], float]:
    state = {"i": 0}

    def step() -> float:
        real = pool[state["i"] % len(pool)]
        state["i"] += 1
        return vae_step(parts, real)

    return step


def _next_batch(parts: TrainingParts) -> Callable[[], int]:
    """One batch from the loader, starting a new epoch when one runs out."""
    state = {"it": parts.batches()}

    def fetch() -> int:
        try:
            batch = next(state["it"])
        except StopIteration:
            state["it"] = parts.batches()
            batch = next(state["it"])
        return len(batch)

    return fetch


def run(args: argparse.Namespace) -> dict:
    threads = set_threads(args.threads)
    logger.info("torch threads: %d", threads)
    start = time.perf_counter()
    encoder, rows = encoded_rows(args.seed)
    logger.info(
        "pizzaplace encoded: %d rows x %d columns (%.1f s)",
        len(rows),
        rows.shape[1],
        time.perf_counter() - start,
    )
    pool = batch_pool(rows, args.batch_size, args.pool, args.seed)
    config = TrainingConfig(batch_size=args.batch_size)
    results: dict[str, dict] = {}
    for group in args.groups:
        variants = build_group(
            group,
            encoder=encoder,
            rows=rows,
            pool=pool,
            config=config,
            noise_multiplier=args.noise_multiplier,
            seed=args.seed,
        )
        logger.info("%s: variants %s", group, [v.name for v in variants])
        times = interleaved_timings(
            {v.name: v.step for v in variants},
            rounds=args.steps,
            warmup=args.warmup,
            label=group,
        )
        baseline = variants[0].name
        group_result = {"title": GROUP_TITLES[group], "baseline": baseline, "variants": {}}
        for v in variants:
            entry = summarize(times[v.name])
            if v.name != baseline:
                entry["vs_baseline"] = ratios(times[v.name], times[baseline])
            if v.ledger is not None:
                # Every step (warm-up and timed) must have gone through the DP optimizer.
                entry["ledger_steps"] = sum(r.steps for r in v.ledger.records)
            group_result["variants"][v.name] = entry
        for v in variants:
            if v.parts is not None:
                v.parts.close()
        results[group] = group_result
    return {
        "benchmark": NAME,
        "config": {
            "dataset": "pizzaplace",
            "rows": len(rows),
            "encoded_width": int(rows.shape[1]),
            "batch_size": len(pool[0]),
            "fake_rows_per_critic_step": len(pool[0]),
            "steps": args.steps,
            "warmup": args.warmup,
            "batch_pool": args.pool,
            "noise_multiplier": args.noise_multiplier,
            "max_grad_norm": config.max_grad_norm,
            "threads": threads,
            "seed": args.seed,
        },
        "environment": environment(),
        "results": results,
    }


def table(payload: dict) -> str:
    rows = []
    for group in payload["results"].values():
        for name, entry in group["variants"].items():
            ratio = entry.get("vs_baseline")
            rows.append(
                [
                    group["title"],
                    name,
                    f"{entry['median_ms']:.2f}",
                    f"{entry['p25_ms']:.2f}–{entry['p75_ms']:.2f}",
                    "1.00" if ratio is None else f"{ratio['ratio_of_medians']:.2f}",
                    "1.00"
                    if ratio is None
                    else f"{ratio['median_of_ratios']:.2f} "
                    f"({ratio['ratio_p25']:.2f}–{ratio['ratio_p75']:.2f})",
                ]
            )
    config = payload["config"]
    header = (
        f"DP step vs plain step: pizzaplace ({config['rows']} rows, encoded width "
        f"{config['encoded_width']}), batch {config['batch_size']}, {config['steps']} timed "
        f"steps after {config['warmup']} warm-up, interleaved; torch threads "
        f"{config['threads']}, noise multiplier {config['noise_multiplier']}\n\n"
    )
    return header + markdown_table(
        [
            "step",
            "variant",
            "ms/step (median)",
            "p25–p75 ms",
            "× plain (ratio of medians)",
            "× plain (median per-round ratio, p25–p75)",
        ],
        rows,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m simulations.benchmarks.{NAME}",
        description="Time one DP-SGD step (Opacus ghost / hooks) against one plain step.",
    )
    parser.add_argument("--batch-size", type=int, default=500, help="real rows per step")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    parser.add_argument(
        "--groups",
        nargs="+",
        choices=GROUPS,
        default=list(GROUPS),
        help="which steps to time (default: all)",
    )
    parser.add_argument(
        "--noise-multiplier", type=float, default=1.0, help="DP noise (does not change cost)"
    )
    parser.add_argument("--pool", type=int, default=16, help="distinct pre-drawn real batches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=f"runs/benchmarks/{NAME}.json", help="JSON results")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0 or args.pool < 1:
        parser.error("--batch-size, --steps and --pool must be >= 1, --warmup >= 0")
    if not math.isfinite(args.noise_multiplier) or args.noise_multiplier <= 0:
        parser.error("--noise-multiplier must be a positive number")
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
