"""Flower's supported simulation path: ``flwr run`` against a local simulation SuperLink.

``run_simulation`` is deprecated since Flower 1.41. Here a ``flower-superlink --simulation`` on
127.0.0.1 (its own ``FLWR_HOME`` inside the run folder, so ``~/.flwr`` is never touched) runs an
app folder, exactly as a deployment does: the same FAB, the same run config, the ServerApp and
ClientApps loaded from the bundle. The SuperLink and everything it starts are stopped when the
``LocalSimulation`` closes, Ctrl-C included.

An app folder is this project's code and ``pyproject.toml`` (``write_app``); tests add modules of
their own (an attacker's ServerApp, an inspecting ClientApp) and point the components at them.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
import time
import tomllib
from pathlib import Path

import tomli_w

from server.run_log import MARKER
from simulations.deploy.processes import (
    BIN,
    HOST,
    DeploymentError,
    ProcessGroup,
    check_completed,
    flower_env,
    free_port,
    wait_for_port,
    write_flower_config,
)

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
APP_PARTS = (
    "pyproject.toml",
    "README.md",
    "client",
    "privacy",
    "server",
    "simulations",
    "synth_models",
)
CONNECTION = "fedsynth-simulation"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class SimulationError(DeploymentError):
    """The simulation did not start, or its run did not complete."""


def write_app(
    dest: Path,
    *,
    modules: dict[str, Path] | None = None,
    components: dict[str, str] | None = None,
    config: dict[str, object] | None = None,
) -> Path:
    """This project as an app folder at ``dest`` (what ``flwr run`` bundles: sources and
    ``pyproject.toml``, no data, no virtualenv). ``modules``: extra files copied to the app's
    root (name -> source file); ``components``: ``serverapp``/``clientapp`` overrides;
    ``config``: extra ``[tool.flwr.app.config]`` keys (run-config keys must be declared there)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "test_*.py")
    for part in APP_PARTS:
        source = PROJECT_ROOT / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=ignore)
        else:
            shutil.copy2(source, dest / part)
    for name, source in (modules or {}).items():
        shutil.copy2(source, dest / name)
    if components or config:
        project = tomllib.loads((dest / "pyproject.toml").read_text())
        app = project["tool"]["flwr"]["app"]
        app["components"].update(components or {})
        app["config"].update(config or {})
        (dest / "pyproject.toml").write_text(tomli_w.dumps(project))
    return dest


class LocalSimulation:
    """A simulation SuperLink on 127.0.0.1 for one or more runs; stops everything on exit."""

    def __init__(self, home: Path, *, startup_timeout: float = 60.0) -> None:
        self.home = Path(home).resolve()
        self.startup_timeout = startup_timeout
        self.processes = ProcessGroup(flower_env(self.home / "flwr-home"), self.home / "logs")
        self.port = 0
        self._runs = 0

    def __enter__(self) -> LocalSimulation:
        try:
            self.port = free_port()
            self.processes.start(
                "superlink",
                [
                    str(BIN / "flower-superlink"), "--simulation", "--insecure",
                    "--host", HOST, "--port", str(self.port),
                    "--database", str(self.home / "superlink.db"),
                    "--disable-runtime-dependency-installation",
                ],
            )  # fmt: skip
            wait_for_port(self.port, self.startup_timeout, self.processes)
            write_flower_config(self.home / "flwr-home", connection=CONNECTION, port=self.port)
        except BaseException:
            self.processes.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.processes.stop()

    def run(
        self,
        app: Path,
        *,
        run_config: dict[str, object],
        num_supernodes: int,
        num_cpus: int,
        timeout: float,
        log: Path,
    ) -> None:
        """``flwr run <app> --stream`` until the run ends; Flower's stream goes to ``log``, the
        ServerApp's own records also to this process' logger. Raises ``SimulationError`` unless
        the SuperLink reports the run completed."""
        self._runs += 1
        config_file = self.home / f"run-config-{self._runs}.toml"
        config_file.write_text(tomli_w.dumps(run_config))
        federation = (
            f"num-supernodes={num_supernodes} client-resources-num-cpus=1 "
            f"client-resources-num-gpus=0.0 init-args-num-cpus={num_cpus}"
        )
        argv = [
            str(BIN / "flwr"), "run", str(Path(app).resolve()), CONNECTION, "--stream",
            "--run-config", str(config_file), "--federation-config", federation,
        ]  # fmt: skip
        log.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            argv,
            env=self.processes.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        reader = threading.Thread(target=_relay, args=(proc, log), daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise SimulationError(f"the simulation did not finish in {timeout:.0f} s")
                link = self.processes.procs["superlink"]
                if link.poll() is not None:
                    raise SimulationError(f"the SuperLink exited with {link.returncode}")
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            reader.join(timeout=10)
        if proc.returncode != 0:
            raise SimulationError(f"flwr run exited with {proc.returncode}; see {log}")
        check_completed(self.processes.env, CONNECTION, log, SimulationError)


def _relay(proc: subprocess.Popen, log: Path) -> None:
    """Flower's stream to ``log`` (without colour codes); the ServerApp's records also to the
    logger, so that a run shows its progress."""
    with log.open("a") as out:
        for raw in proc.stdout:
            line = _ANSI.sub("", raw.decode(errors="replace")).rstrip()
            out.write(line + "\n")
            out.flush()
            if MARKER in line:
                _replay(line.split(MARKER, 1)[1].strip())


def _replay(text: str) -> None:
    """A ServerApp record (``LEVEL name: message``, ``server.run_log``) to the same logger here."""
    level, _, rest = text.partition(" ")
    name, _, message = rest.partition(": ")
    number = logging.getLevelName(level)
    if not isinstance(number, int) or not name:
        logger.info("%s", text)
        return
    logging.getLogger(name).log(number, "%s", message)
