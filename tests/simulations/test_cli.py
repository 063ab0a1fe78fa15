"""The ``fedsynth`` command line, end to end on small inputs."""

import hashlib
import json
import logging
import re
import shutil
import signal
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch

from privacy.claims import generate_key, load_private_key, sign_ledger, sign_manifest
from privacy.ledger import PrivacyLedger
from simulations.cli import build_parser, main
from simulations.datasets import load_dataset
from simulations.preflight import MIN_TRAINING_ROWS, simulation_delta
from synth_models.artifact import ArtifactError
from synth_models.synthesizer import TabularSynthesizer


def test_fit_writes_a_run_folder_and_sample_reads_it(tmp_path, capsys):
    out = tmp_path / "fit"
    assert (
        main(["fit", "--dataset", "oj", "--epochs", "1", "--rows", "200", "--out", str(out)]) == 0
    )
    for name in ("synthesizer", "synthetic.csv", "audit.json", "history.json", "run.log"):
        assert (out / name).exists(), name
    audit = json.loads((out / "audit.json").read_text())
    assert 0 < audit["privacy"]["epsilon"] <= 1.0
    assert 0 <= audit["quality"] <= 1
    # The exact row count is the owner's local view: labelled, and not in the artifact.
    assert audit["rows"] == len(load_dataset("oj").table)
    # delta by the 1/(10 n) rule, the one simulate takes for the same table
    assert audit["privacy"]["delta"] == simulation_delta(load_dataset("oj"), None) == 1e-5
    assert "local view" in audit["view"].lower()
    for path in (out / "synthesizer").rglob("*.json"):
        assert '"rows"' not in path.read_text(), path
    capsys.readouterr()
    assert (
        main(
            [
                "sample",
                str(out / "synthesizer"),
                "--rows",
                "25",
                "--condition",
                "Purchase=MM",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 26 and lines[0].startswith("Purchase,")
    assert all(line.startswith("MM,") for line in lines[1:])


def test_audit_of_a_real_and_synthetic_pair(tmp_path):
    data = load_dataset("oj")
    table = data.table.sample(frac=1.0, random_state=0).reset_index(drop=True)
    table.iloc[:400].to_csv(tmp_path / "real.csv", index=False)
    table.iloc[400:500].to_csv(tmp_path / "holdout.csv", index=False)
    table.iloc[500:900].to_csv(tmp_path / "synthetic.csv", index=False)
    (tmp_path / "meta.json").write_text(json.dumps(data.metadata))
    out = tmp_path / "report"
    code = main(
        [
            "audit",
            "--real",
            str(tmp_path / "real.csv"),
            "--holdout",
            str(tmp_path / "holdout.csv"),
            "--synthetic",
            str(tmp_path / "synthetic.csv"),
            "--metadata",
            str(tmp_path / "meta.json"),
            "--target",
            "Purchase",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    # Real rows independent of the "synthetic" ones: the attack cannot tell members apart.
    assert 0.35 < report["verdict"]["attack_auc"] < 0.65
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 3


# -- fedsynth verify: the signed privacy claims of a federated synthesizer ----------------------


@pytest.fixture(scope="module")
def federated(tmp_path_factory) -> Path:
    """A marginal-model federation of three merchants through the real ClientApp, in process
    (the grid of tests/server/test_marginal_rounds.py): a signed artifact."""
    from flwr.supercore.task_identity import TaskIdentity

    from server.app import run_federation
    from server.config import FederationConfig
    from tests.server.test_marginal_rounds import grid_for

    tmp = tmp_path_factory.mktemp("federated")
    pizza = load_dataset("pizzaplace")
    (tmp / "data").mkdir()
    table = pizza.table.sample(3000, random_state=0).reset_index(drop=True)
    for i in range(3):
        table.iloc[i * 1000 : (i + 1) * 1000].to_csv(
            tmp / "data" / f"merchant-{i}.csv", index=False
        )
    (tmp / "metadata.json").write_text(json.dumps(pizza.metadata))
    config = FederationConfig(
        model="marginal",
        metadata_path=str(tmp / "metadata.json"),
        table_name="orders",
        run_dir=str(tmp / "run"),
        min_nodes=3,
        audit=False,
    )
    with pytest.MonkeyPatch.context() as patch:
        for name in ("_run_id", "_node_id", "_task_id"):
            patch.setattr(TaskIdentity, name, 1)
        return run_federation(grid_for(tmp / "data", tmp / "state", 3), config)


def _copy(artifact: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(artifact.resolve(), copy)
    return copy


def _edit_manifest(path: Path, change) -> None:
    manifest = json.loads((path / "synthesizer.json").read_text())
    change(manifest)
    (path / "synthesizer.json").write_text(json.dumps(manifest))


def _verify(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["verify", *map(str, args)])
    return code, capsys.readouterr().out


def test_verify_passes_an_untampered_federated_synthesizer(federated: Path, capsys) -> None:
    state = federated.parent.parent / "state"
    keys = [f"--merchant-key=merchant-{i}={state / f'merchant-{i}.key'}" for i in range(3)]
    server = federated.parent / "server.key"
    code, out = _verify(capsys, federated, "--server-key", server, *keys)
    assert code == 0, out
    assert "result: verified" in out and "server signature: verified" in out
    for i in range(3):
        assert re.search(rf"merchant-{i}\s+verified", out), out
    synth = TabularSynthesizer.load(federated)
    assert synth.verification.status == "verified"
    code, out = _verify(capsys, federated, "--json")
    assert code == 0 and json.loads(out)["status"] == "verified"


def _forge_noise(manifest: dict) -> None:
    """The attack: noise multipliers x1000, epsilons recomputed so everything adds up."""
    for ledger in manifest["privacy"]["ledgers"].values():
        for record in ledger["records"]:
            record["noise_multiplier"] *= 1000
        ledger["epsilon"] = PrivacyLedger.from_state_dict(ledger).epsilon()
    manifest["privacy"]["epsilon"] = max(
        lg["epsilon"] for lg in manifest["privacy"]["ledgers"].values()
    )


def _edit_weights(path: Path) -> None:
    weights = torch.load(path / "weights.pt", weights_only=True)
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.numel())
    weights[name] = weights[name] + 1.0
    torch.save(weights, path / "weights.pt")
    digest = hashlib.sha256((path / "weights.pt").read_bytes()).hexdigest()
    _edit_manifest(path, lambda m: m.update(weights_sha256=digest))


def _edit_encoder(manifest: dict) -> None:
    """Category frequencies reversed: another synthetic distribution, the same shapes."""
    size = manifest["encoder"]["transforms"]["size"]
    size["frequencies"] = size["frequencies"][::-1]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p: _edit_manifest(p, _forge_noise),
        _edit_weights,
        lambda p: _edit_manifest(p, _edit_encoder),
    ],
    ids=["ledger-noise-x1000", "weights-rehashed", "encoder"],
)
def test_verify_fails_a_tampered_synthesizer(federated: Path, tmp_path: Path, capsys, tamper):
    copy = _copy(federated, tmp_path)
    tamper(copy)
    code, out = _verify(capsys, copy)
    assert code == 1, out
    assert "result: failed" in out and "server signature: failed" in out
    with pytest.raises(ArtifactError, match="do not verify"):
        TabularSynthesizer.load(copy)
    marked = TabularSynthesizer.load(copy, allow_unverified=True)
    assert marked.verification.status == "failed"


def test_verify_fails_a_forged_ledger_even_when_the_server_re_signs(
    federated: Path, tmp_path: Path, capsys
) -> None:
    """A server that edits a merchant's ledger and signs the manifest again: the merchant's
    signature no longer covers its ledger; re-signed with another key, the expected key tells."""
    copy = _copy(federated, tmp_path)
    server_key = load_private_key(federated.parent / "server.key")
    manifest = json.loads((copy / "synthesizer.json").read_text())
    _forge_noise(manifest)
    (copy / "synthesizer.json").write_text(json.dumps(sign_manifest(manifest, server_key)))
    code, out = _verify(capsys, copy)
    assert code == 1 and re.search(r"merchant-0\s+failed", out), out
    assert "server signature: verified" in out
    # every ledger re-signed with a key of the forger's: only the expected keys tell
    forger = generate_key()
    for name, ledger in manifest["privacy"]["ledgers"].items():
        manifest["privacy"]["ledgers"][name] = sign_ledger(ledger, forger, round=ledger["round"])
    (copy / "synthesizer.json").write_text(json.dumps(sign_manifest(manifest, server_key)))
    assert _verify(capsys, copy)[0] == 0  # consistent, but signed by whom?
    state = federated.parent.parent / "state"
    code, out = _verify(capsys, copy, f"--merchant-key=merchant-1={state / 'merchant-1.key'}")
    assert code == 1 and "not the expected key" in out, out


def test_verify_reports_an_unsigned_synthesizer(tmp_path: Path, capsys) -> None:
    out = tmp_path / "fit"
    assert main(["fit", "--dataset", "oj", "--epochs", "1", "--out", str(out)]) == 0
    code, text = _verify(capsys, out / "synthesizer")
    assert code == 2, text
    assert "result: unsigned" in text and re.search(r"local\s+unsigned", text)
    assert TabularSynthesizer.load(out / "synthesizer").verification.status == "unsigned"


# -- pre-flight: every argument checked before anything starts; one line, exit status 2 -------


def _user_error(capsys, argv: list[str]) -> str:
    """Run ``fedsynth argv``; it must exit with status 2 and print one line, no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2, info.value.code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["fit", "--epsilon", "0"], "--epsilon: must be > 0"),
        (["fit", "--epsilon", "-1"], "--epsilon: must be > 0"),
        (["simulate", "--epsilon", "nan"], "--epsilon: must be > 0"),
        (["simulate", "--epsilon", "lots"], "--epsilon: expected a number > 0"),
        (["simulate", "--delta", "0"], "--delta: must be in (0, 1)"),
        (["simulate", "--delta", "1"], "--delta: must be in (0, 1)"),
        (["fit", "--delta", "2"], "--delta: must be in (0, 1)"),
        (["simulate", "--rounds", "-2"], "--rounds: must be >= 1"),
        (["simulate", "--rounds", "0"], "--rounds: must be >= 1"),
        (["simulate", "--merchants", "0"], "--merchants: must be >= 1"),
        (["simulate", "--local-epochs", "0"], "--local-epochs: must be >= 1"),
        (["simulate", "--min-train-replies", "0"], "--min-train-replies: must be >= 1"),
        (["simulate", "--holdout", "1"], "--holdout: must be in [0, 1)"),
        (["simulate", "--holdout", "-0.1"], "--holdout: must be in [0, 1)"),
        (["fit", "--epochs", "0"], "--epochs: must be >= 1"),
        (["fit", "--batch-size", "0"], "--batch-size: must be >= 1"),
        (["fit", "--rows", "2.5"], "--rows: expected a whole number"),
        (["sample", "x", "--rows", "0"], "--rows: must be >= 1"),
        (["simulate", "--seed", "-1"], "--seed: must be >= 0"),
        (["sample", "x", "--condition", "size"], "expected COLUMN=VALUE"),
        (["simulate", "--epochs", "3"], "--local-epochs"),
        (["simulate", "--resume"], "--resume needs --out"),
        (["fit", "--data", "t.csv"], "--data needs --metadata"),
        (["fit", "--metadata", "m.json"], "--metadata needs --data"),
        (["sample", "/no/such/artifact"], "not a synthesizer artifact"),
    ],
)
def test_a_bad_argument_is_one_line_before_anything_starts(tmp_path, capsys, argv, fragment):
    out = tmp_path / "run"
    argv = [*argv, "--out", str(out)] if argv[0] in ("fit", "simulate") else argv
    if "--resume" in argv:
        argv = argv[: argv.index("--out")]
    err = _user_error(capsys, argv)
    assert fragment in err and err.startswith(f"fedsynth {argv[0]}"), err
    assert not out.exists()  # no run folder: nothing started


def _user_table(tmp_path: Path, rows: int, *, parquet: bool = False) -> tuple[Path, Path]:
    oj = load_dataset("oj")
    table = oj.table.iloc[:rows]
    data = tmp_path / ("oj.parquet" if parquet else "oj.csv")
    if parquet:
        table.to_parquet(data, index=False)
    else:
        table.to_csv(data, index=False)
    metadata = tmp_path / "oj.metadata.json"
    metadata.write_text(json.dumps(oj.metadata))
    return data, metadata


def test_a_table_too_small_to_train_on_is_refused(tmp_path, capsys):
    data, metadata = _user_table(tmp_path, 1)
    out = tmp_path / "run"
    err = _user_error(
        capsys, ["fit", "--data", str(data), "--metadata", str(metadata), "--out", str(out)]
    )
    assert str(data) in err and f"at least {MIN_TRAINING_ROWS} rows" in err, err
    data, metadata = _user_table(tmp_path, 600)  # 6 x 100 rows, 80 of each to train on
    argv = ["simulate", "--data", str(data), "--metadata", str(metadata), "--out", str(out)]
    err = _user_error(capsys, [*argv, "--partition", "iid", "--merchants", "6"])
    assert "80 to train on" in err and f"at least {MIN_TRAINING_ROWS}" in err, err
    err = _user_error(capsys, [*argv, "--partition", "iid", "--merchants", "2", "--rounds", "1",
                               "--min-train-replies", "3"])  # fmt: skip
    assert "--min-train-replies 3: more than the 2 merchant(s)" in err, err
    err = _user_error(capsys, [*argv, "--partition", "dirichlet:Nope:0.5"])
    assert "partition column 'Nope' is not in the table" in err, err
    assert not out.exists()


def test_a_malformed_table_is_one_line_naming_file_and_column(tmp_path, capsys):
    data, metadata = _user_table(tmp_path, 300)
    table = load_dataset("oj").table.iloc[:300].assign(PriceCH="cheap")
    table.to_csv(data, index=False)
    err = _user_error(capsys, ["simulate", "--data", str(data), "--metadata", str(metadata)])
    assert f"file '{data}', column 'PriceCH'" in err and "not numbers" in err, err
    # --debug (before or after the command) shows the traceback instead
    from synth_models.schema import DataError

    for argv in (["--debug", "fit"], ["fit", "--debug"]):
        with pytest.raises(DataError, match="not numbers"):
            main([*argv, "--data", str(data), "--metadata", str(metadata)])


def test_simulate_checks_the_tables_its_merchants_will_read(tmp_path, capsys):
    """A Parquet table's datetimes need no format; its merchants read CSV files, in which
    they must be in the declared format: found before the simulation starts."""
    data, metadata = _user_table(tmp_path, 400, parquet=True)
    table = pd.read_parquet(data)
    table["Bought"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(range(400), unit="h")
    table.to_parquet(data, index=False)
    meta = json.loads(metadata.read_text())
    meta["tables"]["oj"]["columns"]["Bought"] = {
        "sdtype": "datetime",
        "datetime_format": "%d/%m/%Y %H:%M",
    }
    metadata.write_text(json.dumps(meta))
    err = _user_error(
        capsys,
        ["simulate", "--data", str(data), "--metadata", str(metadata), "--partition", "iid",
         "--merchants", "2", "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert "merchant 0's table" in err and "column 'Bought'" in err, err
    assert "'%d/%m/%Y %H:%M'" in err, err


def test_a_run_folder_is_not_run_over_without_resume(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "synthesizer").mkdir(parents=True)
    (out / "state").mkdir()
    err = _user_error(capsys, ["simulate", "--dataset", "oj", "--out", str(out)])
    assert "pass --resume" in err, err


def test_the_help_states_the_delta_rule_and_the_debug_flag():
    parser = build_parser()
    assert "--debug" in parser.format_help()
    simulate = next(
        action for action in parser._subparsers._group_actions if action.dest == "command"
    ).choices["simulate"]
    text = " ".join(simulate.format_help().split())
    assert "1/(10 n)" in text and "all merchants' rows together" in text


def test_metadata_that_does_not_parse_or_match_is_one_line(tmp_path, capsys):
    data, metadata = _user_table(tmp_path, 300)
    argv = ["fit", "--data", str(data), "--metadata", str(metadata), "--out", str(tmp_path / "r")]
    metadata.write_text('{"tables": {"oj": ')
    assert "invalid JSON at line 1" in _user_error(capsys, argv)
    meta = load_dataset("oj").metadata
    meta["tables"]["oj"]["columns"]["Coupon"] = {"sdtype": "categorical"}
    metadata.write_text(json.dumps(meta))
    err = _user_error(capsys, argv)
    assert f"file '{data}', column 'Coupon': missing column(s) ['Coupon']" in err, err
    assert not (tmp_path / "r").exists()


def test_ctrl_c_is_one_line_and_exit_status_130(tmp_path, capsys):
    """A real SIGINT while ``simulate`` works (loading, checking or starting its engine): one
    line, the shell's status for Ctrl-C, and nothing of its engine left running."""
    import subprocess

    out = tmp_path / "run"
    build_parser()  # its imports done: the signal lands inside the command
    # Not the stderr of an earlier test (closed by now): records before main sets its own.
    logging.basicConfig(handlers=[logging.StreamHandler()], force=True)
    capsys.readouterr()
    timer = threading.Timer(3.0, signal.raise_signal, (signal.SIGINT,))
    timer.start()
    try:
        code = main(["simulate", "--dataset", "oj", "--rounds", "20", "--out", str(out)])
    except KeyboardInterrupt:  # not up to the test session: it would stop there
        pytest.fail("Ctrl-C escaped fedsynth's main as a KeyboardInterrupt")
    finally:
        timer.cancel()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130, code
    assert err[-1] == "fedsynth simulate: interrupted" and "Traceback" not in "\n".join(err), err
    left = subprocess.run(["pgrep", "-af", str(out)], capture_output=True, text=True).stdout
    assert not left, left
