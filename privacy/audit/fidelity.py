"""Fidelity: SDMetrics 0.32 quality and diagnostic reports, plus binned marginals for plots."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sdmetrics.reports import DiagnosticReport, QualityReport

from privacy.audit.neighbours import NUMERIC_SDTYPES, as_labels, as_numeric, table_columns

TOP_CATEGORIES = 30
NUMERIC_BINS = 20
OTHER = "(other)"


def _reports(
    real: pd.DataFrame, synthetic: pd.DataFrame, metadata: dict, table_name: str
) -> tuple[QualityReport, QualityReport, DiagnosticReport]:
    columns = [c for c in synthetic.columns if c in real.columns]
    meta = {
        **metadata,
        "tables": {
            table_name: {
                **metadata["tables"][table_name],
                "columns": {c: metadata["tables"][table_name]["columns"][c] for c in columns},
            }
        },
    }
    real_dict, synth_dict = {table_name: real[columns]}, {table_name: synthetic[columns]}
    quality = QualityReport()
    quality.generate(real_dict, synth_dict, meta, verbose=False)
    all_pairs = QualityReport()
    all_pairs.real_correlation_threshold = 0
    all_pairs.real_association_threshold = 0
    all_pairs.generate(real_dict, synth_dict, meta, verbose=False)
    diagnostic = DiagnosticReport()
    diagnostic.generate(real_dict, synth_dict, meta, verbose=False)
    return quality, all_pairs, diagnostic


def _summary(
    quality: QualityReport, all_pairs: QualityReport, diagnostic: DiagnosticReport
) -> dict:
    properties = quality.get_properties()
    return {
        "quality": float(quality.get_score()),
        "quality_all_pairs": float(all_pairs.get_score()),
        "quality_properties": dict(zip(properties["Property"], properties["Score"], strict=True)),
        "diagnostic": float(diagnostic.get_score()),
    }


def quality_scores(
    real: pd.DataFrame, synthetic: pd.DataFrame, metadata: dict, table_name: str
) -> dict:
    """SDMetrics 0.32 QualityReport (default pair thresholds and all pairs) and
    DiagnosticReport scores on the columns the synthesizer models."""
    return _summary(*_reports(real, synthetic, metadata, table_name))


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [float(c / total) if total else 0.0 for c in counts]


def distribution(real: pd.Series, synthetic: pd.Series, sdtype: str) -> dict:
    """Binned shares of one column: the real data's top categories (the rest pooled as
    ``"(other)"``) or ``NUMERIC_BINS`` equal-width bins common to both tables."""
    if sdtype in NUMERIC_SDTYPES:
        r, s = as_numeric(real), as_numeric(synthetic)
        r, s = r[np.isfinite(r)], s[np.isfinite(s)]
        both = np.concatenate([r, s])
        if both.size == 0:
            return {"kind": "numeric", "edges": [], "real": [], "synthetic": []}
        low, high = float(both.min()), float(both.max())
        if high <= low:
            high = low + 1.0
        edges = np.linspace(low, high, NUMERIC_BINS + 1)
        return {
            "kind": "numeric",
            "edges": [float(e) for e in edges],
            "real": _shares(np.histogram(r, edges)[0]),
            "synthetic": _shares(np.histogram(s, edges)[0]),
        }
    r, s = pd.Series(as_labels(real)), pd.Series(as_labels(synthetic))
    counts = r.value_counts()
    labels = list(counts.index[:TOP_CATEGORIES])
    s_counts = s.value_counts()
    real_counts = [int(counts.get(label, 0)) for label in labels]
    synth_counts = [int(s_counts.get(label, 0)) for label in labels]
    if len(counts) > TOP_CATEGORIES or not set(s_counts.index) <= set(labels):
        labels.append(OTHER)
        real_counts.append(len(r) - sum(real_counts))
        synth_counts.append(len(s) - sum(synth_counts))
    return {
        "kind": "categorical",
        "labels": [str(label) for label in labels],
        "real": _shares(np.array(real_counts)),
        "synthetic": _shares(np.array(synth_counts)),
    }


def fidelity(real: pd.DataFrame, synthetic: pd.DataFrame, metadata: dict, table_name: str) -> dict:
    """Quality/diagnostic scores (as :func:`quality_scores`), per-column shape scores, all-pairs
    trend scores (``"a|b"``; NaN pairs dropped) and binned marginal distributions."""
    quality, all_pairs, diagnostic = _reports(real, synthetic, metadata, table_name)
    out = _summary(quality, all_pairs, diagnostic)
    shapes = quality.get_details("Column Shapes")
    out["column_shapes"] = {
        str(c): float(v)
        for c, v in zip(shapes["Column"], shapes["Score"], strict=True)
        if _finite(v)
    }
    trends = all_pairs.get_details("Column Pair Trends")
    out["pair_trends"] = {
        f"{a}|{b}": float(v)
        for a, b, v in zip(trends["Column 1"], trends["Column 2"], trends["Score"], strict=True)
        if _finite(v)
    }
    out["distributions"] = {
        name: distribution(real[name], synthetic[name], sdtype)
        for name, sdtype in table_columns(metadata, table_name, real, synthetic).items()
    }
    return out
