"""Run one contender in a fresh process: a time-out, the process tree's peak memory, no leftovers.

The contender's process (``multiprocessing`` spawn, so no state leaks from the benchmark or an
earlier contender) fits and samples, then writes ``result.json`` and ``synthetic.pkl`` into its
work folder, its stdout/stderr going to ``contender.log`` there. The parent meanwhile samples the
RSS of the process tree, logs a heartbeat, and kills the tree on a time-out or an interruption.
A failure of any kind comes back as a ``{"status": "failed", "error": ...}`` info, never raised.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import pandas as pd

from simulations.benchmarks.compare.config import Contender, ContenderJob
from simulations.benchmarks.compare.proctree import kill_tree, tree_rss_bytes
from simulations.benchmarks.compare.report import json_safe

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0
MEMORY_INTERVAL = 0.2  # seconds between RSS samples: a shorter spike can be missed
EXIT_GRACE_SECONDS = 30.0
RESULT = "result.json"
SYNTHETIC = "synthetic.pkl"
LOG = "contender.log"
NOISY_LOGGERS = ("opacus", "matplotlib", "PIL", "rdt", "sdv", "sdmetrics", "copulas")


def stop_on_sigterm() -> None:
    """Make SIGTERM (e.g. from ``timeout``) unwind like Ctrl-C, so that :func:`run_isolated`
    stops the running contender's process tree instead of leaving it behind. Signal handlers
    can only be set from the main thread; elsewhere this does nothing."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_system_exit)


def _raise_system_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_isolated(
    contender: Contender,
    *,
    job: ContenderJob,
    train: pd.DataFrame,
    work: Path,
    timeout: float,
) -> tuple[pd.DataFrame | None, dict]:
    """Fit and sample ``contender`` in a spawned process; returns (synthetic or None, info).

    ``info`` adds to the fit's own figures ``peak_rss_mb`` (the process tree's, as sampled) and
    ``process_seconds`` (the process's wall time, start-up and imports included)."""
    work.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    process = context.Process(
        target=_contender_main, args=(contender, job, train, str(work)), daemon=False
    )
    started = time.perf_counter()
    process.start()
    peak, last_beat, timed_out = 0, started, False
    try:
        while process.is_alive():
            peak = max(peak, tree_rss_bytes(process.pid))
            process.join(MEMORY_INTERVAL)
            now = time.perf_counter()
            if (work / RESULT).exists():
                process.join(EXIT_GRACE_SECONDS)  # the result is written: let it exit
                if process.is_alive():
                    logger.warning("%s: result written but still running; stopped", contender.slug)
                    kill_tree(process.pid)
                break
            if now - started > timeout:
                timed_out = True
                logger.error(
                    "%s: time-out after %.0f s, stopping it", contender.slug, now - started
                )
                kill_tree(process.pid)
                process.join(10)
                break
            if now - last_beat >= HEARTBEAT_SECONDS:
                last_beat = now
                logger.info(
                    "  ... %s: %.0f s elapsed, %.0f MB; %s",
                    contender.slug,
                    now - started,
                    peak / 2**20,
                    last_line(work / LOG),
                )
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): leave no contender running
        kill_tree(process.pid)
        raise
    wall = time.perf_counter() - started
    if (work / RESULT).exists():
        info = json.loads((work / RESULT).read_text())
    elif timed_out:
        info = {"status": "failed", "error": f"time-out after {timeout:.0f} s"}
    else:
        info = {
            "status": "failed",
            "error": f"contender process died (exit code {process.exitcode}); "
            f"last output: {last_line(work / LOG)}",
        }
    info["peak_rss_mb"] = peak / 2**20
    info["process_seconds"] = wall
    synthetic = None
    if info.get("status") == "ok":
        synthetic = pd.read_pickle(work / SYNTHETIC)  # written by our own child
    return synthetic, info


def last_line(path: Path) -> str:
    """The last non-blank line of a (log) file, cut to 160 characters; "" if unreadable."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - 4096))
            lines = [x for x in handle.read().decode("utf-8", "replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1][-160:] if lines else ""


def _contender_main(
    contender: Contender, job: ContenderJob, train: pd.DataFrame, work: str
) -> None:
    """Entry point of the contender's process: fit, sample, write ``result.json`` and the
    synthetic rows (pickle) into ``work``. Its stdout/stderr go to ``work/contender.log``."""
    import resource

    from simulations.benchmarks.compare.fitting import fit_and_sample

    work_dir = Path(work)
    log = os.open(work_dir / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    threads = job.config.threads
    if threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(threads)
    try:
        synthetic, info = fit_and_sample(contender, job=job, train=train, work_dir=work_dir)
        synthetic.to_pickle(work_dir / SYNTHETIC)
        info["status"] = "ok"
    except BaseException as error:  # recorded, not raised: the benchmark goes on
        logger.exception("%s failed", contender.label)
        info = {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc()[-4000:],
        }
    info["peak_main_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    info["peak_children_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    (work_dir / RESULT).write_text(json.dumps(json_safe(info), indent=1))
    # Exit now: a library's leftover non-daemon thread or exit hook kept SDV's CTGAN process
    # alive for minutes after its result was written. Flower has shut Ray down by now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
