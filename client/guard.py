"""A Flower mod that checks every reply before it leaves the merchant.

Only model weights, scalar metrics from an allow-list and JSON documents in allowed records may
leave (see ``synth_models.federation``). Anything else (a table, a list of per-row values, an
unknown record) is blocked and replaced by a failure status naming what was blocked.
"""

from __future__ import annotations

import json
import logging

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from synth_models.federation import (
    ARRAYS,
    AUDIT,
    DOCUMENT_KEY,
    FAILED,
    MAX_AUDIT_LIST,
    METRICS,
    REPLY_DOCUMENTS,
    REPLY_METRICS,
    STATUS,
    dumps,
)

logger = logging.getLogger(__name__)


def reply_problems(content: RecordDict) -> list[str]:
    """Why this reply content may not leave a merchant (empty: it may)."""
    problems = []
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            if name != ARRAYS:
                problems.append(f"array record {name!r} is not the model weights")
        elif isinstance(record, MetricRecord):
            if name != METRICS:
                problems.append(f"metric record {name!r} is not allowed")
            for key, value in record.items():
                if key not in REPLY_METRICS:
                    problems.append(f"metric {key!r} is not on the allow-list")
                elif not isinstance(value, int | float):
                    problems.append(f"metric {key!r} is not a scalar")
        elif isinstance(record, ConfigRecord):
            if name not in REPLY_DOCUMENTS:
                problems.append(f"config record {name!r} is not allowed")
            elif set(record.keys()) != {DOCUMENT_KEY}:
                problems.append(f"config record {name!r} holds {sorted(record.keys())}")
            elif not isinstance(record[DOCUMENT_KEY], str):
                # str() of a list of numbers would parse as JSON: only a string is a document
                problems.append(f"config record {name!r} is not a JSON document (not a string)")
            else:
                try:
                    document = json.loads(str(record[DOCUMENT_KEY]))
                except ValueError:
                    problems.append(f"config record {name!r} is not a JSON document")
                else:
                    if name == AUDIT and _longest_list(document) > MAX_AUDIT_LIST:
                        problems.append(
                            f"audit document holds a list of more than "
                            f"{MAX_AUDIT_LIST} values (row-level data?)"
                        )
        else:
            problems.append(f"record {name!r} of type {type(record).__name__} is not allowed")
    return problems


def _longest_list(document) -> int:
    if isinstance(document, dict):
        return max((_longest_list(v) for v in document.values()), default=0)
    if isinstance(document, list):
        return max([len(document), *(_longest_list(v) for v in document)])
    return 0


def reply_guard(msg: Message, context: Context, call_next) -> Message:
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    problems = reply_problems(reply.content)
    if not problems:
        return reply
    logger.error("reply blocked before leaving the merchant: %s", "; ".join(problems))
    status = {
        "state": FAILED,
        "reason": "reply blocked by the privacy guard: " + "; ".join(problems),
    }
    return Message(RecordDict({STATUS: ConfigRecord({DOCUMENT_KEY: dumps(status)})}), reply_to=msg)
