"""Render an audit result dict into a self-contained HTML report and a JSON file.

The HTML needs no network: plots are PNGs drawn with matplotlib's Agg canvas and embedded as
base64 ``data:`` URIs, the CSS is inline, and there is no JavaScript and no external font.
Every text taken from the audit is escaped with :func:`html.escape`.

Blocks of the audit dict may be missing (the audit is assembled by other code, and a run may stop
early): the section of a missing block is skipped with a note, and a section that cannot be drawn
from a malformed block is replaced by a note (and logged) instead of failing the whole report.

Two reports: one table's audit (:func:`write_report`, a data owner's local view, on its own
rows) and the federated report (:func:`write_federated_report`: DP releases, post-processing
of them and the ledgers only, never a merchant's local numbers).

Public API: :func:`write_report`, :func:`render_html`, :func:`verdict`,
:func:`write_federated_report`, :func:`render_federated_html`, :func:`federated_verdict`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# The Agg canvas directly (not pyplot): headless, and no global backend state is touched.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

#: Verdict thresholds.
MAX_ATTACK_AUC = 0.6
#: Local quality floor: SDMetrics quality of a uniform guess over each column's observed range
#: is 0.533 on pizzaplace and 0.568 on oj; below that a synthesizer learnt nothing worth the
#: name. Healthy real runs scored at least 0.590 on a merchant's own rows (pizzaplace GAN,
#: 5 non-IID merchants), and 0.629 on a whole table (oj VAE at epsilon 3); a collapsed GAN
#: 0.558, broken oj and credit_data runs 0.21-0.55.
MIN_QUALITY = 0.57
#: A column whose SDMetrics column-shape score is below this fails the local verdict: its
#: synthetic values barely overlap the real ones (the garbage columns of broken real runs
#: scored 0.0-0.08; no column of a healthy run went below 0.2, except a column the merchants
#: are split by, see ``ONE_VALUE_SHARE``).
MIN_COLUMN_SHAPE = 0.1
#: Below this (and above ``MIN_COLUMN_SHAPE``) a column shape is a warning: a merchant's own
#: rows may differ from the federation's union (pizzaplace's month at one merchant: 0.21).
WARN_COLUMN_SHAPE = 0.5
#: A categorical column whose real rows hold one value at least this often is only warned
#: about below ``MIN_COLUMN_SHAPE``: the merchants are split by it.
ONE_VALUE_SHARE = 0.99
#: Federated report: a column of the DP statistics fails when its score is below its noise
#: reference by more than ``MAX_DP_GAP`` plus the total variation the release's noise alone
#: puts between the data and the release (see :func:`dp_column_limit`). Healthy pizzaplace
#: runs stayed within 0.11 of their references (a GAN's month); a 30% category cut to 4.6%
#: falls 0.26 below.
MAX_DP_GAP = 0.1
#: Severity of a check that is reported (verdict, HTML) but does not fail the run.
WARNING = "warning"
#: The audit's (and federated report's) block of encoder notes: column -> what the DP
#: statistics could not describe (``TableEncoder.notes``, post-processing of a DP release).
NOTES_KEY = "encoder_notes"
#: Slack when comparing epsilons (floating point noise in accountants).
EPSILON_TOLERANCE = 1e-9
#: At most this many columns get a distribution plot (the grid gets unreadable beyond).
MAX_DISTRIBUTION_PLOTS = 36
#: At most this many categories per categorical distribution plot (the most frequent real ones).
MAX_CATEGORIES = 20

LOCAL_VIEW = (
    "Local view: computed on this owner's own rows, with real values and exact counts. It is "
    "the data owner's report, not a DP release: it stays with the owner."
)
FEDERATED_VIEW = (
    "Federated view: every number in this report is a DP release already in the merchants' "
    "ledgers, post-processing of those releases (a synthetic sample scored against them), or "
    "the ledgers' own accounting. No merchant sent a number computed on its rows for it. Each "
    "merchant's full audit (fidelity, utility, membership attacks and SDMetrics on its own "
    "rows) is in its own local report, which is never sent."
)
NOISE_NOTE = (
    "Scores against a noisy release are biased down: clipped noise puts mass where the data has "
    "none, so even a sample drawn from the real distribution scores below 1. Judge a score by "
    "the release's noise std per cell against its total count, and by its reference: the score "
    "the sample would get if the real data were distributed exactly as the sample, measured "
    "with this release's total and noise. A score near its reference is as close as the noise "
    "lets anyone tell; well below it, the sample differs from the data."
)

HEURISTIC_NOTE = (
    "Distance-based metrics (DCR, disclosure protection) are heuristics, not privacy "
    "guarantees: a good score does not prove privacy, and only the differential-privacy "
    "accounting (the ledgers) gives a guarantee."
)

# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> float | None:
    """A finite-or-infinite float from a number, else None (bools and strings are not numbers)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _fmt(value: Any, digits: int = 4) -> str:
    """Format a number for display (``—`` when absent); non-numbers are returned as text."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    number = _num(value)
    if number is None:
        return str(value)
    if math.isinf(number):
        return "∞" if number > 0 else "-∞"
    return f"{number:.{digits}g}"


def _block(audit: Mapping, key: str) -> Any:
    value = audit.get(key) if isinstance(audit, Mapping) else None
    return value if value not in (None, {}, []) else None


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _json_default(value: Any) -> Any:
    """numpy scalars/arrays, paths and other odd values in the audit dict, made JSON-able."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _img(fig: Figure, kind: str, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<img class="plot" data-plot="{_esc(kind)}" alt="{_esc(alt)}" '
        f'src="data:image/png;base64,{data}">'
    )


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _missing(key: str) -> str:
    return _note(f'No "{key}" block in this audit: section skipped.')


def _table(headers: list[str], rows: list[list[Any]], css: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    cls = f' class="{_esc(css)}"' if css else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv_table(pairs: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_fmt(v))}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


# ----------------------------------------------------------------------------------------------
# Verdict
# ----------------------------------------------------------------------------------------------


def _check(
    checks: list[dict],
    name: str,
    severity: str,
    message: str,
    value: Any = None,
    limit: Any = None,
    column: str | None = None,
) -> None:
    entry = {
        "check": name,
        "severity": severity,
        "message": message,
        "value": value,
        "limit": limit,
    }
    if column is not None:
        entry["column"] = column  # a check about one column names it
    checks.append(entry)


def verdict(audit: dict) -> dict:
    """The verdict of an audit: headline numbers and the list of failed checks.

    ``failed_checks`` entries have ``check``, ``severity`` (``"critical"`` for a bug: an empirical
    epsilon lower bound above the claimed epsilon, or a ledger above its claim; ``"fail"``
    otherwise), ``message``, ``value``, ``limit`` and, for a check about one column, ``column``.
    Quality below ``MIN_QUALITY`` fails, and so does each column whose SDMetrics column-shape
    score is below ``MIN_COLUMN_SHAPE`` and each column the DP statistics could not describe
    (the audit's ``encoder_notes``, column -> the encoder's note; the message is the note).
    ``warnings`` holds checks of severity ``"warning"``, shown but not failing the run: a
    column shape below ``WARN_COLUMN_SHAPE``, or below ``MIN_COLUMN_SHAPE`` where the real rows
    hold one value (the column the merchants are split by). ``not_checked`` names checks that
    could not be made (a block missing). ``status`` is ``"fail"`` when any check failed, else
    ``"pass"``.
    """
    audit = audit if isinstance(audit, Mapping) else {}
    claimed = _block(audit, "claimed") or {}
    fidelity = _block(audit, "fidelity") or {}
    utility = _block(audit, "utility") or {}
    attack = _block(audit, "attack") or {}
    failures = _block(audit, "failures") or []

    claimed_eps = _num(_get(claimed, "epsilon"))
    ledger_eps = _ledger_epsilons(audit)
    ledger_eps_max = max((e for e in ledger_eps.values() if e is not None), default=None)
    reference_eps = claimed_eps if claimed_eps is not None else ledger_eps_max
    reference_name = "claimed epsilon" if claimed_eps is not None else "largest ledger epsilon"

    empirical = _num(_get(attack, "empirical_epsilon", "epsilon_lower_bound"))
    out: dict[str, Any] = {
        "epsilon": claimed_eps,
        "delta": _num(_get(claimed, "delta")),
        "ledger_epsilon_max": ledger_eps_max,
        "quality": _num(_get(fidelity, "quality")),
        "quality_all_pairs": _num(_get(fidelity, "quality_all_pairs")),
        "diagnostic": _num(_get(fidelity, "diagnostic")),
        "utility_metric": _get(utility, "metric"),
        "tstr": _num(_get(utility, "tstr")),
        "trtr": _num(_get(utility, "trtr")),
        "utility_ratio": _num(_get(utility, "ratio")),
        "attack_auc": _num(_get(attack, "auc")),
        "empirical_epsilon_lower_bound": empirical,
        "empirical_epsilon_confidence": _num(_get(attack, "empirical_epsilon", "confidence")),
        "failures": len(failures) if isinstance(failures, list) else 0,
    }
    checks: list[dict] = []
    not_checked: list[str] = []

    # Privacy: the empirical lower bound must never exceed the claim (that is a bug somewhere).
    def privacy_checks(who: str, block: Any) -> None:
        lower = _num(_get(block, "empirical_epsilon", "epsilon_lower_bound"))
        if (
            lower is not None
            and reference_eps is not None
            and lower > reference_eps + EPSILON_TOLERANCE
        ):
            _check(
                checks,
                "empirical_epsilon_above_claim",
                "critical",
                f"BUG: {who}empirical epsilon lower bound {_fmt(lower)} exceeds the "
                f"{reference_name} {_fmt(reference_eps)}: the privacy accounting or the "
                "DP implementation is wrong.",
                lower,
                reference_eps,
            )
        auc = _num(_get(block, "auc"))
        if auc is not None and auc > MAX_ATTACK_AUC:
            _check(
                checks,
                "attack_auc",
                "fail",
                f"{who}membership attack AUC {_fmt(auc)} > {MAX_ATTACK_AUC}.",
                auc,
                MAX_ATTACK_AUC,
            )

    if attack:
        privacy_checks("", attack)
    else:
        not_checked += ["empirical_epsilon_above_claim", "attack_auc"]
    if reference_eps is None:
        not_checked.append("claimed epsilon (no claimed epsilon nor ledger)")

    _ledger_checks(checks, claimed_eps, ledger_eps)

    quality = out["quality"]
    if quality is None:
        not_checked.append("quality")
    elif quality < MIN_QUALITY:
        _check(
            checks,
            "quality",
            "fail",
            f"quality {_fmt(quality)} < {MIN_QUALITY}.",
            quality,
            MIN_QUALITY,
        )
    warnings: list[dict] = []
    shapes = _get(fidelity, "column_shapes")
    if isinstance(shapes, Mapping) and shapes:
        _column_shape_checks(checks, warnings, shapes, _one_value_columns(fidelity))
    else:
        not_checked.append("column shapes")
    out["low_columns"] = [c["column"] for c in checks if c["check"] == "column_shape"]

    _note_checks(checks, not_checked, out, audit)
    _failure_checks(checks, failures)
    return _concluded(out, checks, not_checked, warnings)


def _one_value_columns(fidelity: Any) -> set[str]:
    """Categorical columns whose real rows hold (almost) one value: a merchant's rows split
    off by that column, which no synthesizer of the federation's union can match."""
    distributions = _get(fidelity, "distributions")
    found = set()
    for column, spec in distributions.items() if isinstance(distributions, Mapping) else []:
        shares = [_num(x) or 0.0 for x in (_get(spec, "real") or [])]
        if _get(spec, "kind") == "categorical" and max(shares, default=0.0) >= ONE_VALUE_SHARE:
            found.add(str(column))
    return found


def _column_shape_checks(
    checks: list[dict], warnings: list[dict], shapes: Mapping, one_value: set[str]
) -> None:
    """Each column whose SDMetrics column-shape score is below a floor, by name (a warning
    only, for a column whose real rows hold one value: see :func:`_one_value_columns`)."""
    for column in sorted(shapes, key=str):
        score = _num(shapes[column])
        if score is None:
            continue
        if score < MIN_COLUMN_SHAPE and str(column) in one_value:
            _check(
                warnings,
                "column_shape",
                WARNING,
                f"column {str(column)!r}: shape score {_fmt(score, 3)} < {MIN_COLUMN_SHAPE}, "
                f"but at least {ONE_VALUE_SHARE:.0%} of these rows hold one value (the column "
                "the merchants are split by?): the federation's synthetic data has the others.",
                score,
                MIN_COLUMN_SHAPE,
                str(column),
            )
        elif score < MIN_COLUMN_SHAPE:
            _check(
                checks,
                "column_shape",
                "fail",
                f"column {str(column)!r}: shape score {_fmt(score, 3)} < {MIN_COLUMN_SHAPE} "
                "(its synthetic values barely overlap the real ones).",
                score,
                MIN_COLUMN_SHAPE,
                str(column),
            )
        elif score < WARN_COLUMN_SHAPE:
            _check(
                warnings,
                "column_shape",
                WARNING,
                f"column {str(column)!r}: shape score {_fmt(score, 3)} < {WARN_COLUMN_SHAPE} "
                "(expected where these rows differ from the other merchants', e.g. the column "
                "the merchants are split by; otherwise a poorly modelled column).",
                score,
                WARN_COLUMN_SHAPE,
                str(column),
            )


def _encoder_notes(document: Any) -> dict[str, str] | None:
    """The document's ``encoder_notes`` (column -> note), or None when it has none at all."""
    notes = document.get(NOTES_KEY) if isinstance(document, Mapping) else None
    if not isinstance(notes, Mapping):
        return None
    return {str(column): str(note) for column, note in notes.items()}


def _note_checks(checks: list[dict], not_checked: list[str], out: dict, document: Any) -> None:
    """Each column the DP statistics could not describe fails, named: its synthetic values
    carry nothing of the data (a coarse guess, or all OTHER), and where the noise drowns the
    statistics, no other check of the federated report can tell (the small credit_data run:
    pooled quality 0.21, nothing else failed). The note says what to declare or give."""
    notes = _encoder_notes(document)
    out["undescribed_columns"] = sorted(notes or {})
    if notes is None:
        not_checked.append("columns the DP statistics could not describe (no encoder notes)")
        return
    for column in sorted(notes):
        _check(checks, "undescribed_column", "fail", notes[column], column=column)


def _ledger_epsilons(audit: Mapping) -> dict[str, float | None]:
    ledgers = _block(audit, "ledgers") or {}
    return {
        str(name): _num(_get(ledger, "epsilon"))
        for name, ledger in (ledgers.items() if isinstance(ledgers, Mapping) else [])
    }


def _ledger_checks(
    checks: list[dict], claimed_eps: float | None, ledger_eps: Mapping[str, float | None]
) -> None:
    """A ledger that spent more than the claim is a bug."""
    if claimed_eps is None:
        return
    for name, eps in ledger_eps.items():
        if eps is not None and eps > claimed_eps + EPSILON_TOLERANCE:
            _check(
                checks,
                "ledger_above_claim",
                "critical",
                f"BUG: ledger of {name} spent epsilon {_fmt(eps)} > claimed {_fmt(claimed_eps)}.",
                eps,
                claimed_eps,
            )


def _failure_checks(checks: list[dict], failures: Any) -> None:
    for failure in failures if isinstance(failures, list) else []:
        merchant = _get(failure, "merchant") or "?"
        state = _get(failure, "state") or "failed"
        round_ = _get(failure, "round")
        reason = _get(failure, "reason") or _get(failure, "code") or ""
        detail = f": {reason}" if reason else ""
        _check(
            checks,
            "merchant_failure",
            "fail",
            f"{merchant} {state} in round {_fmt(round_)}{detail}",
        )


def _concluded(out: dict, checks: list[dict], not_checked: list[str], warnings: list[dict]) -> dict:
    out["failed_checks"] = checks
    out["warnings"] = warnings
    out["critical"] = any(c["severity"] == "critical" for c in checks)
    out["not_checked"] = not_checked
    out["status"] = "fail" if checks else "pass"
    return out


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


def _verdict_box(v: dict) -> str:
    def ratio_text() -> str:
        if v["utility_ratio"] is None:
            return "—"
        return f"{_fmt(v['utility_ratio'])} (TSTR {_fmt(v['tstr'])} / TRTR {_fmt(v['trtr'])})"

    def empirical_text() -> str:
        if v["empirical_epsilon_lower_bound"] is None:
            return "—"
        conf = v["empirical_epsilon_confidence"]
        conf_text = f" at {_fmt(conf)} confidence" if conf is not None else ""
        return (
            f"{_fmt(v['empirical_epsilon_lower_bound'])}{conf_text} "
            f"(claimed ε {_fmt(v['epsilon'])})"
        )

    rows = [
        ("ε (claimed)", _fmt(v["epsilon"])),
        ("δ (claimed)", _fmt(v["delta"])),
        ("ε spent (largest ledger)", _fmt(v["ledger_epsilon_max"])),
        ("Quality", _fmt(v["quality"])),
        ("Quality (all pairs)", _fmt(v["quality_all_pairs"])),
        ("Utility ratio TSTR/TRTR", ratio_text()),
        ("Attack AUC", _fmt(v["attack_auc"])),
        ("Empirical ε lower bound", empirical_text()),
        ("Columns below the shape floor", _names(v["low_columns"])),
        ("Columns the DP statistics could not describe", _names(v["undescribed_columns"])),
    ]
    return _verdict_html(v, rows)


def _names(columns: list[str]) -> str:
    return ", ".join(columns) if columns else "none"


def _verdict_html(v: dict, rows: list[tuple[str, str]]) -> str:
    body = "".join(
        f'<tr><th>{_esc(k)}</th><td class="value">{_esc(val)}</td></tr>' for k, val in rows
    )
    status = v["status"]
    warnings = v.get("warnings") or []
    if v["critical"]:
        headline = '<p class="status critical">BUG — critical check failed</p>'
    elif status == "fail":
        headline = '<p class="status fail">FAILED CHECKS</p>'
    elif warnings:
        plural = "s" if len(warnings) > 1 else ""
        headline = f'<p class="status pass">All checks passed ({len(warnings)} warning{plural})</p>'
    else:
        headline = '<p class="status pass">All checks passed</p>'
    failed = _check_list("Failed checks", v["failed_checks"]) or "<p>Failed checks: none.</p>"
    failed += _check_list("Warnings (reported, not failing the run)", warnings)
    not_checked = _note("Not checked: " + ", ".join(v["not_checked"])) if v["not_checked"] else ""
    css = "critical" if v["critical"] else status
    return (
        f'<section id="verdict" class="verdict {css}"><h2>Verdict</h2>{headline}'
        f'<table class="kv"><tbody>{body}</tbody></table>{failed}{not_checked}</section>'
    )


def _check_list(title: str, checks: list[dict]) -> str:
    items = "".join(f'<li class="{_esc(c["severity"])}">{_esc(c["message"])}</li>' for c in checks)
    return f'<h3>{_esc(title)} ({len(checks)})</h3><ul class="checks">{items}</ul>' if items else ""


def _undescribed_section(document: dict) -> str:
    """The columns the DP statistics could not describe, with the encoder's note on each."""
    head = (
        '<section id="undescribed"><h2>Columns the DP statistics could not describe</h2>'
        "<p>A column whose DP statistics show nothing above the noise, or an open categorical "
        "column whose values are all too rare to be found under DP, is modelled as a coarse "
        "guess or as OTHER: said here and in the run log, never silently.</p>"
    )
    notes = _encoder_notes(document)
    if notes is None:
        return head + _missing(NOTES_KEY) + "</section>"
    if not notes:
        return head + "<p>None: the DP statistics described every column.</p></section>"
    rows = [[column, notes[column]] for column in sorted(notes)]
    return (
        head
        + _table(["column", "what the DP statistics could not describe"], rows)
        + ("</section>")
    )


def _privacy_section(audit: dict) -> str:
    parts = ["<h2>Privacy budget</h2>"]
    claimed = _block(audit, "claimed")
    if claimed:
        parts.append(
            _kv_table([("ε claimed", _get(claimed, "epsilon")), ("δ", _get(claimed, "delta"))])
        )
    else:
        parts.append(_missing("claimed"))

    rounds = _block(audit, "rounds")
    parts.append("<h3>ε spent per round</h3>")
    if rounds:
        parts.append(
            _section_or_note(
                "epsilon per round", lambda: _epsilon_plot(rounds, _num(_get(claimed, "epsilon")))
            )
        )
    else:
        parts.append(_missing("rounds"))

    ledgers = _block(audit, "ledgers")
    parts.append("<h3>Ledgers (mechanisms per merchant)</h3>")
    if ledgers:
        parts.append(_section_or_note("ledgers", lambda: _ledger_tables(ledgers)))
    else:
        parts.append(_missing("ledgers"))
    return '<section id="privacy">' + "".join(parts) + "</section>"


def _epsilon_plot(rounds: list, claimed: float | None) -> str:
    series: dict[str, list[tuple[float, float]]] = {}
    for index, entry in enumerate(rounds, start=1):
        round_no = _num(_get(entry, "round"))
        round_no = float(index) if round_no is None else round_no
        for merchant, eps in (_get(entry, "epsilon") or {}).items():
            eps_value = _num(eps)
            if eps_value is not None:
                series.setdefault(str(merchant), []).append((round_no, eps_value))
    if not series:
        return _note("The rounds block holds no per-merchant epsilon.")
    fig = _figure(8, 4)
    ax = fig.add_subplot()
    for merchant in sorted(series):
        points = sorted(series[merchant])
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=merchant)
    if claimed is not None and math.isfinite(claimed):
        ax.axhline(claimed, color="red", linestyle="--", label=f"claimed ε {_fmt(claimed)}")
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative ε spent")
    ax.set_title("ε spent per round, per merchant")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncols=max(1, math.ceil(len(series) / 10)))
    return _img(fig, "epsilon-rounds", "epsilon spent per round per merchant")


def _ledger_tables(ledgers: Mapping) -> str:
    parts = []
    for merchant in sorted(ledgers):
        ledger = ledgers[merchant] or {}
        parts.append(
            f"<h4>{_esc(merchant)}: ε {_esc(_fmt(_get(ledger, 'epsilon')))}, "
            f"δ {_esc(_fmt(_get(ledger, 'delta')))}</h4>"
        )
        records = _get(ledger, "records") or []
        rows = [
            [
                _get(r, "label"),
                _get(r, "noise_multiplier"),
                _get(r, "sample_rate"),
                _get(r, "steps"),
            ]
            for r in records
        ]
        parts.append(
            _table(["mechanism", "noise multiplier", "sample rate", "steps"], rows)
            if rows
            else _note("No mechanism records.")
        )
    return "".join(parts)


def _fidelity_section(audit: dict) -> str:
    parts = ["<h2>Fidelity</h2>"]
    fidelity = _block(audit, "fidelity")
    if not fidelity:
        return '<section id="fidelity">' + parts[0] + _missing("fidelity") + "</section>"
    parts.append(
        _kv_table(
            [
                ("Quality", _get(fidelity, "quality")),
                ("Quality (all pairs)", _get(fidelity, "quality_all_pairs")),
                ("Diagnostic", _get(fidelity, "diagnostic")),
            ]
        )
    )
    shapes = _get(fidelity, "column_shapes")
    if isinstance(shapes, Mapping) and shapes:
        parts.append("<h3>Column shapes</h3>")
        parts.append(_table(["column", "score"], [[k, shapes[k]] for k in sorted(shapes)]))
    distributions = _get(fidelity, "distributions")
    parts.append("<h3>Real vs synthetic distributions</h3>")
    if isinstance(distributions, Mapping) and distributions:
        parts.append(_section_or_note("distributions", lambda: _distribution_grid(distributions)))
    else:
        parts.append(_note('No "distributions" in the fidelity block: plots skipped.'))
    trends = _get(fidelity, "pair_trends")
    parts.append("<h3>Pair trends</h3>")
    if isinstance(trends, Mapping) and trends:
        parts.append(_section_or_note("pair trends", lambda: _pair_trend_heatmap(trends)))
    else:
        parts.append(_note('No "pair_trends" in the fidelity block: heatmap skipped.'))
    return '<section id="fidelity">' + "".join(parts) + "</section>"


def _distribution_grid(distributions: Mapping) -> str:
    names = list(distributions)
    note = ""
    if len(names) > MAX_DISTRIBUTION_PLOTS:
        note = _note(f"Showing {MAX_DISTRIBUTION_PLOTS} of {len(names)} columns.")
        names = names[:MAX_DISTRIBUTION_PLOTS]
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = _figure(4.2 * ncols, 3.2 * nrows)
    for index, name in enumerate(names, start=1):
        ax = fig.add_subplot(nrows, ncols, index)
        spec = distributions[name] or {}
        real = [_num(x) or 0.0 for x in spec.get("real") or []]
        synth = [_num(x) or 0.0 for x in spec.get("synthetic") or []]
        if spec.get("kind") == "numeric" and not spec.get("edges"):
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        elif spec.get("kind") == "numeric":
            edges = [float(e) for e in spec["edges"]]
            if len(real) == len(edges) - 1:
                ax.stairs(real, edges, fill=True, alpha=0.45, label="real", color="C0")
            if len(synth) == len(edges) - 1:
                ax.stairs(synth, edges, linewidth=2, label="synthetic", color="C1")
        else:
            labels = [str(x) for x in spec.get("labels") or []]
            order = sorted(range(len(labels)), key=lambda i: -(real[i] if i < len(real) else 0))
            order = sorted(order[:MAX_CATEGORIES])
            xs = list(range(len(order)))
            ax.bar(
                [x - 0.2 for x in xs],
                [real[i] if i < len(real) else 0 for i in order],
                width=0.4,
                label="real",
                color="C0",
            )
            ax.bar(
                [x + 0.2 for x in xs],
                [synth[i] if i < len(synth) else 0 for i in order],
                width=0.4,
                label="synthetic",
                color="C1",
            )
            ax.set_xticks(xs, [labels[i][:12] for i in order], rotation=60, fontsize=7)
        ax.set_title(str(name), fontsize=9)
        ax.set_ylabel("share", fontsize=8)
        ax.tick_params(labelsize=7)
        if index == 1:
            ax.legend(fontsize=7)
    return note + _img(fig, "distributions", "real vs synthetic distributions per column")


def _pair_trend_heatmap(
    trends: Mapping,
    *,
    kind: str = "pair-trends",
    title: str = "Column pair trends (blank: pair not scored)",
    label: str = "pair trend score (1 = same as real)",
) -> str:
    columns: list[str] = []
    cells: dict[tuple[str, str], float] = {}
    for key, score in trends.items():
        left, _, right = str(key).partition("|")
        value = _num(score)
        if not right or value is None:
            continue
        for column in (left, right):
            if column not in columns:
                columns.append(column)
        cells[(left, right)] = cells[(right, left)] = value
    if not cells:
        return _note("No pair-trend scores to draw.")
    columns.sort()
    n = len(columns)
    matrix = [
        [cells.get((a, b), math.nan) if a != b else math.nan for b in columns] for a in columns
    ]
    size = min(12.0, 2.5 + 0.55 * n)
    fig = _figure(size + 1.2, size)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(n), columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), columns, fontsize=8)
    if n <= 14:
        for i in range(n):
            for j in range(n):
                if not math.isnan(matrix[i][j]):
                    ax.text(
                        j,
                        i,
                        f"{matrix[i][j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if matrix[i][j] < 0.6 else "black",
                    )
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title)
    return _img(fig, kind, f"{kind} heatmap")


def _utility_section(audit: dict) -> str:
    utility = _block(audit, "utility")
    body = (
        _kv_table(
            [
                ("Target", _get(utility, "target")),
                ("Task", _get(utility, "task")),
                ("Metric", _get(utility, "metric")),
                ("TSTR (train synthetic, test real)", _get(utility, "tstr")),
                ("TRTR (train real, test real)", _get(utility, "trtr")),
                ("Ratio TSTR/TRTR", _get(utility, "ratio")),
            ]
        )
        if utility
        else _missing("utility")
    )
    return f'<section id="utility"><h2>Utility</h2>{body}</section>'


def _attack_section(audit: dict) -> str:
    attack = _block(audit, "attack")
    head = '<section id="attack"><h2>Membership inference attack</h2>'
    if not attack:
        return head + _missing("attack") + "</section>"
    empirical = _get(attack, "empirical_epsilon") or {}
    pairs = [
        ("Method", _get(attack, "method")),
        ("AUC", _get(attack, "auc")),
        (
            "Members / non-members",
            f"{_fmt(_get(attack, 'members'))} / {_fmt(_get(attack, 'nonmembers'))}",
        ),
    ]
    tpr = _get(attack, "tpr_at_fpr") or {}
    pairs += [(f"TPR at FPR {k}", tpr[k]) for k in tpr]
    pairs += [
        ("Empirical ε lower bound", _get(empirical, "epsilon_lower_bound")),
        ("Confidence", _get(empirical, "confidence")),
        ("TPR lower bound", _get(empirical, "tpr_lower")),
        ("FPR upper bound", _get(empirical, "fpr_upper")),
    ]
    parts = [head, _kv_table(pairs)]
    roc = _get(attack, "roc")
    if isinstance(roc, Mapping) and roc.get("fpr") and roc.get("tpr"):
        parts.append(_section_or_note("ROC", lambda: _roc_plot(attack)))
    else:
        parts.append(_note('No "roc" curve in the attack block: plot skipped.'))
    return "".join(parts) + "</section>"


def _roc_plot(attack: Mapping) -> str:
    fig = _figure(5.5, 5.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random guess")
    roc = attack["roc"]
    ax.plot(
        roc["fpr"],
        roc["tpr"],
        color="black",
        linewidth=2,
        label=f"attack (AUC {_fmt(_get(attack, 'auc'), 3)})",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"Membership attack ROC ({_get(attack, 'method') or 'attack'})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return _img(fig, "roc", "membership attack ROC curve with the diagonal")


def _heuristics_section(audit: dict) -> str:
    heuristics = _block(audit, "heuristics")
    head = (
        '<section id="heuristics"><h2>Distance-based heuristics</h2>'
        f'<p class="warning">{_esc(HEURISTIC_NOTE)}</p>'
    )
    if not heuristics:
        return head + _missing("heuristics") + "</section>"
    rows = []
    for name in sorted(heuristics):
        if name == "dcr_histogram":
            continue
        block = heuristics[name]
        if isinstance(block, Mapping):
            value = block.get("score", block.get("skipped"))
            rows.append([name, value, "heuristic" if block.get("heuristic", True) else ""])
        else:
            rows.append([name, block, "heuristic"])
    parts = [head]
    if rows:
        parts.append(_table(["metric", "score / status", "kind"], rows))
    histogram = heuristics.get("dcr_histogram")
    parts.append("<h3>Distance to closest record (heuristic)</h3>")
    if isinstance(histogram, Mapping) and histogram.get("edges"):
        parts.append(_section_or_note("DCR histogram", lambda: _dcr_plot(histogram)))
    else:
        parts.append(_note('No "dcr_histogram" in the heuristics block: plot skipped.'))
    return "".join(parts) + "</section>"


def _dcr_plot(histogram: Mapping) -> str:
    edges = [float(e) for e in histogram["edges"]]
    fig = _figure(8, 4)
    ax = fig.add_subplot()
    for key, label, color in (
        ("synthetic_to_train", "synthetic → train", "C3"),
        ("synthetic_to_holdout", "synthetic → holdout", "C2"),
    ):
        counts = [_num(c) or 0.0 for c in histogram.get(key) or []]
        if len(counts) == len(edges) - 1:
            ax.stairs(counts, edges, linewidth=2, label=label, color=color)
    ax.set_xlabel("distance to closest record")
    ax.set_ylabel("synthetic rows")
    ax.set_title("DCR: train vs holdout (heuristic, not a guarantee)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _img(fig, "dcr-histogram", "DCR histogram, synthetic to train vs holdout")


def _failures_section(audit: dict) -> str:
    failures = _block(audit, "failures")
    head = '<section id="failures"><h2>Merchant failures and refusals</h2>'
    if not failures:
        return head + "<p>None recorded.</p></section>"
    rows = [
        [_get(f, "round"), _get(f, "merchant"), _get(f, "state"), _get(f, "reason")]
        for f in failures
    ]
    return head + _table(["round", "merchant", "state", "reason"], rows, "failures") + "</section>"


def _timings_section(audit: dict) -> str:
    seconds = _block(audit, "seconds")
    if not isinstance(seconds, Mapping):
        return ""
    return (
        '<section id="timings"><h2>Timings (seconds)</h2>'
        + _kv_table([(k, seconds[k]) for k in seconds])
        + "</section>"
    )


# ----------------------------------------------------------------------------------------------
# The federated report: DP releases and ledgers only
# ----------------------------------------------------------------------------------------------


def federated_verdict(report: dict) -> dict:
    """Headline numbers and failed checks of a federated report: the ledgers against the claim,
    the merchants' failures, and each column of the DP statistics whose score is far below its
    own noise reference (:func:`dp_column_limit`; scores against a noisy release are judged
    against what the noise allows, never against a fixed floor), and each column the DP
    statistics could not describe (``encoder_notes``). Columns whose release's noise allows
    any score are listed in ``not_checked``. Same keys as :func:`verdict` for the checks."""
    report = report if isinstance(report, Mapping) else {}
    claimed = _block(report, "claimed") or {}
    dp = _block(report, "dp_fidelity") or {}
    merchants = _block(report, "merchants") or {}
    failures = _block(report, "failures") or []
    claimed_eps = _num(_get(claimed, "epsilon"))
    ledger_eps = _ledger_epsilons(report)
    out: dict[str, Any] = {
        "epsilon": claimed_eps,
        "delta": _num(_get(claimed, "delta")),
        "ledger_epsilon_max": max((e for e in ledger_eps.values() if e is not None), default=None),
        "dp_column_fidelity": _num(_get(dp, "column_mean")),
        "dp_column_reference": _num(_get(dp, "column_reference")),
        "dp_pair_fidelity": _num(_get(dp, "pair_mean")),
        "dp_pair_reference": _num(_get(dp, "pair_reference")),
        "merchants": len(merchants) if isinstance(merchants, Mapping) else 0,
        "local_reports": sum(
            _get(m, "local_report") is True
            for m in (merchants.values() if isinstance(merchants, Mapping) else [])
        ),
        "failures": len(failures) if isinstance(failures, list) else 0,
        "signatures": _get(report, "verification", "status"),
    }
    checks: list[dict] = []
    not_checked = [] if claimed_eps is not None else ["claimed epsilon"]
    if not dp:
        not_checked.append("DP fidelity (no DP release held)")
    if out["signatures"] == "failed":
        _check(
            checks,
            "signatures",
            "critical",
            "The artifact's privacy claims do not verify (run fedsynth verify).",
        )
    _ledger_checks(checks, claimed_eps, ledger_eps)
    columns = _column_release(dp)
    if columns is not None:
        drowned = _dp_column_checks(checks, columns)
        if drowned:
            not_checked.append(
                "DP column fidelity of " + ", ".join(drowned) + " (the release's noise allows "
                "any score: its DP statistics cannot tell the sample from the data)"
            )
    elif dp:
        not_checked.append("DP column fidelity (no column statistics release)")
    out["low_columns"] = [c["column"] for c in checks if c["check"] == "dp_column_fidelity"]
    _note_checks(checks, not_checked, out, report)
    _failure_checks(checks, failures)
    return _concluded(out, checks, not_checked, [])


def noise_tv(*, cells: float, noise_std: float, total: float) -> float:
    """The total variation the noise alone puts between a count table and its release:
    ``E|N(0, std)| = std * sqrt(2 / pi)`` per cell, half their sum over the total count."""
    return 0.5 * cells * noise_std * math.sqrt(2.0 / math.pi) / max(total, 1.0)


def dp_column_limit(*, cells: float, noise_std: float, total: float) -> float:
    """How far below its noise reference a column's score may be: ``MAX_DP_GAP`` plus the
    noise's own total variation (:func:`noise_tv`), so a column the noise drowns is not
    failed for the noise's luck. Healthy runs stay well within it; a category that lost most
    of its share of the rows does not."""
    return MAX_DP_GAP + noise_tv(cells=cells, noise_std=noise_std, total=total)


def _column_release(dp: Any) -> Mapping | None:
    for block in (_get(dp, "releases") or {}).values():
        if _get(block, "kind") == "columns":
            return block
    return None


def _dp_column_checks(checks: list[dict], block: Mapping) -> list[str]:
    """Each column whose score against the DP statistics is further below its own noise
    reference than :func:`dp_column_limit` allows, by name; returns the columns no score
    could fail (the limit is above the reference). The block's noise std is its largest
    column's (the per-column std is not kept): the limit errs on the lenient side."""
    std, total = _num(_get(block, "noise_std")), _num(_get(block, "total"))
    if std is None or total is None:
        return []
    drowned = []
    scores = _get(block, "scores") or {}
    for column in sorted(scores, key=str):
        score = _num(_get(scores[column], "score"))
        reference = _num(_get(scores[column], "reference"))
        cells = _num(_get(scores[column], "cells"))
        if score is None or reference is None or cells is None:
            continue
        limit = dp_column_limit(cells=cells, noise_std=std, total=total)
        if limit >= reference:
            drowned.append(str(column))
        elif reference - score > limit:
            _check(
                checks,
                "dp_column_fidelity",
                "fail",
                f"column {str(column)!r}: score {_fmt(score, 3)} against the DP statistics is "
                f"{_fmt(reference - score, 3)} below its noise reference {_fmt(reference, 3)} "
                f"(allowed {_fmt(limit, 3)}): the synthetic column differs from the data.",
                reference - score,
                limit,
                str(column),
            )
    return drowned


def _federated_verdict_box(v: dict) -> str:
    def with_reference(score: str, reference: str) -> str:
        if v[reference] is None:
            return _fmt(v[score])
        return f"{_fmt(v[score])} (reference {_fmt(v[reference], 3)})"

    rows = [
        ("ε (claimed)", _fmt(v["epsilon"])),
        ("δ (claimed)", _fmt(v["delta"])),
        ("ε spent (largest ledger)", _fmt(v["ledger_epsilon_max"])),
        (
            "Column fidelity vs DP statistics (1 - TV)",
            with_reference("dp_column_fidelity", "dp_column_reference"),
        ),
        (
            "Pair fidelity vs DP marginals (1 - TV)",
            with_reference("dp_pair_fidelity", "dp_pair_reference"),
        ),
        ("Columns far below their DP reference", _names(v["low_columns"])),
        ("Columns the DP statistics could not describe", _names(v["undescribed_columns"])),
        ("Local audit reports written", f"{v['local_reports']} of {v['merchants']} merchants"),
        ("Signed privacy claims", _fmt(v["signatures"] or "not checked")),
    ]
    return _verdict_html(v, rows)


def _boundary_section(report: dict) -> str:
    labels = _block(report, "labels") or {}
    items = "".join(
        f"<li><b>{_esc(key)}</b>: {_esc(text)}</li>"
        for key, text in (labels.items() if isinstance(labels, Mapping) else [])
    )
    return (
        '<section id="view" class="federated"><h2>What this report holds</h2>'
        f'<p class="warning">{_esc(FEDERATED_VIEW)}</p>'
        + (f"<ul>{items}</ul>" if items else "")
        + "</section>"
    )


def _dp_fidelity_section(report: dict) -> str:
    head = '<section id="dp-fidelity"><h2>Fidelity against the DP releases</h2>'
    dp = _block(report, "dp_fidelity")
    if not isinstance(dp, Mapping):
        return head + _missing("dp_fidelity") + "</section>"
    releases = _get(dp, "releases") or {}
    parts = [
        head,
        f"<p>Each score is {_esc(_get(dp, 'label') or 'computed against a DP release')}.</p>",
        _note(NOISE_NOTE),
        _kv_table(
            [
                ("Mean column score (1 - TV)", _get(dp, "column_mean")),
                ("Its reference", _get(dp, "column_reference")),
                ("Mean pair score (1 - TV)", _get(dp, "pair_mean")),
                ("Its reference", _get(dp, "pair_reference")),
            ]
        ),
    ]
    pairs = [n for n in releases if _get(releases[n], "kind") == "pairs"]
    widest = max(pairs, key=lambda n: len(_get(releases[n], "scores") or {}), default=None)
    for name in releases:
        parts.append(_section_or_note(name, lambda n=name: _release_block(n, releases[n])))
        if name == widest:
            parts.append(
                _section_or_note("DP pair heatmap", lambda n=name: _dp_heatmap(n, releases[n]))
            )
    if not releases:
        parts.append(_note("No DP release was held: nothing to score."))
    return "".join(parts) + "</section>"


def _release_block(name: str, block: Mapping) -> str:
    scores = _get(block, "scores") or {}
    summary = _kv_table(
        [
            ("Noise std per cell", _get(block, "noise_std")),
            ("Total count (noisy)", _get(block, "total")),
            ("Merchants summed", _get(block, "contributors")),
            ("Mean score", _get(block, "mean")),
            ("Mean reference (data distributed as the sample)", _get(block, "reference_mean")),
        ]
    )
    rows = [
        [key, _get(score, "score"), _get(score, "reference"), _get(score, "cells")]
        for key, score in scores.items()
    ]
    table = _table(["table", "1 - TV vs the noisy release", "reference", "cells"], rows)
    return f"<h3>Release: {_esc(name)}</h3>{summary}{table}"


def _dp_heatmap(name: str, block: Mapping) -> str:
    scores = {key: _get(score, "score") for key, score in (_get(block, "scores") or {}).items()}
    return _pair_trend_heatmap(
        scores,
        kind="dp-pairs",
        title=f"Pairs: 1 - TV against the noisy release ({name}; see each reference)",
        label="1 - TV against the noisy DP release",
    )


def _local_reports_section(report: dict) -> str:
    head = (
        '<section id="merchants"><h2>Merchants\' local audits</h2><p>Each merchant audited the '
        "final synthesizer on its own rows and keeps that report; only whether it did is "
        "recorded here.</p>"
    )
    merchants = _block(report, "merchants")
    if not isinstance(merchants, Mapping):
        return head + _missing("merchants") + "</section>"
    ledgers = _block(report, "ledgers") or {}
    rows = [
        [
            name,
            _get(merchants[name], "state"),
            _get(merchants[name], "local_report"),
            _get(ledgers, name, "epsilon"),
        ]
        for name in sorted(merchants)
    ]
    return (
        head + _table(["merchant", "audit state", "local report", "ε spent"], rows) + "</section>"
    )


def render_federated_html(report: dict, *, title: str = "fedsynth federated audit") -> str:
    """The self-contained HTML page of a federated report (see :func:`federated_verdict`)."""
    report = report if isinstance(report, Mapping) else {}
    sections = [
        _boundary_section(report),
        _federated_verdict_box(federated_verdict(report)),
        _section_or_note("undescribed columns", lambda: _undescribed_section(report)),
        _section_or_note("privacy", lambda: _privacy_section(report)),
        _section_or_note("DP fidelity", lambda: _dp_fidelity_section(report)),
        _section_or_note("merchants", lambda: _local_reports_section(report)),
        _section_or_note("failures", lambda: _failures_section(report)),
    ]
    return _page(title, sections)


def write_federated_report(
    report: dict, out_dir: str | Path, *, title: str = "fedsynth federated audit"
) -> tuple[Path, Path]:
    """Write a federated report's ``report.html`` and ``report.json`` (``{"title", "view",
    "verdict", "audit"}``, the report document under ``audit``) into ``out_dir``."""
    page = render_federated_html(report, title=title)
    return _write(out_dir, title, FEDERATED_VIEW, report, federated_verdict(report), page)


def _section_or_note(name: str, build: Callable[[], str]) -> str:
    """Render a section; a malformed block gives a note, not a crash."""
    try:
        return build()
    except Exception as error:
        logger.exception("report: could not render %s", name)
        return _note(f"The {name} section could not be rendered: {type(error).__name__}: {error}")


# ----------------------------------------------------------------------------------------------
# Page
# ----------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       background: #f4f5f7; color: #1d2330; }
main { max-width: 1200px; margin: 0 auto; padding: 1.5rem; }
h1 { margin: 0 0 .3rem 0; }
section { background: #fff; border-radius: 8px; padding: 1rem 1.4rem; margin: 1rem 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.12); }
.verdict.pass { border-left: 8px solid #2e9d4f; }
.verdict.fail { border-left: 8px solid #d98a00; }
.verdict.critical { border-left: 8px solid #c0152f; background: #fff3f4; }
.status { font-size: 1.3rem; font-weight: 700; margin: .2rem 0 .6rem 0; }
.status.pass { color: #2e7d32; } .status.fail { color: #b36b00; }
.status.critical { color: #fff; background: #c0152f; padding: .4rem .8rem; border-radius: 4px; }
ul.checks li { margin: .25rem 0; }
ul.checks li.critical { color: #c0152f; font-weight: 700; }
ul.checks li.fail { color: #8a4b00; }
ul.checks li.warning { color: #5b6270; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
th, td { border: 1px solid #d6d9de; padding: .25rem .6rem; text-align: left;
         vertical-align: top; }
thead th { background: #eceef2; }
tbody td:first-child { white-space: nowrap; }
table.kv th { background: #f6f7f9; font-weight: 600; }
td.value { font-variant-numeric: tabular-nums; font-weight: 600; }
table.failures td:last-child { font-family: ui-monospace, monospace; font-size: .8rem;
                               word-break: break-word; }
.note { color: #5b6270; font-style: italic; }
.warning { background: #fff8e1; border: 1px solid #f0c36d; padding: .5rem .8rem;
           border-radius: 4px; }
img.plot { max-width: 100%; height: auto; display: block; margin: .5rem 0; }
.meta { color: #5b6270; font-size: .85rem; }
"""


def render_html(audit: dict, *, title: str = "fedsynth audit") -> str:
    """The self-contained HTML report of one table's ``audit`` (no network resources): the
    data owner's local view, computed on its own rows."""
    audit = audit if isinstance(audit, Mapping) else {}
    v = verdict(audit)
    sections = [
        f'<section id="view" class="local"><h2>Local view</h2><p>{_esc(LOCAL_VIEW)}</p></section>',
        _verdict_box(v),
        _section_or_note("undescribed columns", lambda: _undescribed_section(audit)),
        _section_or_note("privacy", lambda: _privacy_section(audit)),
        _section_or_note("fidelity", lambda: _fidelity_section(audit)),
        _section_or_note("utility", lambda: _utility_section(audit)),
        _section_or_note("attack", lambda: _attack_section(audit)),
        _section_or_note("heuristics", lambda: _heuristics_section(audit)),
        _section_or_note("failures", lambda: _failures_section(audit)),
        _section_or_note("timings", lambda: _timings_section(audit)),
    ]
    return _page(title, sections)


def _page(title: str, sections: list[str]) -> str:
    generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head>"
        f'<body><main><h1>{_esc(title)}</h1><p class="meta">Generated {_esc(generated)}.</p>'
        + "\n".join(sections)
        + "</main></body></html>\n"
    )


def write_report(
    audit: dict, out_dir: str | Path, *, title: str = "fedsynth audit"
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` into ``out_dir`` (created if needed).

    ``report.json`` holds ``{"title", "view", "verdict", "audit"}`` with the audit's numbers
    unchanged (numpy values converted; non-finite floats as JSON ``Infinity``/``NaN``, which
    Python reads); ``view`` says it is the owner's local view. Returns ``(html_path, json_path)``.
    """
    return _write(
        out_dir, title, LOCAL_VIEW, audit, verdict(audit), render_html(audit, title=title)
    )


def _write(
    out_dir: str | Path, title: str, view: str, audit: dict, v: dict, page: str
) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out / "report.html", out / "report.json"
    document = {"title": title, "view": view, "verdict": v, "audit": audit}
    json_path.write_text(json.dumps(document, indent=2, default=_json_default), encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    logger.info(
        "report: wrote %s and %s (verdict %s, %d failed checks)",
        html_path,
        json_path,
        v["status"],
        len(v["failed_checks"]),
    )
    return html_path, json_path
