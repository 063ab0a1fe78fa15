"""Heuristic privacy indicators (``"heuristic": True``): they carry no formal guarantee.

* SDMetrics 0.32 ``DCRBaselineProtection`` (real = the real training rows) and
  ``DCROverfittingProtection`` (training vs holdout rows). SDMetrics computes DCR exactly with
  pandas cross joins at about 260,000 row pairs per second on one core (measured on pizzaplace),
  i.e. ~0.5 s per synthetic row against 40,000 train + 10,000 holdout rows (baseline: synthetic
  and as many random rows vs train; overfitting: synthetic vs train and vs holdout). So only the
  SYNTHETIC rows are subsampled (seeded) to ``dcr_synthetic_rows`` (default
  ``DCR_SYNTHETIC_ROWS`` = 40, which keeps a 50,000-row audit under a minute); the real
  references are never subsampled (``num_rows_subsample=None``: subsampling them biases toward
  "protected"). With 40 rows these scores are coarse; the DCR histogram below uses every
  synthetic row.
* SDMetrics ``DisclosureProtection`` (CAP method) for each declared sensitive column, the other
  modelled columns being the attacker's known columns; skipped with a reason when none is
  declared. Synthetic and real rows are capped at ``DISCLOSURE_ROWS`` each.
* DCR histogram: distances (encoding of :mod:`privacy.audit.neighbours`) of the synthetic rows
  (at most ``HISTOGRAM_SYNTHETIC_ROWS``) to their nearest real training row and to their nearest
  real holdout row, the training reference subsampled to the holdout size so both references
  are equally dense; shares in common bins (quantiles of the pooled distances) plus the share
  of exact copies (distance 0). A synthesizer that memorises shows more mass near 0 for train.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sdmetrics.single_table import (
    DCRBaselineProtection,
    DCROverfittingProtection,
    DisclosureProtection,
)

from privacy.audit.neighbours import NUMERIC_SDTYPES, MixedEncoder, knn_distances, table_columns

DCR_SYNTHETIC_ROWS = 40
DISCLOSURE_ROWS = 5_000
HISTOGRAM_SYNTHETIC_ROWS = 50_000
HISTOGRAM_BINS = 20


def _subsample(frame: pd.DataFrame, n: int | None, rng: np.random.Generator) -> pd.DataFrame:
    if n is None or len(frame) <= n:
        return frame
    return frame.iloc[np.sort(rng.choice(len(frame), size=n, replace=False))]


def _nullable_as_float(frame: pd.DataFrame) -> pd.DataFrame:
    """Nullable integers (``Int64`` with missing values) as floats: SDMetrics' DCR casts them
    to ``int`` and fails on the first missing value."""
    ints = [c for c in frame if isinstance(frame[c].dtype, pd.api.extensions.ExtensionDtype)
            and frame[c].dtype.kind in "iu"]  # fmt: skip
    return frame.astype(dict.fromkeys(ints, "float64")) if ints else frame


def _plain(value):
    """Floats / dicts of floats from SDMetrics' numpy output (NaN becomes None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    value = float(value)
    return value if np.isfinite(value) else None


def dcr_histogram(
    train_real: pd.DataFrame,
    holdout_real: pd.DataFrame,
    synthetic: pd.DataFrame,
    metadata: dict,
    table_name: str,
    *,
    seed: int = 0,
    max_synthetic_rows: int = HISTOGRAM_SYNTHETIC_ROWS,
) -> dict:
    rng = np.random.default_rng(seed)
    synthetic = _subsample(synthetic, max_synthetic_rows, rng)
    train_reference = _subsample(train_real, len(holdout_real), rng)
    encoder = MixedEncoder(metadata, table_name).fit(train_real, holdout_real, synthetic)
    synth = encoder.transform(synthetic)
    to_train = knn_distances(synth, encoder.transform(train_reference))[:, 0]
    to_holdout = knn_distances(synth, encoder.transform(holdout_real))[:, 0]
    pooled = np.concatenate([to_train, to_holdout])
    edges = np.unique(np.quantile(pooled, np.linspace(0, 1, HISTOGRAM_BINS + 1)))
    if len(edges) < 2:
        edges = np.array([edges[0], edges[0] + 1.0])

    def shares(values):
        return [float(x) for x in np.histogram(values, edges)[0] / len(values)]

    return {
        "heuristic": True,
        "distance": "euclidean on one-hot categoricals and robustly scaled numerics",
        "synthetic_rows": len(synthetic),
        "reference_rows": len(holdout_real),
        "edges": [float(e) for e in edges],
        "train": shares(to_train),
        "holdout": shares(to_holdout),
        "exact_copies": {
            "train": float((to_train == 0).mean()),
            "holdout": float((to_holdout == 0).mean()),
        },
        "closer_to_train": float((to_train < to_holdout).mean()),
        "ties": float((to_train == to_holdout).mean()),
    }


def heuristics(
    train_real: pd.DataFrame,
    holdout_real: pd.DataFrame,
    synthetic: pd.DataFrame,
    metadata: dict,
    table_name: str,
    *,
    sensitive_columns=(),
    seed: int = 0,
    dcr_synthetic_rows: int = DCR_SYNTHETIC_ROWS,
) -> dict:
    """DCR baseline / overfitting protection, disclosure protection and the DCR histogram."""
    rng = np.random.default_rng(seed)
    columns = table_columns(metadata, table_name, train_real, holdout_real, synthetic)
    meta = {
        "tables": {
            table_name: {
                "columns": {c: metadata["tables"][table_name]["columns"][c] for c in columns}
            }
        }
    }
    train, holdout, synth = (
        _nullable_as_float(f[list(columns)]) for f in (train_real, holdout_real, synthetic)
    )
    dcr_synth = _subsample(synth, dcr_synthetic_rows, rng)
    out: dict = {}
    baseline = DCRBaselineProtection.compute_breakdown(
        train, dcr_synth, meta, table_name, num_rows_subsample=None
    )
    out["dcr_baseline_protection"] = {
        "heuristic": True,
        "synthetic_rows": len(dcr_synth),
        **_plain(baseline),
    }
    overfitting = DCROverfittingProtection.compute_breakdown(
        train, dcr_synth, holdout, meta, table_name, num_rows_subsample=None
    )
    out["dcr_overfitting_protection"] = {
        "heuristic": True,
        "synthetic_rows": len(dcr_synth),
        **_plain(overfitting),
    }
    sensitive = [c for c in sensitive_columns if c in columns]
    if not sensitive:
        out["disclosure_protection"] = {
            "heuristic": True,
            "skipped": "no sensitive columns declared"
            if not sensitive_columns
            else f"sensitive columns {list(sensitive_columns)} are not modelled columns",
        }
    else:
        real_cap = _subsample(train, DISCLOSURE_ROWS, rng)
        synth_cap = _subsample(synth, DISCLOSURE_ROWS, rng)
        numeric = [c for c, s in columns.items() if s in NUMERIC_SDTYPES]
        out["disclosure_protection"] = {"heuristic": True, "rows": len(real_cap)}
        for column in sensitive:
            known = [c for c in columns if c != column]
            result = DisclosureProtection.compute_breakdown(
                real_cap, synth_cap, known, [column], continuous_column_names=numeric
            )
            out["disclosure_protection"][column] = _plain(result)
    out["dcr_histogram"] = dcr_histogram(
        train_real, holdout_real, synthetic, metadata, table_name, seed=seed
    )
    return out
