"""A process and its descendants, read from ``/proc``: resident memory, and stopping them all.

Linux only, like the benchmark's memory figures. Every read tolerates a process that exits
while being looked at: it then counts as using no memory and having no children."""

from __future__ import annotations

import contextlib
import os
import signal


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and all its descendants (children of every thread, not only the main one)."""
    out, stack = [], [pid]
    while stack:
        current = stack.pop()
        if current in out:
            continue
        out.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    stack.extend(int(p) for p in handle.read().split())
            except OSError:
                continue
    return out


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid``'s whole process tree (for a federation: Ray's too)."""
    return sum(rss_bytes(p) for p in descendants(pid))


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants, the deepest first."""
    for p in reversed(descendants(pid)):
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
