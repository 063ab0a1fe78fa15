"""FedAvg over the merchants that trained, weighted by their DP row counts.

A wrapper around Flower's FedAvg: before averaging it sorts replies into trained, refused
(budget spent) and failed (bad data, crash, no reply, a rejected update, a merchant name
another node already holds), keeps every merchant's latest ledger (a rejected merchant's too:
its steps ran), and skips the update when fewer than ``min_train_replies`` merchants trained.
The weights FedAvg uses are the ``num-examples`` metric, which merchants fill with their DP row
count. Aggregated epsilon and delta are maxima over merchants (their data are disjoint), not
averages.

Robust aggregation: a merchant (or whoever holds its key) may send anything, so every trained
reply passes these rules, in order, before it is averaged; a reply that breaks one is failed
with a server-written ``reason`` ("update rejected: ..."), logged, and left out, and the round
goes on with the others down to ``min_train_replies``:

1. **Layout.** Weight names and shapes equal the round's global weights' (those
   ``configure_train`` sent; without them, the first accepted reply's), every dtype is a real
   number type (bool, int, float: not complex, object or text; widths may differ, as FedAvg
   averages in float64 and sends an int buffer back as a float); the metrics hold
   ``num-examples`` and the same keys as the other merchants'.
2. **Finite.** Every weight and every metric is finite (no NaN, no inf).
3. **DP row count.** ``num-examples`` is finite, > 0 and at most
   ``max(T, 1) + ROW_COUNT_SIGMAS * sqrt(V)``, where ``T`` and ``V`` are the schema round's
   merged DP row count and its noise variance (``total_dp_rows``; unknown: only finite and
   > 0 apply). An honest merchant's count exceeds ``T`` only by the (negated) noisy counts of
   the others, whose noise standard deviation is at most ``sqrt(V)``; merchants send at least 1.
4. **Distance.** The update's distance is the L2 norm, over all weights (in float64), of its
   weights minus the round's global weights (without them: the norm of its weights). A
   non-finite distance is rejected. Then, among the replies still in:

   - 3 or more: reject every distance > ``NORM_FACTOR`` x the median distance (the median
     needs half the merchants to lie);
   - exactly 2: there is no majority; when one distance is > ``NORM_FACTOR`` x the other's,
     the farther one is rejected;
   - 1: the rule is skipped (rules 1-3 still apply).

   A scale of 0 (the median, or the nearer of two, did not move at all) gives nothing to
   compare with and rejects nothing; DP-SGD's noise always moves an honest merchant.

Finally the aggregate itself must be finite; if it is not (rules 1-4 make it impossible), the
previous global model is kept and the round log says so (``aggregated`` false, ``reason``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from server.releases import RELEASES, STATISTICS_FILE
from synth_models.federation import (
    ARRAYS,
    DOCUMENT_KEY,
    FAILED,
    LEDGER,
    METRICS,
    OK,
    STATUS,
    loads,
)

logger = logging.getLogger(__name__)
NORM_FACTOR = 10.0  # rule 4: an update farther than this x the median (or the other) is out
ROW_COUNT_SIGMAS = 6.0  # rule 3: noise standard deviations allowed above the DP row total


def reply_document(msg: Message, name: str) -> dict | None:
    record = msg.content.config_records.get(name)
    return None if record is None else loads(str(record[DOCUMENT_KEY]))


class MerchantFedAvg(FedAvg):
    def __init__(
        self,
        *,
        round_offset: int = 0,
        min_train_replies: int = 1,
        ledgers: dict[str, dict] | None = None,
        total_dp_rows: tuple[float, float] | None = None,
        **fedavg_options,
    ) -> None:
        """``total_dp_rows``: the schema round's merged DP row count and its noise variance
        (rule 3 of the module docstring); None where unknown."""
        super().__init__(
            fraction_evaluate=0.0,
            weighted_by_key="num-examples",
            train_metrics_aggr_fn=aggregate_merchant_metrics,
            **fedavg_options,
        )
        self.round_offset = round_offset
        self.min_train_replies = min_train_replies
        self.ledgers: dict[str, dict] = dict(ledgers or {})
        self.total_dp_rows = total_dp_rows
        self.owners: dict[str, int] = {}  # merchant name -> the node that first used it
        self.round_log: list[dict] = []
        self._layout: dict[str, tuple] = {}  # name -> (shape, dtype) of the global weights
        self._global: dict[str, np.ndarray] = {}  # the round's global weights, float64
        self._sent: list[Message] = []

    @staticmethod
    def total_dp_rows_of(run_dir: str | Path) -> tuple[float, float] | None:
        """The merged DP row count and its variance from the schema round's statistics,
        persisted in ``run_dir`` (a fresh run writes them first; a resumed run keeps them)."""
        path = Path(run_dir) / RELEASES / STATISTICS_FILE
        try:
            statistics = json.loads(path.read_text())
            return float(statistics["row_count"]), float(statistics["row_count_var"])
        except (OSError, KeyError, TypeError, ValueError):
            logger.warning("no schema round statistics in %s: DP row counts checked loosely", path)
            return None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._layout = {name: _layout(array) for name, array in arrays.items()}
        self._global = {name: _float64(array) for name, array in arrays.items()}
        self._sent = list(
            super().configure_train(server_round + self.round_offset, arrays, config, grid)
        )
        return self._sent

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # The grid has given each sent message its id by now: an error reply (a merchant that
        # crashed or went offline) names the merchant its message went to.
        sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent}
        accepted, outcome = sort_replies(replies, self.ledgers, self.owners, sent_to)
        number = server_round + self.round_offset
        trained, distances = [], []
        for msg, merchant in accepted:
            problem = self._mismatch(msg, trained[0][0] if trained else None)
            distance = None if problem else self._distance(msg)
            if problem is None and not np.isfinite(distance):
                problem = "update rejected: non-finite update norm"
            if problem:
                outcome[merchant] = {"state": FAILED, "reason": problem}
            else:
                trained.append((msg, merchant))
                distances.append(distance)
        kept = []
        for (msg, merchant), reason in zip(trained, distance_outliers(distances), strict=True):
            if reason:
                outcome[merchant] = {"state": FAILED, "reason": reason}
            else:
                kept.append(msg)
        entry = {"round": number, "merchants": outcome, "aggregated": False}
        self.round_log.append(entry)
        for merchant, result in outcome.items():
            if result["state"] != OK:
                logger.warning(
                    "round %d: %s %s: %s", number, merchant, result["state"], result.get("reason")
                )
        if len(kept) < self.min_train_replies:
            logger.warning(
                "round %d: %d merchant(s) trained, fewer than the minimum %d; "
                "the global model is unchanged",
                number,
                len(kept),
                self.min_train_replies,
            )
            return None, None
        arrays, metrics = super().aggregate_train(server_round, kept)
        if arrays is not None and not all(
            np.isfinite(_float64(array)).all() for array in arrays.values()
        ):
            entry["reason"] = "aggregate not finite; the previous global model is kept"
            logger.error("round %d: %s", number, entry["reason"])
            return None, None
        entry["aggregated"] = arrays is not None
        return arrays, metrics

    def _mismatch(self, msg: Message, reference: Message | None) -> str | None:
        """Why a trained reply cannot be averaged with the others (None: it can): rules 1-3
        of the module docstring."""
        arrays = msg.content.array_records.get(ARRAYS)
        if arrays is None:
            return "reply holds no weights"
        layout = {name: _layout(array) for name, array in arrays.items()}
        expected = self._layout or (
            None
            if reference is None
            else {n: _layout(a) for n, a in reference.content[ARRAYS].items()}
        )
        if expected is not None and layout != expected:
            if set(layout) != set(expected):
                return "update rejected: weight names differ from the global model's"
            return "update rejected: weight shapes differ from the global model's"
        if not all(_real(array) for array in arrays.values()):
            return "update rejected: weight dtypes are not real numbers"
        metrics = msg.content.metric_records.get(METRICS)
        if metrics is None or "num-examples" not in metrics:
            return "reply holds no DP row count"
        if reference is not None:
            keys = set(reference.content.metric_records[METRICS].keys())
            if set(metrics.keys()) != keys:
                return "metrics differ from the other merchants'"
        if not all(np.isfinite(_float64(array)).all() for array in arrays.values()):
            return "update rejected: non-finite weights"
        rows = _number(metrics["num-examples"])
        if rows is None or not np.isfinite(rows):
            return "update rejected: non-finite DP row count"
        if rows <= 0:
            return "update rejected: DP row count not positive"
        if self.total_dp_rows is not None:
            total, variance = self.total_dp_rows
            limit = max(total, 1.0) + ROW_COUNT_SIGMAS * np.sqrt(max(variance, 0.0))
            if rows > limit:
                return (
                    f"update rejected: DP row count above the schema round's total "
                    f"({limit:.0f} with noise)"
                )
        for key, value in metrics.items():
            if not np.isfinite(np.asarray(value, dtype=np.float64)).all():
                return f"update rejected: non-finite metric {key!r}"
        return None

    def _distance(self, msg: Message) -> float:
        """L2 distance of a reply's weights from the round's global weights (rule 4)."""
        with np.errstate(over="ignore", invalid="ignore"):
            total = 0.0
            for name, array in msg.content[ARRAYS].items():
                delta = _float64(array) - self._global.get(name, 0.0)
                total += float(np.sum(delta * delta))
            return float(np.sqrt(total))


def distance_outliers(distances: list[float]) -> list[str | None]:
    """Per update, why its distance from the global weights is rejected (None: kept); the
    median rule of the module docstring (rule 4)."""
    reasons: list[str | None] = [None] * len(distances)
    if len(distances) >= 3:
        scale = float(np.median(distances))
        if scale > 0:
            for i, distance in enumerate(distances):
                if distance > NORM_FACTOR * scale:
                    reasons[i] = (
                        f"update rejected: update norm {distance / scale:.3g}x the round's "
                        f"median (limit {NORM_FACTOR:g}x)"
                    )
    elif len(distances) == 2:
        near, far = sorted(range(2), key=lambda i: distances[i])
        if distances[near] > 0 and distances[far] > NORM_FACTOR * distances[near]:
            reasons[far] = (
                f"update rejected: update norm {distances[far] / distances[near]:.3g}x the "
                f"other merchant's (limit {NORM_FACTOR:g}x)"
            )
    return reasons


def _layout(array) -> tuple:
    return tuple(array.shape)


def _real(array) -> bool:
    """A dtype FedAvg can average: bool, int or float of any width."""
    try:
        return np.dtype(array.dtype).kind in "biuf"
    except TypeError:
        return False


def _float64(array) -> np.ndarray:
    values = array.numpy()
    if not np.issubdtype(values.dtype, np.number):
        values = np.zeros(values.shape)
    return values.astype(np.float64, copy=False)


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def aggregate_merchant_metrics(records: list, weighting_metric_name: str) -> MetricRecord:
    """Weighted means, except epsilon and delta: the maximum over merchants."""
    aggregated = aggregate_metricrecords(records, weighting_metric_name)
    for key in ("epsilon", "delta"):
        values = [
            float(next(iter(r.metric_records.values()))[key])
            for r in records
            if key in next(iter(r.metric_records.values()))
        ]
        if values:
            aggregated[key] = max(values)
    return aggregated


def sort_replies(
    replies: Iterable[Message],
    ledgers: dict[str, dict],
    owners: dict[str, int],
    sent_to: dict[str, int] | None = None,
) -> tuple[list[tuple[Message, str]], dict[str, dict]]:
    """The replies whose merchant succeeded (with its name) and an outcome per merchant (its
    status and metrics); keep the latest ledger each merchant sent. A merchant name belongs to
    the first node that used it in this run: another node using it is failed, and cannot
    overwrite that merchant's ledger. ``sent_to`` maps the ids of the messages sent to their
    nodes: an error reply may come from the SuperLink on behalf of a node that went away."""
    accepted, outcome = [], {}
    names = {node_id: merchant for merchant, node_id in owners.items()}
    for msg in replies:
        node_id = msg.metadata.src_node_id
        if msg.has_error():
            node_id = (sent_to or {}).get(msg.metadata.reply_to_message_id, node_id)
            name = names.get(node_id, f"node-{node_id}")
            outcome[name] = {"state": FAILED, "reason": msg.error.reason}
            continue
        node = f"node-{node_id}"
        status = reply_document(msg, STATUS) or {"state": FAILED, "reason": "no status"}
        merchant = str(status.get("merchant", node))
        if owners.setdefault(merchant, node_id) != node_id:
            outcome[node] = {
                "state": FAILED,
                "reason": f"merchant name {merchant!r} belongs to another node",
            }
            continue
        ledger = reply_document(msg, LEDGER)
        if ledger is not None:
            ledgers[merchant] = ledger
        result = {k: v for k, v in status.items() if k != "merchant"}
        if "code" in status:  # merchants say why by a code (and a schema column) only
            column = status.get("column")
            result["reason"] = status["code"] + (f" (column {column!r})" if column else "")
        if status.get("state") == OK:
            accepted.append((msg, merchant))
            metrics = msg.content.metric_records.get(METRICS)
            result.update(dict(metrics.items()) if metrics is not None else {})
        outcome[merchant] = result
    return accepted, outcome
