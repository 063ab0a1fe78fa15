"""The ``fedsynth`` command line, end to end on small inputs."""

import json

from simulations.cli import main
from simulations.datasets import load_dataset


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
