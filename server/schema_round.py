"""Round 0: merchants release DP column statistics; the server sums them into the encoder."""

from __future__ import annotations

import logging
import time

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from privacy.statistics import TableStatistics, merge_statistics
from server.strategy import sort_replies
from synth_models.encoder import TableEncoder
from synth_models.federation import (
    CONFIG,
    DOCUMENT_KEY,
    STATISTICS,
    STATISTICS_MESSAGE,
    dumps,
    loads,
)
from synth_models.schema import TableSchema

logger = logging.getLogger(__name__)


class FederationError(RuntimeError):
    """The federation cannot go on (e.g. too few merchants)."""


def wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < minimum:
        if time.monotonic() > deadline:
            raise FederationError(
                f"{len(nodes)} merchant(s) connected after {timeout:.0f} s; "
                f"at least {minimum} needed"
            )
        time.sleep(1.0)
    return nodes


def query_merchants(
    grid: Grid,
    *,
    nodes: list[int],
    message_type: str,
    document: dict,
    timeout: float,
    ledgers: dict[str, dict],
    owners: dict[str, int],
    label: str,
) -> tuple[list[tuple[Message, str]], dict[str, dict]]:
    """Send one JSON document to every node; the successful replies (with their merchant) and
    every merchant's outcome, non-ok ones logged under ``label``."""
    content = ConfigRecord({DOCUMENT_KEY: dumps(document)})
    messages = [
        Message(RecordDict({CONFIG: content}), message_type=message_type, dst_node_id=node)
        for node in nodes
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    accepted, outcome = sort_replies(replies, ledgers, owners, sent_to)
    for merchant, result in outcome.items():
        if result["state"] != "ok":
            logger.warning("%s: %s %s: %s", label, merchant, result["state"], result.get("reason"))
    return accepted, outcome


def schema_round(
    grid: Grid,
    *,
    schema: TableSchema,
    document: dict,
    min_replies: int,
    min_nodes: int,
    timeout: float,
    ledgers: dict[str, dict],
    owners: dict[str, int],
) -> tuple[TableEncoder, TableStatistics, dict[str, dict]]:
    """Ask every merchant for its DP statistics; build the shared encoder from their sum."""
    accepted, outcome = query_merchants(
        grid,
        nodes=wait_for_nodes(grid, min_nodes, timeout),
        message_type=STATISTICS_MESSAGE,
        document={**document, "schema": schema.to_dict()},
        timeout=timeout,
        ledgers=ledgers,
        owners=owners,
        label="schema round",
    )
    answered = [msg for msg, _ in accepted]
    parts = [
        TableStatistics.from_dict(loads(str(m.content.config_records[STATISTICS][DOCUMENT_KEY])))
        for m in answered
        if STATISTICS in m.content.config_records
    ]
    if len(parts) < min_replies:
        raise FederationError(
            f"schema round: {len(parts)} merchant(s) released statistics, "
            f"at least {min_replies} needed; outcomes: {outcome}"
        )
    merged = merge_statistics(parts)
    logger.info(
        "schema round: statistics from %d merchant(s), DP row count %.0f",
        len(parts),
        merged.row_count,
    )
    return TableEncoder.from_statistics(schema, merged), merged, outcome
