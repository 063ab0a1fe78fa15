"""The GAN's and VAE's warm start from a DP marginal model: what it costs and what it teaches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from privacy.noise import SeededNoise
from privacy.statistics import release_statistics
from server.config import FederationConfig
from synth_models.encoder import TableEncoder, statistics_inputs
from synth_models.marginal_fit import fit_marginal_model
from synth_models.marginals import MEASUREMENT_LABEL, SELECTION_LABEL
from synth_models.schema import TableSchema
from synth_models.synthesizer import STATISTICS_LABEL, TabularSynthesizer
from synth_models.training import TRAINING_LABEL, TrainingConfig
from synth_models.vae import VAEModel
from synth_models.warm_start import marginal_for_warm_start, warm_start

ROWS = 800
SHOP = {f"item-{i}": f"kind-{i % 3}" for i in range(6)}  # an item fixes its kind
METADATA = {
    "tables": {
        "orders": {
            "columns": {
                "item": {"sdtype": "categorical", "range_values": sorted(SHOP)},
                "kind": {"sdtype": "categorical", "range_values": sorted(set(SHOP.values()))},
                "amount": {"sdtype": "numerical"},
            }
        }
    }
}


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    items = rng.choice(sorted(SHOP), ROWS)
    return pd.DataFrame(
        {
            "item": items.astype(object),
            "kind": [SHOP[i] for i in items],
            "amount": rng.lognormal(2, 0.5, ROWS).round(2),
        }
    )


@pytest.fixture()
def encoder(table: pd.DataFrame) -> TableEncoder:
    schema = TableSchema.from_metadata(METADATA)
    stats, _ = release_statistics(
        statistics_inputs(table, schema),
        noise_multiplier=0.0,
        threshold_delta=0.0,
        noise=SeededNoise(0),
    )
    return TableEncoder.from_statistics(schema, stats)


def kind_matches_item(network: VAEModel, encoder: TableEncoder) -> float:
    rows = network.generate(2000, torch.Generator().manual_seed(1))
    sample = encoder.inverse_transform(rows.numpy())
    return float((sample["item"].map(SHOP) == sample["kind"]).mean())


def test_warm_start_alone_teaches_the_network_a_pair_dependency(table, encoder) -> None:
    marginal = marginal_for_warm_start(encoder)
    fit_marginal_model(marginal, table, ledger=None, noise=SeededNoise(0))
    torch.manual_seed(0)
    network = VAEModel(marginal.encoder, hidden=(64, 64))
    before = kind_matches_item(network, marginal.encoder)
    warm_start(
        network,
        marginal.encoder,
        marginal,
        num_rows=5 * ROWS,  # the marginal model samples as many rows as asked
        config=TrainingConfig(warm_start_epochs=20),
        seed=0,
    )
    assert before < 0.6  # an untrained decoder pairs items and kinds about at random (1/3)
    assert kind_matches_item(network, marginal.encoder) > 0.9


def test_the_marginal_fit_leaves_the_networks_encoder_alone(table, encoder) -> None:
    before = encoder.to_dict()
    marginal = marginal_for_warm_start(encoder)
    fit_marginal_model(marginal, table, ledger=None, noise=SeededNoise(0))
    assert marginal.encoder is not encoder
    assert encoder.to_dict() == before


def test_a_private_fit_spends_each_share_in_order(table) -> None:
    budget, statistics_share, warm_share = 2.0, 0.1, 0.3
    synth = TabularSynthesizer(
        METADATA,
        model="vae",
        epsilon=budget,
        delta=1e-5,
        statistics_share=statistics_share,
        training=TrainingConfig(epochs=1, warm_start_share=warm_share, warm_start_epochs=1),
        model_options={"hidden": [32, 32]},
        seed=0,
    ).fit(table)
    ledger = synth.ledgers_["local"]
    labels = [r.label for r in ledger.records]
    assert labels == [STATISTICS_LABEL, SELECTION_LABEL, MEASUREMENT_LABEL, TRAINING_LABEL]
    target = (statistics_share + warm_share) * budget
    assert 0.99 * target <= ledger.epsilon(ledger.records[:3]) <= target * (1 + 1e-9)
    assert 0.97 * budget <= synth.epsilon_spent <= budget * (1 + 1e-9)


def test_no_warm_start_means_no_marginal_release(table) -> None:
    synth = TabularSynthesizer(
        METADATA,
        model="vae",
        epsilon=2.0,
        delta=1e-5,
        training=TrainingConfig(epochs=1, warm_start_share=0.0),
        seed=0,
    ).fit(table)
    assert [r.label for r in synth.ledgers_["local"].records] == [STATISTICS_LABEL, TRAINING_LABEL]


@pytest.mark.parametrize("share", [-0.1, 0.9])
def test_a_warm_start_share_that_leaves_dp_sgd_nothing_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="warm_start_share"):
        TabularSynthesizer(METADATA, training=TrainingConfig(warm_start_share=share))
    with pytest.raises(ValueError, match="warm-start-share"):
        FederationConfig(warm_start_share=share)
