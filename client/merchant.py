"""What a merchant does in each kind of round, as plain functions (no Flower types).

The Flower handlers in ``app.py`` only unpack messages, call these and pack the replies.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from client.state import MerchantState
from privacy.calibration import calibrate_noise_multiplier
from privacy.ledger import PrivacyLedger
from privacy.statistics import TableStatistics, release_statistics
from synth_models.encoder import TableEncoder, statistics_inputs
from synth_models.io import read_table
from synth_models.marginal_fit import release_marginals
from synth_models.marginal_model import MarginalModel
from synth_models.marginals import MarginalRelease
from synth_models.schema import DataError, TableSchema, validate_table
from synth_models.synthesizer import (
    TabularSynthesizer,
    build_model,
    release_encoder_statistics,
)
from synth_models.training import TrainingConfig, plan_steps, planned_record, train_local

logger = logging.getLogger(__name__)
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def find_table(directory: str | Path, merchant_index: int) -> Path:
    """``merchant-<i>.<csv|csv.gz|parquet|pq>`` in a simulation's partition folder."""
    directory = Path(directory)
    for suffix in TABLE_SUFFIXES:
        candidate = directory / f"merchant-{merchant_index}{suffix}"
        if candidate.exists():
            return candidate
    raise DataError(
        f"no table for merchant {merchant_index} in {directory} "
        f"(looked for merchant-{merchant_index}{{{','.join(TABLE_SUFFIXES)}}})",
        source=str(directory),
    )


def holdout_split(
    table: pd.DataFrame, fraction: float, *, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The merchant's training rows and the holdout it keeps for the audit (never trained on).
    The same seed gives the same split in every round and run."""
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(table))
    cut = len(table) - round(fraction * len(table))
    return (
        table.iloc[order[:cut]].reset_index(drop=True),
        table.iloc[order[cut:]].reset_index(drop=True),
    )


def audit_round(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    metadata: dict,
    encoder: TableEncoder,
    weights: dict[str, torch.Tensor],
    model: str,
    model_options: dict,
    claimed: dict,
    target: str | None,
    sensitive_columns: list[str],
    sample_rows: int,
    seed: int,
) -> dict:
    """Audit the global synthesizer on this merchant's own rows: aggregates only."""
    from privacy.audit import audit_table  # heavy (SDMetrics); only evaluate rounds need it

    synth = TabularSynthesizer.from_fitted(
        metadata,
        model=model,
        encoder=encoder,
        weights=weights,
        ledgers={},
        epsilon=float(claimed.get("epsilon") or math.inf),
        model_options=model_options,
    )
    # A fixed number of synthetic rows: a count derived from the table would reveal its size.
    synthetic = synth.sample(sample_rows, seed=seed)
    report = audit_table(
        train,
        holdout,
        synthetic,
        metadata,
        encoder.schema.table_name,
        target=target,
        sensitive_columns=tuple(sensitive_columns),
        delta=claimed.get("delta"),
        claimed_epsilon=claimed.get("epsilon"),
        seed=seed,
    )
    return without_row_counts(report)


# Keys of an audit that count real rows: exact counts never leave a merchant.
REAL_ROW_COUNTS = frozenset({
    "train_rows", "test_rows", "members", "nonmembers", "evaluation_members",
    "evaluation_nonmembers", "reference_rows",
})  # fmt: skip


def without_row_counts(document):
    """The audit document without its counts of real rows (at any depth)."""
    if isinstance(document, dict):
        return {k: without_row_counts(v) for k, v in document.items() if k not in REAL_ROW_COUNTS}
    if isinstance(document, list):
        return [without_row_counts(v) for v in document]
    return document


def load_merchant_table(path: str | Path, schema: TableSchema) -> pd.DataFrame:
    """Read and validate a merchant's table; errors name the file, column and problem."""
    return validate_table(read_table(path), schema, source=str(path))


def _require_private_state(state: MerchantState, *, epsilon: float, delta: float) -> None:
    """A private round needs the merchant's DP row count (its weight and sampling rate would
    otherwise be exact counts) and a ledger to record in."""
    if state.dp_rows is None:
        raise RuntimeError(
            f"{state.merchant} has no DP row count (it missed the schema round); "
            "it can join the next run"
        )
    if state.ledger is None:
        state.ledger = PrivacyLedger(epsilon_budget=epsilon, delta=delta, owner=state.merchant)


def statistics_round(
    table: pd.DataFrame,
    *,
    schema: TableSchema,
    state: MerchantState,
    epsilon: float,
    delta: float,
    statistics_share: float,
    seed: int,
    source: str,
) -> TableStatistics:
    """Release this merchant's DP column statistics and DP row count (recorded in its ledger)."""
    rng = np.random.default_rng(seed)
    if math.isinf(epsilon):
        stats, _ = release_statistics(
            statistics_inputs(table, schema, source=source),
            noise_multiplier=0.0,
            threshold_delta=0.0,
            rng=rng,
        )
    else:
        if state.ledger is None:
            state.ledger = PrivacyLedger(epsilon_budget=epsilon, delta=delta, owner=state.merchant)
        stats = release_encoder_statistics(
            table,
            schema,
            state.ledger,
            epsilon=epsilon * statistics_share,
            rng=rng,
            source=source,
        )
    state.dp_rows = max(float(stats.row_count), 1.0)
    return stats


def marginals_round(
    table: pd.DataFrame,
    *,
    encoder: TableEncoder,
    model_options: dict,
    state: MerchantState,
    epsilon: float,
    delta: float,
    phase: str,
    tree: list[tuple[int, int]] | None,
    seed: int,
    source: str,
    target_epsilon: float | None = None,
) -> tuple[MarginalRelease, dict[str, float]]:
    """This merchant's noisy marginals for the marginal model's ``phase`` (selection: every
    pair; measurement: the server's ``tree``), recorded in its ledger; returns them and the
    round's metrics. Its noise is its own: the sum over merchants carries all of it. The two
    phases end at ``target_epsilon`` (a GAN's or VAE's warm start) or at the budget."""
    model = build_model("marginal", encoder, model_options)
    if not isinstance(model, MarginalModel):
        raise TypeError("the marginals round needs the marginal model")
    private = not math.isinf(epsilon)
    if private:
        _require_private_state(state, epsilon=epsilon, delta=delta)
    release = release_marginals(
        table,
        model=model,
        ledger=state.ledger if private else None,
        phase=phase,
        tree=None if tree is None else [tuple(pair) for pair in tree],
        rng=np.random.default_rng(seed),
        source=source,
        target_epsilon=target_epsilon,
    )
    metrics = {
        "num-examples": float(state.dp_rows if private else len(table)),
        "epsilon": state.epsilon if private else math.inf,
        "delta": state.ledger.delta if private else 0.0,
        "noise-multiplier": float(
            (release.noise_var / release.sensitivity_squared(model.atom_weight)) ** 0.5
        ),
    }
    return release, metrics


def train_round(
    table: pd.DataFrame,
    *,
    encoder: TableEncoder,
    weights: dict[str, torch.Tensor],
    model: str,
    model_options: dict,
    training: TrainingConfig,
    state: MerchantState,
    epsilon: float,
    delta: float,
    server_round: int,
    num_rounds: int,
    seed: int,
    source: str,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One local round of DP-SGD from the global weights; returns new weights and metrics.

    The noise multiplier is calibrated the first time for every round still planned, so the
    whole federation fits the budget; a round that would pass it raises BudgetExceededError
    before any step."""
    started = time.perf_counter()
    network = build_model(model, encoder, model_options)
    network.load_state_dict(weights)
    rows = encoder.transform(table, source=source)
    if len(rows) == 0:
        raise DataError("no row fits the shared encoder", source=source)
    private = not math.isinf(epsilon)
    if private:
        _require_private_state(state, epsilon=epsilon, delta=delta)
        if state.noise_multiplier is None:
            sample_rate, steps = plan_steps(state.dp_rows, training)
            remaining = max(num_rounds - server_round + 1, 1)
            state.noise_multiplier = calibrate_noise_multiplier(
                state.ledger,
                target_epsilon=state.ledger.epsilon_budget,
                sample_rate=sample_rate,
                steps=steps * remaining,
            )
            state.plan = {
                "rounds": remaining,
                "steps_per_round": steps,
                "sample_rate": sample_rate,
                "from_round": server_round,
            }
            logger.info(
                "%s: noise multiplier %.3f for %d rounds of %d steps",
                state.merchant,
                state.noise_multiplier,
                remaining,
                steps,
            )
        state.ledger.check([planned_record(state.dp_rows, training, state.noise_multiplier)])
    public_rows = state.dp_rows if private else len(rows)
    history = train_local(
        network,
        rows,
        config=training,
        noise_multiplier=state.noise_multiplier if private else None,
        ledger=state.ledger,
        seed=seed,
        public_rows=public_rows,
    )
    last = history[-1]
    logger.info(
        "%s round %d: %s (%.1f s)",
        state.merchant,
        server_round,
        last,
        time.perf_counter() - started,
    )
    sample_rate, steps = plan_steps(public_rows, training)
    metrics = {
        "num-examples": float(state.dp_rows if private else len(rows)),
        "epsilon": state.epsilon if private else math.inf,
        "delta": state.ledger.delta if private else 0.0,
        "steps": float(steps),
        "noise-multiplier": float(state.noise_multiplier or 0.0),
        "sample-rate": float(sample_rate),
        # Only losses on generated rows leave: a loss on real rows is a non-DP statistic.
        **({"generator-loss": float(last["generator_loss"])} if "generator_loss" in last else {}),
    }
    return network.state_dict(), metrics
