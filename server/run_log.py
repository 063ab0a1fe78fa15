"""The ServerApp's own log. Flower configures only its ``flwr`` logger, so in the process a
SuperLink starts for the ServerApp fedsynth's records (rounds, merchants, ε spent) would be lost:
while a federation runs they go to ``<run-dir>/server.log`` and to stderr, which Flower streams to
``flwr run --stream`` and ``flwr log``, each line marked so the simulation engine can show it."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

MARKER = "fedsynth |"
PACKAGES = ("server", "client", "privacy", "synth_models", "simulations")


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(run_dir / "server.log")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_stream = logging.StreamHandler(sys.stderr)
    to_stream.setFormatter(logging.Formatter(f"{MARKER} %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in PACKAGES]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(min(lg.level or logging.INFO, logging.INFO))
        lg.addHandler(to_file)
        lg.addHandler(to_stream)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(to_file)
            lg.removeHandler(to_stream)
            lg.setLevel(level)
        to_file.close()
