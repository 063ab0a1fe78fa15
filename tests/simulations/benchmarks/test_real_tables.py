"""The real-tables benchmark: drafted metadata, the gap's variants, and a tiny run end to end.

The table is the project's shipped copy of oj (``simulations/data``), standing in for the
development tables the benchmark reads from ``../shared/data``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from simulations.benchmarks.compare.config import BenchmarkConfig
from simulations.benchmarks.compare.run import split
from simulations.benchmarks.real_tables import draft_dataset, main, owners, replay

DATA = Path(__file__).resolve().parents[3] / "simulations" / "data"
PROPOSALS = ("range_values", "range_min", "range_max", "decimal_places")


@pytest.fixture(scope="module")
def oj(tmp_path_factory):
    work = tmp_path_factory.mktemp("oj")
    return draft_dataset(DATA / "oj.csv.gz", public=["StoreID"], target="Purchase", work=work)


def test_drafted_metadata_declares_only_the_named_public_columns(oj):
    columns = oj.metadata["tables"]["oj"]["columns"]
    declared = {name for name, spec in columns.items() if set(spec) & set(PROPOSALS)}
    assert declared == {"StoreID"}
    assert oj.target == "Purchase" and len(oj.table) == 1070


def test_the_gap_variants_put_the_rows_and_the_noise_where_they_say(oj):
    train, _ = split(oj.table, BenchmarkConfig(rows=300, seed=0))
    central, stat_owners = owners(train, "central", merchants=5, column=None, seed=0)
    assert [len(p) for p in central] == [240] and stat_owners == 1
    pooled, stat_owners = owners(train, "noise-marginals", merchants=5, column=None, seed=0)
    assert [len(p) for p in pooled] == [240, 0, 0, 0, 0] and stat_owners == 1
    assert owners(train, "noise-all", merchants=5, column=None, seed=0)[1] == 5
    split_parts, _ = owners(train, "dirichlet", merchants=2, column="Purchase", seed=0)
    assert sum(len(p) for p in split_parts) == 240 and len(split_parts) == 2
    scores = replay(
        oj, train, pooled, 5, epsilon=1.0, statistics_share=0.1, options={}, seed=0
    )  # four owners without rows still release their noise
    assert 0 < scores["quality"] <= 1 and 0 < scores["quality_all_pairs"] <= 1


@pytest.mark.slow
def test_tiny_run_scores_central_and_federated(tmp_path):
    # One central and one federated contender (Ray start-up dominates: ~1 min on 2 cores).
    out = tmp_path / "bench"
    args = ["--data-dir", str(DATA), "--tables", "oj", "--rows", "300", "--epsilons", "1"]
    args += ["--setups", "central,iid", "--merchants", "2", "--target", "oj=Purchase"]
    assert main([*args, "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["setup"], r["ε"]) for r in rows] == [("central", "1"), ("IID", "1")]
    for row in rows:
        for key in ("quality", "all pairs", "TSTR/TRTR", "fit s", "peak MB"):
            assert math.isfinite(float(row[key])), (row["setup"], key)
        assert row["train rows"] == 240
    assert float(rows[1]["peak MB"]) > float(rows[1]["fit s"]) > 0
    assert math.isfinite(float(rows[1]["gap to central"]))
    assert not (out / "oj" / "work" / "fedsynth-marginal-iid-eps1").exists()  # logs only
    assert (out / "oj" / "logs" / "fedsynth-marginal-iid-eps1.log").exists()
    per_table = json.loads((out / "oj" / "results.json").read_text())["results"]
    assert {r["status"] for r in per_table} == {"ok"}
    assert 0 < per_table[1]["epsilon_spent"] <= 1.0 and per_table[1]["merchants"] == 2
