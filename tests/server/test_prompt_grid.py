"""``PromptGrid``: replies come back as soon as they are in, not on Flower's 3 s beat."""

from __future__ import annotations

import time
from types import SimpleNamespace

from flwr.serverapp import Grid

import server.prompt_grid as prompt_grid
from server.prompt_grid import PromptGrid

TRAIN = SimpleNamespace(metadata=SimpleNamespace(message_type="train"))


class SlowMerchants(Grid):
    """A grid whose message ``i`` is answered ``delays[i]`` seconds after the push."""

    def __init__(self, delays: list[float]) -> None:
        self.delays = delays
        self.pushed_at = 0.0
        self.pulls = 0

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        raise NotImplementedError

    def get_node_ids(self):
        return list(range(len(self.delays)))

    def push_messages(self, messages):
        self.pushed_at = time.monotonic()
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        self.pulls += 1
        elapsed = time.monotonic() - self.pushed_at
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=f"m{i}"))
            for i, delay in enumerate(self.delays)
            if f"m{i}" in message_ids and elapsed >= delay
        ]

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("PromptGrid must not use the wrapped grid's send_and_receive")


def test_replies_come_back_promptly_with_few_pulls() -> None:
    inner = SlowMerchants([0.0, 0.2, 0.5])
    started = time.monotonic()
    replies = PromptGrid(inner).send_and_receive([TRAIN] * 3, timeout=10)
    took = time.monotonic() - started
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert 0.5 <= took < 1.2  # Flower's own grid: 3 s at least
    assert inner.pulls <= 10  # the interval grows: no busy loop


def test_a_timeout_returns_what_came_in() -> None:
    inner = SlowMerchants([0.0, 60.0])
    started = time.monotonic()
    replies = PromptGrid(inner, max_poll=0.1).send_and_receive([TRAIN] * 2, timeout=0.5)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 0.5 <= time.monotonic() - started < 1.0


def test_everything_else_is_the_wrapped_grids() -> None:
    inner = SlowMerchants([0.0, 0.0])
    grid = PromptGrid(inner)
    grid.set_run("run-7")
    assert grid.run == "run-7" and list(grid.get_node_ids()) == [0, 1]


def test_a_slow_exchange_shows_its_progress(monkeypatch, caplog) -> None:
    monkeypatch.setattr(prompt_grid, "PROGRESS_AFTER", 0.1)
    caplog.set_level("INFO", logger="server.prompt_grid")
    PromptGrid(SlowMerchants([0.0, 0.3, 0.6])).send_and_receive([TRAIN] * 3, timeout=10)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("train: 2/3 merchants replied") for line in lines)
    assert lines[-1].startswith("train: 3/3 merchants replied")
