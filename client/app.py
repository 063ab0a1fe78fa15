"""The merchant's Flower ClientApp: thin handlers around ``client.merchant``.

Where the merchant's table is: ``node_config["data-path"]`` (deployment: each SuperNode names
its own file), else ``merchant-<partition-id>.*`` in ``data-dir`` (simulation). Where its privacy
state is kept across runs: ``node_config["state-path"]`` (required in deployment), else, for a
simulated node, ``<state-dir>/<merchant>.json``; without either, the ledger lives in the node
state of one run only. Its privacy policy (``client/policy.py``) comes from its node config,
and its local audit report goes to ``audit-dir`` (default: beside the ledger file).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from pathlib import Path

import torch
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.guard import make_reply_guard
from client.merchant import (
    audit_round,
    find_table,
    load_merchant_table,
    marginals_round,
    row_wise_holdout,
    statistics_round,
    train_round,
)
from client.policy import MerchantPolicy, PolicyRefusal
from client.state import (
    LedgerLockedError,
    MerchantState,
    keep_release,
    ledger_lock,
    load_state,
    release_key,
    replayed_release,
    request_digest,
    save_state,
)
from privacy.claims import (
    generate_key,
    load_or_create_key,
    load_private_key,
    private_key_from_bytes,
    sign_ledger,
)
from privacy.ledger import BudgetExceededError, PrivacyLedger
from synth_models.encoder import TableEncoder
from synth_models.federation import (
    ARRAYS,
    AUDIT,
    CONFIG,
    DOCUMENT_KEY,
    FAILED,
    LEDGER,
    MARGINALS,
    METRICS,
    OK,
    REFUSED,
    STATISTICS,
    STATUS,
    dumps,
    loads,
)
from synth_models.io import load_metadata
from synth_models.schema import DataError, TableSchema
from synth_models.synthesizer import check_model_size
from synth_models.training import TrainingConfig

logger = logging.getLogger(__name__)
SIMULATED_POLICY = "policy.toml"


def merchant_name(context: Context) -> str:
    node = context.node_config
    if "merchant-id" in node:
        return str(node["merchant-id"])
    if "partition-id" in node:
        return f"merchant-{node['partition-id']}"
    return f"node-{context.node_id}"


def _setting(context: Context, key: str, default: object = None) -> str | None:
    """Node config first (a merchant's own settings), then run config, then ``default``."""
    value = context.node_config.get(key) or context.run_config.get(key) or default
    return str(value) if value else None


def _document(record: ConfigRecord) -> dict:
    return loads(str(record[DOCUMENT_KEY]))


def _seed(*parts) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_client_app(
    *,
    data_dir: str | None = None,
    state_dir: str | None = None,
    torch_threads: int | None = None,
    holdout_fraction: float = 0.0,
    policy: MerchantPolicy | None = None,
    lock_timeout: float = 60.0,
    mods: list | None = None,
) -> ClientApp:
    """A ClientApp; ``data_dir``/``state_dir``/``torch_threads`` are defaults for the run
    config's ``data-dir``/``state-dir``/``torch-threads`` (tests call the app in process);
    ``torch_threads`` caps each merchant's threads when several share one machine. ``policy``
    is the merchants' privacy policy under their own node config (default: a simulation's
    ``<state-dir>/policy.toml``, else ``MerchantPolicy()``).
    ``lock_timeout``: how long a message waits for a ledger file another run holds."""

    def policy_for(context: Context) -> MerchantPolicy:
        return MerchantPolicy.from_node_config(
            context.node_config, base=policy or simulated_policy(context, state_dir)
        )

    app = ClientApp(mods=[*(mods or []), make_reply_guard(policy_for, merchant_name)])

    def table_path(context: Context) -> Path:
        if "data-path" in context.node_config:
            return Path(str(context.node_config["data-path"]))
        directory = _setting(context, "data-dir", data_dir)
        if directory is None or "partition-id" not in context.node_config:
            raise DataError(
                "this merchant has no data: set node config 'data-path' "
                "(deployment) or run config 'data-dir' (simulation)"
            )
        return find_table(directory, int(context.node_config["partition-id"]))

    def state_path(context: Context, merchant: str) -> Path | None:
        if "state-path" in context.node_config:
            return Path(str(context.node_config["state-path"]))
        if "partition-id" not in context.node_config:
            return None  # a deployed merchant names its own file; the server never does
        directory = _setting(context, "state-dir", state_dir)
        return Path(directory) / f"{merchant}.json" if directory else None

    def handle(msg: Message, context: Context, work) -> Message:
        """Check the request against the merchant's policy, run ``work`` under its locked
        ledger, and reply; a refusal or failure replies with a reason code only (the full
        message goes to this merchant's log)."""
        threads = torch_threads or _setting(context, "torch-threads")
        if threads:  # several merchants on one machine: cap each one's threads
            torch.set_num_threads(int(threads))
        merchant = merchant_name(context)
        public_columns: frozenset[str] = frozenset()
        path = None
        try:
            path = state_path(context, merchant)
            own_policy = policy_for(context)
            record = msg.content.config_records[CONFIG]
            config = {**_document(record), "server_round": record.get("server-round", 0)}
            own_policy.check(msg.metadata.message_type, config, has_ledger_path=path is not None)
            with ledger_lock(path, timeout=lock_timeout):
                state = load_state(merchant, node_state=context.state, path=path)
                try:
                    schema = pinned_schema(config, own_policy, state)
                    check_model_request(config)
                    public_columns = frozenset(spec.name for spec in schema.columns)
                    adopt_policy(state, own_policy, private=_private(config))
                    key = release_key(config, msg.metadata.message_type)
                    digest = request_digest(msg.content)
                    replay = replayed_release(state, path, key, digest)
                    if replay is not None:  # a retried or resumed round: no new privacy cost
                        logger.info("%s: %s answered with its earlier release", merchant, key)
                        return Message(replay, reply_to=msg)
                    source = table_path(context)
                    table = load_merchant_table(source, schema)
                    fraction = float(_setting(context, "holdout-fraction", holdout_fraction) or 0)
                    # The holdout is never trained on: the audit's non-members.
                    table, holdout = row_wise_holdout(table, fraction, salt=merchant)
                    content = work(msg, config, schema, table, str(source), state, holdout)
                    if state.ledger is not None:
                        content[LEDGER] = _ledger_record(state, context, path, config)
                    content[STATUS] = _status_record(merchant, OK, "done")
                    keep_release(state, path, key, digest, content)
                    return Message(content, reply_to=msg)
                finally:
                    # Steps that ran are spent even if the round failed afterwards: persist.
                    save_state(state, node_state=context.state, path=path)
        except PolicyRefusal as exc:
            return _status(msg, merchant, REFUSED, exc.code, detail=exc.detail, log=path)
        except LedgerLockedError as exc:
            return _status(msg, merchant, REFUSED, "ledger-locked", detail=str(exc), log=path)
        except BudgetExceededError as exc:
            return _status(msg, merchant, REFUSED, "budget-exhausted", detail=str(exc), log=path)
        except DataError as exc:
            # Only a column of the public schema is named to the server; the rest is local.
            named = exc.column if exc.column in public_columns else None
            return _status(
                msg, merchant, FAILED, "bad-input", detail=str(exc), column=named, log=path
            )
        except Exception as exc:  # a merchant's failure must not stop the federation
            logger.exception("%s failed", merchant)
            return _status(msg, merchant, FAILED, "internal-error", detail=repr(exc), log=path)

    @app.query("statistics")
    def statistics(msg: Message, context: Context) -> Message:
        def work(msg, config, schema, table, source, state, holdout):
            stats = statistics_round(
                table,
                schema=schema,
                state=state,
                epsilon=float(config["epsilon"]),
                delta=float(config["delta"]),
                statistics_share=float(config["statistics_share"]),
                source=source,
            )
            return RecordDict({STATISTICS: ConfigRecord({DOCUMENT_KEY: dumps(stats.to_dict())})})

        return handle(msg, context, work)

    @app.query("marginals")
    def marginals(msg: Message, context: Context) -> Message:
        def work(msg, config, schema, table, source, state, holdout):
            release, metrics = marginals_round(
                table,
                encoder=TableEncoder.from_dict(config["encoder"]),
                model_options=config["model_options"],
                state=state,
                epsilon=float(config["epsilon"]),
                delta=float(config["delta"]),
                phase=config["phase"],
                tree=config.get("tree"),
                source=source,
                target_epsilon=config.get("target_epsilon"),
            )
            return RecordDict(
                {
                    MARGINALS: ConfigRecord({DOCUMENT_KEY: dumps(release.to_dict())}),
                    METRICS: MetricRecord(metrics),
                }
            )

        return handle(msg, context, work)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        def work(msg, config, schema, table, source, state, holdout):
            server_round = int(config["server_round"])
            weights, metrics = train_round(
                table,
                encoder=TableEncoder.from_dict(config["encoder"]),
                weights=msg.content.array_records[ARRAYS].to_torch_state_dict(),
                model=config["model"],
                model_options=config["model_options"],
                training=TrainingConfig(**config["training"]),
                state=state,
                epsilon=float(config["epsilon"]),
                delta=float(config["delta"]),
                server_round=server_round,
                num_rounds=int(config["num_rounds"]),
                source=source,
            )
            logger.info(
                "%s round %d: epsilon %.4f, %s",
                state.merchant,
                server_round,
                metrics["epsilon"],
                {k: round(v, 4) for k, v in metrics.items() if k.endswith("loss")},
            )
            return RecordDict({ARRAYS: ArrayRecord(weights), METRICS: MetricRecord(metrics)})

        return handle(msg, context, work)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        def work(msg, config, schema, table, source, state, holdout):
            report = audit_round(
                table,
                holdout,
                metadata=config["metadata"],
                encoder=TableEncoder.from_dict(config["encoder"]),
                weights=msg.content.array_records[ARRAYS].to_torch_state_dict(),
                model=config["model"],
                model_options=config["model_options"],
                claimed={
                    "epsilon": state.epsilon if state.ledger else None,
                    "delta": state.ledger.delta if state.ledger else None,
                },
                target=config.get("target"),
                sensitive_columns=config.get("sensitive", []),
                sample_rows=int(config.get("sample_rows", 20_000)),
                seed=_seed(config["seed"], state.merchant, "audit"),
                report_dir=audit_dir(context, state.merchant, state_dir),
            )
            return RecordDict({AUDIT: ConfigRecord({DOCUMENT_KEY: dumps(report)})})

        return handle(msg, context, work)

    return app


def pinned_schema(config: dict, policy: MerchantPolicy, state: MerchantState) -> TableSchema:
    """The public schema this merchant answers for. With ``metadata-path`` in its policy the
    server's schema must be that file's; otherwise the first schema it answered is pinned in
    its ledger file. The encoder a request carries must hold the same schema. A server that
    changes the schema to probe the table (a range that a value falls outside of, a category
    it guesses) is refused before any row is read."""
    requested = TableSchema.from_dict(config["schema"])
    if policy.metadata_path:
        own = TableSchema.from_metadata(load_metadata(policy.metadata_path), requested.table_name)
        if own.to_dict() != requested.to_dict():
            raise PolicyRefusal("schema-mismatch", "the schema differs from this merchant's own")
    digest = hashlib.sha256(dumps(requested.to_dict()).encode()).hexdigest()
    if state.schema_digest is None:
        state.schema_digest = digest
    elif state.schema_digest != digest:
        raise PolicyRefusal("schema-mismatch", "the schema differs from the one first answered")
    encoder = config.get("encoder")
    if encoder is not None and encoder.get("schema") != requested.to_dict():
        raise PolicyRefusal("schema-mismatch", "the encoder's schema differs from the schema")
    return requested


def check_model_request(config: dict) -> None:
    """A model the server asks for is counted before anything is built: options such as
    ``hidden: [20000, 20000]`` would otherwise make the merchant allocate gigabytes."""
    if "encoder" not in config or "model" not in config:
        return
    try:
        check_model_size(
            config["model"], TableEncoder.from_dict(config["encoder"]), config.get("model_options")
        )
    except (ValueError, TypeError) as exc:
        raise PolicyRefusal("bad-request", str(exc)) from exc


def adopt_policy(state: MerchantState, policy: MerchantPolicy, *, private: bool) -> None:
    """The ledger's budget and delta are the merchant's own, whatever the server asks."""
    if not private:
        return
    if state.ledger is None:
        state.ledger = PrivacyLedger(
            epsilon_budget=policy.epsilon_budget, delta=policy.max_delta, owner=state.merchant
        )
    elif state.ledger.delta > policy.max_delta:
        raise PolicyRefusal(
            "delta-above-policy",
            f"the ledger accounts at delta {state.ledger.delta}, above max-delta "
            f"{policy.max_delta}",
        )
    state.ledger.epsilon_budget = policy.epsilon_budget


def _private(config: dict) -> bool:
    """Whether a request spends budget (an audit request names no epsilon: it spends none)."""
    return config.get("epsilon") is not None and not math.isinf(float(config["epsilon"]))


SIGNING_KEY_RECORD = "fedsynth-signing-key"  # a simulated node's key, without a ledger file


def signing_key(context: Context, path: Path | None):
    """The key this merchant signs its ledger with: node config ``signing-key-path`` (in
    deployment the SuperNode's own ``--auth-supernode-private-key``, an OpenSSH ECDSA key);
    else an ed25519 key made once beside its ledger file (``<state-path>`` with suffix
    ``.key``, mode 0600); else one made once for this node's state (one run)."""
    if "signing-key-path" in context.node_config:
        return load_private_key(str(context.node_config["signing-key-path"]))
    if path is not None:
        return load_or_create_key(path.with_suffix(".key"))
    record = context.state.config_records.get(SIGNING_KEY_RECORD)
    if record is None:
        key = generate_key()
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
        context.state.config_records[SIGNING_KEY_RECORD] = ConfigRecord({"pem": pem})
        return key
    return private_key_from_bytes(str(record["pem"]).encode())


def _ledger_record(
    state: MerchantState, context: Context, path: Path | None, config: dict
) -> ConfigRecord:
    """The ledger summary, signed with this merchant's key (``privacy/claims.py``)."""
    signed = sign_ledger(
        state.ledger.state_dict(),
        signing_key(context, path),
        round=int(config.get("server_round") or 0),
    )
    return ConfigRecord({DOCUMENT_KEY: dumps(signed)})


def _status_record(merchant: str, state: str, code: str, column: str | None = None) -> ConfigRecord:
    document = {"state": state, "merchant": merchant, "code": code}
    if column is not None:
        document["column"] = column
    return ConfigRecord({DOCUMENT_KEY: dumps(document)})


def _status(
    msg: Message,
    merchant: str,
    state: str,
    code: str,
    *,
    detail: str,
    column: str | None = None,
    log: Path | None = None,
) -> Message:
    """A status reply with a code only; the full ``detail`` goes to this merchant's log and,
    with a ledger file, to its events log beside it (``<state-path>.log``: its own premises)."""
    logger.warning("%s %s (%s): %s", merchant, state, code, detail)
    if log is not None:
        with contextlib.suppress(OSError), log.with_suffix(".log").open("a") as events:
            events.write(
                f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg.metadata.message_type} "
                f"{state} ({code}): {detail}\n"
            )
    return Message(
        RecordDict({STATUS: _status_record(merchant, state, code, column)}), reply_to=msg
    )


def simulated_policy(context: Context, state_dir: str | None = None) -> MerchantPolicy | None:
    """A simulated merchant's policy: ``<state-dir>/policy.toml``, written by whoever plays the
    merchants (``simulations.runner``). Only nodes that name neither their own table nor their
    own ledger are simulated; a deployed merchant's policy comes from its node config alone."""
    node = context.node_config
    if "partition-id" not in node or "data-path" in node or "state-path" in node:
        return None
    directory = _setting(context, "state-dir", state_dir)
    path = Path(directory) / SIMULATED_POLICY if directory else None
    return MerchantPolicy.from_file(path) if path is not None and path.exists() else None


def audit_dir(context: Context, merchant: str, state_dir: str | None = None) -> Path:
    """Where this merchant writes its local audit report (it is never sent): node config
    ``audit-dir``, else beside its ledger file (``state-path`` with suffix ``.audit``), else
    ``<state-dir>/<merchant>-audit`` in a simulation, else ``runs/merchant-audit/<merchant>``
    under the working directory. A deployed merchant's folder comes from its own node config."""
    node = context.node_config
    if "audit-dir" in node:
        return Path(str(node["audit-dir"]))
    if "state-path" in node:
        return Path(str(node["state-path"])).with_suffix(".audit")
    directory = _setting(context, "state-dir", state_dir)
    if directory and "partition-id" in node:
        return Path(directory) / f"{merchant}-audit"
    return Path("runs") / "merchant-audit" / merchant


app = make_client_app()
