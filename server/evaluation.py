"""Federated audit: every merchant audits the global synthesizer on its own rows.

Merchants answer with aggregates only (scores, binned shares, ROC points; the reply guard blocks
long lists). The server combines them into one report: weighted means of the merchants' numbers
(by their DP row counts), except the empirical epsilon lower bound, which is the maximum, and the
utility ratio, which is the ratio of the mean TSTR to the mean TRTR (a mean of ratios lets a
merchant with a weak real baseline, e.g. a skewed share of the target, inflate it past 1).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from server.schema_round import wait_for_nodes
from server.strategy import reply_document, sort_replies
from synth_models.artifact import load_artifact
from synth_models.federation import AUDIT, CONFIG, DOCUMENT_KEY, OK, dumps

logger = logging.getLogger(__name__)


def collect_audits(
    grid: Grid,
    *,
    artifact: Path,
    document: dict,
    min_nodes: int,
    timeout: float,
    owners: dict[str, int],
) -> tuple[dict, dict]:
    """Per-merchant audit documents and every merchant's outcome."""
    manifest, weights = load_artifact(artifact)
    content = {
        **document,
        "schema": manifest["encoder"]["schema"],
        "encoder": manifest["encoder"],
        "metadata": manifest["metadata"],
        "model": manifest["model"],
        "model_options": manifest["model_options"],
    }
    messages = [
        Message(
            RecordDict(
                {
                    "arrays": ArrayRecord(weights),
                    CONFIG: ConfigRecord({DOCUMENT_KEY: dumps(content)}),
                }
            ),
            message_type="evaluate",
            dst_node_id=node,
        )
        for node in wait_for_nodes(grid, min_nodes, timeout)
    ]
    accepted, outcome = sort_replies(grid.send_and_receive(messages, timeout=timeout), {}, owners)
    audits = {name: reply_document(msg, AUDIT) for msg, name in accepted}
    return {m: a for m, a in audits.items() if a is not None}, outcome


def combine(audits: dict[str, dict], weights: dict[str, float]) -> dict:
    """One audit from the merchants': weighted means of numbers and of equal-length number
    lists (shares, ROC points), the first value of anything else."""
    names = list(audits)
    total = sum(weights.get(m, 1.0) for m in names) or 1.0
    shares = [weights.get(m, 1.0) / total for m in names]

    def merge(values: list):
        first = values[0]
        if all(isinstance(v, bool) for v in values):
            return first
        if all(isinstance(v, int | float) for v in values):
            finite = [(v, w) for v, w in zip(values, shares, strict=True) if math.isfinite(v)]
            weight = sum(w for _, w in finite)
            return sum(v * w for v, w in finite) / weight if weight else float("nan")
        if all(isinstance(v, dict) for v in values):
            keys = [k for k in first if all(k in v for v in values)]
            return {k: merge([v[k] for v in values]) for k in keys}
        numeric_lists = (
            all(isinstance(v, list) for v in values)
            and len({len(v) for v in values}) == 1
            and all(isinstance(x, int | float) for v in values for x in v)
        )
        if numeric_lists:
            return [merge([v[i] for v in values]) for i in range(len(first))]
        return first

    combined = merge([audits[m] for m in names])
    bounds = [
        a.get("attack", {}).get("empirical_epsilon", {}).get("epsilon_lower_bound")
        for a in audits.values()
    ]
    bounds = [b for b in bounds if b is not None]
    if bounds and "attack" in combined:
        combined["attack"].setdefault("empirical_epsilon", {})["epsilon_lower_bound"] = max(bounds)
    utility = combined.get("utility")
    if isinstance(utility, dict) and "ratio" in utility:
        utility["ratio"] = _utility_ratio(utility.get("tstr"), utility.get("trtr"))
    return combined


def _utility_ratio(tstr, trtr) -> float | None:
    """TSTR / TRTR of the combined (weighted mean) scores, as ``privacy.audit.utility``
    defines it for one table (None without a positive TRTR)."""
    numbers = all(isinstance(v, int | float) and math.isfinite(v) for v in (tstr, trtr))
    return tstr / trtr if numbers and trtr > 0 else None


def rounds_epsilon(run_dir: Path) -> list[dict]:
    """Epsilon per merchant per round, from the run's rounds log."""
    path = run_dir / "rounds.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        eps = {
            m: r["epsilon"]
            for m, r in entry.get("merchants", {}).items()
            if isinstance(r.get("epsilon"), int | float)
        }
        if entry.get("round", 0) > 0:
            rows.append({"round": entry["round"], "epsilon": eps})
    return rows


def failures(run_dir: Path, audit_outcome: dict) -> list[dict]:
    found = []
    path = run_dir / "rounds.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    entries.append({"round": "audit", "merchants": audit_outcome})
    for entry in entries:
        for merchant, result in entry.get("merchants", {}).items():
            if result.get("state") != OK:
                found.append(
                    {
                        "round": entry.get("round"),
                        "merchant": merchant,
                        "state": result.get("state"),
                        "reason": result.get("reason"),
                    }
                )
    return found
