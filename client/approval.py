"""Only apps its operator approved run on a merchant's machine.

TLS and SuperNode authentication protect the links; they do not decide what code runs on the
merchant. Anyone who may call ``flwr run`` on the SuperLink (in Flower 1.41 without the
enterprise edition: anyone who reaches its port) can send any app bundle (FAB), and the SuperNode
hands it to its SuperExec. The merchant's warm SuperExec (``client.warm_exec``) therefore checks
each ClientApp task's FAB before any of its code is installed or imported: its SHA-256 must be on
the merchant's own list of approved apps, or the task fails with an error reply and nothing of
the app runs.

The list is merchant-local: ``approved-apps`` in the merchant's node config or policy file
(``client/policy.py``), and/or ``python -m client.warm_exec --approved-apps``. Each entry is a
FAB's SHA-256 (64 hex digits) or the path of a file of them, one a line; what follows the hash on
a line, and lines starting with ``#``, are comments. Only the hash approves: publisher, name and
version come from the FAB's own ``pyproject.toml``, which its author writes. With no list at all
every app is refused (and the log says which hash to approve).

    python -m client.approval .            # this project's FAB: "<sha256>  # fedsynth/... 1.0.0"
    python -m client.approval app.fab      # a FAB someone sent you to review
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

APPROVED_APPS_KEY = "approved-apps"
_HASH = re.compile(r"^[0-9a-f]{64}$")


class AppNotApproved(Exception):
    """A FAB that is not on this merchant's approved list (the task fails, nothing runs)."""


@dataclass(frozen=True)
class AppIdentity:
    sha256: str
    fab_id: str  # "publisher/name", as the FAB's pyproject.toml says
    version: str

    def line(self) -> str:
        """The line that approves this app in an approved-apps file."""
        return f"{self.sha256}  # {self.fab_id} {self.version}"


def fab_identity(fab: bytes) -> AppIdentity:
    """Hash and self-declared metadata of a FAB (its bytes are only read, never run)."""
    sha256 = hashlib.sha256(fab).hexdigest()
    try:
        from flwr.common.config import get_fab_config, get_metadata_from_config

        fab_id, version = get_metadata_from_config(get_fab_config(fab))
    except Exception:  # a malformed FAB is still refused by its hash
        fab_id, version = "?", "?"
    return AppIdentity(sha256, str(fab_id), str(version))


def build_fab(app_dir: str | Path) -> bytes:
    """The FAB ``flwr run <app_dir>`` would submit (Flower's builder is deterministic)."""
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(Path(app_dir))


def read_fab_or_app(path: str | Path) -> bytes:
    path = Path(path)
    return build_fab(path) if path.is_dir() else path.read_bytes()


def parse_approvals(entries: Iterable[str]) -> frozenset[str]:
    """Hashes from entries that are hashes or paths to files of hashes; a file that cannot be
    read or a line that is not a hash raises (a broken list never approves anything)."""
    approved: set[str] = set()
    for entry in entries:
        entry = str(entry).strip()
        if not entry:
            continue
        if _HASH.match(entry.lower()):
            approved.add(entry.lower())
            continue
        path = Path(entry).expanduser()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            token = line.split("#", 1)[0].split()
            if not token:
                continue
            if not _HASH.match(token[0].lower()):
                raise ValueError(f"{path}:{number}: not a FAB SHA-256: {token[0]!r}")
            approved.add(token[0].lower())
    return frozenset(approved)


def write_approvals(path: str | Path, identities: Iterable[AppIdentity]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{identity.line()}\n" for identity in identities))
    return path


def check_fab(fab: bytes, approved: frozenset[str], *, claimed_hash: str | None = None) -> None:
    """Raise AppNotApproved unless ``fab`` is approved. The log line tells the operator what
    to add to approve it; the exception (the error reply's reason) names the hash only."""
    identity = fab_identity(fab)
    if claimed_hash and claimed_hash != identity.sha256:
        raise AppNotApproved(f"FAB hash mismatch: announced {claimed_hash}, is {identity.sha256}")
    if identity.sha256 in approved:
        logger.info("approved app %s %s (%s)", identity.fab_id, identity.version, identity.sha256)
        return
    how = (
        "no approved apps are configured on this merchant"
        if not approved
        else "it is not on this merchant's approved list"
    )
    logger.error(
        "REFUSED app %s %s: %s. Nothing of it ran. To approve this exact bundle, add the line\n"
        "    %s\nto the file named by '%s' (node config or policy file) or pass "
        "'--approved-apps %s' to client.warm_exec.",
        identity.fab_id, identity.version, how, identity.line(), APPROVED_APPS_KEY,
        identity.sha256,
    )  # fmt: skip
    raise AppNotApproved(
        f"app {identity.fab_id} {identity.version} (sha256 {identity.sha256}) "
        "is not approved by this merchant"
    )


class ApprovalGate:
    """Wraps the two steps of Flower's ``run_clientapp`` that come before any app code: pulling
    the task (its Context carries the merchant's node config) and installing the FAB. The check
    runs on the FAB's bytes at install; a refusal raises inside ``run_clientapp``, which then
    sends an error reply and exits (no install, no import of the app)."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.entries = tuple(entries)
        self.node_config: dict | None = None
        self.claimed_hash: str | None = None

    def approved(self) -> frozenset[str]:
        entries = list(self.entries)
        if self.node_config is not None:
            from client.policy import MerchantPolicy

            entries += MerchantPolicy.from_node_config(self.node_config).approved_apps
        return parse_approvals(entries)

    def wrap_pull(self, pull: Callable) -> Callable:
        def pull_task_input(client):
            message, context, run, fab = pull(client)
            self.node_config = dict(context.node_config)
            self.claimed_hash = fab.hash_str
            return message, context, run, fab

        return pull_task_input

    def wrap_install(self, install: Callable) -> Callable:
        def install_from_fab(fab_file, *args, **kwargs):
            fab = fab_file if isinstance(fab_file, bytes) else Path(fab_file).read_bytes()
            try:
                approved = self.approved()
            except Exception as exc:  # an unreadable list approves nothing
                logger.error("REFUSED app: the approved-apps list cannot be read: %s", exc)
                raise AppNotApproved("this merchant's approved-apps list cannot be read") from None
            check_fab(fab, approved, claimed_hash=self.claimed_hash)
            return install(fab_file, *args, **kwargs)

        return install_from_fab

    def install_into_flower(self) -> None:
        """Patch Flower's ``run_clientapp`` module (call in the forked child only)."""
        from flwr.supernode.runtime import run_clientapp as flower

        flower.pull_task_input = self.wrap_pull(flower.pull_task_input)
        flower.install_from_fab = self.wrap_install(flower.install_from_fab)


def main(argv: list[str] | None = None) -> int:
    """Print the approval line of an app folder or a .fab file."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m client.approval APP_DIR_OR_FAB ...", file=sys.stderr)
        return 2
    for arg in args:
        print(fab_identity(read_fab_or_app(arg)).line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
