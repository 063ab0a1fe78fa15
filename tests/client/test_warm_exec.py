"""The warm SuperExec forks one child per ClientApp task and reaps it; other task types go to
Flower's subprocess executor. (The whole path runs in tests/deployment.)"""

from __future__ import annotations

import os
import time

from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec

from client.warm_exec import ForkExecutor


def _spec(task_type: TaskType) -> ExecutionSpec:
    return ExecutionSpec(
        task_type=task_type,
        runtime_api_address="127.0.0.1:1",
        token="token",
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        parent_pid=None,
        suppress_output=True,
        task_id=7,
    )


def test_clientapp_tasks_are_forked_and_reaped(tmp_path, monkeypatch):
    marker = tmp_path / "ran"

    def run_task(self, spec) -> int:
        marker.write_text(f"{spec.task_id} {os.getppid()}")
        return 3

    monkeypatch.setattr(ForkExecutor, "_run_task", run_task)
    executor = ForkExecutor(certificates=None)
    result = executor.launch(_spec(TaskType.CLIENT_APP))
    assert result.status == "accepted"
    (child,) = executor.children
    deadline = time.monotonic() + 10
    while executor.children and time.monotonic() < deadline:
        executor.reconcile()
        time.sleep(0.05)
    assert not executor.children  # reaped: no zombie left behind
    assert marker.read_text() == f"7 {os.getpid()}"  # ran in a child of this process
    assert child != os.getpid()


def test_other_task_types_use_flowers_subprocess_executor(monkeypatch):
    launched = []
    executor = ForkExecutor(certificates=None)
    monkeypatch.setattr(executor._fallback, "launch", launched.append)
    executor.launch(_spec(TaskType.SERVER_APP))
    assert [s.task_type for s in launched] == [TaskType.SERVER_APP]
    assert not executor.children
