"""``fedsynth metadata``: a draft ``fedsynth simulate`` accepts, values from rows kept apart."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulations.cli import main
from synth_models.metadata_draft import PROPOSAL_KEYS


def _write_orders(path: Path, n: int = 600, seed: int = 0) -> pd.DataFrame:
    """A merchant's export: ids, booleans spelled yes/no, UTC-offset datetimes, empty cells."""
    rng = np.random.default_rng(seed)
    stamps = pd.Timestamp("2024-03-25 08:00", tz="Europe/Berlin") + pd.to_timedelta(
        rng.integers(0, 14 * 24 * 60, n), unit="min"
    )  # across the switch to summer time: offsets +01:00 and +02:00
    table = pd.DataFrame(
        {
            "order_id": [f"A-{i:05d}" for i in range(n)],
            "customer_id": rng.integers(1, 150, n),
            "store": rng.choice(["north", "south"], n),
            "paid": rng.choice(["yes", "no"], n, p=[0.8, 0.2]),
            "gift_wrap": rng.choice(["yes", "no", None], n),
            "ordered_at": [s[:-2] + ":" + s[-2:] for s in stamps.strftime("%Y-%m-%d %H:%M:%S%z")],
            "amount": np.where(rng.random(n) < 0.1, np.nan, rng.gamma(4, 10, n).round(2)),
        }
    )
    table.to_csv(path, index=False)
    return table


def _columns(metadata_path: Path) -> dict:
    return json.loads(metadata_path.read_text())["tables"]["orders"]["columns"]


def test_a_drafted_table_runs_through_simulate(tmp_path: Path, capsys) -> None:
    data = tmp_path / "orders.csv"
    _write_orders(data)
    metadata = tmp_path / "orders.metadata.json"
    # The store names are public (the shop's own); everything else stays private.
    assert main(["metadata", str(data), "--public", "store"]) == 0
    printed = capsys.readouterr().out
    assert "not protected by DP" in printed and "--public" in printed

    columns = _columns(metadata)
    assert {name: spec["sdtype"] for name, spec in columns.items()} == {
        "order_id": "id",
        "customer_id": "id",
        "store": "categorical",
        "paid": "boolean",
        "gift_wrap": "boolean",
        "ordered_at": "datetime",
        "amount": "numerical",
    }
    assert columns["ordered_at"]["datetime_format"] == "%Y-%m-%d %H:%M:%S%z"
    assert columns["store"]["range_values"] == ["north", "south"]  # confirmed public
    for name in ("paid", "gift_wrap", "ordered_at", "amount"):
        assert not set(columns[name]) & set(PROPOSAL_KEYS), name
    private = tmp_path / "orders.metadata.private-declarations.json"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    proposed = json.loads(private.read_text())["columns"]
    assert proposed["amount"]["proposed"]["decimal_places"] == 2
    assert "store" not in proposed

    run = tmp_path / "run"
    code = main(
        [
            "simulate",
            "--data",
            str(data),
            "--metadata",
            str(metadata),
            "--model",
            "marginal",
            "--merchants",
            "2",
            "--partition",
            "iid",
            "--rounds",
            "1",
            "--out",
            str(run),
        ]
    )
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"]["rounds_trained"] == summary["rounds"]["num_rounds"] > 0
    assert len(summary["local_reports"]) == 2  # each merchant audited its own rows
    assert 0 < summary["epsilon"] <= 1.0
    synthetic = pd.read_csv(run / "synthetic.csv")
    assert set(synthetic.columns) == {"store", "paid", "gift_wrap", "ordered_at", "amount"}
    assert set(synthetic["paid"].dropna()) <= {True, False}
    # Synthetic datetimes are written in the declared format (UTC instants, "+0000").
    parsed = pd.to_datetime(synthetic["ordered_at"], format="%Y-%m-%d %H:%M:%S%z", utc=True)
    assert parsed.notna().sum() == synthetic["ordered_at"].notna().sum() > 0


def test_metadata_refuses_to_overwrite_and_unknown_columns(tmp_path: Path, capsys) -> None:
    data = tmp_path / "orders.csv"
    _write_orders(data, n=60)
    out = tmp_path / "meta" / "orders.json"
    assert main(["metadata", str(data), "--out", str(out), "--table-name", "orders"]) == 0
    first = out.read_text()
    with pytest.raises(SystemExit, match="--force"):
        main(["metadata", str(data), "--out", str(out), "--public", "amount"])
    assert out.read_text() == first
    with pytest.raises(SystemExit, match=r"no column\(s\) \['colour'\]"):
        main(["metadata", str(data), "--out", str(out), "--public", "amount,colour", "--force"])
    assert main(["metadata", str(data), "--out", str(out), "--public", "amount", "--force"]) == 0
    amount = _columns(out)["amount"]
    assert amount["decimal_places"] == 2 and amount["range_is_nullable"] is True
    assert amount["range_min"] < amount["range_max"]
    capsys.readouterr()
