"""FederationConfig.from_run_config: Flower run config (kebab-case) to settings."""

from __future__ import annotations

import math
import tomllib

import pytest

from server.config import CLIENT_KEYS, PROJECT_ROOT, FederationConfig
from synth_models.synthesizer import statistics_share_for
from synth_models.training import TrainingConfig


def test_defaults_without_run_config():
    config = FederationConfig.from_run_config({})
    assert config == FederationConfig()
    assert config.private


def test_kebab_case_keys_set_the_fields():
    config = FederationConfig.from_run_config(
        {
            "num-rounds": 7,
            "local-epochs": 3,
            "batch-size": 64,
            "min-nodes": 4,
            "min-train-replies": 2,
            "stop-after-round": 5,
            "run-dir": "/tmp/somewhere",
            "resume": True,
            "model": "vae",
            "vae-lr": 0.01,
        }
    )
    assert (config.num_rounds, config.local_epochs, config.batch_size) == (7, 3, 64)
    assert (config.min_nodes, config.min_train_replies, config.stop_after_round) == (4, 2, 5)
    assert config.run_dir == "/tmp/somewhere" and config.resume is True
    assert config.model == "vae"
    assert config.training() == TrainingConfig(epochs=3, batch_size=64, vae_lr=0.01)


def test_unknown_key_raises_naming_it():
    with pytest.raises(ValueError, match="'num-round'"):
        FederationConfig.from_run_config({"num-round": 3})


def test_client_side_keys_are_ignored():
    config = FederationConfig.from_run_config({"data-dir": "/data", "state-dir": "/state"})
    assert config == FederationConfig()


def test_model_options_json_string_is_parsed():
    config = FederationConfig.from_run_config(
        {"model-options": '{"generator_hidden": [32, 32], "noise_dim": 16}'}
    )
    assert config.model_options == {"generator_hidden": [32, 32], "noise_dim": 16}
    assert FederationConfig.from_run_config({"model-options": ""}).model_options == {}
    as_dict = {"hidden": [8], "latent_dim": 4}
    assert FederationConfig.from_run_config({"model-options": as_dict}).model_options == as_dict
    with pytest.raises(ValueError):  # JSONDecodeError is a ValueError
        FederationConfig.from_run_config({"model-options": "{hidden: [8]"})


@pytest.mark.parametrize("text", ["inf", "Infinity", "INF"])
def test_infinite_epsilon_from_a_string(text):
    config = FederationConfig.from_run_config({"epsilon": text})
    assert math.isinf(config.epsilon) and not config.private


def test_epsilon_from_a_number_or_a_numeric_string():
    assert FederationConfig.from_run_config({"epsilon": "2.5"}).epsilon == 2.5
    assert FederationConfig.from_run_config({"epsilon": 3}).epsilon == 3
    assert FederationConfig.from_run_config({"epsilon": math.inf}).private is False


def test_every_key_of_the_project_run_config_is_accepted():
    """``flwr run`` passes the whole ``[tool.flwr.app.config]`` table: none may be rejected."""
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    run_config = pyproject["tool"]["flwr"]["app"]["config"]
    config = FederationConfig.from_run_config(run_config)
    for key, value in run_config.items():
        name = key.replace("-", "_")
        if name in (*CLIENT_KEYS, "model_options"):
            continue
        if name == "statistics_share" and value == 0:  # 0: the model's own share
            assert config.statistics_share == statistics_share_for(config.model)
            continue
        assert getattr(config, name) == value, key


def test_to_dict_round_trips_through_snake_case():
    config = FederationConfig.from_run_config({"num-rounds": 2, "model-options": '{"a": 1}'})
    again = FederationConfig(**config.to_dict())
    assert again == config
