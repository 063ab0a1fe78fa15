from client.merchant import holdout_split
from privacy.audit import membership_attack
from synth_models.synthesizer import TabularSynthesizer
from synth_models.training import TrainingConfig


def test_bound_below_claimed_epsilon_on_dp_vae(pizza):
    sample, _ = holdout_split(pizza.table, 1 - 10_000 / len(pizza.table), seed=0)
    members, nonmembers = holdout_split(sample, 0.5, seed=1)
    synthesizer = TabularSynthesizer(
        pizza.metadata, model="vae", epsilon=1.0, training=TrainingConfig(epochs=3)
    ).fit(members)
    synthetic = synthesizer.sample(len(members), seed=0)
    delta = synthesizer.manifest()["privacy"]["delta"]
    for method in ("distance", "density"):
        result = membership_attack(
            members,
            nonmembers,
            synthetic,
            pizza.metadata,
            pizza.table_name,
            method=method,
            delta=delta,
        )
        assert result["empirical_epsilon"]["epsilon_lower_bound"] <= 1.0, (method, result)
        assert result["auc"] < 0.6
