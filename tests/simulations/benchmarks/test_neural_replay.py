"""The in-process replay of GAN and VAE federations (a tuning tool) runs the real rounds."""

from __future__ import annotations

import torch

from simulations.benchmarks.neural_replay import replay, weighted_average
from synth_models.training import TrainingConfig


def test_weighted_average_weights_by_row_count_and_keeps_dtypes() -> None:
    a = {"w": torch.tensor([0.0, 4.0]), "count": torch.tensor(10)}
    b = {"w": torch.tensor([3.0, 1.0]), "count": torch.tensor(20)}
    average = weighted_average([(a, 1.0), (b, 2.0)])
    assert torch.allclose(average["w"], torch.tensor([2.0, 2.0]))
    assert average["count"].dtype == torch.int64 and int(average["count"]) == 16


def test_replay_trains_every_merchant_within_its_budget() -> None:
    result = replay(
        model="vae", epsilon=1.0, seed=0, merchants=2, rounds=1,
        training=TrainingConfig(epochs=1, warm_start_epochs=1),
    )  # fmt: skip
    assert 0.99 < result["epsilon_spent"] <= 1.0  # the one round spends each whole budget
    assert set(result["warm_start"]) == {
        "quality", "quality_all_pairs", "tstr_over_trtr", "price_range",
    }  # fmt: skip
    # One epoch each already gets the columns' shapes roughly right (an untrained decoder
    # scores about 0.3 on column shapes).
    assert result["quality"] > 0.5
    assert 0.0 <= result["tstr_over_trtr"] <= 1.5
