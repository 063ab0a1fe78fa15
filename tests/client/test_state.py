"""A merchant's persistent privacy state: node state, state file, and which copy wins."""

from __future__ import annotations

import json
import os

import pytest
from flwr.app import RecordDict

import client.state as state_module
from client.state import STATE_RECORD, MerchantState, load_state, save_state
from privacy.ledger import MechanismRecord, PrivacyLedger


def make_state(steps: int, *, merchant: str = "merchant-0") -> MerchantState:
    ledger = PrivacyLedger(epsilon_budget=2.0, delta=1e-5, owner=merchant)
    ledger.record(MechanismRecord("encoder-statistics", 20.0, 1.0, 1, 1e-6))
    if steps:  # full-batch steps (sample rate 1) keep the RDP computation instant
        ledger.record(MechanismRecord("dp-sgd", 8.0, 1.0, steps))
    return MerchantState(
        merchant=merchant,
        ledger=ledger,
        dp_rows=412.7,
        noise_multiplier=1.3,
        plan={"rounds": 3, "steps_per_round": 5, "sample_rate": 0.2, "from_round": 1},
    )


def test_round_trip_through_node_state():
    node_state = RecordDict()
    original = make_state(10)
    save_state(original, node_state=node_state, path=None)
    assert STATE_RECORD in node_state.config_records
    loaded = load_state("merchant-0", node_state=node_state, path=None)
    assert loaded.to_dict() == original.to_dict()
    assert loaded.epsilon == pytest.approx(original.epsilon, rel=1e-12)
    assert loaded.ledger.records == original.ledger.records


def test_round_trip_through_a_file(tmp_path):
    path = tmp_path / "states" / "merchant-0.json"  # the folder is created
    original = make_state(10)
    save_state(original, node_state=None, path=path)
    assert json.loads(path.read_text())["noise_multiplier"] == 1.3
    loaded = load_state("merchant-0", node_state=None, path=path)
    assert loaded.to_dict() == original.to_dict()


def test_fresh_state_without_any_copy(tmp_path):
    state = load_state("merchant-5", node_state=RecordDict(), path=tmp_path / "none.json")
    assert state.merchant == "merchant-5"
    assert state.ledger is None and state.dp_rows is None and state.noise_multiplier is None
    assert state.epsilon == 0.0


@pytest.mark.parametrize("more_spent", ["file", "node"])
def test_load_picks_the_most_spent_copy(tmp_path, more_spent):
    path = tmp_path / "merchant-0.json"
    node_state = RecordDict()
    less, more = make_state(5), make_state(25)
    assert more.epsilon > less.epsilon
    if more_spent == "file":
        save_state(less, node_state=node_state, path=None)
        save_state(more, node_state=None, path=path)
    else:
        save_state(more, node_state=node_state, path=None)
        save_state(less, node_state=None, path=path)
    loaded = load_state("merchant-0", node_state=node_state, path=path)
    assert loaded.to_dict() == more.to_dict()


def test_a_lost_write_never_makes_the_budget_look_less_spent(tmp_path):
    """The node state saw round 2; the file write of round 2 was lost: round 2 still counts."""
    path = tmp_path / "merchant-0.json"
    node_state = RecordDict()
    save_state(make_state(5), node_state=node_state, path=path)
    save_state(make_state(10), node_state=node_state, path=None)
    assert load_state("merchant-0", node_state=node_state, path=path).ledger.records[-1].steps == 10


@pytest.mark.parametrize(
    "text",
    [
        '{"merchant": "merchant-0", "ledger": {"epsilon_budget": 2.0,',  # truncated
        "",  # empty
        '{"merchant": "merchant-0"}',  # no ledger
        "[]",  # valid JSON, not a state
        '{"merchant": "merchant-0", "ledger": {"epsilon_budget": 2.0, "delta": 1e-5, '
        '"records": [{"label": "dp-sgd", "sigma": 1.0}]}}',  # not a mechanism record
    ],
)
def test_an_unreadable_state_file_raises_naming_the_path(tmp_path, text):
    path = tmp_path / "merchant-0.json"
    path.write_text(text)
    with pytest.raises(RuntimeError, match="privacy state file") as info:
        load_state("merchant-0", node_state=RecordDict(), path=path)
    assert str(path) in str(info.value)
    assert "merchant-0" in str(info.value)


def test_the_file_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "merchant-0.json"
    for steps in (5, 10, 15):
        save_state(make_state(steps), node_state=None, path=path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merchant-0.json"]  # no temp files

    # A write that fails before the rename leaves the previous copy whole and no temp file.
    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(state_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_state(make_state(20), node_state=None, path=path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merchant-0.json"]
    monkeypatch.undo()
    assert load_state("merchant-0", node_state=None, path=path).ledger.records[-1].steps == 15


def test_the_file_is_renamed_into_place(tmp_path, monkeypatch):
    """The new content is written to a temporary file in the same folder, then renamed."""
    path = tmp_path / "merchant-0.json"
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        calls.append((os.path.dirname(src), os.path.basename(src), os.fspath(dst)))
        with open(src) as handle:  # complete before the rename
            assert json.loads(handle.read())["merchant"] == "merchant-0"
        real_replace(src, dst)

    monkeypatch.setattr(state_module.os, "replace", spy)
    save_state(make_state(5), node_state=None, path=path)
    assert len(calls) == 1
    folder, name, target = calls[0]
    assert folder == str(tmp_path) and name != path.name and target == str(path)


def test_a_held_ledger_lock_makes_another_run_wait_then_refuse(tmp_path):
    import fcntl

    from client.state import LedgerLockedError, ledger_lock

    path = tmp_path / "merchant-0.json"
    with ledger_lock(path, timeout=0.1):
        other = path.with_name(path.name + ".lock")  # another run's handle on the lock file
        with open(other, "a") as handle, pytest.raises(BlockingIOError):
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(LedgerLockedError, match="locked by another run"), ledger_lock(
            path, timeout=0.2
        ):
            pass
    with ledger_lock(path, timeout=0.1):  # released: the next run gets it
        pass


def test_concurrent_runs_on_one_ledger_spend_what_they_record(tmp_path):
    """Two runs (two ClientApps with their own node states) answer from one ledger file at
    the same time: every release that left is in the file, and its epsilon is theirs."""
    import threading

    from synth_models.federation import LEDGER, STATISTICS_MESSAGE
    from tests.client.harness import document, pizza_merchant

    runs = [pizza_merchant(tmp_path), pizza_merchant(tmp_path)]
    released = []

    def ask(merchant):
        for _ in range(4):
            reply = merchant.ask(STATISTICS_MESSAGE, merchant.statistics_request())
            if merchant.status(reply)["state"] == "ok":
                released.append(document(reply, LEDGER))

    threads = [threading.Thread(target=ask, args=(m,)) for m in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    on_disk = load_state("merchant-0", node_state=None, path=tmp_path / "state/merchant-0.json")
    assert len(released) == 8
    # none lost to an interleaved write (equal consecutive releases merge into one record)
    assert sum(r.steps for r in on_disk.ledger.records) == 8
    spent = PrivacyLedger.from_state_dict(
        max(released, key=lambda lg: sum(r["steps"] for r in lg["records"]))
    )
    assert on_disk.epsilon == pytest.approx(spent.epsilon(), rel=1e-12)


def test_the_same_request_gets_the_same_release_back_at_no_cost(tmp_path):
    """A retried round (same federation, round and request) is answered from the ledger
    file's kept release: the same noisy numbers, no new ledger record. Another request, or one
    without a federation id, is a new release."""
    from synth_models.federation import LEDGER, STATISTICS, STATISTICS_MESSAGE
    from tests.client.harness import document, pizza_merchant

    merchant = pizza_merchant(tmp_path)
    request = merchant.statistics_request(federation_id="f-1")
    first = merchant.ask(STATISTICS_MESSAGE, request)
    again = pizza_merchant(tmp_path).ask(STATISTICS_MESSAGE, request)  # a new run, same file
    assert document(again, STATISTICS) == document(first, STATISTICS)
    assert document(again, LEDGER) == document(first, LEDGER)
    other = merchant.ask(STATISTICS_MESSAGE, {**request, "statistics_share": 0.05})
    assert document(other, STATISTICS) != document(first, STATISTICS)
    unnamed = merchant.ask(STATISTICS_MESSAGE, merchant.statistics_request())
    assert document(unnamed, STATISTICS) != document(first, STATISTICS)
    state = load_state("merchant-0", node_state=None, path=tmp_path / "state/merchant-0.json")
    assert sum(r.steps for r in state.ledger.records) == 3
