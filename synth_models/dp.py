"""Wrap a module, optimizer, loss and loader for DP-SGD with Opacus, or leave them plain.

The training steps in ``gan.py`` and ``vae.py`` do not know which: the same code runs with
DP on (Poisson sampling, per-sample clipping, Gaussian noise, every step recorded in the owner's
ledger) and off (epsilon = infinity). Per-sample gradient norms come from Opacus' ghost
clipping, which never materializes per-sample gradients: measured here (2-core CPU, batch 500,
``python -m simulations.benchmarks.dp_step``) a DP critic step costs ~1.4x a plain one, a whole
GAN step ~1.2x, a VAE step ~2.1x; Opacus' default hook mode costs ~18-21x.

The randomness that DP-SGD's guarantee rests on, the Poisson batches and the Gaussian noise,
comes from a :class:`privacy.noise.NoiseSource` (``SecureNoise``, the OS CSPRNG, unless a test
passes ``SeededNoise``), never from a torch generator someone could seed: Opacus'
``secure_mode`` needs torchcsprng, which does not exist for this torch. Its cost (same
benchmark): a GAN step 1.29x plain instead of 1.20x with Opacus' torch generator, a VAE step
2.33x instead of 2.00x (1.6-2.9 ms a step: 4 Box-Muller draws per parameter, as Opacus'
``secure_mode``); Poisson batches are faster than Opacus' sampler.
"""

from __future__ import annotations

import contextlib
import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
from opacus.optimizers.optimizer import DPOptimizer, _check_processed_flag, _mark_as_processed
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from privacy.ledger import PrivacyLedger
from privacy.noise import NoiseSource, SecureNoise

# Opacus warns on every step about hooks firing without input gradients (expected for the
# first layer) and about its non-cryptographic RNG (unused: the noise comes from a NoiseSource).
warnings.filterwarnings("ignore", message="Full backward hook is firing")
warnings.filterwarnings("ignore", message="Secure RNG turned off")


class RowDataset(Dataset):
    """Rows of one tensor, fetched a whole batch at a time (``__getitems__``), so that Poisson
    batches cost one indexing operation instead of one Python call per row."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor]:
        return (self.rows[index],)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor]:
        return (self.rows[torch.as_tensor(indices, dtype=torch.long)],)


def _as_batch(batch):
    return batch


def row_loader(rows: torch.Tensor, *, batch_size: int, generator: torch.Generator) -> DataLoader:
    """Shuffled batches of rows (DP wrapping turns this into Poisson sampling)."""
    return DataLoader(
        RowDataset(rows),
        batch_size=min(batch_size, len(rows)),
        shuffle=True,
        generator=generator,
        collate_fn=_as_batch,
    )


class PoissonBatchSampler(Sampler[list[int]]):
    """Poisson batches: every row is in each batch independently with probability
    ``sample_rate``, the masks drawn from ``noise``; ``int(1 / sample_rate)`` batches an epoch
    (as Opacus' ``UniformWithReplacementSampler``, which takes a torch generator instead)."""

    def __init__(self, *, num_samples: int, sample_rate: float, noise: NoiseSource) -> None:
        # No rows is allowed: every step is then noise only, as DP-SGD on an empty table is.
        if num_samples < 0 or not 0 < sample_rate <= 1:
            raise ValueError(f"need >= 0 rows and a rate in (0, 1]: {num_samples}, {sample_rate}")
        self.num_samples, self.sample_rate, self.noise = num_samples, sample_rate, noise

    def __len__(self) -> int:
        return int(1 / self.sample_rate)

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(len(self)):
            mask = self.noise.poisson_mask(self.num_samples, self.sample_rate)
            yield np.flatnonzero(mask).tolist()


def poisson_loader(
    dataset: Dataset, *, sample_rate: float, noise: NoiseSource, collate_fn
) -> DataLoader:
    """What Opacus' ``DPDataLoader`` builds (empty batches keep their shape), with the
    batches drawn by :class:`PoissonBatchSampler`."""
    sampler = PoissonBatchSampler(num_samples=len(dataset), sample_rate=sample_rate, noise=noise)
    if len(dataset) == 0:  # nothing to learn empty shapes from: the dataset fetches them
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn)
    first = dataset[0]
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=wrap_collate_with_empty(
            collate_fn=collate_fn,
            sample_empty_shapes=[(0, *shape_safe(x)) for x in first],
            dtypes=[dtype_safe(x) for x in first],
        ),
    )


def _add_sourced_noise(optimizer: DPOptimizer) -> None:
    """``DPOptimizer.add_noise`` (Opacus 1.6, flat and ghost clipping alike) with the
    Gaussian noise of every parameter drawn in one call from ``optimizer.noise_source``."""
    multiplier = getattr(optimizer, "_adjusted_noise_multiplier", optimizer.noise_multiplier)
    sums = [p.summed_grad for p in optimizer.params]
    for summed in sums:
        _check_processed_flag(summed)
    sizes = [summed.numel() for summed in sums]
    std = multiplier * optimizer.max_grad_norm
    noise = optimizer.noise_source.torch_normal(std, (sum(sizes),), torch.float64)
    for p, summed, part in zip(optimizer.params, sums, noise.split(sizes), strict=True):
        p.grad = (summed + part.view(summed.shape).to(summed.dtype)).view_as(p)
        _mark_as_processed(summed)


def draw_noise_from(optimizer: DPOptimizer, noise: NoiseSource) -> DPOptimizer:
    """Make ``optimizer`` add Gaussian noise drawn from ``noise`` instead of its generator."""
    optimizer.noise_source = noise
    optimizer.add_noise = types.MethodType(_add_sourced_noise, optimizer)
    return optimizer


@dataclass
class TrainingParts:
    """What a training step uses: possibly DP-wrapped module, optimizer, loss and loader."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    loader: DataLoader
    sample_rate: float  # Poisson rate under DP; batch share otherwise
    private: bool

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def batches(self) -> Iterator[torch.Tensor]:
        for (batch,) in self.loader:
            yield batch

    def close(self) -> None:
        """Remove Opacus' hooks so the underlying module is a plain module again."""
        if self.private:
            self.module._close()


def make_training_parts(
    *,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    loader: DataLoader,
    noise_multiplier: float | None,
    max_grad_norm: float,
    ledger: PrivacyLedger | None,
    label: str = "dp-sgd",
    noise: NoiseSource | None = None,
    sample_rate: float | None = None,
    expected_batch_size: float | None = None,
) -> TrainingParts:
    """DP-wrap (``noise_multiplier`` not None) or pass through.

    Under DP, batches are Poisson samples of ``loader.dataset`` at ``sample_rate``, and the
    noisy gradient sum is divided by ``expected_batch_size``. Both should come from public or
    DP quantities (a DP row count): Opacus' defaults derive them from the exact number of rows,
    which then shows in the weights and the ledger. Every optimizer step is recorded in
    ``ledger`` through an Opacus step hook, with the noise and sample rate that were used. The
    batches and the Gaussian noise come from ``noise`` (default: ``SecureNoise()``)."""
    if noise_multiplier is None:
        return TrainingParts(module, optimizer, criterion, loader, 1 / len(loader), False)
    if ledger is None:
        raise ValueError("DP training needs a privacy ledger")
    dataset = loader.dataset
    if sample_rate is None:
        sample_rate = 1 / len(loader)
    if expected_batch_size is None:
        expected_batch_size = len(dataset) * sample_rate
    noise = SecureNoise() if noise is None else noise
    poisson = poisson_loader(
        dataset, sample_rate=sample_rate, noise=noise, collate_fn=loader.collate_fn
    )
    engine = PrivacyEngine(accountant="rdp")
    dp_module, dp_optimizer, dp_criterion, dp_loader = engine.make_private(
        module=module,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=poisson,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=False,  # ``poisson`` already samples; keep our sample rate
        grad_sample_mode="ghost",
    )
    draw_noise_from(dp_optimizer, noise)
    dp_module.forbid_grad_accumulation()
    dp_optimizer.expected_batch_size = max(expected_batch_size, 1e-12)
    dp_optimizer.attach_step_hook(ledger.optimizer_hook(sample_rate=sample_rate, label=label))
    return TrainingParts(dp_module, dp_optimizer, dp_criterion, dp_loader, sample_rate, True)


def planned_sample_rate(num_rows: float, batch_size: int) -> float:
    """Poisson rate for an expected batch of ``batch_size`` from ``num_rows`` rows (use a DP
    row count under DP)."""
    return min(1.0, batch_size / max(num_rows, 1.0))


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Use a (possibly DP-wrapped) module as a fixed function: no parameter gradients and no
    per-sample bookkeeping, e.g. the critic while the generator learns through it."""
    params = [p for p in module.parameters() if p.requires_grad]
    hooks = hasattr(module, "disable_hooks")
    for p in params:
        p.requires_grad_(False)
    if hooks:
        module.disable_hooks()
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
        if hooks:
            module.enable_hooks()
