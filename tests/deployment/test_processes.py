"""``ProcessGroup.stop`` ends what its processes started in sessions of their own (as a
SuperLink starts its SuperExec, and that one the simulation and Ray)."""

from __future__ import annotations

import sys
import time

from simulations.deploy import processes

# A parent that starts a child in a new session (its own process group), then waits.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                         start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""


def test_stop_ends_the_groups_of_descendants_in_their_own_sessions(tmp_path) -> None:
    group = processes.ProcessGroup(processes.flower_env(tmp_path / "home"), tmp_path / "logs")
    parent = group.start("parent", [sys.executable, "-c", PARENT])
    log = tmp_path / "logs" / "parent.log"
    deadline = time.monotonic() + 30
    while not log.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(log.read_text().split()[0])
    assert processes.descendant_groups([parent.pid]) == [child]  # its own group, found
    group.stop(grace=5.0)
    assert not processes.group_alive(parent.pid)
    assert not processes.group_alive(child)
