"""The federated audit: merchants keep their audits, the server reports DP releases only."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import make_client_app
from privacy.noise import SeededNoise
from privacy.report import FEDERATED_VIEW, LOCAL_VIEW, federated_verdict, render_federated_html
from privacy.statistics import release_statistics
from server.app import ARTIFACT, run_federation
from server.config import FederationConfig
from server.evaluation import LOCAL_AUDITS, encoder_notes, federated_report, release_fidelity
from server.releases import RELEASES, MarginalsRecord, load_releases
from simulations.cli import main
from simulations.datasets import load_dataset
from synth_models.encoder import TableEncoder, statistics_inputs, undescribed_note
from synth_models.federation import AUDIT, DOCUMENT_KEY, LEDGER, METRICS, STATUS, dumps, loads
from synth_models.marginal_fit import release_marginals
from synth_models.marginal_model import MarginalModel
from synth_models.marginals import SELECTION
from synth_models.synthesizer import TabularSynthesizer
from tests.server.test_marginal_rounds import InProcessGrid

POISON = "POISON-7f3a"
POISON_NUMBERS = ("98765.4321", "4242.125", "0.123456789")


@pytest.fixture(autouse=True, scope="module")
def _task_identity():
    """Outside a run Flower has no task identity; server messages need one."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
            patch.setattr(TaskIdentity, name, value)
        yield


@pytest.fixture(scope="module")
def pizza():
    return load_dataset("pizzaplace")


def test_fidelity_against_the_releases_reads_only_releases_and_the_sample(pizza) -> None:
    schema = pizza.schema()
    real = pizza.table.sample(4000, random_state=0)
    stats, _ = release_statistics(
        statistics_inputs(real, schema), noise_multiplier=0.0, threshold_delta=0.0
    )
    encoder = TableEncoder.from_statistics(schema, stats)
    model = MarginalModel(TableEncoder.from_dict(encoder.to_dict()))
    selection = release_marginals(real, model=model, ledger=None, phase=SELECTION)
    record = MarginalsRecord(selection, TableEncoder.from_dict(encoder.to_dict()), model.max_bins)
    del real
    same = pizza.table.sample(20000, replace=True, random_state=1)
    shifted = same.assign(price=same["price"] * 1.6, size="S")
    good = release_fidelity(stats, {"marginals-selection": record}, same, schema)
    bad = release_fidelity(stats, {"marginals-selection": record}, shifted, schema)
    pairs = good["releases"]["marginals-selection"]["scores"]
    assert len(pairs) == len(schema.columns) * (len(schema.columns) - 1) // 2
    assert "name|type" in pairs or "type|name" in pairs
    assert good["column_mean"] > 0.95 and good["pair_mean"] > 0.9
    assert bad["column_mean"] < good["column_mean"] - 0.1
    assert bad["pair_mean"] < good["pair_mean"] - 0.1
    assert bad["releases"]["statistics"]["scores"]["size"]["score"] < 0.5


def test_encoder_notes_name_what_the_statistics_release_could_not_describe(pizza) -> None:
    """A re-binned encoder (the marginal model's, from a later release) has lost the notes
    of the encoder the statistics gave: the report's notes come from the release too."""
    schema = pizza.schema()
    few = statistics_inputs(pizza.table.sample(40, random_state=0), schema)
    noisy, _ = release_statistics(
        few, noise_multiplier=20.0, threshold_delta=1e-6, noise=SeededNoise(0)
    )
    drowned = TableEncoder.from_statistics(schema, noisy).notes
    assert {"price", "items"} <= set(drowned)  # 40 rows under this noise: nothing stands out
    exact, _ = release_statistics(
        statistics_inputs(pizza.table.sample(4000, random_state=0), schema),
        noise_multiplier=0.0,
        threshold_delta=0.0,
    )
    rebinned = TableEncoder.from_statistics(schema, exact)
    assert rebinned.notes == {}
    assert encoder_notes(rebinned, noisy) == drowned
    assert encoder_notes(rebinned, None) == {}
    # The artifact's own note on a column (its transform's range) is the one reported.
    rebinned.transforms["price"].note = undescribed_note("price", 9.75, 35.95)
    assert encoder_notes(rebinned, noisy) == {**drowned, "price": rebinned.notes["price"]}


def _poison(msg, context, call_next):
    """Outermost mod: after the reply guard, stuff the audit reply with what a dishonest or
    buggy merchant might send (its real numbers, free text, extra keys)."""
    reply = call_next(msg, context)
    if msg.metadata.message_type != "evaluate" or reply.has_error():
        return reply
    content = reply.content
    status = loads(str(content[STATUS][DOCUMENT_KEY]))
    status.update(reason=f"{POISON} {POISON_NUMBERS[0]}", extra={POISON: POISON_NUMBERS[1]})
    content[STATUS] = ConfigRecord({DOCUMENT_KEY: dumps(status)})
    audit = {
        "fidelity": {"quality": float(POISON_NUMBERS[2]), "labels": [POISON]},
        POISON: {"min": float(POISON_NUMBERS[0]), "shares": [float(POISON_NUMBERS[1])]},
    }
    content[AUDIT] = ConfigRecord({DOCUMENT_KEY: dumps(audit)})
    content[LEDGER] = ConfigRecord({DOCUMENT_KEY: dumps({"epsilon": float(POISON_NUMBERS[0])})})
    content[METRICS] = MetricRecord({"num-examples": float(POISON_NUMBERS[1])})
    return reply


@pytest.fixture(scope="module")
def audited(pizza, tmp_path_factory):
    """A marginal federation of two good merchants and one without ``price``, in process,
    with the audit on and every audit reply poisoned after the reply guard; and a function that
    resumes it."""
    root = tmp_path_factory.mktemp("audited")
    data = root / "merchants"
    data.mkdir()
    table = pizza.table.sample(1900, random_state=0).reset_index(drop=True)
    table.iloc[:900].to_csv(data / "merchant-0.csv", index=False)
    table.iloc[900:1800].to_csv(data / "merchant-1.csv", index=False)
    table.iloc[1800:].drop(columns=["price"]).to_csv(data / "merchant-2.csv", index=False)
    (root / "metadata.json").write_text(json.dumps(pizza.metadata))
    app = make_client_app(
        data_dir=str(data), state_dir=str(root / "state"), holdout_fraction=0.2, mods=[_poison]
    )
    contexts = {
        100 + i: Context(
            run_id=1,
            node_id=100 + i,
            node_config={"partition-id": i, "num-partitions": 3},
            state=RecordDict(),
            run_config={},
        )
        for i in range(3)
    }
    config = dict(
        model="marginal",
        epsilon=1.0,
        delta=1e-5,
        metadata_path=str(root / "metadata.json"),
        table_name="orders",
        run_dir=str(root / "run"),
        min_nodes=3,
        audit=True,
        target="type",
        audit_rows=400,
    )
    run_federation(InProcessGrid(app, contexts), FederationConfig(**config))

    def resume() -> None:
        run_federation(InProcessGrid(app, contexts), FederationConfig(**config, resume=True))

    return root, resume


def _report(root: Path) -> tuple[dict, str]:
    document = json.loads((root / "run" / "report" / "report.json").read_text())
    return document, (root / "run" / "report" / "report.html").read_text()


def test_nothing_of_a_merchants_audit_reply_but_its_state_reaches_the_report(audited) -> None:
    root, _ = audited
    document, html = _report(root)
    report = document["audit"]
    assert set(report) == {
        "kind", "labels", "dp_fidelity", "claimed", "ledgers", "verification", "rounds",
        "failures", "merchants", "encoder_notes",
    }  # fmt: skip
    # What the DP statistics could not describe: the notes of the encoder built from the
    # persisted statistics release and the artifact's, in the report.
    statistics, _ = load_releases(root / "run")
    encoder = TabularSynthesizer.load(root / "run" / ARTIFACT).encoder_
    notes = {**TableEncoder.from_statistics(encoder.schema, statistics).notes, **encoder.notes}
    assert report["encoder_notes"] == notes
    assert 'id="undescribed"' in html and all(note in html for note in map(escape, notes.values()))
    assert document["verdict"]["undescribed_columns"] == sorted(notes)
    # The merchants signed their ledgers and the server its checkpoint: the report says so.
    assert report["verification"]["status"] == "verified"
    assert set(report["verification"]["merchants"].values()) == {"verified"}
    assert report["merchants"] == {
        "merchant-0": {"state": "ok", "local_report": True},
        "merchant-1": {"state": "ok", "local_report": True},
        "merchant-2": {"state": "failed", "local_report": False},
    }
    assert [f for f in report["failures"] if f["round"] == "audit"] == [
        {"round": "audit", "merchant": "merchant-2", "state": "failed", "reason": None}
    ]
    text = json.dumps(document)
    for leaked in (POISON, *POISON_NUMBERS):
        assert leaked not in text and leaked not in html, leaked
    # The ledgers are the artifact's, not what the audit replies claimed.
    assert all(ledger["epsilon"] <= 1.0 for ledger in report["ledgers"].values())
    assert json.loads((root / "run" / LOCAL_AUDITS).read_text()) == {
        "merchant-0": "ok", "merchant-1": "ok", "merchant-2": "failed",
    }  # fmt: skip


def test_the_report_is_scored_against_the_persisted_releases(audited) -> None:
    root, _ = audited
    document, html = _report(root)
    assert document["view"] == FEDERATED_VIEW
    dp = document["audit"]["dp_fidelity"]
    assert set(dp["releases"]) == {"statistics", "marginals-selection", "marginals-measurement"}
    assert dp["releases"]["statistics"]["contributors"] == 2
    assert dp["column_mean"] == dp["releases"]["statistics"]["mean"]
    assert dp["pair_mean"] == dp["releases"]["marginals-selection"]["mean"]  # every pair
    for block in dp["releases"].values():
        assert block["noise_std"] > 0 and "noisy DP release" in block["label"]
        # The model was fitted from these releases: about as close as their noise allows.
        assert 0 < block["mean"] <= 1 and block["mean"] > block["reference_mean"] - 0.2
    statistics, marginals = load_releases(root / "run")
    assert statistics is not None and statistics.contributors == 2
    assert set(marginals) == {"marginals-selection", "marginals-measurement"}
    assert 'data-plot="dp-pairs"' in html and "never sent" in html
    for local_only in ("TSTR", "Attack AUC", "Membership inference"):
        assert local_only not in html


def test_each_merchant_keeps_its_full_audit_locally(audited) -> None:
    root, _ = audited
    for merchant in ("merchant-0", "merchant-1"):
        local = json.loads((root / "state" / f"{merchant}-audit" / "report.json").read_text())
        assert local["view"] == LOCAL_VIEW
        assert {"fidelity", "utility", "attack", "heuristics"} <= set(local["audit"])
        assert 0 <= local["audit"]["fidelity"]["quality"] <= 1
        assert (root / "state" / f"{merchant}-audit" / "report.html").exists()
    assert not (root / "state" / "merchant-2-audit").exists()


def test_fedsynth_audit_recomputes_the_report_and_resume_keeps_the_releases(audited) -> None:
    root, resume = audited
    run_dir = root / "run"
    before = {p.name: p.read_text() for p in (run_dir / RELEASES).glob("*.json")}
    assert (run_dir / ARTIFACT).exists() and len(before) == 3
    assert main(["audit", str(run_dir), "--out", str(root / "again")]) == 0
    again = json.loads((root / "again" / "report.json").read_text())["audit"]
    first, _ = _report(root)
    assert again["dp_fidelity"] == first["audit"]["dp_fidelity"]  # same releases, same sample
    assert again["merchants"] == first["audit"]["merchants"]
    resume()  # a finished marginal federation: no round runs, the audit runs again
    assert {p.name: p.read_text() for p in (run_dir / RELEASES).glob("*.json")} == before
    resumed, _ = _report(root)
    assert resumed["audit"]["dp_fidelity"] == first["audit"]["dp_fidelity"]


def test_the_artifacts_encoder_notes_reach_the_federated_report(audited, pizza, tmp_path) -> None:
    """A column the DP statistics could not describe is named in the report and its verdict
    (the artifact's encoder note: post-processing of the statistics release)."""
    root, _ = audited
    synth = TabularSynthesizer.load(root / "run" / ARTIFACT)
    encoder = TableEncoder.from_dict(synth.encoder_.to_dict())
    note = undescribed_note("price", 9.75, 35.95)
    encoder.transforms["price"].note = note
    noted = TabularSynthesizer.from_fitted(
        pizza.metadata,
        model=synth.model,
        encoder=encoder,
        weights=synth.model_.state_dict(),
        ledgers=synth.ledgers_,
        epsilon=synth.epsilon_spent,
        model_options=synth.model_options,
    )
    artifact = noted.save(tmp_path / "noted")
    report = federated_report(
        root / "run", artifact, local_audits={"merchant-0": "ok"}, sample_rows=200, seed=0
    )
    # Columns the fixture's statistics (two merchants' rows, real noise) could not describe
    # were re-binned by the marginal model, note-less: the report names them too.
    statistics, _ = load_releases(root / "run")
    drowned = TableEncoder.from_statistics(encoder.schema, statistics).notes
    assert report["encoder_notes"] == {**drowned, "price": note}
    checks = federated_verdict(report)["failed_checks"]
    named = {c["column"]: c["message"] for c in checks if c["check"] == "undescribed_column"}
    assert named == report["encoder_notes"]
    section = render_federated_html(report).split('id="undescribed"')[1].split("</section>")[0]
    assert "<td>price</td>" in section and escape(note) in section
