"""A whole federation on Flower's deployment engine, on this machine (127.0.0.1 only).

One ``flower-superlink``, one ``flower-supernode`` per merchant (each with its own node config:
``data-path``, ``state-path``, ``merchant-id``, ``holdout-fraction``), then
``flwr run . <connection> --stream --run-config <toml>`` from the project root. Every process
started here runs in its own process group and is stopped (SIGTERM, then SIGKILL) whatever
happens, KeyboardInterrupt included. Flower's CLI state lives in a private ``FLWR_HOME`` inside
the run folder, so the user's ``~/.flwr`` is never touched.

    python -m simulations.deploy.local --merchants 3 --rounds 2 --out runs/deploy --insecure

Layout of ``--out``: ``merchants/merchant-<i>.csv``, ``metadata.json``, ``state/merchant-<i>.json``
(the merchants' privacy ledgers), ``synthesizer`` (the artifact), ``logs/*.log``, ``flwr-home/``,
``run-config.toml``.

Without ``--insecure`` the SuperLink speaks TLS with a throw-away local CA (``--tls`` is the
default); SuperNode authentication is not set up yet.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
CONNECTION = "fedsynth-local"
_BIN = Path(sys.executable).parent
_FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    # Each ClientApp runs in its own process next to the others: one torch thread each.
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


class DeploymentError(RuntimeError):
    """The local deployment did not start or the run did not finish."""


@dataclass
class DeploymentSettings:
    merchants: int = 3
    rounds: int = 2
    out: Path = Path("runs/deploy")
    insecure: bool = False
    dataset: str = "pizzaplace"
    rows_per_merchant: int = 0  # 0: the whole table
    seed: int = 0
    holdout_fraction: float = 0.2
    run_config: dict = field(default_factory=dict)  # extra [tool.flwr.app.config] overrides
    startup_timeout: float = 60.0
    run_timeout: float = 1800.0


@dataclass
class DeploymentResult:
    run_dir: Path
    artifact: Path
    state_paths: dict[str, Path]
    seconds: float
    rounds_seconds: list[float]
    pids: list[int] = field(default_factory=list)  # process-group leaders started (all stopped)


# --- processes -------------------------------------------------------------------------------


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
        """SIGTERM every group, wait up to ``grace`` seconds, then SIGKILL what is left."""
        for name, proc in reversed(self.procs.items()):
            _signal_group(proc, signal.SIGTERM, name)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for name, proc in self.procs.items():
            # Also the group: a ClientApp/ServerApp child may outlive its parent.
            _signal_group(proc, signal.SIGKILL, name, quiet=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        left = _wait_groups_gone([p.pid for p in self.procs.values()], timeout=10.0)
        if left:
            logger.error("process groups still alive after SIGKILL: %s", left)
        self.procs.clear()

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise DeploymentError(
                    f"{name} exited with {proc.returncode}; see {self.log_dir / name}.log"
                )


def _signal_group(proc: subprocess.Popen, sig: int, name: str, quiet: bool = False) -> None:
    try:
        os.killpg(proc.pid, sig)  # pgid == pid: start_new_session=True
    except (ProcessLookupError, PermissionError):
        return
    if not quiet:
        logger.debug("sent %s to %s (pgid %d)", signal.Signals(sig).name, name, proc.pid)


def group_alive(pgid: int) -> bool:
    """Whether any process (a not-yet-reaped zombie included) is in group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_groups_gone(pgids: list[int], timeout: float) -> list[int]:
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
    env = {**os.environ, **_FLOWER_ENV, "FLWR_HOME": str(flwr_home)}
    env["PATH"] = f"{_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


# --- commands --------------------------------------------------------------------------------


def _security_flags(tls: dict[str, Path] | None) -> list[str]:
    if tls is None:
        return ["--insecure"]
    return [
        "--ssl-ca-certfile", str(tls["ca"]),
        "--ssl-certfile", str(tls["cert"]),
        "--ssl-keyfile", str(tls["key"]),
    ]  # fmt: skip


def superlink_command(port: int, tls: dict[str, Path] | None, database: Path) -> list[str]:
    """One HTTP port serves the Fleet, Control and Runtime APIs (Flower 1.41)."""
    return [
        str(_BIN / "flower-superlink"),
        *_security_flags(tls),
        "--host", HOST,
        "--port", str(port),
        "--database", str(database),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip


def node_config(values: dict[str, object]) -> str:
    """``k="v" k2=0.2``: TOML values, as ``--node-config`` parses them."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def supernode_command(
    superlink_port: int, runtime_port: int, config: dict[str, object], tls: dict[str, Path] | None
) -> list[str]:
    security = ["--insecure"] if tls is None else ["--root-certificates", str(tls["ca"])]
    return [
        str(_BIN / "flower-supernode"),
        *security,
        "--superlink", f"{HOST}:{superlink_port}",
        "--host", HOST,
        "--port", str(runtime_port),
        "--node-config", node_config(config),
    ]  # fmt: skip


def write_flower_config(flwr_home: Path, superlink_port: int, tls: dict[str, Path] | None) -> Path:
    """``$FLWR_HOME/config.toml`` with one connection, ``CONNECTION``, made the default."""
    connection: dict[str, object] = {"address": f"{HOST}:{superlink_port}"}
    if tls is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(tls["ca"])
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}}))
    return path


# --- data ------------------------------------------------------------------------------------


def prepare_data(settings: DeploymentSettings, run_dir: Path) -> tuple[list[Path], Path, object]:
    """Merchant CSVs and the metadata JSON in ``run_dir``; returns (paths, metadata, dataset)."""
    from simulations.datasets import load_dataset
    from simulations.partition import partition_table, write_partitions

    dataset = load_dataset(settings.dataset)
    table = dataset.table
    if settings.rows_per_merchant:
        rows = min(len(table), settings.rows_per_merchant * settings.merchants)
        table = table.sample(n=rows, random_state=settings.seed).sort_index()
        table = table.reset_index(drop=True)
    parts = partition_table(table, "iid", num_merchants=settings.merchants, seed=settings.seed)
    paths = write_partitions(parts, run_dir / "merchants")
    metadata = run_dir / "metadata.json"
    metadata.write_text(json.dumps(dataset.metadata, indent=1))
    return [p.resolve() for p in paths], metadata.resolve(), dataset


def write_run_config(settings: DeploymentSettings, run_dir: Path, metadata: Path, dataset) -> Path:
    """Overrides of ``[tool.flwr.app.config]`` as a TOML file (no shell quoting of JSON)."""
    overrides = {
        "run-dir": str(run_dir.resolve()),
        "metadata-path": str(metadata),
        "table-name": dataset.table_name,
        "target": dataset.target or "",
        "num-rounds": settings.rounds,
        "min-nodes": settings.merchants,
        "seed": settings.seed,
        **settings.run_config,
    }
    path = run_dir / "run-config.toml"
    path.write_text(tomli_w.dumps(overrides))
    return path


# --- the run ---------------------------------------------------------------------------------


def start_federation(
    processes: ProcessGroup,
    run_dir: Path,
    data_paths: list[Path],
    settings: DeploymentSettings,
    tls: dict[str, Path] | None,
) -> int:
    """SuperLink, then one SuperNode per merchant; returns the SuperLink's port."""
    port = free_port()
    processes.start("superlink", superlink_command(port, tls, run_dir / "superlink.db"))
    wait_for_port(port, settings.startup_timeout, processes)
    for i, data_path in enumerate(data_paths):
        merchant = f"merchant-{i}"
        config = {
            "data-path": str(data_path),
            "state-path": str((run_dir / "state" / f"{merchant}.json").resolve()),
            "merchant-id": merchant,
            "holdout-fraction": settings.holdout_fraction,
        }
        processes.start(merchant, supernode_command(port, free_port(), config, tls))
    return port


def run_app(processes: ProcessGroup, run_config: Path, timeout: float) -> None:
    """``flwr run . <connection> --stream``; waits for it, watching the other processes."""
    argv = [
        str(_BIN / "flwr"), "run", ".", CONNECTION, "--stream", "--run-config", str(run_config),
    ]  # fmt: skip
    proc = processes.start("flwr-run", argv, cwd=PROJECT_ROOT)
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise DeploymentError(f"the run did not finish in {timeout:.0f} s")
        others = {n: p for n, p in processes.procs.items() if n != "flwr-run"}
        for name, other in others.items():
            if other.poll() is not None:
                raise DeploymentError(f"{name} exited with {other.returncode} during the run")
        time.sleep(0.5)
    if proc.returncode != 0:
        raise DeploymentError(f"flwr run exited with {proc.returncode}; see logs/flwr-run.log")


def _rounds_seconds(run_dir: Path) -> list[float]:
    path = run_dir / "rounds.jsonl"
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [float(e["seconds"]) for e in entries if "seconds" in e]


def _check_finished(run_dir: Path, rounds: int) -> Path:
    from synth_models.artifact import load_artifact

    artifact = run_dir / "synthesizer"
    if not artifact.exists():
        raise DeploymentError(f"no artifact in {run_dir}; see {run_dir / 'logs'}")
    manifest, _ = load_artifact(artifact)
    done = int(manifest["federation"]["rounds_completed"])
    if done != rounds:
        raise DeploymentError(f"the artifact has {done} of {rounds} rounds")
    return artifact


def warn_insecure() -> None:
    logger.warning(
        "\n%s\nINSECURE MODE: SuperLink, SuperNodes and the CLI talk plain HTTP without TLS.\n"
        "Model weights, DP statistics and privacy ledgers travel unencrypted. Use this only\n"
        "on 127.0.0.1 for tests; never across machines.\n%s",
        "!" * 78,
        "!" * 78,
    )


@contextlib.contextmanager
def _processes(run_dir: Path) -> Iterator[ProcessGroup]:
    processes = ProcessGroup(flower_env(run_dir / "flwr-home"), run_dir / "logs")
    try:
        yield processes
    finally:
        processes.stop()
        logger.info("stopped all Flower processes")


def run_local_deployment(settings: DeploymentSettings) -> DeploymentResult:
    """Partition, start SuperLink + SuperNodes, run the apps, stop everything."""
    run_dir = Path(settings.out).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if settings.insecure:
        warn_insecure()
        tls = None
    else:
        from simulations.deploy.tls import make_local_certificates

        tls = make_local_certificates(run_dir / "certs")
    data_paths, metadata, dataset = prepare_data(settings, run_dir)
    run_config = write_run_config(settings, run_dir, metadata, dataset)
    started = time.perf_counter()
    pids: list[int] = []
    with _processes(run_dir) as processes:
        pids = processes.started
        port = start_federation(processes, run_dir, data_paths, settings, tls)
        write_flower_config(run_dir / "flwr-home", port, tls)
        run_app(processes, run_config, settings.run_timeout)
    seconds = time.perf_counter() - started
    artifact = _check_finished(run_dir, settings.rounds)
    states = {
        f"merchant-{i}": run_dir / "state" / f"merchant-{i}.json" for i in range(len(data_paths))
    }
    return DeploymentResult(run_dir, artifact, states, seconds, _rounds_seconds(run_dir), pids)


# --- CLI -------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.deploy.local", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--merchants", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="run folder (created)")
    security = parser.add_mutually_exclusive_group()
    security.add_argument("--insecure", action="store_true", help="no TLS (localhost tests only)")
    security.add_argument("--tls", action="store_true", help="TLS with a local CA (default)")
    parser.add_argument("--rows-per-merchant", type=int, default=0, help="subsample; 0: all rows")
    parser.add_argument("--holdout-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for the run")
    parser.add_argument(
        "--run-config", action="append", default=[], metavar="KEY=TOML",
        help="extra run config override, e.g. --run-config 'audit=false' (repeatable)",
    )  # fmt: skip
    return parser.parse_args(argv)


def _overrides(pairs: list[str]) -> dict:
    import tomllib

    return tomllib.loads("\n".join(pairs)) if pairs else {}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = _parse_args(argv)
    settings = DeploymentSettings(
        merchants=args.merchants,
        rounds=args.rounds,
        out=args.out,
        insecure=args.insecure,
        rows_per_merchant=args.rows_per_merchant,
        seed=args.seed,
        holdout_fraction=args.holdout_fraction,
        run_config=_overrides(args.run_config),
        run_timeout=args.timeout,
    )
    try:
        result = run_local_deployment(settings)
    except DeploymentError as exc:
        logger.error("%s", exc)
        return 1
    print(f"artifact: {result.artifact}")
    print(f"seconds: {result.seconds:.1f}; after each round: {result.rounds_seconds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
