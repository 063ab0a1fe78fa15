"""Warm start: the GAN or VAE first learns from a DP marginal model's synthetic rows.

A tree of noisy 2-way marginals keeps pair dependencies that DP-SGD on a merchant's share of
the rows cannot learn at small epsilon: on pizzaplace with 5 merchants at epsilon 1, DP-SGD
alone leaves `type` independent of `name` (TSTR/TRTR 0.21). The owners spend
``warm_start_share`` of epsilon on the marginal model's two releases (recorded in their ledgers
like any release). Fitting the model, sampling it and training the network on its rows are
post-processing and cost nothing more. DP-SGD on the real rows then starts from these weights
with what is left of the budget.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from synth_models.encoder import TableEncoder, with_value_modes
from synth_models.marginal_model import MarginalModel
from synth_models.schema import TableSchema
from synth_models.training import TrainingConfig, train_local

logger = logging.getLogger(__name__)


def warm_start_target(epsilon: float, *, statistics_share: float, config: TrainingConfig) -> float:
    """The epsilon an owner's ledger reaches after the statistics and the warm start's
    marginals; DP-SGD spends the rest."""
    return epsilon * (statistics_share + config.warm_start_share)


def check_warm_start_share(
    warm_start_share: float, statistics_share: float, *, names: tuple[str, str]
) -> None:
    """Refuse a share that leaves DP-SGD nothing; ``names`` are the two settings' names as
    the caller spells them (Python or run-config keys)."""
    if not 0 <= warm_start_share < 1 - statistics_share:
        raise ValueError(
            f"{names[0]} must be in [0, 1 - {names[1]} = {1 - statistics_share:g}): DP-SGD "
            "needs a share of the budget too"
        )


def uses_warm_start(model: str, config: TrainingConfig, schema: TableSchema) -> bool:
    """Whether a ``model`` fit warm-starts: a network, a share for it, and a column pair."""
    return model != "marginal" and config.warm_start_share > 0 and len(schema.columns) > 1


def marginal_for_warm_start(encoder: TableEncoder) -> MarginalModel:
    """A default marginal model on a copy of ``encoder`` (its fit re-chooses the numeric
    columns' values in its own encoder, from the selection release)."""
    return MarginalModel(TableEncoder.from_dict(encoder.to_dict()))


def network_encoder(marginal: MarginalModel) -> TableEncoder:
    """The encoder a warm-started network is built on: the fitted marginal model's (its
    numeric values come from the selection release, a larger budget than the statistics'),
    with one mode per value for lattice columns, so rare values keep their share."""
    return with_value_modes(marginal.encoder)


def warm_start(
    network: nn.Module,
    encoder: TableEncoder,
    marginal: MarginalModel,
    *,
    num_rows: float,
    config: TrainingConfig,
    seed: int,
) -> list[dict]:
    """Train ``network`` (built on ``encoder``; plain SGD, no privacy cost) for
    ``config.warm_start_epochs`` epochs on ``num_rows`` rows sampled from the fitted
    ``marginal`` model. Returns the history."""
    generator = torch.Generator().manual_seed(seed)
    table = marginal.encoder.inverse_transform(
        marginal.generate(max(int(num_rows), 1), generator).numpy()
    )
    rows = encoder.transform(table, source="warm start sample")
    history = train_local(
        network,
        rows,
        config=dataclasses.replace(config, epochs=config.warm_start_epochs),
        noise_multiplier=None,
        ledger=None,
        seed=seed,
    )
    logger.info("warm start: %d epochs on %d marginal-model rows", len(history), len(rows))
    return history
