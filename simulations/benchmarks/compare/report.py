"""The benchmark's results on disk: ``results.json`` and ``results.md`` (the Markdown table)."""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

from simulations.benchmarks.compare.config import SDV_MODELS, BenchmarkConfig

TABLE_COLUMNS = (
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
)
LEGEND = (
    'Quality: SDMetrics QualityReport against the training rows ("all pairs": pair '
    "thresholds 0). TSTR/TRTR: macro-F1 (or R²) of a model trained on synthetic vs real "
    "rows, tested on the holdout. Attack: distance-to-closest-record membership attack, "
    "members = training rows, non-members = holdout; empirical ε: its 95% lower bound. DCR: "
    "SDMetrics heuristics (1 = protected). Fit: wall seconds of the fit alone (federated: "
    "Flower's whole simulation). Peak RSS: the contender's process tree, imports included."
)


def json_safe(value):
    """JSON-safe: infinities and NaN become None (None epsilon = no DP claim)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return json_safe(value.item())
    return value


def machine() -> dict:
    """:func:`simulations.benchmarks.environment` plus the CPU model, the memory and the
    versions of the libraries the contenders and the scores come from."""
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


def epsilon_text(value: float | None) -> str:
    """An epsilon for people: ``∞`` for none (no DP), else three significant digits."""
    if value is None or (isinstance(value, float) and math.isinf(value)):
        return "∞"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def number_text(value, digits: int = 3) -> str:
    """A score for the table: ``—`` where there is none (failed, not applicable, NaN)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def markdown(records: list[dict]) -> str:
    """The results table: one row per contender, failed ones with their error."""
    from simulations.benchmarks import markdown_table

    rows = []
    for r in records:
        ok = r["status"] == "ok"
        # the error shares a table cell: no column breaks, no line breaks, not too long
        error = str(r.get("error", "")).replace("|", "/").replace("\n", " ")[:160]
        rows.append(
            [
                r["label"],
                epsilon_text(r["epsilon"]),
                epsilon_text(r.get("epsilon_spent")) if ok else "—",
                number_text(r.get("quality")),
                number_text(r.get("quality_all_pairs")),
                number_text(r.get("tstr_trtr"), 2),
                number_text(r.get("attack_auc")),
                number_text(r.get("empirical_epsilon"), 2),
                number_text(r.get("dcr_baseline_protection"), 2),
                number_text(r.get("dcr_overfitting_protection"), 2),
                number_text(r.get("fit_seconds"), 1),
                number_text(r.get("score_seconds"), 1),
                number_text(r.get("peak_rss_mb"), 0),
                "ok" if ok else f"**failed**: {error}",
            ]
        )
    return markdown_table(TABLE_COLUMNS, rows)


def write_results(*, out: Path, payload: dict, config: BenchmarkConfig) -> None:
    """(Re)write ``out/results.json`` and ``out/results.md`` from the run's ``payload``."""
    (out / "results.json").write_text(json.dumps(json_safe(payload), indent=1) + "\n")
    environment = payload["environment"]
    lines = [
        f"# fedsynth benchmark: {payload['setup']['dataset']}",
        "",
        f"Command: `{payload['command']}`",
        "",
        "; ".join(_settings(payload["setup"], config)) + ".",
        "",
        markdown(payload["results"]),
        "",
        LEGEND,
        "",
        f"Machine: {environment['cpu']}, {environment['cpu_count']} "
        f"cores, {environment.get('memory_gb')} GB; "
        + ", ".join(f"{k} {v}" for k, v in environment["versions"].items()),
        "",
    ]
    (out / "results.md").write_text("\n".join(lines))


def _settings(setup: dict, config: BenchmarkConfig) -> list[str]:
    """The split and the training settings, one sentence part per family."""
    settings = [
        f"{setup['train_rows']} training rows, {setup['holdout_rows']} holdout rows "
        f"(seed {config.seed}); {setup['synthetic_rows']} synthetic rows per contender; "
        f"target `{setup['target']}`"
    ]
    if any(m not in SDV_MODELS for m in config.models):
        text = f"fedsynth: {config.epochs} epochs, batch {config.batch_size}, δ = "
        text += f"{config.delta:g} per merchant"
        if config.federated:
            text += (
                f"; federated: {config.merchants} merchants, {config.rounds} rounds x "
                f"{config.local_epochs} local epochs"
            )
        if "dirichlet" in config.federated:
            text += f", Dirichlet α = {config.alpha:g} over `{setup['partition_column']}`"
        settings.append(text)
    if any(m in ("ctgan", "tvae") for m in config.models):
        settings.append(f"SDV CTGAN/TVAE: {config.sdv_epochs} epochs")
    return settings
