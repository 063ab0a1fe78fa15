"""End-to-end federations, the supported way: this project's app folder run with ``flwr run``
on one local simulation SuperLink for the module (the Federation issue's tests).

Three module-scoped setups keep the number of simulations at five:

* ``federation``: one 2-round run with three good merchants and one whose table lacks the
  ``price`` column, every reply recorded by an inspector mod on its way out of the merchant.
  Tests: artifact loads and samples; each merchant's ledger equals an independent RDP
  recomputation from the recorded mechanism parameters; replies carry only what the federation
  allows and nothing row-level; the bad merchant fails with a message naming file, column and
  problem while the others finish.
* ``resumed``: a 3-round run stopped after round 2, resumed for round 3, then resumed with a
  4th round that every merchant refuses (budget spent).
* ``warm_started``: one round after the warm start's two marginal rounds (the default; the
  setups above turn it off to pin the plain DP-SGD flow).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from client.state import MerchantState
from privacy.ledger import RDP_ORDERS
from server.app import ARTIFACT
from simulations import runner
from simulations.datasets import load_dataset
from simulations.engine import LocalSimulation, write_app
from simulations.runner import simulated_policy, write_simulated_policy
from synth_models.artifact import load_artifact
from synth_models.federation import (
    ARRAYS,
    AUDIT,
    DOCUMENT_KEY,
    FAILED,
    LEDGER,
    MARGINALS,
    METRICS,
    OK,
    REFUSED,
    REPLY_DOCUMENTS,
    REPLY_METRICS,
    STATISTICS,
    STATISTICS_MESSAGE,
    STATUS,
)
from synth_models.marginals import MEASUREMENT_LABEL, SELECTION_LABEL
from synth_models.synthesizer import STATISTICS_LABEL, TabularSynthesizer
from synth_models.training import TRAINING_LABEL
from tests.simulations.apps.inspected_client import REPLIES

pytestmark = pytest.mark.slow

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

BUDGET, DELTA, SHARE = 3.0, 1e-5, 0.1
GOOD_ROWS = (400, 450, 500)  # merchants 0..2; merchant 3 has a bad table
MODEL_OPTIONS = {"generator_hidden": [32, 32], "discriminator_hidden": [32, 32], "noise_dim": 16}
GOOD = [f"merchant-{i}" for i in range(len(GOOD_ROWS))]
INSPECTED = Path(__file__).parent / "apps" / "inspected_client.py"
HOLDOUT = 0.2  # each merchant's share of rows kept out of training for its audit


def run_config(run_dir: Path, merchants: int, **overrides) -> dict:
    return {
        "run-dir": str(run_dir),
        "model": "gan",
        "model-options": json.dumps(MODEL_OPTIONS),  # as `flwr run` passes it: a JSON string
        "num-rounds": 2,
        "local-epochs": 1,
        "batch-size": 100,
        "epsilon": BUDGET,
        "delta": DELTA,
        "statistics-share": SHARE,
        "min-nodes": merchants,
        "round-timeout": 600.0,
        "seed": 0,
        "audit": False,
        "warm-start-share": 0.0,
        **overrides,
    }


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """One local simulation SuperLink for every run of this module."""
    with LocalSimulation(tmp_path_factory.mktemp("flwr")) as running:
        yield running


def simulate(
    config: dict,
    *,
    engine: LocalSimulation,
    data_dir: Path,
    state_dir: Path,
    merchants: int,
    inspected: bool = False,
    holdout: float = 0.0,
) -> None:
    """``flwr run`` of this project (with the inspecting ClientApp when ``inspected``)."""
    run_dir = Path(config["run-dir"])
    write_simulated_policy(state_dir, simulated_policy(config))
    extra = {"components": {"clientapp": "inspected_client:app"}} if inspected else {}
    app = write_app(run_dir.parent / "app", modules={"inspected_client.py": INSPECTED}, **extra)
    run_config = {
        **config,
        "data-dir": str(data_dir),
        "state-dir": str(state_dir),
        "torch-threads": 1,
        "holdout-fraction": holdout,
    }
    runner.simulate(
        run_dir, run_config=run_config, num_supernodes=merchants, engine=engine, app=app
    )


def write_merchants(directory: Path, sizes, *, seed: int) -> list[pd.DataFrame]:
    """Disjoint samples of pizzaplace as merchant-<i>.csv."""
    directory.mkdir(parents=True)
    table = load_dataset("pizzaplace").table
    rows = np.random.default_rng(seed).permutation(len(table))
    tables, start = [], 0
    for i, size in enumerate(sizes):
        part = table.iloc[rows[start : start + size]].reset_index(drop=True)
        part.to_csv(directory / f"merchant-{i}.csv", index=False)
        tables.append(pd.read_csv(directory / f"merchant-{i}.csv"))
        start += size
    return tables


def read_rounds(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]


def read_state(state_dir: Path, merchant: str) -> MerchantState:
    return MerchantState.from_dict(json.loads((state_dir / f"{merchant}.json").read_text()))


# ----------------------------------------------------------------------------------------------
# Independent accountant: the RDP of the recorded mechanisms straight from Opacus' functions.
# ----------------------------------------------------------------------------------------------
def opacus_epsilon(statistics, sgd_sigma: float, sgd_rate: float, sgd_steps: int) -> float:
    """Epsilon of one Gaussian statistics release (or several releases, a list) plus
    ``sgd_steps`` DP-SGD steps."""
    orders = list(RDP_ORDERS)
    releases = statistics if isinstance(statistics, list) else [statistics]
    rdp = sum(
        np.asarray(compute_rdp(q=1.0, noise_multiplier=r.noise_multiplier, steps=1, orders=orders))
        for r in releases
    )
    extra_delta = sum(r.extra_delta for r in releases)
    if sgd_steps:
        rdp = rdp + np.asarray(
            compute_rdp(q=sgd_rate, noise_multiplier=sgd_sigma, steps=sgd_steps, orders=orders)
        )
    eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=DELTA - extra_delta)
    return float(eps)


# ----------------------------------------------------------------------------------------------
# Setup 1: three merchants and a bad one, two rounds, an inspector on every reply.
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def federation(tmp_path_factory, engine):
    root = tmp_path_factory.mktemp("federation")
    data_dir, state_dir, run_dir = root / "merchants", root / "state", root / "run"
    tables = write_merchants(data_dir, GOOD_ROWS, seed=1)
    # merchant-3: a table without the price column
    bad = load_dataset("pizzaplace").table.iloc[:300].drop(columns=["price"])
    bad.to_csv(data_dir / "merchant-3.csv", index=False)
    merchants = len(GOOD_ROWS) + 1
    simulate(
        run_config(
            run_dir,
            merchants,
            **{"min-train-replies": 2, "audit": True, "target": "type", "audit-rows": 256},
        ),
        engine=engine,
        data_dir=data_dir,
        state_dir=state_dir,
        merchants=merchants,
        inspected=True,
        holdout=HOLDOUT,
    )
    replies = [
        json.loads(line)
        for path in sorted((state_dir / REPLIES).glob("replies-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    return {
        "run_dir": run_dir,
        "state_dir": state_dir,
        "bad_file": data_dir / "merchant-3.csv",
        "tables": dict(zip(GOOD, tables, strict=True)),
        "rounds": read_rounds(run_dir),
        "replies": replies,
    }


def test_artifact_loads_and_samples(federation):
    synth = TabularSynthesizer.load(federation["run_dir"] / ARTIFACT)
    sample = synth.sample(200, seed=1)
    assert len(sample) == 200
    assert list(sample.columns) == list(federation["tables"]["merchant-0"].columns)
    assert sample["size"].isin(["S", "M", "L", "XL", "XXL"]).all()
    manifest, _ = load_artifact(federation["run_dir"] / ARTIFACT)
    assert manifest["federation"]["rounds_completed"] == 2
    assert set(synth.ledgers_) == set(GOOD)  # the bad merchant spent nothing, has no ledger
    assert synth.epsilon_spent == max(lg.epsilon() for lg in synth.ledgers_.values())


def test_rounds_log_has_schema_round_then_two_training_rounds(federation):
    rounds = federation["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(rounds[0]["merchants"][m]["state"] == OK for m in GOOD)
    for entry in rounds[1:]:
        assert entry["aggregated"] is True
        assert all(entry["merchants"][m]["state"] == OK for m in GOOD)


@pytest.mark.parametrize("merchant", GOOD)
def test_ledger_matches_an_independent_recomputation(federation, merchant):
    synth = TabularSynthesizer.load(federation["run_dir"] / ARTIFACT)
    ledger = synth.ledgers_[merchant]
    state = read_state(federation["state_dir"], merchant)
    rounds = [r["merchants"][merchant] for r in federation["rounds"][1:]]

    # The statistics release: one Gaussian mechanism (q = 1) costing at most its share.
    (statistics,) = [r for r in state.ledger.records if r.label == STATISTICS_LABEL]
    assert (statistics.sample_rate, statistics.steps) == (1.0, 1)
    alone = opacus_epsilon(statistics, 0.0, 0.0, 0)
    assert SHARE * BUDGET * 0.99 <= alone <= SHARE * BUDGET * (1 + 1e-9)

    # DP-SGD: the same noise multiplier and sample rate in both rounds (calibrated once).
    sigma, rate = rounds[0]["noise-multiplier"], rounds[0]["sample-rate"]
    assert sigma > 0 and 0 < rate < 1
    assert all(r["noise-multiplier"] == sigma and r["sample-rate"] == rate for r in rounds)
    assert state.noise_multiplier == sigma
    steps = [int(r["steps"]) for r in rounds]

    # Epsilon after each round, from the recorded parameters only.
    expected = [opacus_epsilon(statistics, sigma, rate, sum(steps[: k + 1])) for k in range(2)]
    for k, entry in enumerate(rounds):
        assert entry["epsilon"] == pytest.approx(expected[k], rel=1e-9), f"round {k + 1}"
    assert ledger.epsilon() == pytest.approx(expected[1], rel=1e-9)
    assert ledger.state_dict()["epsilon"] == pytest.approx(expected[1], rel=1e-9)
    assert expected[0] < expected[1] <= BUDGET * (1 + 1e-9)
    assert ledger.epsilon_budget == BUDGET and ledger.delta == DELTA
    # The ledger holds exactly these mechanisms (steps that ran = steps planned).
    assert [(r.label, r.noise_multiplier, r.sample_rate, r.steps) for r in ledger.records] == [
        (STATISTICS_LABEL, statistics.noise_multiplier, 1.0, 1),
        (TRAINING_LABEL, sigma, rate, sum(steps)),
    ]
    # The artifact's ledger and the merchant's own copy agree.
    assert ledger.state_dict() == state.ledger.state_dict()
    # rounds.jsonl's synthesizer epsilon is the largest merchant epsilon of that round.
    entry = federation["rounds"][2]
    assert entry["epsilon"] == pytest.approx(
        max(entry["merchants"][m]["epsilon"] for m in GOOD), rel=1e-12
    )


def _replies(federation, partition: int, message_type: str | None = None) -> list[dict]:
    return [
        r
        for r in federation["replies"]
        if r["partition"] == partition and message_type in (None, r["message_type"])
    ]


def test_inspector_saw_every_reply(federation):
    replies = federation["replies"]
    assert len(replies) == 4 * 4  # 4 merchants x (schema round + 2 training rounds + audit)
    for partition in range(4):
        assert len(_replies(federation, partition, STATISTICS_MESSAGE)) == 1
        assert len(_replies(federation, partition, "train")) == 2
        assert len(_replies(federation, partition, "evaluate")) == 1
    assert all(r["error"] is None for r in replies)


def test_replies_carry_only_allowed_records(federation):
    expected_types = {ARRAYS: "ArrayRecord", METRICS: "MetricRecord"}
    expected_types |= {name: "ConfigRecord" for name in REPLY_DOCUMENTS}
    synth = TabularSynthesizer.load(federation["run_dir"] / ARTIFACT)
    state_dict = synth.model_.state_dict()
    for reply in federation["replies"]:
        for name, record in reply["records"].items():
            assert expected_types.get(name) == record["type"], name
            if record["type"] == "ConfigRecord":
                assert list(record["body"]) == [DOCUMENT_KEY]
                json.loads(record["body"][DOCUMENT_KEY])
            if record["type"] == "MetricRecord":
                assert set(record["body"]) <= set(REPLY_METRICS)
                assert all(isinstance(v, int | float) for v in record["body"].values())
            if record["type"] == "ArrayRecord":
                assert set(record["body"]) == set(state_dict)
                for key, array in record["body"].items():
                    assert array["shape"] == list(state_dict[key].shape), key


def test_training_replies_carry_weights_metrics_ledger_and_status(federation):
    for partition in range(len(GOOD)):
        for reply in _replies(federation, partition, "train"):
            assert set(reply["records"]) == {ARRAYS, METRICS, LEDGER, STATUS}
        (stats,) = _replies(federation, partition, STATISTICS_MESSAGE)
        assert set(stats["records"]) == {STATISTICS, LEDGER, STATUS}


def _numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)


def _lists(value):
    if isinstance(value, list):
        yield value
        for item in value:
            yield from _lists(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _lists(item)


def _documents(reply) -> dict:
    return {
        name: json.loads(record["body"][DOCUMENT_KEY])
        for name, record in reply["records"].items()
        if record["type"] == "ConfigRecord"
    }


@pytest.mark.parametrize("partition", range(len(GOOD)))
def test_nothing_row_level_or_exact_leaves_a_merchant(federation, partition):
    merchant = GOOD[partition]
    table = federation["tables"][merchant]
    exact = len(table)
    holdout_rows = round(HOLDOUT * exact)
    real_counts = {exact, exact - holdout_rows, holdout_rows}
    state = read_state(federation["state_dir"], merchant)
    replies = _replies(federation, partition)
    for reply in replies:
        documents = _documents(reply)
        metrics = reply["records"].get(METRICS, {}).get("body", {})
        # The aggregation weight is the DP row count, not the exact one. (A DP count is an
        # integer now, the exact count plus discrete Gaussian noise: it can equal the exact one
        # by chance, ~1/(sigma sqrt(2 pi)), which its DP guarantee covers; so no "!= exact".)
        if metrics:
            assert metrics["num-examples"] == state.dp_rows
            if state.dp_rows != exact:  # (equal by chance: then the two rates coincide too)
                assert metrics["sample-rate"] != pytest.approx(100 / exact, rel=1e-12)
        # No number outside the noisy count tables is an exact count of rows (all, trained,
        # held out); the tables' noisy integer counts are checked for noise below. The DP row
        # count itself is such a release (checked below to be the statistics' row count).
        outside = {k: v for k, v in documents.items() if k not in (STATISTICS, MARGINALS)}
        assert not real_counts & (set(_numbers([outside, metrics])) - {state.dp_rows})
        # No list as long as the table (a column of per-row values), and no column's values.
        columns = [table[c].tolist() for c in table.columns]
        for values in _lists(documents):
            assert len(values) != exact
            assert values not in columns
        for record in reply["records"].values():
            if record["type"] == "ArrayRecord":
                assert all(exact not in a["shape"] for a in record["body"].values())
    (statistics_reply,) = _replies(federation, partition, STATISTICS_MESSAGE)
    statistics = _documents(statistics_reply)[STATISTICS]
    assert statistics["row_count"] == state.dp_rows
    # Integer counts plus the merchant's own integer (discrete Gaussian) noise.
    assert float(statistics["row_count"]).is_integer() and statistics["row_count_var"] > 0
    for name, column in statistics["columns"].items():
        counts = [*column["counts"], column["missing"], *(column["decimals"] or [])]
        assert counts, name
        assert all(float(c).is_integer() for c in counts), f"{name}: not discrete Gaussian"
        assert column["noise_var"] > 0, f"{name}: exact counts released"


def test_a_bad_merchant_fails_naming_file_column_and_problem(federation):
    outcome = federation["rounds"][0]["merchants"]["merchant-3"]
    assert outcome["state"] == FAILED
    # The server is told a code and the public column, nothing of the table.
    assert outcome["code"] == "bad-input" and outcome["column"] == "price"
    assert outcome["reason"] == "bad-input (column 'price')"
    for entry in federation["rounds"][1:]:
        assert entry["merchants"]["merchant-3"]["state"] == FAILED
        assert entry["merchants"]["merchant-3"]["reason"] == "bad-input (column 'price')"
    # The merchant's own events log (beside its ledger file) names file, column and problem.
    events = (federation["state_dir"] / "merchant-3.log").read_text()
    assert str(federation["bad_file"]) in events
    assert "'price'" in events and "missing column" in events
    # Its replies held a status only: no statistics, ledger, weights or metrics.
    for reply in _replies(federation, 3):
        assert set(reply["records"]) == {STATUS}
    # Nothing was spent: its state file holds only the schema it pinned.
    assert read_state(federation["state_dir"], "merchant-3").epsilon == 0.0
    # The others finished the run.
    assert (federation["run_dir"] / ARTIFACT).exists()
    assert federation["rounds"][-1]["round"] == 2


# ----------------------------------------------------------------------------------------------
# Setup 2: stop after round 2 of 3, resume for round 3, resume again with a 4th round.
# ----------------------------------------------------------------------------------------------
RESUME_ROWS = (300, 350, 400)


def _snapshot(run_dir: Path, state_dir: Path) -> dict:
    manifest, weights = load_artifact(run_dir / ARTIFACT)
    return {
        "rounds": read_rounds(run_dir),
        "manifest": manifest,
        "weights": {k: v.clone() for k, v in weights.items()},
        "ledgers": manifest["privacy"]["ledgers"],
        "states": {m: read_state(state_dir, m) for m in GOOD},
    }


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, engine):
    root = tmp_path_factory.mktemp("resume")
    data_dir, state_dir, run_dir = root / "merchants", root / "state", root / "run"
    write_merchants(data_dir, RESUME_ROWS, seed=2)
    n = len(RESUME_ROWS)
    places = {"engine": engine, "data_dir": data_dir, "state_dir": state_dir, "merchants": n}
    simulate(run_config(run_dir, n, **{"num-rounds": 3, "stop-after-round": 2}), **places)
    first = _snapshot(run_dir, state_dir)
    simulate(run_config(run_dir, n, **{"num-rounds": 3, "resume": True}), **places)
    second = _snapshot(run_dir, state_dir)
    simulate(run_config(run_dir, n, **{"num-rounds": 4, "resume": True}), **places)
    third = _snapshot(run_dir, state_dir)
    return first, second, third


def _epsilons(snapshot) -> dict[str, float]:
    from privacy.ledger import PrivacyLedger

    return {m: PrivacyLedger.from_state_dict(s).epsilon() for m, s in snapshot["ledgers"].items()}


def test_stop_after_round_checkpoints_round_two(resumed):
    first, _, _ = resumed
    assert first["manifest"]["federation"]["rounds_completed"] == 2
    assert [r["round"] for r in first["rounds"]] == [0, 1, 2]
    assert set(first["ledgers"]) == set(GOOD)


def test_resume_continues_with_round_three(resumed):
    first, second, _ = resumed
    assert second["manifest"]["federation"]["rounds_completed"] == 3
    # Round 3 is appended: no second schema round, no new round 1.
    assert [r["round"] for r in second["rounds"]] == [0, 1, 2, 3]
    assert second["rounds"][:3] == first["rounds"]
    round3 = second["rounds"][3]
    assert round3["aggregated"] is True
    assert all(round3["merchants"][m]["state"] == OK for m in GOOD)
    # The weights moved on from the round-2 checkpoint.
    assert any(not torch.equal(first["weights"][k], second["weights"][k]) for k in first["weights"])
    # The encoder is the checkpoint's (the schema round was not run again).
    assert second["manifest"]["encoder"] == first["manifest"]["encoder"]


def test_resumed_ledgers_continue_from_round_two(resumed):
    first, second, _ = resumed
    before, after = _epsilons(first), _epsilons(second)
    for merchant in GOOD:
        old = first["states"][merchant].ledger.records
        new = second["states"][merchant].ledger.records
        # Same statistics release, same noise, one more round of steps on top.
        assert new[0] == old[0]
        assert new[1].noise_multiplier == old[1].noise_multiplier
        assert new[1].sample_rate == old[1].sample_rate
        steps = int(second["rounds"][3]["merchants"][merchant]["steps"])
        assert new[1].steps == old[1].steps + steps
        assert (
            second["states"][merchant].noise_multiplier
            == first["states"][merchant].noise_multiplier
        )
        assert before[merchant] < after[merchant] <= BUDGET * (1 + 1e-9)
        assert second["rounds"][3]["merchants"][merchant]["epsilon"] == pytest.approx(
            after[merchant], rel=1e-12
        )
        # Calibrated in round 1 for all 3 rounds: the budget is (nearly) used up now.
        assert after[merchant] >= 0.97 * BUDGET


def test_a_round_past_the_budget_is_refused_by_every_merchant(resumed):
    _, second, third = resumed
    assert third["manifest"]["federation"]["rounds_completed"] == 4
    assert [r["round"] for r in third["rounds"]] == [0, 1, 2, 3, 4]
    round4 = third["rounds"][4]
    assert round4["aggregated"] is False
    for merchant in GOOD:
        outcome = round4["merchants"][merchant]
        assert outcome["state"] == REFUSED and outcome["code"] == "budget-exhausted"
    # The model is the round-3 model, the ledgers did not move.
    assert set(third["weights"]) == set(second["weights"])
    assert all(torch.equal(third["weights"][k], second["weights"][k]) for k in third["weights"])
    assert third["ledgers"] == second["ledgers"]
    for merchant in GOOD:
        assert third["states"][merchant].to_dict() == second["states"][merchant].to_dict()


def test_no_ledger_ever_exceeds_its_budget(resumed):
    for snapshot in resumed:
        for merchant, epsilon in _epsilons(snapshot).items():
            assert epsilon <= BUDGET * (1 + 1e-9), merchant
            assert math.isfinite(epsilon)
        for entry in snapshot["rounds"][1:]:
            for result in entry["merchants"].values():
                if "epsilon" in result:
                    assert result["epsilon"] <= BUDGET * (1 + 1e-9)


def test_every_good_merchant_keeps_its_full_audit_locally(federation):
    for partition, merchant in enumerate(GOOD):
        # What left the merchant: that it wrote its report, no number computed on its rows.
        (reply,) = _replies(federation, partition, "evaluate")
        assert _documents(reply)[AUDIT] == {"local_report": True}
        # Its local report (its premises: the state dir) has the full audit on its own rows.
        folder = federation["state_dir"] / f"{merchant}-audit"
        local = json.loads((folder / "report.json").read_text())
        audit = local["audit"]
        assert {"fidelity", "utility", "attack", "heuristics"} <= set(audit)
        assert 0.0 <= audit["fidelity"]["quality"] <= 1.0
        assert 0.0 <= audit["utility"]["tstr"] <= 1.0
        assert 0.0 <= audit["attack"]["auc"] <= 1.0
        assert audit["attack"]["empirical_epsilon"]["epsilon_lower_bound"] <= BUDGET
        assert "local view" in local["view"].lower()
        assert "data:image/png;base64," in (folder / "report.html").read_text()
    assert not (federation["state_dir"] / "merchant-3-audit").exists()


def test_the_server_writes_the_federated_report_from_dp_releases_only(federation):
    report = json.loads((federation["run_dir"] / "report" / "report.json").read_text())
    audit = report["audit"]
    assert audit["merchants"] == {
        **{m: {"state": OK, "local_report": True} for m in GOOD},
        "merchant-3": {"state": FAILED, "local_report": False},
    }
    assert report["verdict"]["epsilon"] <= BUDGET
    # No warm start: the schema round's statistics are the only release it is scored against.
    assert set(audit["dp_fidelity"]["releases"]) == {"statistics"}
    assert audit["dp_fidelity"]["releases"]["statistics"]["contributors"] == len(GOOD)
    assert (federation["run_dir"] / "releases" / "statistics.json").exists()
    reasons = [
        f["reason"]
        for f in audit["failures"]
        if f["merchant"] == "merchant-3" and f["round"] != "audit"
    ]
    assert reasons and all("price" in r for r in reasons)
    html = (federation["run_dir"] / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html and "merchant-3" in html
    assert "TSTR" not in html and "Membership inference" not in html


# ----------------------------------------------------------------------------------------------
# Setup 3: the GAN's warm start (the default) before one training round.
# ----------------------------------------------------------------------------------------------
WARM_ROWS, WARM_SHARE = (400, 450), 0.3
WARM = GOOD[: len(WARM_ROWS)]


@pytest.fixture(scope="module")
def warm_started(tmp_path_factory, engine):
    root = tmp_path_factory.mktemp("warm")
    data_dir, state_dir, run_dir = root / "merchants", root / "state", root / "run"
    write_merchants(data_dir, WARM_ROWS, seed=3)
    n = len(WARM_ROWS)
    config = run_config(
        run_dir, n, **{"num-rounds": 1, "warm-start-share": WARM_SHARE, "warm-start-epochs": 1}
    )
    simulate(config, engine=engine, data_dir=data_dir, state_dir=state_dir, merchants=n)
    return {
        "rounds": read_rounds(run_dir),
        "synth": TabularSynthesizer.load(run_dir / ARTIFACT),
        "states": {m: read_state(state_dir, m) for m in WARM},
    }


def test_warm_start_runs_the_marginal_rounds_before_training(warm_started):
    rounds = warm_started["rounds"]
    assert [(r["round"], r.get("phase")) for r in rounds] == [
        (0, None),
        (0, "warm start selection"),
        (0, "warm start measurement"),
        (1, None),
    ]
    assert all(r["merchants"][m]["state"] == OK for r in rounds for m in WARM)
    assert rounds[-1]["aggregated"] is True
    assert len(warm_started["synth"].sample(50, seed=0)) == 50


@pytest.mark.parametrize("merchant", WARM)
def test_warm_start_ledger_matches_an_independent_recomputation(warm_started, merchant):
    ledger = warm_started["synth"].ledgers_[merchant]
    assert ledger.state_dict() == warm_started["states"][merchant].ledger.state_dict()
    labels = [r.label for r in ledger.records]
    assert labels == [STATISTICS_LABEL, SELECTION_LABEL, MEASUREMENT_LABEL, TRAINING_LABEL]
    releases, (sgd,) = ledger.records[:3], ledger.records[3:]
    # The statistics and the warm start's marginals end at their shares of the budget ...
    before_training = opacus_epsilon(releases, 0.0, 0.0, 0)
    target = (SHARE + WARM_SHARE) * BUDGET
    assert 0.99 * target <= before_training <= target * (1 + 1e-9)
    # ... and DP-SGD spends the rest: the total is Opacus' RDP of all four mechanisms.
    total = opacus_epsilon(releases, sgd.noise_multiplier, sgd.sample_rate, sgd.steps)
    assert ledger.epsilon() == pytest.approx(total, rel=1e-9)
    assert before_training < total <= BUDGET * (1 + 1e-9)
    assert total >= 0.97 * BUDGET
