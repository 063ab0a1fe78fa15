"""Score one contender's synthetic rows with the Audit (:func:`privacy.audit.audit_table`)."""

from __future__ import annotations

import warnings

import pandas as pd


def score(
    synthetic: pd.DataFrame,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    metadata: dict,
    table_name: str,
    target: str | None,
    epsilon: float | None,
    delta: float | None,
    seed: int,
    dcr_synthetic_rows: int,
) -> dict:
    """The Audit's scores, flattened to the results' columns (None where the Audit has none).

    Fidelity is scored against ``train``; utility (TSTR/TRTR on ``target``) tests on
    ``holdout``, and the membership attack takes ``train`` as members, ``holdout`` as not."""
    from threadpoolctl import threadpool_limits

    from privacy.audit import audit_table

    # One OpenMP/BLAS thread: on a shared machine scikit-learn's OpenMP threads spin-wait, and
    # TSTR took 48 s instead of 2 s at load 6 on 2 cores. Scores do not depend on it.
    with threadpool_limits(1), warnings.catch_warnings():
        # SDMetrics asks for a validation set half the training size; the split is the user's.
        warnings.filterwarnings("ignore", message=".*real_validation_data contains.*")
        audit = audit_table(
            train,
            holdout,
            synthetic,
            metadata,
            table_name,
            target=target,
            delta=delta,
            claimed_epsilon=epsilon,
            seed=seed,
            dcr_synthetic_rows=dcr_synthetic_rows,
        )
    fidelity = audit["fidelity"]
    utility = audit.get("utility", {})
    attack = audit.get("attack", {})
    heuristics = audit.get("heuristics", {})
    return {
        "quality": fidelity["quality"],
        "quality_all_pairs": fidelity["quality_all_pairs"],
        "diagnostic": fidelity["diagnostic"],
        "column_shapes": fidelity["quality_properties"].get("Column Shapes"),
        "pair_trends": fidelity["quality_properties"].get("Column Pair Trends"),
        "tstr": utility.get("tstr"),
        "trtr": utility.get("trtr"),
        "tstr_trtr": utility.get("ratio"),
        "utility_metric": utility.get("metric"),
        "attack_auc": attack.get("auc"),
        "tpr_at_fpr_0.01": attack.get("tpr_at_fpr", {}).get("0.01"),
        "empirical_epsilon": attack.get("empirical_epsilon", {}).get("epsilon_lower_bound"),
        "dcr_baseline_protection": heuristics.get("dcr_baseline_protection", {}).get("score"),
        "dcr_overfitting_protection": heuristics.get("dcr_overfitting_protection", {}).get("score"),
        "audit_seconds": audit.get("seconds", {}),
    }
