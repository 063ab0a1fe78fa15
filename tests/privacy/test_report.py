"""Tests of the audit reports (privacy/report.py): files, JSON round trip, verdict checks,
self-contained HTML (no network), escaping, missing blocks, and a headless Chromium render; one
table's report (the owner's local view) and the federated report (DP releases only)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from privacy.report import (
    FEDERATED_VIEW,
    LOCAL_VIEW,
    MIN_COLUMN_SHAPE,
    MIN_QUALITY,
    WARN_COLUMN_SHAPE,
    WARNING,
    dp_column_limit,
    federated_verdict,
    render_federated_html,
    render_html,
    verdict,
    write_federated_report,
    write_report,
)

PLOT_KINDS = ("epsilon-rounds", "distributions", "pair-trends", "roc", "dcr-histogram")
IMG_RE = re.compile(r'<img [^>]*data-plot="([a-z-]+)"[^>]*src="data:image/png;base64,([^"]+)"')

UNDESCRIBED = (
    "column 'price': the DP statistics cannot describe its values (no bin stands out of the "
    "noise); its synthetic values are a coarse guess in [9.75, 35.95]."
)
ALL_OTHER = "column 'name': no value is frequent enough at any merchant to be found under DP"


def _box(html: str) -> str:
    return html.split('id="verdict"')[1].split("</section>")[0]


def _section(html: str, name: str) -> str:
    return html.split(f'id="{name}"')[1].split("</section>")[0]


def _roc(rng: np.random.Generator, n: int = 100) -> dict:
    fpr = np.linspace(0, 1, n)
    tpr = np.clip(fpr + rng.normal(0, 0.01, n), 0, 1)
    tpr[0], tpr[-1] = 0.0, 1.0
    return {"fpr": fpr.round(4).tolist(), "tpr": np.maximum.accumulate(tpr).round(4).tolist()}


def _shares(rng: np.random.Generator, n: int) -> list[float]:
    share = rng.dirichlet(np.ones(n))
    return share.round(5).tolist()


def make_audit(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    merchants = [f"merchant-{i}" for i in range(3)]
    columns = ["month", "size", "type", "name", "price", "hour"]
    ledgers = {
        m: {
            "epsilon": 0.99 - 0.01 * i,
            "delta": 1e-05,
            "records": [
                {
                    "label": "encoder-statistics",
                    "noise_multiplier": 34.2,
                    "sample_rate": 1.0,
                    "steps": 1,
                },
                {"label": "dp-sgd", "noise_multiplier": 6.05, "sample_rate": 0.107, "steps": 180},
            ],
        }
        for i, m in enumerate(merchants)
    }
    rounds = [
        {
            "round": r,
            "epsilon": {
                m: round(0.32 + 0.067 * (r - 1) + 0.01 * i, 4) for i, m in enumerate(merchants)
            },
        }
        for r in range(1, 11)
    ]
    price_edges = np.linspace(9.0, 39.0, 21).round(3).tolist()
    distributions = {
        "size": {
            "kind": "categorical",
            "labels": ["S", "M", "L", "XL", "XXL"],
            "real": _shares(rng, 5),
            "synthetic": _shares(rng, 5),
        },
        "type": {
            "kind": "categorical",
            "labels": ["classic", "veggie", "supreme", "chicken"],
            "real": _shares(rng, 4),
            "synthetic": _shares(rng, 4),
        },
        "month": {
            "kind": "categorical",
            "labels": [str(m) for m in range(1, 13)],
            "real": _shares(rng, 12),
            "synthetic": _shares(rng, 12),
        },
        "price": {
            "kind": "numeric",
            "edges": price_edges,
            "real": _shares(rng, 20),
            "synthetic": _shares(rng, 20),
        },
        "hour": {
            "kind": "numeric",
            "edges": np.linspace(9, 24, 21).round(3).tolist(),
            "real": _shares(rng, 20),
            "synthetic": _shares(rng, 20),
        },
    }
    pair_trends = {
        f"{a}|{b}": round(float(rng.uniform(0.3, 1.0)), 4)
        for i, a in enumerate(columns)
        for b in columns[i + 1 :]
    }

    def attack_block(auc: float) -> dict:
        return {
            "method": "distance",
            "auc": auc,
            "tpr_at_fpr": {"0.001": 0.001, "0.01": 0.011, "0.1": 0.1},
            "roc": _roc(rng),
            "members": 5000,
            "nonmembers": 5000,
            "empirical_epsilon": {
                "epsilon_lower_bound": 0.0,
                "confidence": 0.95,
                "tpr_lower": 0.0,
                "fpr_upper": 0.01,
            },
        }

    heuristics = {
        "dcr_baseline_protection": {"score": 0.9, "heuristic": True},
        "dcr_overfitting_protection": {"score": 0.95, "heuristic": True},
        "disclosure_protection": {"skipped": "no sensitive columns declared", "heuristic": True},
        "dcr_histogram": {
            "edges": np.linspace(0, 2, 21).round(3).tolist(),
            "synthetic_to_train": rng.integers(0, 500, 20).tolist(),
            "synthetic_to_holdout": rng.integers(0, 500, 20).tolist(),
            "heuristic": True,
        },
    }
    return {
        "claimed": {"epsilon": 0.9999, "delta": 1e-05},
        "ledgers": ledgers,
        "rounds": rounds,
        "fidelity": {
            "quality": 0.6412,
            "quality_all_pairs": 0.8023,
            "diagnostic": 1.0,
            "column_shapes": {c: round(float(rng.uniform(0.7, 1.0)), 4) for c in columns},
            "pair_trends": pair_trends,
            "distributions": distributions,
        },
        "utility": {
            "target": "type",
            "task": "classification",
            "metric": "macro_f1",
            "tstr": 0.4071,
            "trtr": 0.9912,
            "ratio": 0.4107,
        },
        "attack": attack_block(0.5123),
        "heuristics": heuristics,
        "failures": [],
        "seconds": {"fidelity": 3.1, "utility": 5.4, "attack": 2.2},
        "encoder_notes": {},
    }


def _numbers(value, path=()):
    """Every number in a nested structure, keyed by its path."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_numbers(v, (*path, k)))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(_numbers(v, (*path, i)))
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {path: value}
    return {}


def _images(html: str) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for kind, data in IMG_RE.findall(html):
        found.setdefault(kind, []).append(base64.b64decode(data, validate=True))
    return found


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[dict, Path, Path]:
    audit = make_audit()
    html_path, json_path = write_report(audit, tmp_path_factory.mktemp("report") / "out")
    return audit, html_path, json_path


def test_write_report_writes_both_files(written):
    _, html_path, json_path = written
    assert html_path.name == "report.html" and html_path.stat().st_size > 10_000
    assert json_path.name == "report.json" and json_path.stat().st_size > 1_000


def test_json_round_trips_every_number_and_has_verdict(written):
    audit, _, json_path = written
    stored = json.loads(json_path.read_text(encoding="utf-8"))
    expected = _numbers(audit)
    assert len(expected) > 500
    assert _numbers(stored["audit"]) == expected
    assert stored["audit"] == audit
    assert stored["verdict"] == json.loads(json.dumps(verdict(audit)))
    assert stored["verdict"]["status"] == "pass"


def test_verdict_of_a_good_audit():
    v = verdict(make_audit())
    assert v["epsilon"] == 0.9999 and v["delta"] == 1e-05
    assert v["quality"] == 0.6412 and v["quality_all_pairs"] == 0.8023
    assert v["utility_ratio"] == 0.4107 and v["attack_auc"] == 0.5123
    assert v["empirical_epsilon_lower_bound"] == 0.0
    assert v["ledger_epsilon_max"] == 0.99
    assert v["failed_checks"] == [] and v["status"] == "pass" and not v["critical"]
    assert v["warnings"] == [] and v["not_checked"] == []
    assert v["low_columns"] == [] and v["undescribed_columns"] == []


def test_html_shows_verdict_values_and_one_image_per_plot_kind(written):
    _, html_path, _ = written
    html = html_path.read_text(encoding="utf-8")
    verdict_box = html[html.index('id="verdict"') : html.index('id="privacy"')]
    for text in ("0.9999", "1e-05", "0.6412", "0.8023", "0.4107", "0.5123", "All checks passed"):
        assert text in verdict_box, text
    images = _images(html)
    assert sorted(images) == sorted(PLOT_KINDS)
    for kind in PLOT_KINDS:
        assert len(images[kind]) == 1, kind
        png = images[kind][0]
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000, kind
    assert html.count("<img ") == len(PLOT_KINDS)
    assert "could not be rendered" not in html
    assert "heuristics, not privacy guarantees" in html


def test_html_references_no_network_resources(written):
    _, html_path, _ = written
    html = html_path.read_text(encoding="utf-8").lower()
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html and "<link" not in html and "@import" not in html
    for match in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert match.startswith("data:image/png;base64,"), match[:80]


def test_empirical_epsilon_above_claim_fails_loudly():
    audit = make_audit()
    audit["claimed"]["epsilon"] = 0.5
    audit["ledgers"] = {m: {**b, "epsilon": 0.45} for m, b in audit["ledgers"].items()}
    audit["attack"]["empirical_epsilon"]["epsilon_lower_bound"] = 0.8
    v = verdict(audit)
    assert v["status"] == "fail" and v["critical"]
    [check] = [c for c in v["failed_checks"] if c["check"] == "empirical_epsilon_above_claim"]
    assert check["severity"] == "critical" and check["value"] == 0.8 and check["limit"] == 0.5
    html = render_html(audit, title="t")
    assert "BUG" in html[html.index('id="verdict"') : html.index('id="privacy"')]


def test_equal_empirical_and_claimed_epsilon_passes():
    audit = make_audit()
    audit["attack"]["empirical_epsilon"]["epsilon_lower_bound"] = 0.9999
    assert verdict(audit)["failed_checks"] == []


def test_other_failed_checks():
    audit = make_audit()
    audit["attack"]["auc"] = 0.75
    audit["fidelity"]["quality"] = 0.42
    audit["ledgers"]["merchant-1"]["epsilon"] = 1.3
    audit["failures"] = [
        {"round": 0, "merchant": "merchant-3", "state": "refused", "reason": "budget exhausted"}
    ]
    v = verdict(audit)
    names = sorted(c["check"] for c in v["failed_checks"])
    assert names == sorted(["attack_auc", "quality", "ledger_above_claim", "merchant_failure"])
    assert v["critical"]  # the ledger spent more than claimed
    assert any("merchant-3 refused in round 0" in c["message"] for c in v["failed_checks"])


@pytest.mark.parametrize(
    "missing",
    [
        "attack",
        "fidelity",
        "utility",
        "heuristics",
        "rounds",
        "ledgers",
        "claimed",
        "seconds",
    ],
)
def test_missing_block_gives_a_note_not_a_crash(tmp_path, missing):
    audit = make_audit()
    del audit[missing]
    html_path, json_path = write_report(audit, tmp_path)
    html = html_path.read_text(encoding="utf-8")
    assert "could not be rendered" not in html
    if missing == "seconds":
        return
    assert f"No &quot;{missing}&quot; block in this audit: section skipped." in html
    if missing == "attack":
        v = json.loads(json_path.read_text())["verdict"]
        assert v["attack_auc"] is None and "attack_auc" in v["not_checked"]
        assert "roc" not in _images(html)


def test_empty_audit_renders():
    html = render_html({}, title="empty")
    assert "<title>empty</title>" in html and "<img" not in html
    assert verdict({})["status"] == "pass"


def test_malformed_block_gives_a_note(caplog):
    audit = make_audit()
    audit["fidelity"]["distributions"]["hour"] = {
        "kind": "numeric",
        "edges": [],
        "real": [],
        "synthetic": [],
    }  # an all-missing column: drawn as "no data"
    assert "could not be rendered" not in render_html(audit, title="t")
    audit["fidelity"]["distributions"]["price"]["edges"] = ["x", "y"]
    html = render_html(audit, title="t")
    assert "distributions section could not be rendered" in html
    assert "roc" in _images(html)  # the other sections still render


def test_text_is_escaped():
    audit = make_audit()
    evil = "<script>alert('x')</script>"
    audit["failures"] = [
        {
            "round": 0,
            "merchant": "merchant-3",
            "state": "failed",
            "reason": f"bad input: file {evil} column 'price': missing",
        }
    ]
    html = render_html(audit, title=f"audit {evil}")
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    v = verdict(audit)
    assert any(evil in c["message"] for c in v["failed_checks"])


def test_numpy_values_are_written(tmp_path):
    audit = make_audit()
    audit["utility"]["tstr"] = np.float64(0.25)
    audit["attack"]["members"] = np.int64(5000)
    audit["heuristics"]["dcr_histogram"]["synthetic_to_train"] = np.arange(20)
    _, json_path = write_report(audit, tmp_path)
    stored = json.loads(json_path.read_text())
    assert stored["audit"]["utility"]["tstr"] == 0.25
    assert stored["audit"]["attack"]["members"] == 5000
    assert stored["audit"]["heuristics"]["dcr_histogram"]["synthetic_to_train"] == list(range(20))


def test_one_table_report_is_labelled_the_owners_local_view(written):
    _, html_path, json_path = written
    assert json.loads(json_path.read_text())["view"] == LOCAL_VIEW
    html = html_path.read_text(encoding="utf-8")
    assert "computed on this owner&#x27;s own rows" in html
    assert html.index('id="view"') < html.index('id="verdict"')


def test_the_quality_floor_fails_a_run_below_it():
    audit = make_audit()
    audit["fidelity"]["quality"] = MIN_QUALITY - 0.01
    [check] = verdict(audit)["failed_checks"]
    assert check["check"] == "quality" and check["limit"] == MIN_QUALITY
    audit["fidelity"]["quality"] = MIN_QUALITY + 0.01
    assert verdict(audit)["status"] == "pass"


def test_a_collapsed_column_fails_the_verdict_naming_it():
    audit = make_audit()
    audit["fidelity"]["column_shapes"]["type"] = MIN_COLUMN_SHAPE / 2
    v = verdict(audit)
    assert v["status"] == "fail" and not v["critical"] and v["low_columns"] == ["type"]
    [check] = v["failed_checks"]
    assert (check["check"], check["column"], check["severity"]) == ("column_shape", "type", "fail")
    assert "'type'" in check["message"] and check["limit"] == MIN_COLUMN_SHAPE
    box = _box(render_html(audit, title="t"))
    assert "FAILED CHECKS" in box and "column &#x27;type&#x27;: shape score" in box


def test_a_column_the_merchants_are_split_by_is_only_a_warning():
    # A merchant's rows all of one type: the federation's synthetic rows have every type.
    audit = make_audit()
    audit["fidelity"]["distributions"]["type"]["real"] = [1.0, 0.0, 0.0, 0.0]
    audit["fidelity"]["column_shapes"]["type"] = MIN_COLUMN_SHAPE / 2
    v = verdict(audit)
    assert v["status"] == "pass" and v["low_columns"] == []
    [warning] = v["warnings"]
    assert warning["column"] == "type" and "hold one value" in warning["message"]
    audit["fidelity"]["distributions"]["type"]["real"] = [0.9, 0.1, 0.0, 0.0]
    assert verdict(audit)["low_columns"] == ["type"]


def test_a_low_column_shape_above_the_floor_is_a_warning():
    audit = make_audit()
    audit["fidelity"]["column_shapes"]["month"] = (MIN_COLUMN_SHAPE + WARN_COLUMN_SHAPE) / 2
    v = verdict(audit)
    assert v["status"] == "pass" and v["failed_checks"] == []
    [warning] = v["warnings"]
    assert (warning["column"], warning["severity"]) == ("month", WARNING)
    assert "All checks passed (1 warning)" in _box(render_html(audit, title="t"))


def test_encoder_notes_fail_the_verdict_and_are_a_section_of_the_local_report():
    audit = make_audit()
    audit["encoder_notes"] = {"price": UNDESCRIBED, "name": ALL_OTHER}
    v = verdict(audit)
    assert v["status"] == "fail" and v["undescribed_columns"] == ["name", "price"]
    assert [(c["check"], c["column"], c["message"]) for c in v["failed_checks"]] == [
        ("undescribed_column", "name", ALL_OTHER),
        ("undescribed_column", "price", UNDESCRIBED),
    ]
    html = render_html(audit, title="t")
    assert "FAILED CHECKS" in _box(html)
    section = _section(html, "undescribed")
    assert "Columns the DP statistics could not describe" in section
    assert "no bin stands out of the" in section and "found under DP" in section
    assert "<td>price</td>" in section and "<td>name</td>" in section
    assert '<td class="value">name, price</td>' in _box(html)


def test_without_encoder_notes_the_section_says_so():
    audit = make_audit()
    assert "None: the DP statistics described every column." in render_html(audit, title="t")
    del audit["encoder_notes"]
    v = verdict(audit)
    assert any("encoder notes" in name for name in v["not_checked"])
    section = _section(render_html(audit, title="t"), "undescribed")
    assert "No &quot;encoder_notes&quot; block" in section


# ----------------------------------------------------------------------------------------------
# The federated report: DP releases, the ledgers, failures; never a merchant's local numbers
# ----------------------------------------------------------------------------------------------


def make_federated_report(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    audit = make_audit(seed)
    columns = ["month", "size", "type", "name", "price", "hour"]

    def scores(keys: list[str], cells: int, low: float) -> dict:
        return {
            k: {"score": round(float(rng.uniform(low, 1)), 4), "reference": 0.9, "cells": cells}
            for k in keys
        }

    def block(kind: str, keys: list[str], std: float) -> dict:
        # The column statistics of a healthy run: scores near their reference.
        entries = scores(keys, 24, 0.85 if kind == "columns" else 0.5)
        return {
            "kind": kind,
            "label": "computed against a noisy DP release already in the merchants' ledgers",
            "noise_std": std,
            "total": 4810.37,
            "contributors": 3,
            "scores": entries,
            "mean": float(np.mean([e["score"] for e in entries.values()])),
            "reference_mean": 0.9,
        }

    pairs = [f"{a}|{b}" for i, a in enumerate(columns) for b in columns[i + 1 :]]
    releases = {
        "statistics": block("columns", columns, 41.5),
        "marginals-selection": block("pairs", pairs, 18.25),
        "marginals-measurement": block("pairs", pairs[:5], 7.5),
    }
    return {
        "kind": "federated",
        "labels": {"dp_fidelity": "computed against a noisy DP release", "merchants": "local"},
        "dp_fidelity": {
            "label": "computed against a noisy DP release already in the merchants' ledgers",
            "column_mean": releases["statistics"]["mean"],
            "column_reference": 0.9,
            "pair_mean": releases["marginals-selection"]["mean"],
            "pair_reference": 0.875,
            "releases": releases,
        },
        "claimed": audit["claimed"],
        "ledgers": audit["ledgers"],
        "rounds": audit["rounds"],
        "failures": [
            {"round": "audit", "merchant": "merchant-3", "state": "failed", "reason": None}
        ],
        "merchants": {
            **{m: {"state": "ok", "local_report": True} for m in audit["ledgers"]},
            "merchant-3": {"state": "failed", "local_report": False},
        },
        "encoder_notes": {},
    }


@pytest.fixture(scope="module")
def federated(tmp_path_factory) -> tuple[dict, str, dict]:
    report = make_federated_report()
    html_path, json_path = write_federated_report(report, tmp_path_factory.mktemp("fed") / "out")
    return report, html_path.read_text(encoding="utf-8"), json.loads(json_path.read_text())


def test_federated_report_round_trips_and_says_what_is_dp(federated):
    report, html, stored = federated
    assert stored["audit"] == report and stored["view"] == FEDERATED_VIEW
    assert stored["verdict"] == json.loads(json.dumps(federated_verdict(report)))
    boundary = html[html.index('id="view"') : html.index('id="verdict"')]
    assert "every number in this report is a DP release" in boundary
    assert "never sent" in boundary


def test_federated_report_shows_only_dp_sections(federated):
    _, html, _ = federated
    images = _images(html)
    assert sorted(images) == ["dp-pairs", "epsilon-rounds"]
    for section in ("verdict", "undescribed", "privacy", "dp-fidelity", "merchants", "failures"):
        assert f'id="{section}"' in html, section
    for local_only in ('id="utility"', 'id="attack"', 'id="heuristics"', 'id="fidelity"'):
        assert local_only not in html, local_only
    dp = html[html.index('id="dp-fidelity"') : html.index('id="merchants"')]
    for text in ("18.25", "4810", "marginals-measurement", "noisy DP release", "reference"):
        assert text in dp, text
    assert "could not be rendered" not in html


def test_federated_verdict():
    report = make_federated_report()
    v = federated_verdict(report)
    assert v["epsilon"] == 0.9999 and v["ledger_epsilon_max"] == 0.99
    assert v["dp_pair_fidelity"] == report["dp_fidelity"]["pair_mean"]
    assert v["dp_pair_reference"] == 0.875
    box = render_federated_html(report, title="t").split('id="verdict"')[1].split("</section>")[0]
    assert "(reference 0.875)" in box
    assert (v["local_reports"], v["merchants"]) == (3, 4)
    assert [c["check"] for c in v["failed_checks"]] == ["merchant_failure"]
    assert "merchant-3 failed in round audit" in v["failed_checks"][0]["message"]
    report["ledgers"]["merchant-0"]["epsilon"] = 1.5
    assert federated_verdict(report)["critical"]
    del report["dp_fidelity"]
    html = render_federated_html(report, title="t")
    assert "No &quot;dp_fidelity&quot; block" in html
    assert "DP fidelity (no DP release held)" in federated_verdict(report)["not_checked"]


def test_federated_text_is_escaped():
    report = make_federated_report()
    evil = "<script>alert('x')</script>"
    report["merchants"][evil] = {"state": evil, "local_report": False}
    report["dp_fidelity"]["releases"]["statistics"]["scores"][evil] = {"score": 0.5}
    html = render_federated_html(report, title=evil)
    assert "<script" not in html.lower() and "&lt;script&gt;" in html


def test_federated_column_far_below_its_noise_reference_fails_naming_it():
    report = make_federated_report()
    block = report["dp_fidelity"]["releases"]["statistics"]
    limit = dp_column_limit(cells=24, noise_std=block["noise_std"], total=block["total"])
    block["scores"]["type"]["score"] = 0.9 - limit - 0.01  # its reference is 0.9
    v = federated_verdict(report)
    assert v["low_columns"] == ["type"]
    [check] = [c for c in v["failed_checks"] if c["check"] == "dp_column_fidelity"]
    assert check["column"] == "type" and check["severity"] == "fail"
    assert "'type'" in check["message"] and "noise reference 0.9" in check["message"]
    assert "column &#x27;type&#x27;" in _box(render_federated_html(report, title="t"))
    block["scores"]["type"]["score"] = 0.9 - limit + 0.01
    assert federated_verdict(report)["low_columns"] == []


def test_the_dp_column_limit_grows_with_the_noise():
    # pizzaplace's schema round at epsilon 1 (std 269 per cell, 39,381 rows): 'type', 5 cells.
    assert dp_column_limit(cells=5, noise_std=269, total=39381) == pytest.approx(0.1136, abs=1e-4)
    # A noise that drowns the column (oj: std 419 per cell, 765 rows) allows any gap.
    assert dp_column_limit(cells=3, noise_std=419, total=765) > 0.75
    report = make_federated_report()
    block = report["dp_fidelity"]["releases"]["statistics"]
    block["scores"]["type"]["score"] = 0.5
    assert federated_verdict(report)["low_columns"] == ["type"]
    block["noise_std"] = 400.0
    assert federated_verdict(report)["low_columns"] == []


def test_federated_encoder_notes_fail_the_verdict_and_are_a_section():
    report = make_federated_report()
    report["encoder_notes"] = {"price": UNDESCRIBED}
    v = federated_verdict(report)
    assert [(c["check"], c.get("column")) for c in v["failed_checks"]] == [
        ("undescribed_column", "price"),
        ("merchant_failure", None),
    ]
    assert v["undescribed_columns"] == ["price"] and v["failed_checks"][0]["message"] == UNDESCRIBED
    html = render_federated_html(report, title="t")
    assert "no bin stands out of the" in _section(html, "undescribed")
    assert '<td class="value">price</td>' in _box(html)


# ----------------------------------------------------------------------------------------------
# Headless Chromium: the page loads from file:// without errors and shows the report
# ----------------------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


def _chromium(user_data: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={user_data}",
            "--enable-logging=stderr",
            "--v=0",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_report_in_headless_chromium(tmp_path):
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip("chromium not installed: apt-get install chromium")
    audit = make_audit()
    audit["failures"] = [
        {
            "round": 0,
            "merchant": "merchant-3",
            "state": "failed",
            "reason": "bad input: <script>alert(1)</script> column 'price': missing",
        }
    ]
    html_path, _ = write_report(audit, tmp_path / "out")
    url = html_path.resolve().as_uri()

    dom = _chromium(tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="verdict"' in dom.stdout and "0.9999" in dom.stdout and "0.5123" in dom.stdout
    assert "FAILED CHECKS" in dom.stdout
    assert len(IMG_RE.findall(dom.stdout)) == len(PLOT_KINDS)
    assert "<script>alert" not in dom.stdout
    for line in dom.stderr.splitlines():
        assert "Uncaught" not in line, line
        assert not ("CONSOLE" in line and "error" in line.lower()), line

    shot = tmp_path / "shot.png"
    run = _chromium(
        tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000", url
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 50_000
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_federated_verdict_shows_and_checks_the_signatures():
    report = make_federated_report()
    report["verification"] = {"status": "verified", "server": "verified", "merchants": {}}
    box = render_federated_html(report, title="t").split('id="verdict"')[1].split("</section>")[0]
    assert "Signed privacy claims" in box and "verified" in box
    assert "signatures" not in [c["check"] for c in federated_verdict(report)["failed_checks"]]
    report["verification"]["status"] = "failed"
    failed = federated_verdict(report)
    assert failed["critical"] and "signatures" in [c["check"] for c in failed["failed_checks"]]
