"""Fidelity scores with SDMetrics (the Audit issue grows this into the full report)."""

from __future__ import annotations

import pandas as pd
from sdmetrics.reports import DiagnosticReport, QualityReport


def quality_scores(
    real: pd.DataFrame, synthetic: pd.DataFrame, metadata: dict, table_name: str
) -> dict:
    """SDMetrics 0.32 QualityReport (default pair thresholds and all pairs) and
    DiagnosticReport scores on the columns the synthesizer models."""
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
    properties = quality.get_properties()
    return {
        "quality": float(quality.get_score()),
        "quality_all_pairs": float(all_pairs.get_score()),
        "quality_properties": dict(zip(properties["Property"], properties["Score"], strict=True)),
        "diagnostic": float(diagnostic.get_score()),
    }
