"""PNG plots of ``fedsynth benchmark`` results (matplotlib's Agg canvas, as ``privacy/report.py``).

* ``quality_vs_epsilon.png``: SDMetrics quality (default pair thresholds, and all pairs) of each
  fedsynth model and setup against epsilon; the non-private SDV synthesizers as dashed lines.
* ``utility_vs_epsilon.png``: TSTR/TRTR and the membership attack's AUC, the same way.
* ``cost.png``: fit wall time (log scale) and peak RSS of every contender.

Epsilon is an ordinal axis (the grid's values, ``inf`` last); failed contenders are left out.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _figure(width: float, height: float, panels: int) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def _eps_label(eps) -> str:
    return "∞" if eps is None or math.isinf(eps) else f"{eps:g}"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _versus_epsilon(records: list[dict], out: Path, name: str, panels: list[tuple]) -> Path:
    ok = [r for r in records if r["status"] == "ok"]
    grid = sorted({r["epsilon"] for r in ok if r["family"] != "sdv"}, key=lambda e: e)
    grid = grid or [math.inf]
    x = {eps: i for i, eps in enumerate(grid)}
    fig, axes = _figure(5.2 * len(panels), 4.0, len(panels))
    series: dict[str, list[dict]] = {}
    for r in ok:
        series.setdefault(r["label"], []).append(r)
    for ax, (key, title, reference) in zip(axes, panels, strict=True):
        for i, (label, rows) in enumerate(sorted(series.items())):
            # one colour per contender, the same in every panel
            color = f"C{i}" if len(series) <= 10 else colormaps["tab20"](i % 20)
            if rows[0]["family"] == "sdv":
                values = [r.get(key) for r in rows if _finite(r.get(key))]
                if values:
                    ax.axhline(values[0], color=color, linestyle="--", label=f"{label} (no DP)")
                continue
            points = [(x[r["epsilon"]], r.get(key)) for r in rows if _finite(r.get(key))]
            if not points:
                continue
            points.sort()
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                color=color,
                marker="o",
                label=label,
            )
        if reference is not None:
            ax.axhline(reference, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xticks(range(len(grid)), [_eps_label(e) for e in grid])
        ax.set_xlabel("ε per merchant")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    handles, labels = axes[-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside right upper")
    path = out / name
    fig.savefig(path, format="png")
    return path


def _cost(records: list[dict], out: Path) -> Path:
    ok = [r for r in records if r["status"] == "ok"]
    labels = [f"{r['label']} ε={_eps_label(r['epsilon'])}" for r in ok]
    fig, (ax_time, ax_mem) = _figure(11, max(2.5, 0.28 * len(ok) + 1.2), 2)
    positions = list(range(len(ok)))
    ax_time.barh(positions, [max(r.get("fit_seconds") or 0.0, 1e-2) for r in ok])
    ax_time.set_xscale("log")
    ax_time.set_xlabel("fit wall time, s (log)")
    ax_mem.barh(positions, [r.get("peak_rss_mb") or 0.0 for r in ok], color="tab:orange")
    ax_mem.set_xlabel("peak RSS of the process tree, MB")
    for ax in (ax_time, ax_mem):
        ax.set_yticks(positions, labels, fontsize=7)
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    ax_mem.set_yticks(positions, [""] * len(ok))
    path = out / "cost.png"
    fig.savefig(path, format="png")
    return path


def write_plots(records: list[dict], out: Path) -> list[Path]:
    """Write the three PNGs into ``out``; returns their paths."""
    out = Path(out)
    return [
        _versus_epsilon(
            records,
            out,
            "quality_vs_epsilon.png",
            [
                ("quality", "SDMetrics quality", None),
                ("quality_all_pairs", "quality, all pairs", None),
            ],
        ),
        _versus_epsilon(
            records,
            out,
            "utility_vs_epsilon.png",
            [
                ("tstr_trtr", "utility: TSTR / TRTR", 1.0),
                ("attack_auc", "membership attack AUC (0.5 = chance)", 0.5),
            ],
        ),
        _cost(records, out),
    ]
