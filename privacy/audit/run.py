"""One call for the whole audit of one synthetic table."""

from __future__ import annotations

import math
import time

import pandas as pd

from privacy.audit.attacks import membership_attack
from privacy.audit.fidelity import fidelity
from privacy.audit.heuristics import DCR_SYNTHETIC_ROWS, heuristics
from privacy.audit.utility import utility

MIN_HOLDOUT_ROWS = 2


def _sdmetrics_ready(frame: pd.DataFrame, metadata: dict, table_name: str) -> pd.DataFrame:
    """Datetime text with UTC offsets (``%z``) as UTC datetimes (SDMetrics parses each frame on
    its own, and several offsets, as in summer time, give no datetime dtype), and nullable
    booleans (a synthetic sample's, with missing values) as objects, as pandas reads booleans
    with empty cells (SDMetrics' distances cannot take their NA). Booleans spelled yes/no are
    the caller's to read (``synth_models.booleans``: a merchant's validated table has them)."""
    columns = metadata["tables"][table_name]["columns"]
    changed = {}
    for name, spec in columns.items():
        if name not in frame.columns:
            continue
        values = frame[name]
        if isinstance(values.dtype, pd.BooleanDtype):
            changed[name] = values.astype(object).where(values.notna(), None)
        elif (
            spec.get("sdtype") == "datetime"
            and "%z" in (spec.get("datetime_format") or "")
            and not pd.api.types.is_datetime64_any_dtype(values)
        ):
            stamps = pd.to_datetime(
                values, format=spec["datetime_format"], errors="coerce", utc=True
            )
            changed[name] = stamps.dt.tz_localize(None)
    return frame.assign(**changed) if changed else frame


def audit_table(
    train_real: pd.DataFrame,
    holdout_real: pd.DataFrame,
    synthetic: pd.DataFrame,
    metadata: dict,
    table_name: str,
    *,
    target: str | None = None,
    sensitive_columns=(),
    delta: float | None = None,
    claimed_epsilon: float | None = None,
    seed: int = 0,
    attack_method: str = "distance",
    dcr_synthetic_rows: int = DCR_SYNTHETIC_ROWS,
) -> dict:
    """Fidelity (synthetic vs real train), utility (TSTR vs TRTR on ``target``; skipped without
    one), the membership attack (members = ``train_real``, non-members = ``holdout_real``) with
    its empirical epsilon bound under ``delta`` (0 when None, i.e. the pure-DP reading), and the
    heuristics; plus the claimed guarantee and seconds per module. Aggregates only."""
    seconds: dict[str, float] = {}
    out: dict = {}
    train_real, holdout_real, synthetic = (
        _sdmetrics_ready(frame, metadata, table_name)
        for frame in (train_real, holdout_real, synthetic)
    )

    def timed(name, fn, *args, **kwargs):
        start = time.perf_counter()
        out[name] = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - start, 3)

    timed("fidelity", fidelity, train_real, synthetic, metadata, table_name)
    if len(holdout_real) < MIN_HOLDOUT_ROWS:
        # Utility tests on held-out rows and the attack needs non-members: without them only
        # fidelity can be measured.
        reason = f"fewer than {MIN_HOLDOUT_ROWS} holdout (non-member) rows given"
        out.update({name: {"skipped": reason} for name in ("utility", "attack", "heuristics")})
    else:
        if target is None:
            out["utility"] = {"skipped": "no target column"}
        else:
            timed(
                "utility",
                utility,
                train_real,
                holdout_real,
                synthetic,
                target=target,
                metadata=metadata,
                table_name=table_name,
                seed=seed,
            )
        timed(
            "attack",
            membership_attack,
            train_real,
            holdout_real,
            synthetic,
            metadata,
            table_name,
            method=attack_method,
            seed=seed,
            delta=0.0 if delta is None else delta,
        )
        timed(
            "heuristics",
            heuristics,
            train_real,
            holdout_real,
            synthetic,
            metadata,
            table_name,
            sensitive_columns=tuple(sensitive_columns),
            seed=seed,
            dcr_synthetic_rows=dcr_synthetic_rows,
        )
    epsilon = claimed_epsilon
    if epsilon is not None and not math.isfinite(epsilon):
        epsilon = None  # JSON has no infinity; None = no DP claim
    out["claimed"] = {"epsilon": epsilon, "delta": delta}
    out["seconds"] = seconds
    return out
