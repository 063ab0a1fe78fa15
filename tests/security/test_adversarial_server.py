"""A curious, then malicious server against the real ClientApp.

The attacker's ServerApp (``apps/attacker_server.py``) is written as someone in the server's
seat would write it: plain ``grid.send_and_receive`` with requests of its own making (no
fedsynth server code). It runs once, in an app folder with ``flwr run`` on a local simulation
SuperLink, against two merchants running the real ClientApp (policy, reply guard, ledger
files), and records what came back; each test then asserts that an attack got a refusal or
only releases the merchant's ledger accounts for.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from client.merchant import row_wise_holdout
from client.policy import MerchantPolicy
from client.state import load_state
from simulations.datasets import load_dataset
from simulations.engine import write_app
from simulations.runner import simulate, write_simulated_policy
from synth_models.federation import (
    AUDIT,
    LEDGER,
    MARGINALS,
    STATISTICS,
    STATUS,
    dumps,
)

pytestmark = pytest.mark.slow
ATTACKER = Path(__file__).parent / "apps" / "attacker_server.py"
ROWS = 1500
MERCHANTS = 2


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    root = tmp_path_factory.mktemp("attacked")
    data = load_dataset("pizzaplace")
    (root / "merchants").mkdir()
    tables = {}
    for i in range(MERCHANTS):
        part = data.table.iloc[i * ROWS : (i + 1) * ROWS]
        part.to_csv(root / "merchants" / f"merchant-{i}.csv", index=False)
        tables[f"merchant-{i}"] = part.reset_index(drop=True)
    results = root / "results.json"
    write_simulated_policy(root / "state", MerchantPolicy(epsilon_budget=1.0))
    inputs = {"results-path": "", "attack-schema": "", "attack-metadata": ""}
    app = write_app(
        root / "app",
        modules={"attacker_server.py": ATTACKER},
        components={"serverapp": "attacker_server:app"},
        config=inputs,
    )
    run_config = {
        "data-dir": str(root / "merchants"),
        "state-dir": str(root / "state"),
        "torch-threads": 1,
        "holdout-fraction": 0.2,
        "results-path": str(results),
        "attack-schema": json.dumps(data.schema().to_dict()),
        "attack-metadata": json.dumps(data.metadata),
    }
    simulate(root, run_config=run_config, num_supernodes=MERCHANTS, app=app, timeout=900)
    return {
        "results": json.loads(results.read_text()),
        "root": root,
        "tables": tables,
        "schema": data.schema(),
    }


def by_merchant(replies: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for reply in replies:
        out.setdefault(reply[STATUS]["merchant"], []).append(reply)
    return out


def test_replayed_seeds_give_fresh_noise_of_the_recorded_scale(attack):
    """The server's seed no longer drives the noise: the same request twice gives two
    different releases, and what the noise hides stays hidden."""
    from privacy.statistics import num_histograms
    from synth_models.encoder import statistics_inputs

    for merchant, (one, two) in by_merchant(attack["results"]["replay"]).items():
        assert one[STATUS]["state"] == two[STATUS]["state"] == "ok"
        a, b = one[STATISTICS], two[STATISTICS]
        assert a["row_count"] != b["row_count"]
        assert a["columns"]["price"]["counts"] != b["columns"]["price"]["counts"]
        # Release minus the exact counts is noise of the recorded variance (not zero).
        train, _ = row_wise_holdout(attack["tables"][merchant], 0.2, salt=merchant)
        inputs = statistics_inputs(train, attack["schema"])
        exact = inputs["size"].values.value_counts()
        sizes = a["columns"]["size"]["categories"]
        residual = np.array(a["columns"]["size"]["counts"]) - [exact.get(s, 0) for s in sizes]
        grid = np.array(a["columns"]["price"]["counts"])
        assert np.abs(residual).max() > 1 and np.abs(grid).max() > 1
        hour = np.array(a["columns"]["hour"]["counts"])
        noise_std = math.sqrt(a["row_count_var"])
        assert noise_std > 1 and num_histograms(inputs) > 1
        # ~24 noisy cells of an hour histogram: their spread is the recorded noise's.
        exact_hours = np.bincount(train["hour"].astype(int), minlength=len(hour))[: len(hour)]
        assert 0.4 < np.std(hour - exact_hours) / noise_std < 1.8


def test_crafted_schemas_are_refused_without_a_word_about_the_rows(attack):
    replies = attack["results"]["crafted-schema"]
    assert len(replies) == 2 * MERCHANTS
    for reply in replies:
        assert reply["records"] == [STATUS]
        assert reply[STATUS]["state"] == "refused"
        assert reply[STATUS]["code"] == "schema-mismatch"
        assert set(reply[STATUS]) == {"state", "merchant", "code"}


def test_marginals_come_back_only_as_ledgered_releases(attack):
    for reply in attack["results"]["marginals"]:
        assert reply[STATUS]["state"] == "ok"
        release, ledger = reply[MARGINALS], reply[LEDGER]
        assert release["noise_var"] > 0
        assert ledger["records"][-1]["label"] == "marginals-selection"
        assert ledger["epsilon"] <= ledger["epsilon_budget"]
    for reply in attack["results"]["marginals-odd"]:
        assert reply[STATUS]["state"] in ("failed", "refused")
        assert MARGINALS not in reply


def test_a_crafted_encoder_learns_only_a_dp_release(attack):
    """No row of either merchant is in month 99: both still answer with a noisy release the
    ledger accounts for (an error would tell the server that no row holds the value)."""
    for reply in attack["results"]["encoder-probe"]:
        assert reply[STATUS]["state"] == "ok"
        assert reply[MARGINALS]["noise_var"] > 0
        assert reply[LEDGER]["records"][-1]["label"] == "marginals-selection"


def test_repeated_audits_send_nothing_computed_on_rows(attack):
    for reply in attack["results"]["evaluate"]:
        assert set(reply["records"]) <= {AUDIT, LEDGER, STATUS}
        assert set(reply.get(AUDIT, {})) <= {"local_report"}
    # ... and cost nothing: the ledger before and after the audits is the same.
    for replies in by_merchant(attack["results"]["evaluate"]).values():
        assert replies[0].get(LEDGER) == replies[1].get(LEDGER)


def test_a_spent_ledger_is_not_reopened_by_infinite_epsilon_or_huge_delta(attack):
    results = attack["results"]
    for reply in results["spend"]:
        assert reply[STATUS]["state"] == "ok"
        assert reply[LEDGER]["epsilon"] == pytest.approx(1.0, abs=2e-3)
    for reply in results["spent"]:
        assert reply["records"] == [STATUS]
        assert reply[STATUS]["code"] == "budget-exhausted"
    codes = {"spent-inf": "non-private-refused", "spent-delta": "delta-above-policy"}
    for name, code in codes.items():
        for reply in results[name]:
            assert reply["records"] == [STATUS]
            assert reply[STATUS]["code"] == code


def test_every_release_that_left_is_in_the_merchants_ledger_file(attack):
    """What the attacker holds is exactly what each ledger file accounts for."""
    results = attack["results"]
    for i in range(MERCHANTS):
        merchant = f"merchant-{i}"
        path = attack["root"] / "state" / f"{merchant}.json"
        state = load_state(merchant, node_state=None, path=path)
        released = [
            r
            for replies in results.values()
            for r in replies
            if r[STATUS]["merchant"] == merchant
            and r[STATUS]["state"] == "ok"
            and (STATISTICS in r or MARGINALS in r)
        ]
        assert sum(r.steps for r in state.ledger.records) == len(released)
        assert state.epsilon <= 1.0 + 1e-9
        last = max(released, key=lambda r: len(r[LEDGER]["records"]))[LEDGER]
        assert state.epsilon == pytest.approx(last["epsilon"], rel=1e-12)
        digest = hashlib.sha256(dumps(attack["schema"].to_dict()).encode()).hexdigest()
        assert state.schema_digest == digest
