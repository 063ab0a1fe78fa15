"""A merchant's persistent privacy state: its ledger and its training plan.

Kept in the node's ``context.state`` (survives the rounds of one run) and, when the merchant
has a state file, on disk (survives runs and restarts). The disk copy is written atomically
after every change, and a state is never replaced by one that has spent less: losing a file
write can make the budget look *more* spent, never less. While a message is handled the file
is locked (:func:`ledger_lock`), so two runs can never both spend from one copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import ConfigRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from privacy.ledger import PrivacyLedger
from synth_models.federation import MARGINALS_MESSAGE, STATISTICS_MESSAGE, TRAIN_MESSAGE

logger = logging.getLogger(__name__)
STATE_RECORD = "fedsynth-merchant"


@dataclass
class MerchantState:
    merchant: str
    ledger: PrivacyLedger | None = None
    dp_rows: float | None = None  # DP row count from the statistics round
    noise_multiplier: float | None = None  # calibrated once for all planned rounds
    plan: dict = field(default_factory=dict)
    # SHA-256 of the public schema this merchant answered first (pinned when its policy names
    # no metadata file): a server that changes the schema to probe values is refused.
    schema_digest: str | None = None
    # The releases this merchant made, by (federation, message type, round, phase): a retried
    # or resumed round that asks the same gets the same release back at no new privacy cost.
    releases: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "merchant": self.merchant,
            "ledger": None if self.ledger is None else self.ledger.state_dict(),
            "dp_rows": self.dp_rows,
            "noise_multiplier": self.noise_multiplier,
            "plan": self.plan,
            "schema_digest": self.schema_digest,
            "releases": self.releases,
        }

    @classmethod
    def from_dict(cls, d: dict) -> MerchantState:
        return cls(
            merchant=d["merchant"],
            ledger=None if d["ledger"] is None else PrivacyLedger.from_state_dict(d["ledger"]),
            dp_rows=d.get("dp_rows"),
            noise_multiplier=d.get("noise_multiplier"),
            plan=d.get("plan", {}),
            schema_digest=d.get("schema_digest"),
            releases=d.get("releases", {}),
        )

    @property
    def epsilon(self) -> float:
        return 0.0 if self.ledger is None else self.ledger.epsilon()


def _steps(state: MerchantState) -> int:
    return 0 if state.ledger is None else sum(r.steps for r in state.ledger.records)


def load_state(merchant: str, *, node_state: RecordDict | None, path: Path | None) -> MerchantState:
    """The most-spent of the node-state copy and the disk copy (a fresh state if neither)."""
    candidates = []
    record = node_state.config_records.get(STATE_RECORD) if node_state is not None else None
    if record is not None:
        candidates.append(MerchantState.from_dict(json.loads(str(record["json"]))))
    if path is not None and path.exists():
        try:
            candidates.append(MerchantState.from_dict(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError) as exc:  # TypeError: wrong shape
            raise RuntimeError(
                f"merchant {merchant!r}: privacy state file {path} is unreadable ({exc}); "
                "refusing to train without knowing what was already spent"
            ) from exc
    if not candidates:
        return MerchantState(merchant=merchant)
    return max(candidates, key=lambda s: (s.epsilon, _steps(s)))


def save_state(state: MerchantState, *, node_state: RecordDict | None, path: Path | None) -> None:
    text = json.dumps(state.to_dict())
    if node_state is not None:
        node_state.config_records[STATE_RECORD] = ConfigRecord({"json": text})
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, text.encode())


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class LedgerLockedError(RuntimeError):
    """Another process holds this merchant's ledger file."""


@contextlib.contextmanager
def ledger_lock(path: Path | None, *, timeout: float) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s lock file (``<path>.lock``) for a whole message:
    load, spend, save. A second run on the same ledger waits up to ``timeout`` seconds, then
    raises LedgerLockedError. No path: nothing to lock (the ledger lives in one node state)."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LedgerLockedError(
                        f"ledger file {path} is locked by another run ({timeout:.0f} s waited)"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# Releases kept for replay, newest last (a resumed round asks for one of the last few).
KEPT_RELEASES = 8
SPENDING_MESSAGES = (STATISTICS_MESSAGE, MARGINALS_MESSAGE, TRAIN_MESSAGE)


def release_key(request: dict, message_type: str) -> str | None:
    """Which release a request asks for: its federation (the server's id for one federation
    across its runs and resumes), message type, round and phase; None without a federation
    id (nothing is replayed)."""
    federation = request.get("federation_id")
    if not federation or message_type not in SPENDING_MESSAGES:
        return None
    parts = (federation, message_type, request.get("server_round", 0), request.get("phase", ""))
    return "/".join(map(str, parts))


def request_digest(content: RecordDict) -> str:
    """SHA-256 of everything a request carries (documents and weights)."""
    return hashlib.sha256(
        recorddict_to_proto(content).SerializeToString(deterministic=True)
    ).hexdigest()


def _release_file(path: Path, key: str) -> Path:
    name = hashlib.sha256(key.encode()).hexdigest()[:32]
    return path.with_name(path.name + ".releases") / f"{name}.bin"


def replayed_release(
    state: MerchantState, path: Path | None, key: str | None, digest: str
) -> RecordDict | None:
    """The reply this merchant already made to the same request (None: a new release)."""
    if path is None or key is None or state.releases.get(key) != digest:
        return None
    try:
        proto = ProtoRecordDict()
        proto.ParseFromString(_release_file(path, key).read_bytes())
    except (OSError, ValueError) as exc:
        logger.warning("%s: release %s unreadable (%s); releasing anew", state.merchant, key, exc)
        return None
    return recorddict_from_proto(proto)


def keep_release(
    state: MerchantState, path: Path | None, key: str | None, digest: str, content: RecordDict
) -> None:
    """Keep ``content`` (what left for ``key``) for replay; the oldest beyond
    ``KEPT_RELEASES`` are dropped. Written before the state file that names it."""
    if path is None or key is None:
        return
    file = _release_file(path, key)
    file.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(file, recorddict_to_proto(content).SerializeToString(deterministic=True))
    state.releases.pop(key, None)
    state.releases[key] = digest
    while len(state.releases) > KEPT_RELEASES:
        oldest = next(iter(state.releases))
        del state.releases[oldest]
        _release_file(path, oldest).unlink(missing_ok=True)
