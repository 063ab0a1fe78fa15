"""From a network's raw outputs to encoded rows, span by span."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from synth_models.encoder import Span


def sample_one_hot(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One category per row drawn from ``softmax(logits)`` (Gumbel-max), as a one-hot row."""
    uniform = torch.rand(logits.shape, generator=generator).clamp_(1e-12, 1.0 - 1e-7)
    choice = (logits - torch.log(-torch.log(uniform))).argmax(dim=1)
    return F.one_hot(choice, logits.shape[1]).to(logits.dtype)


def activate(
    raw: torch.Tensor,
    spans: list[Span],
    *,
    tau: float = 0.2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """tanh for scalars; for one-hot spans a Gumbel-softmax relaxation (training, differentiable)
    or, given a ``generator``, a category sampled from the softmax (generation). Sampling, not
    argmax: an argmax returns every row's most likely category and collapses rare ones."""
    parts = []
    for span in spans:
        block = raw[:, span.start : span.start + span.width]
        if span.activation == "tanh":
            parts.append(torch.tanh(block))
        elif generator is not None:
            parts.append(sample_one_hot(block, generator))
        else:
            parts.append(F.gumbel_softmax(block, tau=tau))
    return torch.cat(parts, dim=1)
