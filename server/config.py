"""Run settings of a federation: ``[tool.flwr.app.config]`` keys (kebab-case) as a dataclass."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from synth_models.synthesizer import statistics_share_for
from synth_models.training import TrainingConfig
from synth_models.warm_start import check_warm_start_share

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Run-config keys the merchants read (client/app.py), not the server.
CLIENT_KEYS = ("data_dir", "state_dir", "holdout_fraction", "torch_threads")


@dataclass(frozen=True)
class FederationConfig:
    model: str = "marginal"
    num_rounds: int = 10
    local_epochs: int = 2
    epsilon: float = 1.0
    delta: float = 1e-5
    statistics_share: float = 0.0  # 0: the model's default (synthesizer.STATISTICS_SHARES)
    batch_size: int = 500
    min_steps_per_epoch: int = 80  # smaller merchants train with smaller batches
    max_grad_norm: float = 1.0
    generator_lr: float = 2e-4
    discriminator_lr: float = 2e-4  # without DP
    dp_discriminator_lr: float = 3e-3  # the critic under DP-SGD
    vae_lr: float = 3e-3
    warm_start_share: float = 0.3  # GAN/VAE: epsilon share of the marginal model they start from
    warm_start_epochs: int = 10
    model_options: dict = field(default_factory=dict)
    min_nodes: int = 1  # merchants to wait for before the schema round
    min_train_replies: int = 1  # a round with fewer successful merchants keeps the old model
    round_timeout: float = 3600.0
    seed: int = 0
    metadata_path: str = "simulations/data/pizzaplace.metadata.json"
    table_name: str = ""
    run_dir: str = "runs/flwr"
    # The server's key for signing the artifact manifest (PEM or OpenSSH, ed25519 or ECDSA);
    # empty: an ed25519 key made once in the run folder (<run-dir>/server.key).
    signing_key_path: str = ""
    resume: bool = False
    stop_after_round: int = 0  # end this run after that round (0: run all); resume continues
    sample_rows: int = 0  # synthetic rows written to <run-dir>/synthetic.csv at the end
    audit: bool = True  # federated audit after the last round: <run-dir>/report/
    target: str = ""  # column for train-on-synthetic / test-on-real utility
    sensitive_columns: str = ""  # comma-separated, for DisclosureProtection
    audit_rows: int = 20_000  # synthetic rows each merchant audits against
    federation_id: str = ""  # set per run folder (server.app.federation_id); resume keeps it

    def __post_init__(self) -> None:
        share = statistics_share_for(self.model, self.statistics_share)
        object.__setattr__(self, "statistics_share", share)
        check_warm_start_share(
            self.warm_start_share,
            self.statistics_share,
            names=("warm-start-share", "statistics-share"),
        )

    @classmethod
    def from_run_config(cls, run_config: dict) -> FederationConfig:
        """Known kebab-case keys override the defaults; unknown keys are an error."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name in CLIENT_KEYS:
                continue
            if name not in fields:
                raise ValueError(f"unknown run config key {key!r}")
            if name == "model_options" and isinstance(value, str):
                value = json.loads(value) if value else {}
            elif name == "epsilon" and isinstance(value, str):
                value = math.inf if value.lower() in ("inf", "infinity") else float(value)
            values[name] = value
        return cls(**values)

    @property
    def private(self) -> bool:
        return not math.isinf(self.epsilon)

    def training(self) -> TrainingConfig:
        return TrainingConfig(
            epochs=self.local_epochs,
            batch_size=self.batch_size,
            min_steps_per_epoch=self.min_steps_per_epoch,
            max_grad_norm=self.max_grad_norm,
            generator_lr=self.generator_lr,
            discriminator_lr=self.discriminator_lr,
            dp_discriminator_lr=self.dp_discriminator_lr,
            vae_lr=self.vae_lr,
            warm_start_share=self.warm_start_share,
            warm_start_epochs=self.warm_start_epochs,
        )

    def resolve(self, path: str) -> Path:
        """Relative paths are taken from the working directory, else from the project."""
        candidate = Path(path)
        if candidate.is_absolute() or candidate.exists():
            return candidate
        return PROJECT_ROOT / candidate

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
