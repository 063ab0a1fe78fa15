"""Wrap a module, optimizer, loss and loader for DP-SGD with Opacus, or leave them plain.

The training steps in ``gan.py`` and ``vae.py`` do not know which: the same code runs with
DP on (Poisson sampling, per-sample clipping, Gaussian noise, every step recorded in the owner's
ledger) and off (epsilon = infinity). Per-sample gradient norms come from Opacus' ghost
clipping, which never materializes per-sample gradients: measured here (2-core CPU, batch 500,
``python -m simulations.benchmarks.dp_step``) a DP critic step costs ~1.4x a plain one, a whole
GAN step ~1.2x, a VAE step ~2.1x; Opacus' default hook mode costs ~18-21x.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.utils.data import DataLoader, Dataset

from privacy.ledger import PrivacyLedger

# Opacus warns on every step about hooks firing without input gradients (expected for the
# first layer) and about its non-cryptographic RNG (documented in the README's threat model).
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
    noise_generator: torch.Generator | None = None,
    sample_rate: float | None = None,
    expected_batch_size: float | None = None,
) -> TrainingParts:
    """DP-wrap (``noise_multiplier`` not None) or pass through.

    Under DP, batches are Poisson samples of ``loader.dataset`` at ``sample_rate``, and the
    noisy gradient sum is divided by ``expected_batch_size``. Both should come from public or
    DP quantities (a DP row count): Opacus' defaults derive them from the exact number of rows,
    which then shows in the weights and the ledger. Every optimizer step is recorded in
    ``ledger`` through an Opacus step hook, with the noise and sample rate that were used."""
    if noise_multiplier is None:
        return TrainingParts(module, optimizer, criterion, loader, 1 / len(loader), False)
    if ledger is None:
        raise ValueError("DP training needs a privacy ledger")
    dataset = loader.dataset
    if sample_rate is None:
        sample_rate = 1 / len(loader)
    if expected_batch_size is None:
        expected_batch_size = len(dataset) * sample_rate
    poisson = DPDataLoader(
        dataset, sample_rate=sample_rate, generator=loader.generator, collate_fn=loader.collate_fn
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
        noise_generator=noise_generator,
    )
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
