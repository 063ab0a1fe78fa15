"""A Flower mod that checks every reply before it leaves the merchant.

Only model weights, scalar metrics from an allow-list and JSON documents in allowed records may
leave (see ``synth_models.federation``). Anything else (a table, a list of per-row values, an
unknown record) is blocked and replaced by a failure status naming what was blocked. A document
of noisy marginals must be count tables of at most pairs, shaped by the shared domains (no
dimension longer than ``MAX_MARGINAL_DOMAIN``), with a noise variance.
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
    MARGINALS,
    MAX_AUDIT_LIST,
    MAX_MARGINAL_CLIQUE,
    MAX_MARGINAL_DOMAIN,
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
                    if name == MARGINALS:
                        problems += marginal_problems(document)
        else:
            problems.append(f"record {name!r} of type {type(record).__name__} is not allowed")
    return problems


def marginal_problems(document) -> list[str]:
    """Why a marginals document is not a set of noisy count tables (empty: it is)."""
    expected = {"cliques", "shapes", "tables", "noise_var", "contributors"}
    if not isinstance(document, dict) or set(document) != expected:
        return ["marginals document does not have the fields of noisy count tables"]
    cliques, shapes, tables = document["cliques"], document["shapes"], document["tables"]
    if not (isinstance(cliques, list) and isinstance(shapes, list) and isinstance(tables, list)):
        return ["marginals document: cliques, shapes and tables must be lists"]
    if not len(cliques) == len(shapes) == len(tables):
        return ["marginals document: cliques, shapes and tables differ in number"]
    if not isinstance(document["noise_var"], int | float) or document["noise_var"] < 0:
        return ["marginals document: noise variance missing or negative"]
    problems = []
    for i, (clique, shape, table) in enumerate(zip(cliques, shapes, tables, strict=True)):
        if (
            not isinstance(shape, list)
            or not isinstance(clique, list)
            or not 1 <= len(shape) <= MAX_MARGINAL_CLIQUE
            or len(clique) != len(shape)
            or not all(isinstance(n, int) and 1 <= n <= MAX_MARGINAL_DOMAIN for n in shape)
        ):
            problems.append(
                f"marginal table {i}: shape {shape!r} is not a column or pair domain "
                f"(at most {MAX_MARGINAL_DOMAIN} values a column)"
            )
        elif _shape(table) != shape:
            problems.append(f"marginal table {i} is not a {shape} table of numbers")
    return problems


def _shape(table) -> list[int] | None:
    """The shape of a nested list of numbers (None if ragged or not numbers)."""
    if isinstance(table, bool):
        return None
    if isinstance(table, int | float):
        return []
    if not isinstance(table, list) or not table:
        return None
    shapes = [_shape(row) for row in table]
    if shapes[0] is None or any(s != shapes[0] for s in shapes):
        return None
    return [len(table), *shapes[0]]


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
