"""A SuperExec for a merchant's SuperNode that starts each ClientApp from a warm process.

Flower's SuperNode runs every message in a fresh ``flwr-clientapp`` process, and each one
imports torch, Opacus and pandas again: seconds per message on a small machine. This SuperExec
imports them once, then forks one child per task; the child runs Flower's own ``run_clientapp``
(the same Runtime API protocol and the same isolation: one process per message that exits when
it is done, sharing nothing with the next one but the modules imported before the fork).

    flower-supernode ... --isolation process --host 127.0.0.1 --port 9094
    python -m client.warm_exec --runtime-api-address 127.0.0.1:9094 --insecure

The SuperNode's Runtime API listens on the merchant's own machine; ``--root-certificates`` is
for a Runtime API served with TLS (``--appio-ssl-*`` on the SuperNode).

Only approved apps run (``client/approval.py``): before a task's FAB is installed or any of its
code imported, its SHA-256 must be on the merchant's list (``--approved-apps``, and
``approved-apps`` in the node config or policy file); otherwise the task fails with an error
reply, and the log prints the line that would approve it. No list: every app is refused. This
SuperExec acquires ClientApp tasks only (no AgentApp, model or connector tasks).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

# What every fedsynth ClientApp imports; the app's own modules are loaded fresh from its FAB.
PRELOAD = ("torch", "opacus", "pandas", "scipy.stats", "flwr.clientapp")
POLL_INTERVAL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
POLL_INTERVAL = "0.1"  # seconds between task polls (Flower's default: 1)


class ForkExecutor:
    """Flower's SuperExec ``Executor`` protocol: ClientApp tasks are forked from this
    process; any other task type goes to Flower's subprocess executor."""

    def __init__(self, *, certificates: bytes | None, approved_apps: tuple[str, ...] = ()) -> None:
        from flwr.supercore.superexec.executor import SubprocessExecutor

        self.certificates = certificates
        self.approved_apps = approved_apps  # hashes or files; plus the node config's
        self.children: set[int] = set()
        self._fallback = SubprocessExecutor()

    def get_eligible_capacity(self, supported_task_types: set, **_: object) -> tuple[set, set]:
        """ClientApp tasks only: the approval check is on the forked path (any other task
        type is never acquired, so never run unchecked)."""
        from flwr.supercore.constant import TaskType

        return supported_task_types & {TaskType.CLIENT_APP}, set()

    def wait_for_capacity(self, *_: object, **__: object) -> None:
        """Forking has no capacity gate."""

    def launch(self, spec):
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:
            return self._fallback.launch(spec)
        pid = os.fork()
        if pid == 0:  # the child: run one ClientApp task, never return into the poll loop
            os._exit(self._run_task(spec))
        self.children.add(pid)
        logger.debug("task %d: forked ClientApp process %d", spec.task_id, pid)
        return LaunchResult.accepted()

    def _run_task(self, spec) -> int:
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        from client.approval import ApprovalGate

        try:
            ApprovalGate(self.approved_apps).install_into_flower()  # this child only
            run_clientapp(
                runtime_api_address=spec.runtime_api_address,
                token=spec.token,
                insecure=spec.insecure,
                certificates=self.certificates,
                parent_pid=os.getppid(),
                runtime_dependency_install=False,
            )
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:  # the child must exit, whatever happened
            logger.exception("ClientApp task %d failed", spec.task_id)
            return 1
        return 0

    def reconcile(self) -> None:
        """Reap finished children (no zombies between polls)."""
        for pid in list(self.children):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                self.children.discard(pid)

    def close(self) -> None:
        self.reconcile()


def preload(modules: tuple[str, ...] = PRELOAD) -> None:
    for name in modules:
        importlib.import_module(name)


def run(
    *,
    runtime_api_address: str,
    insecure: bool,
    root_certificates: str | None = None,
    parent_pid: int | None = None,
    approved_apps: tuple[str, ...] = (),
) -> None:
    """Preload, then run Flower's SuperExec loop with :class:`ForkExecutor` (forever)."""
    os.environ.setdefault(POLL_INTERVAL_ENV, POLL_INTERVAL)
    preload()
    from flwr.supercore.superexec import run_superexec as superexec

    certificates = Path(root_certificates).read_bytes() if root_certificates else None
    executor = ForkExecutor(certificates=certificates, approved_apps=approved_apps)
    # Flower 1.41 builds its executor by name inside run_superexec; this is the one seam that
    # lets the same loop (task acquisition, signals, parent monitoring) launch by fork.
    superexec.get_executor = lambda *_, **__: executor
    superexec.run_superexec(
        runtime_api_address=runtime_api_address,
        insecure=insecure,
        root_certificates_path=root_certificates,
        parent_pid=parent_pid,
        runtime_dependency_install=False,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m client.warm_exec", description=__doc__)
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's host:port")
    security = parser.add_mutually_exclusive_group(required=True)
    security.add_argument("--insecure", action="store_true")
    security.add_argument("--root-certificates", help="CA of a TLS Runtime API")
    parser.add_argument("--parent-pid", type=int, help="exit when this process exits")
    parser.add_argument(
        "--approved-apps", action="append", default=[], metavar="SHA256_OR_FILE",
        help="an approved FAB SHA-256, or a file of them one a line (repeatable); added to the "
        "node config's approved-apps. None anywhere: every app is refused",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    run(
        runtime_api_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates=args.root_certificates,
        parent_pid=args.parent_pid,
        approved_apps=tuple(args.approved_apps),
    )


if __name__ == "__main__":
    sys.exit(main())
