"""The real ClientApp with an inspector mod outermost (``tests/simulations/test_federation.py``):
it records every reply as it leaves the merchant, after the reply guard, as JSON lines in
``<state-dir>/inspected-replies/`` (one file per process: ClientApps run in Ray actors).
Shipped in an app folder (``simulations.engine.write_app``) as the ``clientapp`` component."""

from __future__ import annotations

import json
import os
from pathlib import Path

from client.app import make_client_app

REPLIES = "inspected-replies"


def _body(record) -> object:
    kind = type(record).__name__
    if kind == "ArrayRecord":
        return {k: {"shape": list(a.shape), "dtype": a.dtype} for k, a in record.items()}
    if kind == "MetricRecord":
        return dict(record.items())
    if kind == "ConfigRecord":
        plain = (str, int, float, bool)
        return {k: v if isinstance(v, plain) else repr(v) for k, v in record.items()}
    return repr(record)


def inspector(msg, context, call_next):
    reply = call_next(msg, context)
    entry = {
        "partition": context.node_config.get("partition-id"),
        "message_type": msg.metadata.message_type,
        "error": reply.error.reason if reply.has_error() else None,
        "records": {},
    }
    if not reply.has_error():
        for name, record in reply.content.items():
            entry["records"][name] = {"type": type(record).__name__, "body": _body(record)}
    out = Path(str(context.run_config["state-dir"])) / REPLIES
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"replies-{os.getpid()}.jsonl").open("a") as handle:
        handle.write(json.dumps(entry) + "\n")
    return reply


app = make_client_app(mods=[inspector])
