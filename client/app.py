"""The merchant's Flower ClientApp: thin handlers around ``client.merchant``.

Where the merchant's table is: ``node_config["data-path"]`` (deployment: each SuperNode names
its own file), else ``merchant-<partition-id>.*`` in ``data-dir`` (simulation). Where its privacy
state is kept across runs: ``node_config["state-path"]``, else ``<state-dir>/<merchant>.json``;
without either, the ledger lives in the node state of one run only.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.guard import reply_guard
from client.merchant import (
    audit_round,
    find_table,
    holdout_split,
    load_merchant_table,
    marginals_round,
    statistics_round,
    train_round,
)
from client.state import load_state, save_state
from privacy.ledger import BudgetExceededError
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
from synth_models.schema import DataError, TableSchema
from synth_models.training import TrainingConfig

logger = logging.getLogger(__name__)


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
    mods: list | None = None,
) -> ClientApp:
    """A ClientApp; ``data_dir``/``state_dir`` are defaults for simulations, where the run
    config is empty (``run_simulation``); ``torch_threads`` caps each merchant's threads when
    several share one machine."""
    app = ClientApp(mods=[*(mods or []), reply_guard])

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
        directory = _setting(context, "state-dir", state_dir)
        return Path(directory) / f"{merchant}.json" if directory else None

    def handle(msg: Message, context: Context, work) -> Message:
        """Run ``work``; turn known failures into a status reply the server can report."""
        threads = torch_threads or _setting(context, "torch-threads")
        if threads:  # several merchants on one machine: cap each one's threads
            torch.set_num_threads(int(threads))
        merchant = merchant_name(context)
        path = state_path(context, merchant)
        state = None
        try:
            record = msg.content.config_records[CONFIG]
            config = {**_document(record), "server_round": record.get("server-round", 0)}
            schema = TableSchema.from_dict(config["schema"])
            source = table_path(context)
            table = load_merchant_table(source, schema)
            fraction = float(_setting(context, "holdout-fraction", holdout_fraction) or 0.0)
            # The holdout is never trained on: the audit's non-members.
            table, holdout = holdout_split(table, fraction, seed=_seed(merchant, "holdout"))
            state = load_state(merchant, node_state=context.state, path=path)
            content = work(msg, config, schema, table, str(source), state, holdout)
            if state.ledger is not None:
                content[LEDGER] = ConfigRecord({DOCUMENT_KEY: dumps(state.ledger.state_dict())})
            content[STATUS] = ConfigRecord(
                {DOCUMENT_KEY: dumps({"state": OK, "merchant": merchant})}
            )
            return Message(content, reply_to=msg)
        except BudgetExceededError as exc:
            return _status(msg, merchant, REFUSED, str(exc))
        except DataError as exc:
            logger.error("%s: %s", merchant, exc)
            return _status(msg, merchant, FAILED, f"bad input: {exc}")
        except Exception as exc:  # a merchant's failure must not stop the federation
            logger.exception("%s failed", merchant)
            return _status(msg, merchant, FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            # Steps that ran are spent even if the round failed afterwards: always persist.
            if state is not None:
                save_state(state, node_state=context.state, path=path)

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
                seed=_seed(config["seed"], state.merchant, "statistics"),
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
                seed=_seed(config["seed"], state.merchant, "marginals", config["phase"]),
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
                seed=_seed(config["seed"], state.merchant, server_round),
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
            )
            return RecordDict({AUDIT: ConfigRecord({DOCUMENT_KEY: dumps(report)})})

        return handle(msg, context, work)

    return app


def _status(msg: Message, merchant: str, state: str, reason: str) -> Message:
    logger.warning("%s %s: %s", merchant, state, reason)
    document = {"state": state, "merchant": merchant, "reason": reason}
    return Message(
        RecordDict({STATUS: ConfigRecord({DOCUMENT_KEY: dumps(document)})}), reply_to=msg
    )


app = make_client_app()
