"""Round 0: merchants release DP column statistics; the server sums them into the encoder.

Before the sum, each merchant's release must be readable and hold only finite numbers (counts,
missing counts, row count, grid bounds, decimals, numeric categories) and non-negative noise
variances (``statistics_problem``); a release that does not is failed, with the server's own
reason, logged, and left out: ``merge_statistics`` never sees a NaN.
"""

from __future__ import annotations

import logging
import time

import numpy as np
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
    parts = []
    for msg, merchant in accepted:
        if STATISTICS not in msg.content.config_records:
            continue
        try:
            part = TableStatistics.from_dict(
                loads(str(msg.content.config_records[STATISTICS][DOCUMENT_KEY]))
            )
            problem = statistics_problem(part)
        except (KeyError, TypeError, ValueError) as exc:
            problem = f"unreadable statistics ({type(exc).__name__})"
        if problem:
            outcome[merchant] = {"state": "failed", "reason": f"statistics rejected: {problem}"}
            logger.warning("schema round: %s failed: statistics rejected: %s", merchant, problem)
        else:
            parts.append(part)
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


def statistics_problem(statistics: TableStatistics) -> str | None:
    """Why a merchant's released statistics cannot be summed (None: they can)."""
    if not _finite(statistics.row_count, statistics.row_count_var):
        return "non-finite row count"
    if statistics.row_count_var < 0:
        return "negative row count variance"
    for name, column in statistics.columns.items():
        grid = column.grid
        numbers = [column.counts, column.missing, column.noise_var]
        if column.decimals is not None:
            numbers.append(column.decimals)
        if grid is not None:
            numbers += [grid.low, grid.high, grid.per_decade]
        numbers += [c for c in column.categories or [] if isinstance(c, float)]
        if not _finite(*numbers):
            return f"non-finite numbers in column {name!r}"
        if column.noise_var < 0:
            return f"negative noise variance in column {name!r}"
    return None


def _finite(*numbers) -> bool:
    try:
        return all(np.isfinite(np.asarray(n, dtype=np.float64)).all() for n in numbers)
    except (TypeError, ValueError):
        return False
