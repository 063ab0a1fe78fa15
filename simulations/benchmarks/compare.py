"""``fedsynth benchmark``: fedsynth against centralized SDV synthesizers, on one split, one run.

Contenders (``--models``; default: every SDV synthesizer below and every model kind in
:data:`synth_models.synthesizer.MODELS`):

* SDV 2.0 ``GaussianCopulaSynthesizer`` (``gaussiancopula``), ``CTGANSynthesizer`` (``ctgan``)
  and ``TVAESynthesizer`` (``tvae``): non-private and centralized, so they run once, at
  epsilon = inf, whatever ``--epsilons`` says. They get the same metadata as fedsynth
  (``Metadata.load_from_dict``) and fit on ``{table_name: train}``.
* each fedsynth model kind, at every epsilon of ``--epsilons`` (``inf``: the same model without
  DP), centralized (``TabularSynthesizer`` on the pooled training rows: one merchant) and,
  per ``--federated``, as a Flower simulation of ``--merchants`` merchants (``iid``, and/or
  ``dirichlet``: label skew, Dirichlet(``--alpha``) over ``--partition-column``, by default the
  dataset's target) through :func:`simulations.runner.run_simulation_job`. epsilon and delta
  are per merchant; the synthesizer's epsilon is the maximum over merchants. Federated runs
  train ``--rounds`` rounds of ``ceil(epochs / rounds)`` local epochs, so each merchant takes
  about as many passes over its rows as the central model over all rows. ``--no-central`` drops
  the central runs (to split a long benchmark into runs on the same split).

Every contender fits on the same training rows (``client.merchant.holdout_split`` of the table,
after the optional ``--rows`` subsample), samples as many rows as the training set (or
``--sample-rows``) and is scored on the same real rows with :func:`privacy.audit.audit_table`:
SDMetrics quality (default pair thresholds and all pairs) against the training rows, TSTR/TRTR on
the target (tested on the holdout), the distance membership attack (members: training rows,
non-members: holdout) with its empirical epsilon lower bound, and SDMetrics' DCR baseline and
overfitting protection (heuristics, 40 synthetic rows by default).

Isolation and cost: each contender fits and samples in a fresh process (``multiprocessing``
spawn). A failure or a time-out (``--timeout``) is recorded as a failed row with its error and
the benchmark goes on. Fit wall time is measured around the fit call inside that process (for a
federation: Flower's whole ``run_simulation``: Ray start-up, schema round, every round);
sampling and scoring are timed separately. Peak memory is the peak resident set size (RSS) of
the contender's whole process tree (the process, and for federations Ray's services and
workers), sampled from ``/proc`` every 0.2 s by the parent; it includes the interpreter and the
imported libraries, whose RSS just before fitting is recorded too (``import_rss_mb``), and it
can miss a spike shorter than the sampling interval (the process's own exact peak,
``getrusage``'s ``ru_maxrss``, is recorded as ``peak_main_mb``). ``--threads`` caps torch and
OpenMP/BLAS threads in each contender; scoring always runs with one OpenMP thread (on a shared
machine scikit-learn's spinning OpenMP threads made TSTR ~20x slower).

Output folder: ``results.json`` (configuration, environment, one record per contender),
``results.md`` (the Markdown table), PNG plots (:mod:`simulations.benchmarks.plots`) and the
logs (``run.log``; each contender's own output in ``logs/``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import multiprocessing
import os
import platform
import shlex
import shutil
import signal
import sys
import threading
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)

SDV_MODELS = {
    "gaussiancopula": "GaussianCopulaSynthesizer",
    "ctgan": "CTGANSynthesizer",
    "tvae": "TVAESynthesizer",
}
SDV_LABELS = {"gaussiancopula": "GaussianCopula", "ctgan": "CTGAN", "tvae": "TVAE"}
SETUPS = ("central", "iid", "dirichlet")
FEDERATED = ("none", "iid", "dirichlet")
FULL_EPSILONS = (1.0, 3.0, 10.0, math.inf)
HEARTBEAT_SECONDS = 30.0
MEMORY_INTERVAL = 0.2
EXIT_GRACE_SECONDS = 30.0


def fedsynth_models() -> list[str]:
    """The fedsynth model kinds, read from ``MODELS`` (so new kinds join automatically)."""
    from synth_models.synthesizer import MODELS

    return list(MODELS)


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to run. ``None`` fields get the full or ``--quick`` default in :meth:`resolved`."""

    models: tuple[str, ...] | None = None
    epsilons: tuple[float, ...] | None = None
    federated: tuple[str, ...] | None = None
    merchants: int = 5
    alpha: float = 0.5
    partition_column: str | None = None
    rows: int | None = None
    holdout: float = 0.2
    epochs: int | None = None
    rounds: int | None = None
    sdv_epochs: int | None = None
    batch_size: int = 500
    delta: float = 1e-5
    sample_rows: int | None = None
    seed: int = 0
    timeout: float | None = None
    dcr_synthetic_rows: int = 40
    threads: int | None = None  # torch / OpenMP threads of each contender (None: default)
    central: bool = True  # fedsynth models also centrally (one merchant)
    model_options: dict = field(default_factory=dict)
    quick: bool = False

    def resolved(self) -> BenchmarkConfig:
        quick = self.quick
        models = self.models or (*SDV_MODELS, *fedsynth_models())
        unknown = [m for m in models if m not in SDV_MODELS and m not in fedsynth_models()]
        if unknown:
            raise ValueError(
                f"unknown model(s) {unknown}; choose from {[*SDV_MODELS, *fedsynth_models()]}"
            )
        federated = self.federated
        if federated is None:
            federated = ("dirichlet",) if quick else ("iid", "dirichlet")
        if "none" in federated:  # () after resolving: resolving again keeps it
            if len(federated) > 1:
                raise ValueError("--federated none cannot be combined with iid/dirichlet")
            federated = ()
        bad = [f for f in federated if f not in FEDERATED]
        if bad:
            raise ValueError(f"unknown --federated value(s) {bad}; choose from {FEDERATED}")
        epsilons = self.epsilons or ((1.0, math.inf) if quick else FULL_EPSILONS)
        if any(not (e > 0) for e in epsilons):
            raise ValueError(f"epsilons must be > 0 (or inf), got {list(epsilons)}")
        return replace(
            self,
            models=tuple(dict.fromkeys(models)),
            epsilons=tuple(sorted(set(epsilons))),
            federated=tuple(dict.fromkeys(federated)),
            rows=self.rows if self.rows is not None else (2000 if quick else None),
            epochs=self.epochs or (2 if quick else 10),
            rounds=self.rounds or (2 if quick else 5),
            sdv_epochs=self.sdv_epochs or (2 if quick else 50),
            timeout=self.timeout or (600.0 if quick else 3600.0),
        )


@dataclass(frozen=True)
class Contender:
    """One fit: a model in a setup at a target epsilon (``inf``: no DP)."""

    family: str  # "sdv" | "fedsynth"
    model: str
    setup: str = "central"  # "central" | "iid" | "dirichlet"
    epsilon: float = math.inf

    @property
    def label(self) -> str:
        if self.family == "sdv":
            return f"SDV {SDV_LABELS[self.model]}"
        setup = {"central": "central", "iid": "IID", "dirichlet": "Dirichlet"}[self.setup]
        return f"fedsynth {self.model.upper()} {setup}"

    @property
    def slug(self) -> str:
        eps = "inf" if math.isinf(self.epsilon) else f"{self.epsilon:g}"
        return f"{self.family}-{self.model}-{self.setup}-eps{eps}"


def contenders(config: BenchmarkConfig) -> list[Contender]:
    """Every contender of a resolved configuration, in run order."""
    out = [Contender("sdv", m) for m in config.models if m in SDV_MODELS]
    for model in (m for m in config.models if m not in SDV_MODELS):
        for setup in ("central",) * config.central + config.federated:
            out += [Contender("fedsynth", model, setup, eps) for eps in config.epsilons]
    return out


# --- one contender, in its own process ------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
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
    return sum(_rss_bytes(p) for p in _descendants(pid))


def _fit_sdv(contender: Contender, job: dict, train: pd.DataFrame, n: int) -> tuple:
    import numpy as np
    import sdv.single_table
    import torch
    from sdv.metadata import Metadata

    np.random.seed(job["seed"])
    torch.manual_seed(job["seed"])
    metadata = Metadata.load_from_dict(job["metadata"])
    options = {"epochs": job["sdv_epochs"]} if contender.model in ("ctgan", "tvae") else {}
    if contender.model == "ctgan":
        options["enable_gpu"] = False
    synthesizer = getattr(sdv.single_table, SDV_MODELS[contender.model])(metadata, **options)
    info = {"import_rss_mb": _rss_bytes(os.getpid()) / 2**20, "options": options}
    logger.info("fitting %s on %d rows", contender.label, len(train))
    started = time.perf_counter()
    synthesizer.fit({job["table_name"]: train})
    info["fit_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    synthetic = synthesizer.sample(n)
    if isinstance(synthetic, dict):
        synthetic = synthetic[job["table_name"]]
    info["sample_seconds"] = time.perf_counter() - started
    info["epsilon_spent"] = math.inf
    return synthetic, info


def _fit_central(contender: Contender, job: dict, train: pd.DataFrame, n: int) -> tuple:
    from synth_models.synthesizer import TabularSynthesizer
    from synth_models.training import TrainingConfig

    config = TrainingConfig(epochs=job["epochs"], batch_size=job["batch_size"])
    synth = TabularSynthesizer(
        job["metadata"],
        model=contender.model,
        epsilon=contender.epsilon,
        delta=job["delta"],
        training=config,
        model_options=job["model_options"].get(contender.model),
        table_name=job["table_name"],
        seed=job["seed"],
    )
    info = {"import_rss_mb": _rss_bytes(os.getpid()) / 2**20}

    def progress(epoch: int, summary: dict) -> None:
        losses = " ".join(f"{k}={v:.4f}" for k, v in summary.items() if k != "epoch")
        logger.info("epoch %d/%d %s", epoch + 1, config.epochs, losses)

    started = time.perf_counter()
    synth.fit(train, on_epoch=progress)
    info["fit_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    synthetic = synth.sample(n, seed=job["seed"])
    info["sample_seconds"] = time.perf_counter() - started
    info["epsilon_spent"] = synth.epsilon_spent
    info["delta"] = None if math.isinf(contender.epsilon) else job["delta"]
    return synthetic, info


def _fit_federated(
    contender: Contender, job: dict, train: pd.DataFrame, n: int, work: Path
) -> tuple:
    from server.app import ARTIFACT
    from simulations.datasets import Dataset
    from simulations.runner import SimulationSettings, run_simulation_job
    from synth_models.synthesizer import TabularSynthesizer

    if contender.setup == "dirichlet":
        column = job["partition_column"]
        if not column:
            raise ValueError("a Dirichlet split needs --partition-column (the data has no target)")
        partition = f"dirichlet:{column}:{job['alpha']:g}"
    else:
        partition = "iid"
    rounds = job["rounds"]
    local_epochs = max(1, math.ceil(job["epochs"] / rounds))
    federation = {
        "model": contender.model,
        "epsilon": contender.epsilon,
        "delta": job["delta"],
        "num-rounds": rounds,
        "local-epochs": local_epochs,
        "batch-size": job["batch_size"],
        "audit": False,  # scored centrally below, like every other contender
    }
    if job["model_options"].get(contender.model):
        federation["model-options"] = json.dumps(job["model_options"][contender.model])
    dataset = Dataset(
        name=job["dataset"],
        table=train,
        metadata=job["metadata"],
        table_name=job["table_name"],
        target=job["target"],
    )
    settings = SimulationSettings(
        merchants=job["merchants"],
        partition=partition,
        holdout=0.0,  # the benchmark's holdout is already out of the training rows
        seed=job["seed"],
        sample_rows=min(n, 1000),  # the runner's own quick score; the benchmark samples below
        federation=federation,
    )
    info = {
        "import_rss_mb": _rss_bytes(os.getpid()) / 2**20,
        "partition": partition,
        "rounds": rounds,
        "local_epochs": local_epochs,
    }
    logger.info(
        "federation of %d merchants (%s): %d rounds x %d local epochs",
        job["merchants"],
        partition,
        rounds,
        local_epochs,
    )
    run_dir = work / "run"
    started = time.perf_counter()
    summary = run_simulation_job(dataset, settings, run_dir)
    info["runner_seconds"] = time.perf_counter() - started
    # Flower's whole run (Ray start-up, schema round, every round, checkpoints): the fit.
    info["fit_seconds"] = summary["simulation_seconds"]
    synth = TabularSynthesizer.load(run_dir / ARTIFACT)
    started = time.perf_counter()
    synthetic = synth.sample(n, seed=job["seed"])
    info["sample_seconds"] = time.perf_counter() - started
    info["epsilon_spent"] = synth.epsilon_spent
    info["delta"] = summary["delta"]
    info["merchants"] = summary["merchants"]
    info["epsilon_per_merchant"] = summary["epsilon_per_merchant"]
    info["merchant_rows"] = [len(pd.read_csv(p)) for p in sorted((run_dir / "merchants").glob("*"))]
    return synthetic, info


def _contender_main(contender: Contender, job: dict, train: pd.DataFrame, work: str) -> None:
    """Entry point of the contender's process: fit, sample, write ``result.json`` and the
    synthetic rows (pickle) into ``work``. Its stdout/stderr go to ``work/contender.log``."""
    import resource

    work_dir = Path(work)
    log = os.open(work_dir / "contender.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("opacus", "matplotlib", "PIL", "rdt", "sdv", "sdmetrics", "copulas"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if job.get("threads"):
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(job["threads"])
        threadpool_limits(job["threads"])
    n = job["sample_rows"]
    try:
        if contender.family == "sdv":
            synthetic, info = _fit_sdv(contender, job, train, n)
        elif contender.setup == "central":
            synthetic, info = _fit_central(contender, job, train, n)
        else:
            synthetic, info = _fit_federated(contender, job, train, n, work_dir)
        synthetic.to_pickle(work_dir / "synthetic.pkl")
        info["status"] = "ok"
    except BaseException as error:  # recorded, not raised: the benchmark goes on
        logger.exception("%s failed", contender.label)
        info = {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc()[-4000:],
        }
    usage = resource.getrusage(resource.RUSAGE_SELF)
    info["peak_main_mb"] = usage.ru_maxrss / 1024  # kB on Linux
    info["peak_children_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    (work_dir / "result.json").write_text(json.dumps(_plain(info), indent=1))
    # Exit now: a library's leftover non-daemon thread or exit hook kept SDV's CTGAN process
    # alive for minutes after its result was written. Flower has shut Ray down by now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - 4096))
            lines = [x for x in handle.read().decode("utf-8", "replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1][-160:] if lines else ""


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _kill_tree(pid: int) -> None:
    for p in reversed(_descendants(pid)):
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)


def run_isolated(
    contender: Contender, job: dict, train: pd.DataFrame, work: Path, *, timeout: float
) -> tuple[pd.DataFrame | None, dict]:
    """Fit and sample ``contender`` in a spawned process; returns (synthetic or None, info)."""
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
            if (work / "result.json").exists():
                process.join(EXIT_GRACE_SECONDS)  # the result is written: let it exit
                if process.is_alive():
                    logger.warning("%s: result written but still running; stopped", contender.slug)
                    _kill_tree(process.pid)
                break
            if now - started > timeout:
                timed_out = True
                logger.error(
                    "%s: time-out after %.0f s, stopping it", contender.slug, now - started
                )
                _kill_tree(process.pid)
                process.join(10)
                break
            if now - last_beat >= HEARTBEAT_SECONDS:
                last_beat = now
                logger.info(
                    "  ... %s: %.0f s elapsed, %.0f MB; %s",
                    contender.slug,
                    now - started,
                    peak / 2**20,
                    _last_line(work / "contender.log"),
                )
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): leave no contender running
        _kill_tree(process.pid)
        raise
    wall = time.perf_counter() - started
    result_path = work / "result.json"
    if result_path.exists():
        info = json.loads(result_path.read_text())
    elif timed_out:
        info = {"status": "failed", "error": f"time-out after {timeout:.0f} s"}
    else:
        info = {
            "status": "failed",
            "error": f"contender process died (exit code {process.exitcode}); "
            f"last output: {_last_line(work / 'contender.log')}",
        }
    info["peak_rss_mb"] = peak / 2**20
    info["process_seconds"] = wall
    synthetic = None
    if info.get("status") == "ok":
        synthetic = pd.read_pickle(work / "synthetic.pkl")  # written by our own child
    return synthetic, info


# --- scoring --------------------------------------------------------------------------------


def score(
    synthetic: pd.DataFrame,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    metadata: dict,
    table_name: str,
    target: str | None,
    epsilon: float | None,
    delta: float | None,
    seed: int,
    dcr_synthetic_rows: int,
) -> dict:
    """The Audit's scores (:func:`privacy.audit.audit_table`), flattened to table columns."""
    from threadpoolctl import threadpool_limits

    from privacy.audit import audit_table

    # One OpenMP/BLAS thread: on a shared machine scikit-learn's OpenMP threads spin-wait, and
    # TSTR took 48 s instead of 2 s at load 6 on 2 cores. Scores do not depend on it.
    with threadpool_limits(1), warnings.catch_warnings():
        # SDMetrics asks for a validation set half the training size; the split is the user's.
        warnings.filterwarnings("ignore", message=".*real_validation_data contains.*")
        audit = audit_table(
            train,
            holdout,
            synthetic,
            metadata,
            table_name,
            target=target,
            delta=delta,
            claimed_epsilon=epsilon,
            seed=seed,
            dcr_synthetic_rows=dcr_synthetic_rows,
        )
    fidelity = audit["fidelity"]
    utility = audit.get("utility", {})
    attack = audit.get("attack", {})
    heuristics = audit.get("heuristics", {})
    return {
        "quality": fidelity["quality"],
        "quality_all_pairs": fidelity["quality_all_pairs"],
        "diagnostic": fidelity["diagnostic"],
        "column_shapes": fidelity["quality_properties"].get("Column Shapes"),
        "pair_trends": fidelity["quality_properties"].get("Column Pair Trends"),
        "tstr": utility.get("tstr"),
        "trtr": utility.get("trtr"),
        "tstr_trtr": utility.get("ratio"),
        "utility_metric": utility.get("metric"),
        "attack_auc": attack.get("auc"),
        "tpr_at_fpr_0.01": attack.get("tpr_at_fpr", {}).get("0.01"),
        "empirical_epsilon": attack.get("empirical_epsilon", {}).get("epsilon_lower_bound"),
        "dcr_baseline_protection": heuristics.get("dcr_baseline_protection", {}).get("score"),
        "dcr_overfitting_protection": heuristics.get("dcr_overfitting_protection", {}).get("score"),
        "audit_seconds": audit.get("seconds", {}),
    }


# --- the suite ------------------------------------------------------------------------------


def _plain(value):
    """JSON-safe: infinities and NaN become None (None epsilon = no DP claim)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return _plain(value.item())
    return value


def machine() -> dict:
    from simulations.benchmarks import _version, environment

    env = environment()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [x.split(":", 1)[1].strip() for x in handle if x.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory = None
    env["cpu"] = cpu
    env["memory_gb"] = round(memory, 1) if memory else None
    for package in ("sdv", "sdmetrics", "rdt", "ctgan", "flwr", "scikit-learn"):
        env["versions"][package] = _version(package)
    return env


def split(table: pd.DataFrame, config: BenchmarkConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The one train/holdout split every contender shares (after the ``rows`` subsample)."""
    from client.merchant import holdout_split

    if config.rows is not None and config.rows < len(table):
        table = table.sample(n=config.rows, random_state=config.seed).reset_index(drop=True)
    return holdout_split(table, config.holdout, seed=config.seed)


def _eps_text(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isinf(value)):
        return "∞"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def markdown(records: list[dict]) -> str:
    """The results table: one row per contender, failed ones with their error."""
    from simulations.benchmarks import markdown_table

    headers = [
        "contender",
        "ε target",
        "ε spent",
        "quality",
        "quality, all pairs",
        "TSTR/TRTR",
        "attack AUC",
        "empirical ε (95% LB)",
        "DCR baseline",
        "DCR overfitting",
        "fit s",
        "score s",
        "peak RSS MB",
        "status",
    ]
    rows = []
    for r in records:
        ok = r["status"] == "ok"
        error = str(r.get("error", "")).replace("|", "/").replace("\n", " ")[:160]
        rows.append(
            [
                r["label"],
                _eps_text(r["epsilon"]),
                _eps_text(r.get("epsilon_spent")) if ok else "—",
                _num(r.get("quality")),
                _num(r.get("quality_all_pairs")),
                _num(r.get("tstr_trtr"), 2),
                _num(r.get("attack_auc")),
                _num(r.get("empirical_epsilon"), 2),
                _num(r.get("dcr_baseline_protection"), 2),
                _num(r.get("dcr_overfitting_protection"), 2),
                _num(r.get("fit_seconds"), 1),
                _num(r.get("score_seconds"), 1),
                _num(r.get("peak_rss_mb"), 0),
                "ok" if ok else f"**failed**: {error}",
            ]
        )
    return markdown_table(headers, rows)


def _write(out: Path, payload: dict) -> None:
    (out / "results.json").write_text(json.dumps(_plain(payload), indent=1) + "\n")
    setup = payload["setup"]
    config = payload["config"]
    models = config["models"]
    federated = config["federated"]
    settings = [
        f"{setup['train_rows']} training rows, {setup['holdout_rows']} holdout rows "
        f"(seed {config['seed']}); {setup['synthetic_rows']} synthetic rows per contender; "
        f"target `{setup['target']}`"
    ]
    if any(m not in SDV_MODELS for m in models):
        local = max(1, math.ceil(config["epochs"] / config["rounds"]))
        text = f"fedsynth: {config['epochs']} epochs, batch {config['batch_size']}, δ = "
        text += f"{config['delta']:g} per merchant"
        if federated:
            text += (
                f"; federated: {config['merchants']} merchants, {config['rounds']} rounds x "
                f"{local} local epochs"
            )
        if "dirichlet" in federated:
            text += f", Dirichlet α = {config['alpha']:g} over `{setup['partition_column']}`"
        settings.append(text)
    if any(m in ("ctgan", "tvae") for m in models):
        settings.append(f"SDV CTGAN/TVAE: {config['sdv_epochs']} epochs")
    lines = [
        f"# fedsynth benchmark: {setup['dataset']}",
        "",
        f"Command: `{payload['command']}`",
        "",
        "; ".join(settings) + ".",
        "",
        markdown(payload["results"]),
        "",
        'Quality: SDMetrics QualityReport against the training rows ("all pairs": pair '
        "thresholds 0). TSTR/TRTR: macro-F1 (or R²) of a model trained on synthetic vs real "
        "rows, tested on the holdout. Attack: distance-to-closest-record membership attack, "
        "members = training rows, non-members = holdout; empirical ε: its 95% lower bound. DCR: "
        "SDMetrics heuristics (1 = protected). Fit: wall seconds of the fit alone (federated: "
        "Flower's whole simulation). Peak RSS: the contender's process tree, imports included.",
        "",
        f"Machine: {payload['environment']['cpu']}, {payload['environment']['cpu_count']} "
        f"cores, {payload['environment'].get('memory_gb')} GB; "
        + ", ".join(f"{k} {v}" for k, v in payload["environment"]["versions"].items()),
        "",
    ]
    (out / "results.md").write_text("\n".join(lines))


def command_line(config: BenchmarkConfig, out: Path, data_args=None) -> str:
    """The ``fedsynth benchmark`` command that reruns this (resolved) configuration."""
    parts = ["fedsynth", "benchmark"]
    data = getattr(data_args, "data", None)
    if data:
        parts += ["--data", data, "--metadata", str(data_args.metadata)]
        parts += ["--target", data_args.target] if data_args.target else []
    else:
        parts += ["--dataset", getattr(data_args, "dataset", None) or "pizzaplace"]
    epsilons = ",".join("inf" if math.isinf(e) else f"{e:g}" for e in config.epsilons)
    parts += ["--models", ",".join(config.models), "--epsilons", epsilons]
    parts += ["--federated", ",".join(config.federated) or "none"]
    parts += [] if config.central else ["--no-central"]
    for flag, value in (
        ("--merchants", config.merchants),
        ("--alpha", config.alpha),
        ("--partition-column", config.partition_column),
        ("--rows", config.rows),
        ("--holdout", config.holdout),
        ("--epochs", config.epochs),
        ("--rounds", config.rounds),
        ("--sdv-epochs", config.sdv_epochs),
        ("--batch-size", config.batch_size),
        ("--delta", config.delta),
        ("--sample-rows", config.sample_rows),
        ("--timeout", config.timeout),
        ("--model-options", json.dumps(config.model_options) if config.model_options else None),
        ("--threads", config.threads),
        ("--seed", config.seed),
        ("--out", str(out)),
    ):
        if value is not None:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(parts)


def run_benchmark(dataset, config: BenchmarkConfig, out: Path, *, data_args=None) -> dict:
    """Run every contender of ``config`` on ``dataset`` into ``out``; returns the payload that
    is also written to ``out/results.json`` (rewritten after each contender). ``data_args``
    (the CLI's namespace) only serves to write the command line into the results."""
    config = config.resolved()
    command = command_line(config, out, data_args)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (e.g. ``timeout``) unwinds like Ctrl-C, so the running contender is stopped.
        signal.signal(signal.SIGTERM, _terminate)
    out.mkdir(parents=True, exist_ok=True)
    train, holdout = split(dataset.table, config)
    target = dataset.target
    partition_column = config.partition_column or target
    sample_rows = config.sample_rows or len(train)
    started = time.perf_counter()
    job = {
        "dataset": dataset.name,
        "metadata": dataset.metadata,
        "table_name": dataset.table_name,
        "target": target,
        "partition_column": partition_column,
        "alpha": config.alpha,
        "merchants": config.merchants,
        "rounds": config.rounds,
        "epochs": config.epochs,
        "sdv_epochs": config.sdv_epochs,
        "batch_size": config.batch_size,
        "delta": config.delta,
        "seed": config.seed,
        "sample_rows": sample_rows,
        "model_options": config.model_options,
        "threads": config.threads,
    }
    todo = contenders(config)
    payload = {
        "command": command,
        "config": asdict(config),
        "setup": {
            "dataset": dataset.name,
            "train_rows": len(train),
            "holdout_rows": len(holdout),
            "synthetic_rows": sample_rows,
            "target": target,
            "partition_column": partition_column,
            "contenders": [c.slug for c in todo],
        },
        "environment": machine(),
        "results": [],
    }
    logger.info(
        "benchmark on %s: %d training / %d holdout rows, %d contenders",
        dataset.name,
        len(train),
        len(holdout),
        len(todo),
    )
    work_root = out / "work"
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    for i, contender in enumerate(todo, start=1):
        logger.info(
            "[%d/%d] %s, ε=%s: fitting (%.0f s into the benchmark)",
            i,
            len(todo),
            contender.label,
            _eps_text(contender.epsilon),
            time.perf_counter() - started,
        )
        work = work_root / contender.slug
        shutil.rmtree(work, ignore_errors=True)
        synthetic, info = run_isolated(contender, job, train, work, timeout=config.timeout)
        shutil.copy(work / "contender.log", logs / f"{contender.slug}.log")
        record = {
            "contender": contender.slug,
            "label": contender.label,
            "family": contender.family,
            "model": contender.model,
            "setup": contender.setup,
            "epsilon": contender.epsilon,
            **info,
        }
        if synthetic is not None:
            logger.info(
                "[%d/%d] %s, ε=%s: fit %.1f s, %.0f MB peak; scoring",
                i,
                len(todo),
                contender.label,
                _eps_text(contender.epsilon),
                info["fit_seconds"],
                info["peak_rss_mb"],
            )
            record["synthetic_rows"] = len(synthetic)
            scoring = time.perf_counter()
            try:
                record.update(
                    score(
                        synthetic,
                        train,
                        holdout,
                        metadata=dataset.metadata,
                        table_name=dataset.table_name,
                        target=target,
                        epsilon=info.get("epsilon_spent"),
                        delta=info.get("delta"),
                        seed=config.seed,
                        dcr_synthetic_rows=config.dcr_synthetic_rows,
                    )
                )
            except Exception as error:  # recorded, not raised
                logger.exception("scoring %s failed", contender.slug)
                record.update(status="failed", error=f"scoring: {type(error).__name__}: {error}")
            record["score_seconds"] = time.perf_counter() - scoring
            logger.info(
                "[%d/%d] %s, ε=%s: quality %s, TSTR/TRTR %s, AUC %s (scored in %.1f s)",
                i,
                len(todo),
                contender.label,
                _eps_text(contender.epsilon),
                _num(record.get("quality")),
                _num(record.get("tstr_trtr"), 2),
                _num(record.get("attack_auc")),
                record["score_seconds"],
            )
        else:
            logger.error("[%d/%d] %s failed: %s", i, len(todo), contender.slug, info["error"])
        shutil.rmtree(work, ignore_errors=True)
        payload["results"].append(record)
        payload["seconds"] = time.perf_counter() - started
        _write(out, payload)
    shutil.rmtree(work_root, ignore_errors=True)
    try:
        from simulations.benchmarks.plots import write_plots

        payload["plots"] = [p.name for p in write_plots(payload["results"], out)]
    except Exception as error:  # the table matters more than the pictures
        logger.exception("plots failed")
        payload["plots_error"] = f"{type(error).__name__}: {error}"
    payload["seconds"] = time.perf_counter() - started
    _write(out, payload)
    logger.info("benchmark done in %.0f s: %s", payload["seconds"], out / "results.md")
    return payload


# --- command line ---------------------------------------------------------------------------


def _list(text: str) -> tuple[str, ...]:
    return tuple(x.strip().lower() for x in text.replace(",", " ").split() if x.strip())


def _epsilons(text: str) -> tuple[float, ...]:
    return tuple(math.inf if x in ("inf", "infinity", "none") else float(x) for x in _list(text))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's own options (the data options come from the CLI's shared ones)."""
    parser.add_argument(
        "--models",
        type=_list,
        default=None,
        help="comma-separated: gaussiancopula, ctgan, tvae and fedsynth kinds "
        "(default: all SDV and every fedsynth model kind)",
    )
    parser.add_argument(
        "--epsilons",
        type=_epsilons,
        default=None,
        help="fedsynth budgets, comma-separated, 'inf' = no DP (default 1,3,10,inf; quick 1,inf)",
    )
    parser.add_argument(
        "--federated",
        type=_list,
        default=None,
        help="none | iid | dirichlet, comma-separated: federated setups besides central "
        "(default iid,dirichlet; quick dirichlet)",
    )
    parser.add_argument("--merchants", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    parser.add_argument(
        "--partition-column", default=None, help="Dirichlet column (default: the target)"
    )
    parser.add_argument(
        "--rows", type=int, default=None, help="subsample the table first (quick: 2000)"
    )
    parser.add_argument("--holdout", type=float, default=0.2, help="share held out for scoring")
    parser.add_argument(
        "--epochs", type=int, default=None, help="fedsynth epochs (default 10; quick 2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="federated rounds (default 5; quick 2)"
    )
    parser.add_argument(
        "--sdv-epochs", type=int, default=None, help="CTGAN/TVAE epochs (default 50; quick 2)"
    )
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--delta", type=float, default=1e-5, help="per merchant")
    parser.add_argument(
        "--sample-rows", type=int, default=None, help="default: as many as the training rows"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per contender (default 3600)"
    )
    parser.add_argument(
        "--model-options",
        type=json.loads,
        default={},
        help='JSON per fedsynth kind, e.g. \'{"vae": {"hidden": [64, 64]}}\'',
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch/OpenMP threads per contender"
    )
    parser.add_argument(
        "--no-central",
        dest="central",
        action="store_false",
        help="fedsynth models only federated (e.g. to split a long benchmark in two runs)",
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized run (minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output folder (default: runs/<time>-benchmark-...)")


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    return BenchmarkConfig(
        models=args.models,
        epsilons=args.epsilons,
        federated=args.federated,
        merchants=args.merchants,
        alpha=args.alpha,
        partition_column=args.partition_column,
        rows=args.rows,
        holdout=args.holdout,
        epochs=args.epochs,
        rounds=args.rounds,
        sdv_epochs=args.sdv_epochs,
        batch_size=args.batch_size,
        delta=args.delta,
        sample_rows=args.sample_rows,
        seed=args.seed,
        timeout=args.timeout,
        model_options=args.model_options,
        threads=args.threads,
        central=args.central,
        quick=args.quick,
    ).resolved()
