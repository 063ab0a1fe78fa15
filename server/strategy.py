"""FedAvg over the merchants that trained, weighted by their DP row counts.

A wrapper around Flower's FedAvg: before averaging it sorts replies into trained, refused
(budget spent) and failed (bad data, crash, no reply, weights that do not fit the model, a
merchant name another node already holds), keeps every merchant's latest ledger, and skips the
update when fewer than ``min_train_replies`` merchants trained. The weights FedAvg uses are the
``num-examples`` metric, which merchants fill with their DP row count. Aggregated epsilon and
delta are maxima over merchants (their data are disjoint), not averages.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

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
        **fedavg_options,
    ) -> None:
        super().__init__(
            fraction_evaluate=0.0,
            weighted_by_key="num-examples",
            train_metrics_aggr_fn=aggregate_merchant_metrics,
            **fedavg_options,
        )
        self.round_offset = round_offset
        self.min_train_replies = min_train_replies
        self.ledgers: dict[str, dict] = dict(ledgers or {})
        self.owners: dict[str, int] = {}  # merchant name -> the node that first used it
        self.round_log: list[dict] = []
        self._layout: dict[str, tuple] = {}
        self._sent: list[Message] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._layout = {name: tuple(array.shape) for name, array in arrays.items()}
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
        trained = []
        for msg, merchant in accepted:
            problem = self._mismatch(msg, trained[0][0] if trained else None)
            if problem:
                outcome[merchant] = {"state": FAILED, "reason": problem}
            else:
                trained.append((msg, merchant))
        trained = [msg for msg, _ in trained]
        number = server_round + self.round_offset
        self.round_log.append(
            {
                "round": number,
                "merchants": outcome,
                "aggregated": len(trained) >= self.min_train_replies,
            }
        )
        for merchant, result in outcome.items():
            if result["state"] != OK:
                logger.warning(
                    "round %d: %s %s: %s", number, merchant, result["state"], result.get("reason")
                )
        if len(trained) < self.min_train_replies:
            logger.warning(
                "round %d: %d merchant(s) trained, fewer than the minimum %d; "
                "the global model is unchanged",
                number,
                len(trained),
                self.min_train_replies,
            )
            return None, None
        return super().aggregate_train(server_round, trained)

    def _mismatch(self, msg: Message, reference: Message | None) -> str | None:
        """Why a trained reply cannot be averaged with the others (None: it can)."""
        arrays = msg.content.array_records.get(ARRAYS)
        if arrays is None:
            return "reply holds no weights"
        layout = {name: tuple(array.shape) for name, array in arrays.items()}
        expected = self._layout or (
            None
            if reference is None
            else {n: tuple(a.shape) for n, a in reference.content[ARRAYS].items()}
        )
        if expected is not None and layout != expected:
            return "weights do not match the global model's layout"
        metrics = msg.content.metric_records.get(METRICS)
        if metrics is None or "num-examples" not in metrics:
            return "reply holds no DP row count"
        if reference is not None:
            expected = set(reference.content.metric_records[METRICS].keys())
            if set(metrics.keys()) != expected:
                return "metrics differ from the other merchants'"
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
