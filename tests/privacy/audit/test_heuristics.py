"""The DCR heuristics on what merchants' tables hold: nullable integers with missing values."""

from __future__ import annotations

import numpy as np
import pandas as pd

from privacy.audit.heuristics import heuristics

METADATA = {
    "tables": {
        "t": {
            "columns": {
                "age": {"sdtype": "numerical"},
                "amount": {"sdtype": "numerical"},
                "home": {"sdtype": "categorical"},
            }
        }
    }
}


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = pd.array(rng.integers(18, 90, n), dtype="Int64")
    age[::7] = pd.NA  # as pandas reads an integer column with empty cells
    home = rng.choice(["owner", "rent"], n)
    return pd.DataFrame({"age": age, "amount": rng.normal(size=n), "home": home})


def test_nullable_integers_with_missing_values_are_scored() -> None:
    out = heuristics(_frame(200, 0), _frame(100, 1), _frame(200, 2), METADATA, "t")
    for name in ("dcr_baseline_protection", "dcr_overfitting_protection"):
        assert out[name]["heuristic"] is True
        assert 0.0 <= out[name]["score"] <= 1.0
