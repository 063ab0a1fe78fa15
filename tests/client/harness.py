"""Drive the real ClientApp (handlers, policy and reply guard) with hand-built messages, as a
server would send them, without a simulation engine."""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.clientapp import ClientApp

from client.app import make_client_app
from client.policy import MerchantPolicy
from privacy.statistics import TableStatistics
from simulations.datasets import load_dataset
from synth_models.encoder import TableEncoder
from synth_models.federation import (
    ARRAYS,
    CONFIG,
    DOCUMENT_KEY,
    LEDGER,
    STATISTICS,
    STATISTICS_MESSAGE,
    STATUS,
    dumps,
    loads,
)
from synth_models.schema import TableSchema

_ids = itertools.count()


def message(
    message_type: str, document: dict, arrays: dict | None = None, server_round: int = 1
) -> Message:
    config = ConfigRecord({DOCUMENT_KEY: dumps(document), "server-round": server_round})
    content = RecordDict({CONFIG: config})
    if arrays is not None:
        content[ARRAYS] = ArrayRecord(arrays)
    metadata = Metadata(
        run_id=1,
        message_id=f"instruction-{next(_ids)}",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    return Message(metadata=metadata, content=content)


def document(reply: Message, name: str) -> dict | None:
    record = reply.content.config_records.get(name)
    return None if record is None else loads(str(record[DOCUMENT_KEY]))


@dataclass
class Merchant:
    """One merchant's ClientApp and node context, with a pizzaplace table on its 'disk'."""

    app: ClientApp
    context: Context
    schema: TableSchema
    folder: Path

    def ask(
        self, message_type: str, request: dict, arrays: dict | None = None, server_round: int = 1
    ) -> Message:
        return self.app(message(message_type, request, arrays, server_round), self.context)

    def status(self, reply: Message) -> dict:
        return document(reply, STATUS)

    def statistics_request(self, **overrides) -> dict:
        return {
            "epsilon": 1.0,
            "delta": 1e-5,
            "statistics_share": 0.1,
            "seed": 0,
            "schema": self.schema.to_dict(),
            **overrides,
        }

    def encoder(self) -> TableEncoder:
        """The encoder a server would build from this merchant's statistics alone."""
        reply = self.ask(STATISTICS_MESSAGE, self.statistics_request())
        stats = TableStatistics.from_dict(document(reply, STATISTICS))
        return TableEncoder.from_statistics(self.schema, stats)

    def ledger(self, reply: Message) -> dict | None:
        return document(reply, LEDGER)


def pizza_merchant(
    folder: Path,
    *,
    rows: int = 1500,
    policy: MerchantPolicy | None = None,
    node_config: dict | None = None,
    start: int = 0,
    undeclared: tuple[str, ...] = (),
) -> Merchant:
    """``undeclared``: categorical columns whose domain the schema leaves to DP discovery."""
    data = load_dataset("pizzaplace")
    schema = data.schema()
    schema = dataclasses.replace(
        schema,
        columns=tuple(
            dataclasses.replace(spec, categories=None) if spec.name in undeclared else spec
            for spec in schema.columns
        ),
    )
    folder.mkdir(parents=True, exist_ok=True)
    data.table.iloc[start : start + rows].to_csv(folder / "merchant-0.csv", index=False)
    return folder_merchant(folder, schema, policy=policy, node_config=node_config)


def folder_merchant(
    folder: Path,
    schema,
    *,
    policy: MerchantPolicy | None = None,
    node_config: dict | None = None,
) -> Merchant:
    """The real ClientApp (handlers, policy, reply guard) of the simulated merchant 0 whose
    table is ``folder/merchant-0.csv`` and whose ledger is under ``folder/state``."""
    app = make_client_app(
        data_dir=str(folder), state_dir=str(folder / "state"), policy=policy, lock_timeout=1.0
    )
    context = Context(
        run_id=1,
        node_id=1,
        node_config=node_config or {"partition-id": 0, "num-partitions": 1},
        state=RecordDict(),
        run_config={},
    )
    return Merchant(app=app, context=context, schema=schema, folder=folder)
