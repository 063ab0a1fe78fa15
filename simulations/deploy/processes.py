"""Flower's processes on this machine: each started in its own process group, logged to a
file, and stopped (SIGTERM, then SIGKILL, groups included) whatever happens. Shared by the local
deployment (``simulations.deploy.local``) and the local simulation engine
(``simulations.engine``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import tomli_w

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    # Each ClientApp runs in its own process next to the others: one torch thread each.
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


class DeploymentError(RuntimeError):
    """The local deployment did not start or the run did not finish."""


class ProcessGroup:
    """Subprocesses, each the leader of its own process group; ``stop`` ends every group."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.started: list[int] = []

    def start(self, name: str, argv: list[str], cwd: Path | None = None) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.procs[name] = proc
        self.started.append(proc.pid)
        logger.info("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return proc

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every group, and those of their descendants, wait up to ``grace`` seconds,
        then SIGKILL what is left."""
        # A SuperLink starts its SuperExec in a session of its own, and with it the simulation
        # and Ray: found before anything stops (once orphaned they are init's, not its).
        spawned = descendant_groups([p.pid for p in self.procs.values()])
        for name, proc in reversed(self.procs.items()):
            signal_group(proc, signal.SIGTERM, name)
        for pgid in spawned:
            kill_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        # What the SuperExec started (the simulation, Ray) has no one to report to once the
        # SuperLink is gone: it gets no more time of its own.
        for name, proc in self.procs.items():
            # Also the group: a ClientApp/ServerApp child may outlive its parent.
            signal_group(proc, signal.SIGKILL, name, quiet=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for pgid in spawned:
            kill_group(pgid, signal.SIGKILL)
        left = wait_groups_gone([p.pid for p in self.procs.values()] + spawned, timeout=10.0)
        if left:
            logger.error("process groups still alive after SIGKILL: %s", left)
        self.procs.clear()

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise DeploymentError(
                    f"{name} exited with {proc.returncode}; see {self.log_dir / name}.log"
                )


def signal_group(proc: subprocess.Popen, sig: int, name: str, quiet: bool = False) -> None:
    try:
        os.killpg(proc.pid, sig)  # pgid == pid: start_new_session=True
    except (ProcessLookupError, PermissionError):
        return
    if not quiet:
        logger.debug("sent %s to %s (pgid %d)", signal.Signals(sig).name, name, proc.pid)


def kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def descendant_groups(pids: list[int]) -> list[int]:
    """The process groups of ``pids``' descendants other than theirs and this process' own
    (read from Linux's ``/proc``; none where there is no ``/proc``)."""
    children: dict[int, list[int]] = {}
    groups: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # "pid (name) state ppid pgrp ...": the name may hold blanks and parentheses
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        pid = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(pid)
        groups[pid] = int(fields[2])
    found: list[int] = []
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            if groups[child] not in found:
                found.append(groups[child])
    return [g for g in found if g not in pids and g != os.getpgrp()]


def group_alive(pgid: int) -> bool:
    """Whether any process (a not-yet-reaped zombie included) is in group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_groups_gone(pgids: list[int], timeout: float) -> list[int]:
    """Killed grandchildren linger until init reaps them; returns the groups still there."""
    deadline = time.monotonic() + timeout
    left = [g for g in pgids if group_alive(g)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [g for g in left if group_alive(g)]
    return left


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, processes: ProcessGroup) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes.check_alive()
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.2)
    raise DeploymentError(f"nothing listens on {HOST}:{port} after {timeout:.0f} s")


def flower_env(flwr_home: Path) -> dict[str, str]:
    env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(flwr_home)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_status(env: dict[str, str], connection: str) -> tuple[str, str]:
    """Status and details of the newest run on a SuperLink (``flwr ls``)."""
    listed = subprocess.run(
        [str(BIN / "flwr"), "ls", connection, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        runs = json.loads(listed.stdout[listed.stdout.index("{") :])["runs"]
        newest = max(runs, key=lambda run: run["pending-at"])
        return str(newest["status"]), str(newest["status-details"])
    except (ValueError, KeyError) as exc:
        raise DeploymentError(f"cannot read the run status: {listed.stdout}") from exc


def check_completed(
    env: dict[str, str], connection: str, log: Path, error: type[DeploymentError] = DeploymentError
) -> None:
    """Raise ``error`` unless the newest run completed: ``flwr run --stream`` exits 0 whatever
    became of the ServerApp, so only the SuperLink can say."""
    status, details = run_status(env, connection)
    if status != "finished:completed":
        raise error(f"the run ended {status} ({details}); see {log}")


def write_flower_config(
    flwr_home: Path, *, connection: str, port: int, tls: dict[str, Path] | None = None
) -> Path:
    """``$FLWR_HOME/config.toml`` with one connection to 127.0.0.1:``port``, the default."""
    settings: dict[str, object] = {"address": f"{HOST}:{port}"}
    if tls is None:
        settings["insecure"] = True
    else:
        settings["root-certificates"] = str(tls["ca"])
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(tomli_w.dumps({"superlink": {"default": connection, connection: settings}}))
    return path
