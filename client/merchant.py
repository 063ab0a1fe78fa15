"""What a merchant does in each kind of round, as plain functions (no Flower types).

The Flower handlers in ``app.py`` only unpack messages, call these and pack the replies.
"""

from __future__ import annotations

import hashlib
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


def row_wise_holdout(
    table: pd.DataFrame, fraction: float, *, salt: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A merchant's training rows and audit holdout, each row's side decided by a hash of the
    row itself (and ``salt``). Adding or removing one row moves no other row across, so DP on
    the training rows is DP on the whole table; a permutation of the table (``holdout_split``)
    would move many. Equal rows share a side; the split is the same in every round and run."""
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    if fraction == 0 or len(table) == 0:
        return table.reset_index(drop=True), table.iloc[:0].reset_index(drop=True)
    rows = pd.util.hash_pandas_object(table, index=False).to_numpy(dtype=np.uint64)
    salted = pd.util.hash_array(rows ^ np.uint64(_salt_hash(salt)))
    holdout = salted < np.uint64(int(fraction * 2.0**64))
    return (
        table[~holdout].reset_index(drop=True),
        table[holdout].reset_index(drop=True),
    )


def _salt_hash(salt: str) -> int:
    return int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "little")


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
    report_dir: Path,
) -> dict[str, bool]:
    """Audit the global synthesizer on this merchant's own rows (fidelity, utility, attacks,
    with real values: it is the merchant's data) and write the full report (HTML + JSON)
    into ``report_dir``, which stays with the merchant. Returns what may be sent: no number
    computed on a real row, only that the local report exists."""
    from privacy.audit import audit_table  # heavy (SDMetrics); only evaluate rounds need it
    from privacy.report import NOTES_KEY, write_report

    synth = TabularSynthesizer.from_fitted(
        metadata,
        model=model,
        encoder=encoder,
        weights=weights,
        ledgers={},
        epsilon=float(claimed.get("epsilon") or math.inf),
        model_options=model_options,
    )
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
    report[NOTES_KEY] = encoder.notes  # post-processing of the DP statistics: what they missed
    html, _ = write_report(report, report_dir, title="fedsynth local audit")
    logger.info("local audit report (stays here): %s", html)
    return {"local_report": True}


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


def _run_target(state: MerchantState, epsilon: float, target: float | None) -> float:
    """The ledger total a release plans to: what the server asked, never past the budget."""
    asked = epsilon if target is None else min(float(target), epsilon)
    return min(asked, state.ledger.epsilon_budget)


def statistics_round(
    table: pd.DataFrame,
    *,
    schema: TableSchema,
    state: MerchantState,
    epsilon: float,
    delta: float,
    statistics_share: float,
    source: str,
) -> TableStatistics:
    """Release this merchant's DP column statistics and DP row count (recorded in its ledger).
    The noise is always the merchant's own (``SecureNoise``): no seed of the server's."""
    if math.isinf(epsilon):
        stats, _ = release_statistics(
            statistics_inputs(table, schema, source=source),
            noise_multiplier=0.0,
            threshold_delta=0.0,
        )
    else:
        if state.ledger is None:
            state.ledger = PrivacyLedger(epsilon_budget=epsilon, delta=delta, owner=state.merchant)
        stats = release_encoder_statistics(
            table,
            schema,
            state.ledger,
            epsilon=epsilon * statistics_share,
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
    source: str,
    target_epsilon: float | None = None,
) -> tuple[MarginalRelease, dict[str, float]]:
    """This merchant's noisy marginals for the marginal model's ``phase`` (selection: every
    pair; measurement: the server's ``tree``), recorded in its ledger; returns them and the
    round's metrics. Its noise is its own (``SecureNoise``, never a seed of the server's): the
    sum over merchants carries all of it. The two
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
        source=source,
        target_epsilon=_run_target(state, epsilon, target_epsilon) if private else None,
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
    private = not math.isinf(epsilon)
    # Under DP a table no row of which fits the server's encoder still trains (noise-only
    # steps): failing would tell a server that crafted the encoder that no row holds a value.
    if len(rows) == 0 and not private:
        raise DataError("no row fits the shared encoder", source=source)
    if private:
        _require_private_state(state, epsilon=epsilon, delta=delta)
        if state.noise_multiplier is None:
            sample_rate, steps = plan_steps(state.dp_rows, training)
            remaining = max(num_rounds - server_round + 1, 1)
            state.noise_multiplier = calibrate_noise_multiplier(
                state.ledger,
                target_epsilon=min(epsilon, state.ledger.epsilon_budget),
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
        public_rows=public_rows,  # batches and noise: SecureNoise; no seed of the server's
    )
    last = history[-1]
    # Losses on real rows are not released: the merchant's own debug log only (a simulation
    # prints every merchant's INFO log on one console).
    logger.debug(
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
