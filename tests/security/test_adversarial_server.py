"""A curious, then malicious server against the real ClientApp.

The attacker's ServerApp below is written as someone in the server's seat would write it:
plain ``grid.send_and_receive`` with requests of its own making (no fedsynth server code). It
runs once, on Flower's simulation engine, against two merchants running the real ClientApp
(policy, reply guard, ledger files), and records what came back; each test then asserts that
an attack got a refusal or only releases the merchant's ledger accounts for.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from client.app import make_client_app
from client.merchant import row_wise_holdout
from client.policy import MerchantPolicy
from client.state import load_state
from privacy.statistics import TableStatistics
from simulations.datasets import load_dataset
from synth_models.encoder import TableEncoder
from synth_models.federation import (
    AUDIT,
    CONFIG,
    DOCUMENT_KEY,
    LEDGER,
    MARGINALS,
    STATISTICS,
    STATUS,
    dumps,
    loads,
)
from synth_models.synthesizer import build_model

pytestmark = pytest.mark.slow
ROWS = 1500
MERCHANTS = 2
CARD = "SECRET-CARD-4111-1111-1111-1111"


def _docs(reply: Message) -> dict:
    if reply.has_error():
        return {"error": reply.error.reason}
    out = {name: loads(str(r[DOCUMENT_KEY])) for name, r in reply.content.config_records.items()}
    out["records"] = sorted(reply.content.keys())
    return out


def attacker_app(results_path: Path, schema: dict, metadata: dict) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        while len(nodes := sorted(grid.get_node_ids())) < MERCHANTS:
            time.sleep(0.5)
        results: dict[str, list] = {}

        def ask(name: str, message_type: str, document: dict, arrays=None) -> list[dict]:
            content = RecordDict({CONFIG: ConfigRecord({DOCUMENT_KEY: dumps(document)})})
            if arrays is not None:
                content["arrays"] = ArrayRecord(arrays)
            messages = [
                Message(content, message_type=message_type, dst_node_id=node) for node in nodes
            ]
            replies = [_docs(r) for r in grid.send_and_receive(messages, timeout=600)]
            results.setdefault(name, []).extend(replies)
            return replies

        stats = {"epsilon": 1.0, "delta": 1e-5, "statistics_share": 0.05, "seed": 0}
        # 1. Replay the seed: the very same request twice, as a seed-replaying attacker would.
        first = ask("replay", "query.statistics", {**stats, "schema": schema})
        ask("replay", "query.statistics", {**stats, "schema": schema})
        # 2. Crafted schemas probing values: a narrow range, a guessed category.
        narrow = json.loads(json.dumps(schema))
        next(c for c in narrow["columns"] if c["name"] == "price")["bounds"] = [0.0, 20.0]
        ask("crafted-schema", "query.statistics", {**stats, "schema": narrow})
        guessed = json.loads(json.dumps(schema))
        next(c for c in guessed["columns"] if c["name"] == "name")["categories"] = [CARD]
        ask("crafted-schema", "query.statistics", {**stats, "schema": guessed})
        # 3. Marginals of any shape, on an encoder built from the merchants' own releases.
        merged = TableStatistics.from_dict(first[0][STATISTICS])
        encoder = TableEncoder.from_statistics(schema_obj(schema), merged)
        base = {"schema": schema, "encoder": encoder.to_dict(), "model": "marginal",
                "model_options": {}, "epsilon": 1.0, "delta": 1e-5, "seed": 0,
                "target_epsilon": 0.3}  # fmt: skip
        ask("marginals", "query.marginals", {**base, "phase": "selection"})
        ask("marginals-odd", "query.marginals", {**base, "phase": "measurement",
                                                 "tree": [[0, 1, 2], [0, 99]]})  # fmt: skip
        ask("marginals-odd", "query.marginals", {**base, "phase": "everything"})
        # An encoder whose domain holds only a guessed value: does any row hold it?
        probe = json.loads(json.dumps(encoder.to_dict()))
        probe["transforms"]["month"].update(categories=[99], frequencies=[1.0])
        ask("encoder-probe", "query.marginals", {**base, "encoder": probe, "phase": "selection"})
        # 4. The audit, again and again, on weights of the attacker's choosing.
        network = build_model("vae", encoder, {})
        audit = {"schema": schema, "encoder": encoder.to_dict(), "metadata": metadata,
                 "model": "vae", "model_options": {}, "seed": 0, "target": "type",
                 "sensitive": [], "sample_rows": 300}  # fmt: skip
        for _ in range(2):
            ask("evaluate", "evaluate", audit, arrays=network.state_dict())
        # 5. Spend the budget, then ask for exact (epsilon = inf) and weak (delta = 0.5)
        # releases from the spent ledger.
        ask("spend", "query.marginals",
            {**base, "phase": "measurement", "tree": [[0, 1]], "target_epsilon": 1.0})  # fmt: skip
        ask("spent", "query.statistics", {**stats, "schema": schema})
        ask("spent-inf", "query.statistics",
            {**stats, "epsilon": math.inf, "schema": schema})  # fmt: skip
        ask("spent-delta", "query.statistics", {**stats, "delta": 0.5, "schema": schema})
        results_path.write_text(json.dumps(results, default=str))

    return app


def schema_obj(schema: dict):
    from synth_models.schema import TableSchema

    return TableSchema.from_dict(schema)


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    from flwr.simulation import run_simulation

    root = tmp_path_factory.mktemp("attacked")
    data = load_dataset("pizzaplace")
    (root / "merchants").mkdir()
    tables = {}
    for i in range(MERCHANTS):
        part = data.table.iloc[i * ROWS : (i + 1) * ROWS]
        part.to_csv(root / "merchants" / f"merchant-{i}.csv", index=False)
        tables[f"merchant-{i}"] = part.reset_index(drop=True)
    results = root / "results.json"
    run_simulation(
        server_app=attacker_app(results, data.schema().to_dict(), data.metadata),
        client_app=make_client_app(
            data_dir=str(root / "merchants"),
            state_dir=str(root / "state"),
            torch_threads=1,
            holdout_fraction=0.2,
            policy=MerchantPolicy(epsilon_budget=1.0),
        ),
        num_supernodes=MERCHANTS,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2},
        },
    )
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
