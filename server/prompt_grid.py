"""A Grid that collects replies as soon as they arrive.

Flower 1.42's gRPC grid (the one a ServerApp gets from a SuperLink, simulation and deployment
alike) sleeps a fixed 3 s between pulls in ``send_and_receive``
(``flwr/superlink/grid/http_grid.py``), so every message exchange costs a multiple of 3 s
however fast the merchants answer. ``PromptGrid`` wraps any Grid and pulls with a short,
growing interval instead (``poll`` doubling up to ``max_poll``): a quick exchange returns in
tens of milliseconds, a long local training round costs four pulls a second at most. An
exchange that takes longer than ``PROGRESS_AFTER`` seconds logs how many replies are in, at
each new one and at least every ``PROGRESS_EVERY`` seconds.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

logger = logging.getLogger(__name__)
PROGRESS_AFTER = 5.0  # seconds
PROGRESS_EVERY = 30.0  # seconds


class PromptGrid(Grid):
    """``grid`` with a prompt ``send_and_receive``; everything else is delegated."""

    def __init__(self, grid: Grid, *, poll: float = 0.02, max_poll: float = 0.25) -> None:
        self.grid = grid
        self.poll = poll
        self.max_poll = max_poll

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages``, then pull until every reply is in or ``timeout`` seconds have
        passed (None: no limit), as Flower's own ``send_and_receive`` does."""
        messages = list(messages)
        kind = messages[0].metadata.message_type if messages else ""
        waiting = set(self.push_messages(messages))
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        replies: list[Message] = []
        interval, reported = self.poll, (0, started)
        while waiting and (deadline is None or time.monotonic() < deadline):
            pulled = list(self.pull_messages(waiting))
            replies.extend(pulled)
            waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
            reported = _progress(kind, len(replies), len(messages), started, reported)
            if waiting:
                remaining = math.inf if deadline is None else deadline - time.monotonic()
                time.sleep(max(0.0, min(interval, remaining)))
                interval = min(2 * interval, self.max_poll)
        return replies


def _progress(kind: str, done: int, total: int, started: float, reported: tuple) -> tuple:
    """Log ``done/total`` replies once the exchange is slow, at a new reply or every
    ``PROGRESS_EVERY`` s; returns what was last reported (count, time)."""
    now = time.monotonic()
    last_count, last_time = reported
    slow = now - started >= PROGRESS_AFTER
    if slow and (done > last_count or now - last_time >= PROGRESS_EVERY):
        logger.info("%s: %d/%d merchants replied (%.0f s)", kind, done, total, now - started)
        return done, now
    return reported
