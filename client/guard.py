"""A Flower mod that checks every reply before it leaves the merchant.

A reply may hold only the records its message type releases (``RELEASES``), each a typed
release checked against the public schema, the request and the merchant's own ledger and
policy (``client.release_checks``): DP statistics, noisy marginals, model weights after
DP-SGD, the ledger summary, scalar metrics from an allow-list, an audit flag and a status
with a reason code. Anything else (a table, a list of rows, free text, a zero-noise marginal,
a NaN, an oversize payload) is blocked and replaced by a failure status; what was blocked is
written to the merchant's own log only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.policy import MerchantPolicy
from client.release_checks import (
    audit_problems,
    ledger_problems,
    marginal_problems,
    requested_cells,
    statistics_problems,
    status_problems,
    weights_problems,
)
from synth_models.encoder import TableEncoder
from synth_models.federation import (
    ARRAYS,
    AUDIT,
    CONFIG,
    DOCUMENT_KEY,
    EVALUATE_MESSAGE,
    FAILED,
    LEDGER,
    MARGINALS,
    MARGINALS_MESSAGE,
    METRICS,
    OK,
    REPLY_METRICS,
    STATISTICS,
    STATISTICS_MESSAGE,
    STATUS,
    TRAIN_MESSAGE,
    dumps,
)
from synth_models.schema import TableSchema
from synth_models.synthesizer import check_model_size

logger = logging.getLogger(__name__)
# What each message type may release besides its status and ledger summary.
RELEASES = {
    STATISTICS_MESSAGE: frozenset({STATISTICS}),
    MARGINALS_MESSAGE: frozenset({MARGINALS, METRICS}),
    TRAIN_MESSAGE: frozenset({ARRAYS, METRICS}),
    EVALUATE_MESSAGE: frozenset({AUDIT}),
}
MAX_REPLY_BYTES = 64 * 2**20  # besides the payload the request itself sizes (below)
JSON_NUMBER_BYTES = 32  # a float64 in JSON, its separator and brackets, at most
PARAMETER_BYTES = 8  # a float64 weight or buffer, at most


def _strict_json(text: str):
    """JSON without NaN or infinities (json.loads accepts both by default)."""

    def refuse(constant: str):
        raise ValueError(f"non-finite number {constant}")

    return json.loads(text, parse_constant=refuse)


def reply_problems(
    content: RecordDict,
    *,
    message_type: str,
    request: dict,
    merchant: str,
    policy: MerchantPolicy,
) -> list[str]:
    """Why this reply may not leave the merchant (empty: it may)."""
    documents, problems, size = {}, [], 0
    for name, record in content.items():
        if isinstance(record, ConfigRecord):
            if set(record.keys()) != {DOCUMENT_KEY} or not isinstance(record[DOCUMENT_KEY], str):
                problems.append(f"config record {name!r} is not one JSON document")
                continue
            size += len(record[DOCUMENT_KEY])
            try:
                documents[name] = _strict_json(record[DOCUMENT_KEY])
            except ValueError:
                problems.append(f"config record {name!r} is not a JSON document of finite numbers")
        elif isinstance(record, ArrayRecord):
            size += sum(array.numpy().nbytes for array in record.values())
        elif not isinstance(record, MetricRecord):
            problems.append(f"record {name!r} of type {type(record).__name__} is not allowed")
    if size > MAX_REPLY_BYTES:
        limit = MAX_REPLY_BYTES + requested_bytes(message_type, request)
        if size > limit:
            return [f"reply of {size} bytes is larger than {limit}"]
    if problems:
        return problems
    status = documents.get(STATUS)
    schema = TableSchema.from_dict(request["schema"]) if "schema" in request else None
    columns = [spec.name for spec in schema.columns] if schema is not None else []
    problems += status_problems(status, merchant=merchant, columns=columns)
    if problems:
        return problems
    releases = RELEASES.get(message_type, frozenset()) if status["state"] == OK else frozenset()
    allowed = {STATUS, LEDGER} | releases
    unknown = set(content.keys()) - allowed
    if unknown:
        return [f"record(s) {sorted(unknown)} are not releases of a {status['state']} reply"]
    ledger = documents.get(LEDGER)
    if ledger is not None:
        problems += ledger_problems(ledger, merchant=merchant, policy=policy)
    epsilon = request.get("epsilon")
    private = epsilon is not None and not math.isinf(float(epsilon))
    exact = epsilon is not None and not private
    if status["state"] == OK and exact and not policy.allow_non_private:
        problems.append("a non-private release that the policy does not allow")
    if STATISTICS in documents:
        problems += statistics_problems(
            documents[STATISTICS], schema=schema, ledger=ledger, private=private
        )
    if MARGINALS in documents:
        problems += marginal_problems(
            documents[MARGINALS], request=request, ledger=ledger, private=private
        )
    if AUDIT in documents:
        problems += audit_problems(documents[AUDIT])
    if ARRAYS in content:
        problems += weights_problems(
            content.array_records[ARRAYS].to_torch_state_dict(), request=request
        )
    if METRICS in content:
        problems += _metric_problems(content.metric_records[METRICS], private=private)
    return problems


def requested_bytes(message_type: str, request: dict) -> int:
    """The most bytes the releases a request asks for can take, from the request alone (its
    encoder, model and phase: public): the cap on a reply follows the public schema, so a
    declared domain of 20,000 values, and the tables and weights it makes, can leave. What
    the releases hold is checked number by number, shape by shape, below."""
    if "encoder" not in request:
        return 0
    if message_type == MARGINALS_MESSAGE:
        return JSON_NUMBER_BYTES * requested_cells(request)
    if message_type == TRAIN_MESSAGE and "model" in request:
        encoder = TableEncoder.from_dict(request["encoder"])
        return PARAMETER_BYTES * check_model_size(
            request["model"], encoder, request.get("model_options")
        )
    return 0


def _metric_problems(record: MetricRecord, *, private: bool) -> list[str]:
    problems = []
    for key, value in record.items():
        if key not in REPLY_METRICS:
            problems.append(f"metric {key!r} is not on the allow-list")
        elif not isinstance(value, int | float) or isinstance(value, bool):
            problems.append(f"metric {key!r} is not a scalar")
        elif not math.isfinite(value) and (private or key != "epsilon"):
            problems.append(f"metric {key!r} is not finite")
    return problems


def make_reply_guard(
    policy_for: Callable[[Context], MerchantPolicy], merchant_name: Callable[[Context], str]
) -> Callable:
    """The mod: every reply of this ClientApp passes :func:`reply_problems` or is replaced by a
    ``reply-blocked`` failure status."""

    def reply_guard(msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        merchant = merchant_name(context)
        try:
            record = msg.content.config_records.get(CONFIG)
            request = json.loads(str(record[DOCUMENT_KEY])) if record is not None else {}
            problems = reply_problems(
                reply.content,
                message_type=msg.metadata.message_type,
                request=request,
                merchant=merchant,
                policy=policy_for(context),
            )
        except Exception as exc:  # a reply the guard cannot read does not leave
            problems = [f"the guard could not check the reply ({exc!r})"]
        if not problems:
            return reply
        logger.error("%s: reply blocked before leaving: %s", merchant, "; ".join(problems))
        status = {"state": FAILED, "merchant": merchant, "code": "reply-blocked"}
        return Message(
            RecordDict({STATUS: ConfigRecord({DOCUMENT_KEY: dumps(status)})}), reply_to=msg
        )

    return reply_guard
