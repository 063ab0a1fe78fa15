"""``TabularSynthesizer``: fit a DP GAN, VAE or marginal model on one table, sample, save, load.

The same pieces serve a federation: :func:`release_encoder_statistics` is what a merchant runs
in the schema round, :func:`build_model` what everyone builds from the shared encoder, and
``train_local`` (``training.py``) each merchant's local round. A single owner is a federation of
one: it releases statistics, builds the encoder from them and trains, all on one ledger. The
marginal model (``marginal_fit.py``) measures noisy marginals instead of training.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from privacy.calibration import calibrate_noise_multiplier, gaussian_noise_multiplier
from privacy.claims import FAILED, SIGNATURES, Verification, verify_manifest
from privacy.ledger import DISCRETE_GAUSSIAN, PrivacyLedger
from privacy.noise import NoiseSource
from privacy.statistics import TableStatistics, release_statistics
from synth_models.artifact import ArtifactError, load_artifact, save_artifact
from synth_models.encoder import TableEncoder, statistics_inputs
from synth_models.gan import GANModel
from synth_models.marginal_fit import fit_marginal_model
from synth_models.marginal_model import MarginalModel
from synth_models.schema import TableSchema, validate_table
from synth_models.training import TrainingConfig, plan_steps, train_local
from synth_models.vae import VAEModel
from synth_models.warm_start import (
    check_warm_start_share,
    marginal_for_warm_start,
    network_encoder,
    uses_warm_start,
    warm_start,
    warm_start_target,
)

logger = logging.getLogger(__name__)

MODELS: dict[str, type[nn.Module]] = {
    "gan": GANModel,
    "vae": VAEModel,
    "marginal": MarginalModel,
}
STATISTICS_LABEL = "encoder-statistics"
THRESHOLD_DELTA_SHARE = 0.1  # share of delta for thresholded category discovery
# Share of epsilon spent on the encoder statistics, by model (0 or None: this default). The
# marginal model takes 0.3: its undeclared categories are found in these statistics, each
# merchant on its own rows, and 0.1 lost most labels federated on real tables for little gain
# elsewhere (BENCHMARKS.md, "Real tables"); the networks keep 0.1 beside their warm start's 0.3.
STATISTICS_SHARES = {"marginal": 0.3, "gan": 0.1, "vae": 0.1}


def statistics_share_for(model: str, share: float | None = None) -> float:
    """``share``, or the model's default share of epsilon for the encoder statistics."""
    return share or STATISTICS_SHARES.get(model, 0.1)


MAX_PARAMETERS = 50_000_000  # parameters and buffers a loaded artifact's model may declare
MAX_LAYERS = 64  # entries of a list-valued model option (``hidden``, ``generator_hidden``...)


def default_delta(num_rows: int) -> float:
    """A power of ten below 1 / (10 n): reveals at most the order of magnitude of n."""
    return 10.0 ** -math.ceil(math.log10(10 * max(num_rows, 1)))


def build_model(kind: str, encoder: TableEncoder, options: dict | None = None) -> nn.Module:
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; choose one of {sorted(MODELS)}")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in (options or {}).items()}
    return MODELS[kind](encoder, **options)


def check_model_size(kind: str, encoder: TableEncoder, options: dict | None = None) -> int:
    """The number of parameters and buffers ``build_model(kind, encoder, options)`` would
    allocate, counted on the meta device (nothing is allocated); ``ValueError`` if it is over
    :data:`MAX_PARAMETERS` or a list option is longer than :data:`MAX_LAYERS`. For options
    from an untrusted source (an artifact, a message) before building the model."""
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; choose one of {sorted(MODELS)}")
    if not isinstance(options or {}, dict):
        raise ValueError(f"model options must be a mapping, got {type(options).__name__}")
    for key, value in (options or {}).items():
        if isinstance(value, (list, tuple)) and len(value) > MAX_LAYERS:
            raise ValueError(
                f"model option {key!r} has {len(value)} entries, over the limit of "
                f"{MAX_LAYERS} (MAX_LAYERS)"
            )
    with torch.device("meta"):
        model = build_model(kind, encoder, options)
    count = sum(t.numel() for t in itertools.chain(model.parameters(), model.buffers()))
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"the declared {kind} model has {count} parameters, over the limit of "
            f"{MAX_PARAMETERS} (MAX_PARAMETERS)"
        )
    return count


def effective_model_options(kind: str, options: dict | None = None) -> dict:
    """``options`` with every keyword default of the model written out (tuples as lists), so
    that a saved artifact rebuilds the same network after a default changes."""
    parameters = inspect.signature(MODELS[kind]).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
    merged = {**defaults, **(options or {})}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}


def release_encoder_statistics(
    data: pd.DataFrame,
    schema: TableSchema,
    ledger: PrivacyLedger,
    *,
    epsilon: float,
    source: str | None = None,
    noise: NoiseSource | None = None,
) -> TableStatistics:
    """Release this owner's DP column statistics costing ``epsilon`` alone; record it. The
    noise comes from ``noise`` (default ``SecureNoise()``; ``SeededNoise`` for tests only)."""
    threshold_delta = ledger.delta * THRESHOLD_DELTA_SHARE
    multiplier = gaussian_noise_multiplier(
        epsilon=epsilon, delta=ledger.delta - threshold_delta, mechanism=DISCRETE_GAUSSIAN
    )
    inputs = statistics_inputs(data, schema, source=source)
    stats, record = release_statistics(
        inputs,
        noise_multiplier=multiplier,
        threshold_delta=threshold_delta,
        noise=noise,
        label=STATISTICS_LABEL,
    )
    ledger.check([record])
    ledger.record(record)
    return stats


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


class TabularSynthesizer:
    """A differentially private tabular synthesizer (``model="vae"``, ``"gan"`` or
    ``"marginal"``).

    ``epsilon=math.inf`` trains the same model without DP (statistics are then exact counts
    on the data-independent grids) for comparison."""

    def __init__(
        self,
        metadata: dict | Any,
        *,
        model: str = "vae",
        epsilon: float = 1.0,
        delta: float | None = None,
        statistics_share: float | None = None,
        training: TrainingConfig | None = None,
        model_options: dict | None = None,
        table_name: str | None = None,
        seed: int | None = None,
        noise: NoiseSource | None = None,
    ) -> None:
        """``seed`` drives post-processing only (sampling, shuffles); the DP noise comes from
        ``noise``, by default the OS CSPRNG (``privacy.noise.SecureNoise``). Pass
        ``SeededNoise`` only to reproduce a fit on your own machine (tests): noise anyone can
        replay is no DP."""
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODELS)}")
        statistics_share = statistics_share_for(model, statistics_share)
        if not 0 < statistics_share < 1:
            raise ValueError("statistics_share must be in (0, 1)")
        training = training or TrainingConfig()
        check_warm_start_share(
            training.warm_start_share,
            statistics_share,
            names=("warm_start_share", "statistics_share"),
        )
        self.metadata = metadata if isinstance(metadata, dict) else metadata.to_dict()
        self.model = model
        self.epsilon = epsilon
        self.delta = delta
        self.statistics_share = statistics_share
        self.training = training
        self.model_options = model_options or {}
        self.table_name = table_name
        self.seed = seed
        self.noise = noise
        # fitted state
        self.encoder_: TableEncoder | None = None
        self.model_: nn.Module | None = None
        self.ledgers_: dict[str, PrivacyLedger] = {}
        # The ledger documents as their owners sent them (signed: ``privacy/claims.py``),
        # written to the artifact verbatim so that their signatures still check.
        self.ledger_documents_: dict[str, dict] = {}
        self.verification: Verification | None = None  # set by from_parts / load
        self.history_: list[dict] = []

    # -- fitting ---------------------------------------------------------------------------
    def fit(
        self, data: pd.DataFrame, *, source: str | None = None, on_epoch=None
    ) -> TabularSynthesizer:
        schema = TableSchema.from_metadata(self.metadata, self.table_name)
        data = validate_table(data, schema, source=source)
        private = not math.isinf(self.epsilon)
        rng = np.random.default_rng(self.seed)
        if private:
            delta = self.delta if self.delta is not None else default_delta(len(data))
            ledger = PrivacyLedger(epsilon_budget=self.epsilon, delta=delta, owner="local")
            stats = release_encoder_statistics(
                data,
                schema,
                ledger,
                epsilon=self.epsilon * self.statistics_share,
                source=source,
                noise=self.noise,
            )
        else:
            ledger = None
            stats, _ = release_statistics(
                statistics_inputs(data, schema, source=source),
                noise_multiplier=0.0,
                threshold_delta=0.0,
            )
        self.encoder_ = TableEncoder.from_statistics(schema, stats)
        torch.manual_seed(int(rng.integers(2**31)))
        if self.model == "marginal":
            self.model_ = build_model(self.model, self.encoder_, self.model_options)
            self.history_ = fit_marginal_model(
                self.model_, data, ledger=ledger, source=source, noise=self.noise
            )
            self.ledgers_ = {} if ledger is None else {"local": ledger}
            return self
        marginal = None
        if uses_warm_start(self.model, self.training, schema):
            marginal = marginal_for_warm_start(self.encoder_)
            target = warm_start_target(
                self.epsilon, statistics_share=self.statistics_share, config=self.training
            )
            fit_marginal_model(
                marginal,
                data,
                ledger=ledger,
                source=source,
                target_epsilon=target,
                noise=self.noise,
            )
            self.encoder_ = network_encoder(marginal)
        self.model_ = build_model(self.model, self.encoder_, self.model_options)
        rows = self.encoder_.transform(data, source=source)
        noise = None
        public_rows = stats.row_count if private else len(rows)
        if marginal is not None:
            warm_start(
                self.model_,
                self.encoder_,
                marginal,
                num_rows=public_rows,
                config=self.training,
                seed=int(rng.integers(2**31)),
            )
        if private:
            sample_rate, steps = plan_steps(public_rows, self.training)
            noise = calibrate_noise_multiplier(
                ledger, target_epsilon=self.epsilon, sample_rate=sample_rate, steps=steps
            )
            logger.info(
                "DP-SGD: noise multiplier %.3f, sample rate %.4f, %d steps",
                noise,
                sample_rate,
                steps,
            )
        self.history_ = train_local(
            self.model_,
            rows,
            config=self.training,
            noise_multiplier=noise,
            ledger=ledger,
            seed=int(rng.integers(2**31)),
            on_epoch=on_epoch,
            public_rows=public_rows,
            noise=self.noise,
        )
        self.ledgers_ = {} if ledger is None else {"local": ledger}
        return self

    def _check_fitted(self) -> None:
        if self.encoder_ is None or self.model_ is None:
            raise RuntimeError("this synthesizer is not fitted: call fit() or load()")

    @property
    def epsilon_spent(self) -> float:
        """The synthesizer's epsilon: the maximum over data owners (their data is disjoint)."""
        if not self.ledgers_:
            return math.inf
        return max(ledger.epsilon() for ledger in self.ledgers_.values())

    # -- sampling --------------------------------------------------------------------------
    def sample(
        self,
        num_rows: int,
        *,
        conditions: dict | None = None,
        seed: int | None = None,
        batch_size: int = 50_000,
        max_tries: int = 100,
    ) -> pd.DataFrame:
        """``num_rows`` synthetic rows with the original columns and dtypes.

        ``conditions`` fixes categorical values, e.g. ``{"size": "L"}``: the GAN generates
        under the first condition's vector, and rows not meeting all of them are rejected."""
        self._check_fitted()
        generator = torch.Generator().manual_seed(
            int(seed) if seed is not None else int(torch.seed() % 2**62)
        )
        conditions = conditions or {}
        cond_index = None
        if conditions and isinstance(self.model_, GANModel):
            column, value = next(iter(conditions.items()))
            cond_index = self.model_.conditions.cond_index(self.encoder_, column, value)
        for column in conditions:
            if column not in self.encoder_.transforms:
                raise ValueError(f"unknown column {column!r} in conditions")
        frames, total = [], 0
        for _ in range(max_tries if conditions else 10**9):
            if total >= num_rows:
                break
            n = min(batch_size, max(num_rows - total, 1) * (2 if conditions else 1))
            frame = self.encoder_.inverse_transform(
                self.model_.generate(n, generator, cond_index).numpy()
            )
            for column, value in conditions.items():
                frame = frame[frame[column] == value]
            frames.append(frame)
            total += len(frame)
        if total < num_rows:
            raise ValueError(
                f"could not generate {num_rows} rows meeting {conditions} "
                f"({total} after {max_tries} batches)"
            )
        return pd.concat(frames, ignore_index=True).iloc[:num_rows].reset_index(drop=True)

    # -- persistence ---------------------------------------------------------------------------
    def manifest(self, **extra) -> dict:
        self._check_fitted()
        return {
            "model": self.model,
            "model_options": effective_model_options(self.model, self.model_options),
            "training": self.training.to_dict(),
            "statistics_share": self.statistics_share,
            "metadata": self.metadata,
            "table_name": self.encoder_.schema.table_name,
            "encoder": self.encoder_.to_dict(),
            "privacy": {
                "epsilon": self.epsilon_spent,
                "delta": max((lg.delta for lg in self.ledgers_.values()), default=None),
                "epsilon_budget": self.epsilon,
                "ledgers": {owner: self._ledger_document(owner) for owner in self.ledgers_},
            },
            "versions": {p: _version(p) for p in ("fedsynth", "torch", "opacus", "flwr")},
            **extra,
        }

    def _ledger_document(self, owner: str) -> dict:
        """The owner's signed document if it is this ledger's, else the ledger's state."""
        state = self.ledgers_[owner].state_dict()
        document = self.ledger_documents_.get(owner)
        if document is not None and document.get("records") == state["records"]:
            return document
        return state

    def save(self, path: str | Path, *, signing_key=None, **extra) -> Path:
        """Write the artifact; with ``signing_key`` (a ``privacy.claims`` private key) its
        manifest is signed (``fedsynth verify`` checks it)."""
        self._check_fitted()
        return save_artifact(
            path,
            manifest=self.manifest(**extra),
            weights=self.model_.state_dict(),
            signing_key=signing_key,
        )

    @classmethod
    def load(cls, path: str | Path, *, allow_unverified: bool = False) -> TabularSynthesizer:
        """Load an artifact and verify its privacy claims (``verification``): a signed one
        whose signatures or epsilons do not check raises ``ArtifactError`` unless
        ``allow_unverified``; an unsigned one (older, or a central fit) loads, logged."""
        manifest, weights = load_artifact(path)
        return cls.from_parts(
            manifest, weights, source=str(path), allow_unverified=allow_unverified
        )

    @classmethod
    def from_parts(
        cls,
        manifest: dict,
        weights: dict[str, torch.Tensor],
        *,
        source: str = "artifact",
        allow_unverified: bool = False,
    ) -> TabularSynthesizer:
        try:
            synth = cls(
                manifest["metadata"],
                model=manifest["model"],
                epsilon=manifest["privacy"]["epsilon_budget"],
                statistics_share=manifest["statistics_share"],
                training=TrainingConfig(**manifest["training"]),
                model_options=manifest["model_options"],
                table_name=manifest["table_name"],
            )
            synth.encoder_ = TableEncoder.from_dict(manifest["encoder"])
            check_model_size(synth.model, synth.encoder_, synth.model_options)  # before allocating
            synth.model_ = build_model(synth.model, synth.encoder_, synth.model_options)
            synth.model_.load_state_dict(weights)
            synth.ledgers_ = {
                owner: PrivacyLedger.from_state_dict(state)
                for owner, state in manifest["privacy"]["ledgers"].items()
            }
            synth.ledger_documents_ = dict(manifest["privacy"]["ledgers"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ArtifactError(f"{source}: inconsistent artifact ({exc})") from exc
        synth.model_.eval()
        synth.verification = check = verify_manifest(manifest)
        if check.status == FAILED and SIGNATURES in manifest and not allow_unverified:
            raise ArtifactError(
                f"{source}: privacy claims do not verify: {'; '.join(check.problems)}"
            )
        log = logger.error if check.status == FAILED else logger.info
        log(
            "%s: privacy claims %s%s",
            source,
            check.status,
            f" ({'; '.join(check.problems)})" if check.problems else "",
        )
        return synth

    @classmethod
    def from_fitted(
        cls,
        metadata: dict,
        *,
        model: str,
        encoder: TableEncoder,
        weights: dict[str, torch.Tensor],
        ledgers: dict[str, PrivacyLedger],
        epsilon: float,
        ledger_documents: dict[str, dict] | None = None,
        **params,
    ) -> TabularSynthesizer:
        """A fitted synthesizer from parts trained elsewhere (e.g. by a federation);
        ``ledger_documents`` are the owners' signed ledgers, kept verbatim in the artifact."""
        synth = cls(
            metadata, model=model, epsilon=epsilon, table_name=encoder.schema.table_name, **params
        )
        synth.encoder_ = encoder
        synth.model_ = build_model(model, encoder, synth.model_options)
        synth.model_.load_state_dict(weights)
        synth.model_.eval()
        synth.ledgers_ = dict(ledgers)
        synth.ledger_documents_ = dict(ledger_documents or {})
        return synth

    def get_params(self) -> dict:
        return {
            "model": self.model,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "statistics_share": self.statistics_share,
            "training": asdict(self.training),
            "model_options": self.model_options,
            "seed": self.seed,
        }
