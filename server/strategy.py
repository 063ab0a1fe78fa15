"""FedAvg over the merchants that trained, weighted by their DP row counts.

A wrapper around Flower's FedAvg: before averaging it sorts replies into trained, refused
(budget spent) and failed (bad data, crash, no reply), keeps every merchant's latest ledger,
and skips the update when fewer than ``min_train_replies`` merchants trained. The weights FedAvg
uses are the ``num-examples`` metric, which merchants fill with their DP row count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from synth_models.federation import ARRAYS, DOCUMENT_KEY, FAILED, LEDGER, OK, STATUS, loads

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
        super().__init__(fraction_evaluate=0.0, weighted_by_key="num-examples", **fedavg_options)
        self.round_offset = round_offset
        self.min_train_replies = min_train_replies
        self.ledgers: dict[str, dict] = dict(ledgers or {})
        self.round_log: list[dict] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_train(server_round + self.round_offset, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted, outcome = sort_replies(replies, self.ledgers)
        trained = [m for m in accepted if ARRAYS in m.content.array_records]
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


def sort_replies(
    replies: Iterable[Message], ledgers: dict[str, dict]
) -> tuple[list[Message], dict[str, dict]]:
    """Split off the replies whose merchant succeeded, with an outcome per merchant (its status
    and metrics); keep the latest ledger each merchant sent."""
    accepted, outcome = [], {}
    for msg in replies:
        node = f"node-{msg.metadata.src_node_id}"
        if msg.has_error():
            outcome[node] = {"state": FAILED, "reason": msg.error.reason}
            continue
        status = reply_document(msg, STATUS) or {"state": FAILED, "reason": "no status"}
        merchant = status.get("merchant", node)
        ledger = reply_document(msg, LEDGER)
        if ledger is not None:
            ledgers[merchant] = ledger
        result = {k: v for k, v in status.items() if k != "merchant"}
        if status.get("state") == OK:
            accepted.append(msg)
            metrics = msg.content.metric_records.get("metrics")
            result.update(dict(metrics.items()) if metrics is not None else {})
        outcome[merchant] = result
    return accepted, outcome
