"""Machine-learning utility: train on synthetic, test on real (TSTR) against train on real,
test on real (TRTR), both tested on the same real holdout.

Model: scikit-learn's HistGradientBoostingClassifier / Regressor (default settings, fixed
``random_state``). Categorical columns (every modelled non-numeric column) are ordinal-encoded
with one category list built from the union of the real train, synthetic and holdout values
(so codes mean the same in all three) and declared categorical to the model (columns with more
than 255 categories are passed as plain ordinal codes). Numerical / datetime columns are passed
as floats (missing values stay NaN, which the model handles).

Task: classification (metric: macro-F1) when the target's sdtype is categorical or boolean,
else regression (metric: R^2). ``ratio`` = TSTR / TRTR (None when TRTR <= 0).

Each training set is capped at ``MAX_TRAIN_ROWS`` = 20,000 seeded random rows (the test set at
``MAX_TEST_ROWS`` = 50,000): gradient boosting on 20,000 rows takes a few seconds on 2 cores and
more rows barely move the score on tables of this size.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import f1_score, r2_score

from privacy.audit.neighbours import NUMERIC_SDTYPES, as_labels, as_numeric, table_columns

MAX_TRAIN_ROWS = 20_000
MAX_TEST_ROWS = 50_000
MAX_CATEGORIES = 255


def _cap(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if len(frame) <= n:
        return frame
    rng = np.random.default_rng(seed)
    return frame.iloc[np.sort(rng.choice(len(frame), size=n, replace=False))]


def _features(
    frames: list[pd.DataFrame], columns: dict[str, str]
) -> tuple[list[np.ndarray], np.ndarray]:
    matrices = [np.empty((len(f), len(columns)), dtype=np.float64) for f in frames]
    categorical = np.zeros(len(columns), dtype=bool)
    for j, (name, sdtype) in enumerate(columns.items()):
        if sdtype in NUMERIC_SDTYPES:
            for matrix, frame in zip(matrices, frames, strict=True):
                matrix[:, j] = as_numeric(frame[name])
            continue
        labels = [as_labels(frame[name]) for frame in frames]
        categories = np.unique(np.concatenate(labels))
        categorical[j] = len(categories) <= MAX_CATEGORIES
        for matrix, values in zip(matrices, labels, strict=True):
            matrix[:, j] = np.searchsorted(categories, values)
    return matrices, categorical


def _score(task: str, model, x_train, y_train, x_test, y_test) -> float:
    if task == "classification":
        if len(np.unique(y_train)) < 2:  # a single class: the model can only predict it
            predicted = np.full(len(y_test), y_train[0])
        else:
            predicted = model.fit(x_train, y_train).predict(x_test)
        return float(f1_score(y_test, predicted, average="macro"))
    return float(r2_score(y_test, model.fit(x_train, y_train).predict(x_test)))


def utility(
    train_real: pd.DataFrame,
    holdout_real: pd.DataFrame,
    synthetic: pd.DataFrame,
    *,
    target: str,
    metadata: dict,
    table_name: str,
    seed: int = 0,
) -> dict:
    """TSTR vs TRTR on ``target`` (see the module docstring)."""
    columns = table_columns(metadata, table_name, train_real, holdout_real, synthetic)
    if target not in columns:
        raise ValueError(f"target {target!r} is not a modelled column of all three tables")
    target_sdtype = columns.pop(target)
    task = "regression" if target_sdtype in NUMERIC_SDTYPES else "classification"
    frames = [
        _cap(frame[frame[target].notna()], cap, seed)
        for frame, cap in (
            (train_real, MAX_TRAIN_ROWS),
            (synthetic, MAX_TRAIN_ROWS),
            (holdout_real, MAX_TEST_ROWS),
        )
    ]
    (x_real, x_synth, x_test), categorical = _features(frames, columns)
    if task == "classification":
        y_real, y_synth, y_test = (as_labels(f[target]) for f in frames)
    else:
        y_real, y_synth, y_test = (as_numeric(f[target]) for f in frames)

    def model():
        kind = (
            HistGradientBoostingClassifier
            if task == "classification"
            else HistGradientBoostingRegressor
        )
        return kind(categorical_features=categorical, random_state=seed)

    trtr = _score(task, model(), x_real, y_real, x_test, y_test)
    tstr = _score(task, model(), x_synth, y_synth, x_test, y_test)
    return {
        "target": target,
        "task": task,
        "metric": "macro_f1" if task == "classification" else "r2",
        "tstr": tstr,
        "trtr": trtr,
        "ratio": tstr / trtr if trtr > 0 else None,
        "train_rows": {"real": len(frames[0]), "synthetic": len(frames[1])},
        "test_rows": len(frames[2]),
    }
