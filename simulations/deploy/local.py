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

Without ``--insecure`` the SuperLink speaks TLS with a throw-away local CA and admits only
registered SuperNodes: each merchant gets an EC key pair (``keys/``), the operator registers the
public key (``flwr supernode register``) and the SuperNode signs with the private one.

Only approved apps run on a merchant (``client/approval.py``): the script builds this project's
FAB, exactly as ``flwr run .`` does, and writes its SHA-256 into each merchant's own
``approvals/<merchant>.txt``, named by the merchant's node config (``approved-apps``); each
merchant's warm SuperExec refuses any other app before any of its code runs. ``--cold`` (Flower's
own SuperExec) has no such check and says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from simulations.deploy.processes import (
    BIN,
    HOST,
    DeploymentError,
    ProcessGroup,
    check_completed,
    flower_env,
    free_port,
    signal_group,
    wait_for_port,
    wait_groups_gone,
    write_flower_config,
)

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONNECTION = "fedsynth-local"


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
    warm: bool = True  # ClientApps forked from a warm SuperExec (client.warm_exec)
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


# --- commands --------------------------------------------------------------------------------


def _security_flags(tls: dict[str, Path] | None) -> list[str]:
    if tls is None:
        return ["--insecure"]
    return [
        "--ssl-ca-certfile", str(tls["ca"]),
        "--ssl-certfile", str(tls["cert"]),
        "--ssl-keyfile", str(tls["key"]),
    ]  # fmt: skip


def superlink_command(
    port: int, tls: dict[str, Path] | None, database: Path, *, auth: bool = False
) -> list[str]:
    """One HTTP port serves the Fleet, Control and Runtime APIs (Flower 1.41)."""
    return [
        str(BIN / "flower-superlink"),
        *_security_flags(tls),
        "--host", HOST,
        "--port", str(port),
        "--database", str(database),
        "--disable-runtime-dependency-installation",
        *(["--enable-supernode-auth"] if auth else []),
    ]  # fmt: skip


def node_config(values: dict[str, object]) -> str:
    """``k="v" k2=0.2``: TOML values, as ``--node-config`` parses them."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def supernode_command(
    superlink_port: int,
    runtime_port: int,
    config: dict[str, object],
    tls: dict[str, Path] | None,
    auth_key: Path | None = None,
    *,
    warm: bool = False,
) -> list[str]:
    """``warm``: ClientApps come from a separate warm SuperExec (``client.warm_exec``)."""
    security = ["--insecure"] if tls is None else ["--root-certificates", str(tls["ca"])]
    if auth_key is not None:
        security += ["--auth-supernode-private-key", str(auth_key)]
    if warm:
        security += ["--isolation", "process"]
    return [
        str(BIN / "flower-supernode"),
        *security,
        "--superlink", f"{HOST}:{superlink_port}",
        "--host", HOST,
        "--port", str(runtime_port),
        "--node-config", node_config(config),
    ]  # fmt: skip


def warm_exec_command(runtime_port: int, supernode_pid: int) -> list[str]:
    """The merchant's warm SuperExec, on the SuperNode's local Runtime API (plain HTTP on
    127.0.0.1, as Flower's own SuperExec uses it)."""
    return [
        sys.executable, "-m", "client.warm_exec",
        "--runtime-api-address", f"{HOST}:{runtime_port}",
        "--insecure",
        "--parent-pid", str(supernode_pid),
    ]  # fmt: skip


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


# --- the federation --------------------------------------------------------------------------


class LocalFederation:
    """A SuperLink and one SuperNode per merchant on 127.0.0.1; everything stops on exit.

    ``tls``: a throw-away local CA and SuperLink certificate. ``auth`` (needs ``tls``): the
    SuperLink only admits SuperNodes whose public key was registered with
    ``flwr supernode register``; each merchant keeps its own private key. ``warm``: each
    SuperNode gets a warm SuperExec that forks ClientApps instead of starting Python anew.
    ``approve_project``: each merchant approves this project's FAB (as built right before each
    ``run`` of it, which submits that very bundle), and only that; ``approve`` adds other
    bundles. Warm SuperExecs refuse every app their merchant did not approve.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        tls: bool,
        auth: bool,
        startup_timeout: float,
        warm: bool = True,
        approve_project: bool = True,
    ) -> None:
        if auth and not tls:
            raise DeploymentError("SuperNode authentication needs TLS")
        self.run_dir = run_dir
        self.tls: dict[str, Path] | None = None
        self.auth = auth
        self.warm = warm
        self.startup_timeout = startup_timeout
        self.flwr_home = run_dir / "flwr-home"
        self.processes = ProcessGroup(flower_env(self.flwr_home), run_dir / "logs")
        self.port = 0
        self.merchants: dict[str, dict[str, object]] = {}  # name -> node config
        self._keys: dict[str, dict[str, Path]] = {}
        self._use_tls = tls
        self.approve_project = approve_project
        self.approvals_dir = run_dir / "approvals"
        self.approved: dict[str, list] = {}  # merchant -> AppIdentity list (its own file)
        self._project_app = None  # this project's AppIdentity, as last built

    def __enter__(self) -> LocalFederation:
        try:
            if self._use_tls:
                from simulations.deploy.tls import make_local_certificates

                self.tls = make_local_certificates(self.run_dir / "certs")
            self.port = free_port()
            database = self.run_dir / "superlink.db"
            self.processes.start(
                "superlink", superlink_command(self.port, self.tls, database, auth=self.auth)
            )
            wait_for_port(self.port, self.startup_timeout, self.processes)
            write_flower_config(self.flwr_home, connection=CONNECTION, port=self.port, tls=self.tls)
        except BaseException:
            self.processes.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.processes.stop()
        logger.info("stopped all Flower processes")

    @property
    def started(self) -> list[int]:
        return self.processes.started

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """A ``flwr`` CLI command against this federation's SuperLink."""
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            cwd=PROJECT_ROOT,
            env=self.processes.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def keys(self, merchant: str) -> dict[str, Path]:
        """The merchant's key pair (made once, so a restarted SuperNode keeps its identity)."""
        if merchant not in self._keys:
            from simulations.deploy.tls import make_supernode_keys

            self._keys[merchant] = make_supernode_keys(self.run_dir / "keys", merchant)
        return self._keys[merchant]

    def register(self, merchant: str) -> None:
        """What the SuperLink operator does for each merchant's public key."""
        done = self.flwr("supernode", "register", str(self.keys(merchant)["public"]), CONNECTION)
        if done.returncode != 0:
            raise DeploymentError(
                f"registering {merchant}'s SuperNode failed: {done.stdout}{done.stderr}"
            )

    def project_app(self, *, rebuild: bool = False):
        """This project's FAB identity (``client.approval.AppIdentity``), built from its app
        folder (``simulations.engine.write_app``, at ``<run-dir>/app``) as ``flwr run`` builds
        it; ``run`` submits that folder: the bytes approved are the bytes sent, even if the
        working tree changes in between (Flower's builder is deterministic)."""
        if self._project_app is None or rebuild:
            from client.approval import build_fab, fab_identity
            from simulations.engine import write_app

            snapshot = write_app(self.run_dir / "app")
            self._project_app = fab_identity(build_fab(snapshot))
        return self._project_app

    def approval_file(self, merchant: str) -> Path:
        return (self.approvals_dir / f"{merchant}.txt").resolve()

    def approve(self, merchant: str, *apps) -> Path:
        """What a merchant's operator does: add app identities to its own approved list."""
        from client.approval import write_approvals

        listed = self.approved.setdefault(merchant, [])
        listed.extend(app for app in apps if app not in listed)
        return write_approvals(self.approval_file(merchant), listed)

    def _approve_project(self) -> None:
        """(Re-)approve the project as it is now on every merchant (the tree may have changed
        since the merchants started); the SuperExecs read their file at each task."""
        old, new = self._project_app, self.project_app(rebuild=True)
        for merchant, listed in self.approved.items():
            self.approved[merchant] = [app for app in listed if app != old]
            self.approve(merchant, new)

    def start_merchant(
        self, merchant: str, config: dict[str, object] | None = None, *, register: bool = True
    ) -> subprocess.Popen:
        """Start (or restart, with the same config and key) a merchant's SuperNode."""
        if config is not None:
            if self.approve_project:
                config = {"approved-apps": str(self.approval_file(merchant)), **config}
            self.merchants[merchant] = config
        if self.approve_project and merchant not in self.approved:
            self.approve(merchant, self.project_app())
        key = None
        if self.auth:
            if register and merchant not in self._keys:
                self.register(merchant)
            key = self.keys(merchant)["private"]
        runtime_port = free_port()
        argv = supernode_command(
            self.port, runtime_port, self.merchants[merchant], self.tls, key, warm=self.warm
        )
        node = self.processes.start(merchant, argv)
        if self.warm:
            wait_for_port(runtime_port, self.startup_timeout, self.processes)
            self.processes.start(f"{merchant}-exec", warm_exec_command(runtime_port, node.pid))
        return node

    def kill(self, merchant: str) -> None:
        """SIGKILL a merchant's SuperNode, its SuperExec and their ClientApps (a crash)."""
        for name in (merchant, f"{merchant}-exec"):
            proc = self.processes.procs.pop(name, None)
            if proc is None:
                continue
            signal_group(proc, signal.SIGKILL, name)
            proc.wait(timeout=10)
            wait_groups_gone([proc.pid], timeout=10.0)
            logger.warning("killed %s (pgid %d)", name, proc.pid)

    def run(
        self,
        run_config: Path | None,
        *,
        timeout: float,
        watch: Callable[[], None] | None = None,
        app: Path = PROJECT_ROOT,
    ) -> None:
        """``flwr run <app> <connection> --stream`` until it ends; ``watch()`` is called while
        it runs. A SuperNode that dies is a merchant's fault the run survives; the SuperLink
        dying is not. ``app``: this project by default (re-approved first, see
        ``approve_project``); any other app runs only where a merchant approved it."""
        if self.approve_project and Path(app).resolve() == PROJECT_ROOT:
            self._approve_project()
            app = self.run_dir / "app"  # exactly the bundle just approved
        argv = [str(BIN / "flwr"), "run", str(Path(app).resolve()), CONNECTION, "--stream"]
        if run_config is not None:
            argv += ["--run-config", str(run_config)]
        proc = self.processes.start("flwr-run", argv, cwd=PROJECT_ROOT)
        deadline = time.monotonic() + timeout
        reported: set[str] = set()
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise DeploymentError(f"the run did not finish in {timeout:.0f} s")
                link = self.processes.procs["superlink"]
                if link.poll() is not None:
                    raise DeploymentError(f"the SuperLink exited with {link.returncode}")
                for name, other in self.processes.procs.items():
                    if name in self.merchants and other.poll() is not None and name not in reported:
                        reported.add(name)
                        logger.warning("%s's SuperNode exited with %s", name, other.returncode)
                if watch is not None:
                    watch()
                time.sleep(0.5)
        finally:
            self.processes.procs.pop("flwr-run", None)
            if proc.poll() is None:
                signal_group(proc, signal.SIGKILL, "flwr-run")
        if proc.returncode != 0:
            raise DeploymentError(f"flwr run exited with {proc.returncode}; see logs/flwr-run.log")
        check_completed(self.processes.env, CONNECTION, self.processes.log_dir / "flwr-run.log")


def merchant_config(
    run_dir: Path,
    merchant: str,
    data_path: Path,
    holdout_fraction: float,
    *,
    metadata: Path,
    run_config: dict,
) -> dict[str, object]:
    """A merchant's node config: its table, its ledger file and its own privacy policy (here
    the run's budget, since this script plays every merchant; ``client/policy.py``)."""
    epsilon = float(run_config.get("epsilon", 1.0))
    return {
        "data-path": str(data_path),
        "state-path": str((run_dir / "state" / f"{merchant}.json").resolve()),
        "merchant-id": merchant,
        "holdout-fraction": holdout_fraction,
        "metadata-path": str(metadata),
        "epsilon-budget": epsilon if math.isfinite(epsilon) else "inf",
        "max-delta": float(run_config.get("delta", 1e-5)),
        "allow-non-private": not math.isfinite(epsilon),
    }


def rounds_seconds(run_dir: Path) -> list[float]:
    path = run_dir / "rounds.jsonl"
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # Training rounds only: the warm start's marginal phases time themselves from elsewhere.
    return [float(e["seconds"]) for e in entries if "seconds" in e and "phase" not in e]


def check_finished(run_dir: Path, rounds: int) -> Path:
    """The artifact, if it holds ``rounds`` completed rounds (``flwr run`` exits 0 even when
    the ServerApp failed)."""
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
        "Model weights, DP statistics and privacy ledgers travel unencrypted, and any process\n"
        "that reaches the port can join as a merchant. Use this only on 127.0.0.1 for tests;\n"
        "never across machines.\n%s",
        "!" * 78,
        "!" * 78,
    )


def run_local_deployment(settings: DeploymentSettings) -> DeploymentResult:
    """Partition, start SuperLink + SuperNodes, run the apps, stop everything."""
    run_dir = Path(settings.out).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if settings.insecure:
        warn_insecure()
    if not settings.warm:
        logger.warning(
            "--cold: Flower's own SuperExec runs whatever app the SuperLink sends; the approved-"
            "apps check (client/approval.py) needs the warm SuperExec (client.warm_exec)"
        )
    data_paths, metadata, dataset = prepare_data(settings, run_dir)
    run_config = write_run_config(settings, run_dir, metadata, dataset)
    started = time.perf_counter()
    federation = LocalFederation(
        run_dir,
        tls=not settings.insecure,
        auth=not settings.insecure,
        startup_timeout=settings.startup_timeout,
        warm=settings.warm,
    )
    with federation:
        for i, data_path in enumerate(data_paths):
            merchant = f"merchant-{i}"
            config = merchant_config(
                run_dir,
                merchant,
                data_path,
                settings.holdout_fraction,
                metadata=metadata,
                run_config=settings.run_config,
            )
            federation.start_merchant(merchant, config)
        federation.run(run_config, timeout=settings.run_timeout)
    seconds = time.perf_counter() - started
    artifact = check_finished(run_dir, settings.rounds)
    states = {m: Path(str(c["state-path"])) for m, c in federation.merchants.items()}
    return DeploymentResult(
        run_dir, artifact, states, seconds, rounds_seconds(run_dir), federation.started
    )


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
    parser.add_argument(
        "--cold", action="store_true", help="Flower's SuperExec: a new Python per message"
    )
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
        warm=not args.cold,
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
