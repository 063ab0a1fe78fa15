"""A CTGAN-class conditional GAN whose critic trains with DP-SGD.

Only the discriminator sees real rows, so only it is DP-trained; the generator learns through
it and is post-processing. Differences from CTGAN that DP requires: pac = 1, no gradient penalty
(per-sample gradients do not support double backward), a non-saturating logistic loss instead
of WGAN-GP, and conditional vectors for fake rows drawn from the DP category frequencies (real
rows carry the condition of their own category; no real row is ever picked by its category).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from synth_models.dp import TrainingParts, frozen
from synth_models.encoder import CategoricalTransform, Span, TableEncoder
from synth_models.outputs import activate


class Residual(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(self.bn(self.fc(x))), x], dim=1)


class Generator(nn.Module):
    """Noise and a condition to raw outputs (logits for one-hot spans, pre-tanh scalars)."""

    def __init__(
        self, *, noise_dim: int, cond_dim: int, data_dim: int, hidden: tuple[int, ...] = (256, 256)
    ) -> None:
        super().__init__()
        layers, dim = [], noise_dim + cond_dim
        for width in hidden:
            layers.append(Residual(dim, width))
            dim += width
        layers.append(nn.Linear(dim, data_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if not self.training and not torch.is_grad_enabled():
            return self._infer(noise, cond)
        return self.net(torch.cat([noise, cond], dim=1))

    def _infer(self, noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The eval-mode forward for sampling, same result without its memory traffic: batch
        norm folded into each linear layer, and each layer's input never concatenated (its
        matmul is split over the blocks a residual layer would have concatenated)."""
        blocks = [noise, cond]  # in the column order of the concatenated input
        for layer in self.net:
            if isinstance(layer, Residual):
                scale = layer.bn.weight / torch.sqrt(layer.bn.running_var + layer.bn.eps)
                weight = layer.fc.weight * scale[:, None]
                bias = (layer.fc.bias - layer.bn.running_mean) * scale + layer.bn.bias
                blocks.insert(0, torch.relu_(_split_linear(blocks, weight, bias)))
            else:
                return _split_linear(blocks, layer.weight, layer.bias)
        raise RuntimeError("the generator ends with a linear layer")


def _split_linear(
    blocks: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """``F.linear(torch.cat(blocks, 1), weight, bias)`` without building the concatenation."""
    out, start = None, 0
    for block in blocks:
        part = weight[:, start : start + block.shape[1]]
        out = F.linear(block, part, bias) if out is None else out.addmm_(block, part.t())
        start += block.shape[1]
    return out


class Discriminator(nn.Module):
    """Row and condition to one logit. Linear layers only: Opacus ghost clipping supports them."""

    def __init__(
        self, *, input_dim: int, hidden: tuple[int, ...] = (256, 256), dropout: float = 0.5
    ) -> None:
        super().__init__()
        layers, dim = [], input_dim
        for width in hidden:
            layers += [nn.Linear(dim, width), nn.LeakyReLU(0.2), nn.Dropout(dropout)]
            dim = width
        layers.append(nn.Linear(dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class ConditionSampler:
    """Conditional vectors over the categorical columns.

    Fake rows: a column uniformly, then a category with its DP frequency. Real rows: a column
    uniformly and the row's own category (a function of that row only)."""

    def __init__(self, encoder: TableEncoder) -> None:
        self.columns: list[tuple[int, int, np.ndarray]] = []  # (data offset, cond offset, probs)
        cond_offset = 0
        for name in encoder.categorical_columns:
            transform: CategoricalTransform = encoder.transforms[name]
            probs = np.zeros(transform.width)
            probs[: len(transform.categories)] = transform.frequencies
            self.columns.append((encoder.column_offset(name), cond_offset, probs / probs.sum()))
            cond_offset += transform.width
        self.dim = cond_offset

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Fake conditions, and the chosen (cond-space) index per row for the generator loss."""
        cond = torch.zeros(n, self.dim)
        index = torch.zeros(n, dtype=torch.long)
        if not self.columns:
            return cond, index
        which = torch.randint(len(self.columns), (n,), generator=generator)
        for j, (_, offset, probs) in enumerate(self.columns):
            rows = torch.nonzero(which == j).squeeze(1)
            if len(rows):
                picks = torch.multinomial(
                    torch.as_tensor(probs, dtype=torch.float),
                    len(rows),
                    replacement=True,
                    generator=generator,
                )
                index[rows] = offset + picks
        cond[torch.arange(n), index] = 1.0
        return cond, index

    def for_rows(self, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cond = torch.zeros(len(rows), self.dim)
        if not self.columns or not len(rows):
            return cond
        which = torch.randint(len(self.columns), (len(rows),), generator=generator)
        for j, (data_offset, offset, probs) in enumerate(self.columns):
            mask = which == j
            width = len(probs)
            cond[mask, offset : offset + width] = rows[mask, data_offset : data_offset + width]
        return cond

    def fixed(self, n: int, index: int) -> torch.Tensor:
        cond = torch.zeros(n, self.dim)
        cond[:, index] = 1.0
        return cond

    def cond_index(self, encoder: TableEncoder, column: str, value) -> int:
        names = encoder.categorical_columns
        if column not in names:
            raise ValueError(f"can only condition on categorical columns {names}, not {column!r}")
        transform: CategoricalTransform = encoder.transforms[column]
        if value not in transform.categories:
            raise ValueError(f"{value!r} is not a category of {column!r}: {transform.categories}")
        return self.columns[names.index(column)][1] + transform.categories.index(value)


class GANModel(nn.Module):
    """Generator + discriminator with the encoder's layout; one module so FedAvg sees both."""

    def __init__(
        self,
        encoder: TableEncoder,
        *,
        noise_dim: int = 128,
        generator_hidden: tuple[int, ...] = (256, 256),
        discriminator_hidden: tuple[int, ...] = (256, 256),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.spans = encoder.spans
        self.conditions = ConditionSampler(encoder)
        self.noise_dim = noise_dim
        self.generator = Generator(
            noise_dim=noise_dim,
            cond_dim=self.conditions.dim,
            data_dim=encoder.width,
            hidden=generator_hidden,
        )
        self.discriminator = Discriminator(
            input_dim=encoder.width + self.conditions.dim,
            hidden=discriminator_hidden,
            dropout=dropout,
        )

    @torch.no_grad()
    def generate(
        self, n: int, generator: torch.Generator, cond_index: int | None = None
    ) -> torch.Tensor:
        was_training = self.generator.training
        self.generator.eval()
        if cond_index is None:
            cond, _ = self.conditions.sample(n, generator)
        else:
            cond = self.conditions.fixed(n, cond_index)
        noise = torch.randn(n, self.noise_dim, generator=generator)
        out = activate(self.generator(noise, cond), self.spans, generator=generator)
        self.generator.train(was_training)
        return out


def cond_loss(
    raw: torch.Tensor, spans: list[Span], conditions: ConditionSampler, index: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy making the generated category match the condition (CTGAN's loss)."""
    if not conditions.columns:
        return raw.new_zeros(())
    losses = raw.new_zeros(len(raw))
    for data_offset, offset, probs in conditions.columns:
        width = len(probs)
        mask = (index >= offset) & (index < offset + width)
        if mask.any():
            logits = raw[mask, data_offset : data_offset + width]
            losses[mask] = F.cross_entropy(logits, index[mask] - offset, reduction="none")
    return losses.mean()


def discriminator_step(
    model: GANModel,
    parts: TrainingParts,
    real: torch.Tensor,
    *,
    num_fake: int,
    generator: torch.Generator,
) -> float:
    """One critic step on a (Poisson) batch of real rows and ``num_fake`` generated rows.

    Real and fake rows go through one forward and one backward: Opacus' Poisson sampling
    forbids accumulating two backward passes, and per-sample clipping treats every row alike."""
    with torch.no_grad():
        fake_cond, _ = model.conditions.sample(num_fake, generator)
        noise = torch.randn(num_fake, model.noise_dim, generator=generator)
        fake = activate(model.generator(noise, fake_cond), model.spans)
    real_cond = model.conditions.for_rows(real, generator)
    inputs = torch.cat([torch.cat([real, real_cond], 1), torch.cat([fake, fake_cond], 1)])
    targets = torch.cat([torch.ones(len(real)), torch.zeros(num_fake)])
    loss = parts.criterion(parts.module(inputs), targets)
    parts.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parts.optimizer.step()
    return float(loss.item())


def generator_step(
    model: GANModel,
    parts: TrainingParts,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """One generator step through the frozen critic (no privacy cost: no real row involved)."""
    cond, index = model.conditions.sample(batch_size, generator)
    noise = torch.randn(batch_size, model.noise_dim, generator=generator)
    raw = model.generator(noise, cond)
    fake = activate(raw, model.spans)
    optimizer.zero_grad(set_to_none=True)
    with frozen(parts.module):
        logits = parts.module(torch.cat([fake, cond], 1))
        loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        loss = loss + cond_loss(raw, model.spans, model.conditions, index)
        loss.backward()
    optimizer.step()
    return float(loss.detach())
