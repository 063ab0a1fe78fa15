"""``fedsynth benchmark``: a tiny real run end to end, and the pieces around it."""

from __future__ import annotations

import json
import math

import pytest

from simulations.benchmarks.compare import run as benchmark_run
from simulations.benchmarks.compare.config import (
    SDV_MODELS,
    BenchmarkConfig,
    Contender,
    ContenderJob,
    contenders,
)
from simulations.benchmarks.compare.isolation import run_isolated
from simulations.benchmarks.compare.report import markdown
from simulations.cli import main
from synth_models.synthesizer import MODELS

NUMBERS = ("quality", "quality_all_pairs", "tstr_trtr", "attack_auc", "fit_seconds", "peak_rss_mb")


def test_default_contenders_cover_every_model_kind_and_setup():
    config = BenchmarkConfig().resolved()
    todo = contenders(config)
    assert {c.model for c in todo} == {*SDV_MODELS, *MODELS}
    assert all(c.epsilon == math.inf for c in todo if c.family == "sdv")
    for kind in MODELS:
        for setup in ("central", "iid", "dirichlet"):
            assert {c.epsilon for c in todo if (c.model, c.setup) == (kind, setup)} == {
                1.0,
                3.0,
                10.0,
                math.inf,
            }
    assert len({c.slug for c in todo}) == len(todo)
    quick = contenders(BenchmarkConfig(quick=True).resolved())
    assert {c.setup for c in quick} == {"central", "dirichlet"}
    assert {c.epsilon for c in quick} == {1.0, math.inf}
    central = BenchmarkConfig(federated=("none",), models=("vae",)).resolved()
    assert central.resolved() == central
    assert contenders(central) == [
        Contender("fedsynth", "vae", "central", 1.0),
        Contender("fedsynth", "vae", "central", 3.0),
        Contender("fedsynth", "vae", "central", 10.0),
        Contender("fedsynth", "vae", "central", math.inf),
    ]
    with pytest.raises(ValueError, match="unknown model"):
        BenchmarkConfig(models=("nope",)).resolved()


def test_a_failing_contender_is_a_failed_row_not_a_crash(tmp_path):
    import pandas as pd

    # A metadata without the table the job names: the contender's process raises.
    job = ContenderJob(
        config=BenchmarkConfig(models=("gaussiancopula",), sdv_epochs=1).resolved(),
        dataset="none",
        metadata={"tables": {}},
        table_name="orders",
        target=None,
        partition_column=None,
        sample_rows=10,
    )
    synthetic, info = run_isolated(
        Contender("sdv", "gaussiancopula"),
        job=job,
        train=pd.DataFrame({"a": [1, 2, 3]}),
        work=tmp_path / "work",
        timeout=120,
    )
    assert synthetic is None
    assert info["status"] == "failed" and info["error"]
    assert info["peak_rss_mb"] > 0
    record = {"label": "SDV GaussianCopula", "epsilon": math.inf, **info}
    assert "**failed**" in markdown([record])


@pytest.mark.slow
def test_tiny_benchmark_writes_table_plots_and_finite_scores(tmp_path, monkeypatch):
    # Every contender is a fresh process (~5 s of imports), and a federated one also starts Ray
    # and its actors (~25-35 s on 2 cores): the whole grid would take minutes. So the real
    # grid (--epsilons 1,inf, central + Dirichlet) is trimmed to one contender per family and
    # setup: the VAE without DP centrally and with DP (epsilon 1) federated.
    kept = {("sdv", "central", math.inf), ("fedsynth", "central", math.inf)}
    kept |= {("fedsynth", "dirichlet", 1.0)}

    def trimmed(config: BenchmarkConfig) -> list[Contender]:
        return [c for c in contenders(config) if (c.family, c.setup, c.epsilon) in kept]

    monkeypatch.setattr(benchmark_run, "contenders", trimmed)
    out = tmp_path / "bench"
    options = json.dumps({"vae": {"hidden": [16], "latent_dim": 8}})
    code = main(
        [
            "benchmark",
            "--dataset",
            "pizzaplace",
            "--rows",
            "300",
            "--models",
            "gaussiancopula,vae",
            "--epsilons",
            "1,inf",
            "--federated",
            "dirichlet",
            "--alpha",
            "5",  # two merchants of >= 10 rows each at the first Dirichlet draw
            "--merchants",
            "2",
            "--epochs",
            "1",
            "--rounds",
            "1",
            "--batch-size",
            "100",
            "--model-options",
            options,
            "--out",
            str(out),
        ]
    )
    assert code == 0
    for name in ("results.json", "results.md", "run.log", *PLOTS):
        assert (out / name).exists(), name
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    payload = json.loads((out / "results.json").read_text())
    records = {(r["model"], r["setup"], r["epsilon"]): r for r in payload["results"]}
    expected = {
        ("gaussiancopula", "central", None),
        ("vae", "central", None),
        ("vae", "dirichlet", 1.0),
    }
    assert set(records) == expected
    assert len(payload["setup"]["contenders"]) == len(expected)
    for key, record in records.items():
        assert record["status"] == "ok", (key, record.get("error"))
        for number in NUMBERS:
            assert math.isfinite(record[number]), (key, number)
        assert record["synthetic_rows"] == payload["setup"]["train_rows"] == 240
    federated = records[("vae", "dirichlet", 1.0)]
    assert 0 < federated["epsilon_spent"] <= 1.0
    assert federated["merchants"] == 2
    assert federated["partition"] == "dirichlet:type:5"
    assert sum(federated["merchant_rows"]) == 240
    assert records[("vae", "central", None)]["epsilon_spent"] is None  # no DP: infinite
    table = (out / "results.md").read_text()
    assert table.count("| ok |") == len(expected)
    for label in ("SDV GaussianCopula", "fedsynth VAE central", "fedsynth VAE Dirichlet"):
        assert label in table
    assert "fedsynth benchmark --dataset pizzaplace" in payload["command"]
    assert "--federated dirichlet" in payload["command"]


PLOTS = ("quality_vs_epsilon.png", "utility_vs_epsilon.png", "cost.png")
