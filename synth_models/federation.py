"""What the server and merchants exchange, by name (no Flower import: plain data).

Replies may carry only: model weights (an ArrayRecord named ``ARRAYS``), scalar metrics (a
MetricRecord named ``METRICS`` with keys from ``REPLY_METRICS``), and JSON documents in
ConfigRecords named in ``REPLY_DOCUMENTS`` (DP statistics, noisy marginal tables, the ledger, a
status line). The client's reply guard enforces this list before anything leaves a merchant.
"""

from __future__ import annotations

import json
from typing import Any

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
STATISTICS = "statistics"
LEDGER = "ledger"
STATUS = "status"
AUDIT = "audit"
MARGINALS = "marginals"
DOCUMENT_KEY = "json"

STATISTICS_MESSAGE = "query.statistics"
MARGINALS_MESSAGE = "query.marginals"
TRAIN_MESSAGE = "train"
EVALUATE_MESSAGE = "evaluate"
REPLY_DOCUMENTS = (STATISTICS, LEDGER, STATUS, AUDIT, MARGINALS)
# An audit document holds aggregates: binned shares, ROC points, scores. A longer list than this
# would be per-row data, and the guard blocks it.
MAX_AUDIT_LIST = 512
# A marginal table is a count per cell of a column or pair domain: its dimensions follow the
# shared encoder's domains, never the number of rows. Longer would be row-level data.
MAX_MARGINAL_DOMAIN = 4096
MAX_MARGINAL_CLIQUE = 2
REPLY_METRICS = (
    "num-examples",  # the merchant's DP row count (aggregation weight), never the exact count
    "epsilon",
    "delta",
    "steps",
    "noise-multiplier",
    "sample-rate",
    "generator-loss",  # computed on generated rows only (losses on real rows stay local)
)

OK, REFUSED, FAILED = "ok", "refused", "failed"
# What a status may say: a state and one of these codes, never free text (a reason written on
# real rows, e.g. "1 value outside [0, 50]" or a cell value, would leave the merchant). The full
# message stays in the merchant's own log.
REASON_CODES = (
    "done",  # ok replies
    "budget-exhausted",
    "epsilon-above-policy",
    "delta-above-policy",
    "non-private-refused",
    "model-not-allowed",
    "message-not-allowed",
    "ledger-path-required",
    "ledger-locked",
    "schema-mismatch",
    "bad-request",
    "bad-input",
    "internal-error",
    "reply-blocked",
)
STATUS_KEYS = frozenset({"state", "merchant", "code", "column"})


def dumps(document: Any) -> str:
    return json.dumps(document, separators=(",", ":"), default=_plain)


def loads(text: str) -> Any:
    return json.loads(text)


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
