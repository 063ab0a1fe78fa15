"""The attacker's ServerApp (``tests/security/test_adversarial_server.py``), as someone in the
server's seat would write it: plain ``grid.send_and_receive`` with requests of its own making,
no fedsynth server code. Shipped in an app folder (``simulations.engine.write_app``) and run
with ``flwr run`` against the real ClientApp; its inputs come from the run config
(``results-path``, ``attack-schema``, ``attack-metadata``) and it writes every reply to
``results-path``."""

from __future__ import annotations

import json
import math
import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from privacy.statistics import TableStatistics
from synth_models.encoder import TableEncoder
from synth_models.federation import CONFIG, DOCUMENT_KEY, STATISTICS, dumps, loads
from synth_models.schema import TableSchema
from synth_models.synthesizer import build_model

MERCHANTS = 2
CARD = "SECRET-CARD-4111-1111-1111-1111"
app = ServerApp()


def _docs(reply: Message) -> dict:
    if reply.has_error():
        return {"error": reply.error.reason}
    out = {name: loads(str(r[DOCUMENT_KEY])) for name, r in reply.content.config_records.items()}
    out["records"] = sorted(reply.content.keys())
    return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    schema = json.loads(str(context.run_config["attack-schema"]))
    metadata = json.loads(str(context.run_config["attack-metadata"]))
    while len(nodes := sorted(grid.get_node_ids())) < MERCHANTS:
        time.sleep(0.5)
    results: dict[str, list] = {}

    def ask(name: str, message_type: str, document: dict, arrays=None) -> list[dict]:
        content = RecordDict({CONFIG: ConfigRecord({DOCUMENT_KEY: dumps(document)})})
        if arrays is not None:
            content["arrays"] = ArrayRecord(arrays)
        messages = [Message(content, message_type=message_type, dst_node_id=node) for node in nodes]
        replies = [_docs(r) for r in grid.send_and_receive(messages, timeout=600)]
        results.setdefault(name, []).extend(replies)
        return replies

    stats = {"epsilon": 1.0, "delta": 1e-5, "statistics_share": 0.05, "seed": 0}
    # 1. Replay the seed: the very same request twice, as a seed-replaying attacker would.
    first = ask("replay", "query.statistics", {**stats, "schema": schema})
    ask("replay", "query.statistics", {**stats, "schema": schema})
    # 2. Crafted schemas probing values: a narrow range, a guessed category.
    narrow = json.loads(json.dumps(schema))
    next(c for c in narrow["columns"] if c["name"] == "price")["bounds"] = [0.0, 20.0]
    ask("crafted-schema", "query.statistics", {**stats, "schema": narrow})
    guessed = json.loads(json.dumps(schema))
    next(c for c in guessed["columns"] if c["name"] == "name")["categories"] = [CARD]
    ask("crafted-schema", "query.statistics", {**stats, "schema": guessed})
    # 3. Marginals of any shape, on an encoder built from the merchants' own releases.
    merged = TableStatistics.from_dict(first[0][STATISTICS])
    encoder = TableEncoder.from_statistics(TableSchema.from_dict(schema), merged)
    base = {"schema": schema, "encoder": encoder.to_dict(), "model": "marginal",
            "model_options": {}, "epsilon": 1.0, "delta": 1e-5, "seed": 0,
            "target_epsilon": 0.3}  # fmt: skip
    ask("marginals", "query.marginals", {**base, "phase": "selection"})
    ask("marginals-odd", "query.marginals", {**base, "phase": "measurement",
                                             "tree": [[0, 1, 2], [0, 99]]})  # fmt: skip
    ask("marginals-odd", "query.marginals", {**base, "phase": "everything"})
    # An encoder whose domain holds only a guessed value: does any row hold it?
    probe = json.loads(json.dumps(encoder.to_dict()))
    probe["transforms"]["month"].update(categories=[99], frequencies=[1.0])
    ask("encoder-probe", "query.marginals", {**base, "encoder": probe, "phase": "selection"})
    # 4. The audit, again and again, on weights of the attacker's choosing.
    network = build_model("vae", encoder, {})
    audit = {"schema": schema, "encoder": encoder.to_dict(), "metadata": metadata,
             "model": "vae", "model_options": {}, "seed": 0, "target": "type",
             "sensitive": [], "sample_rows": 300}  # fmt: skip
    for _ in range(2):
        ask("evaluate", "evaluate", audit, arrays=network.state_dict())
    # 5. Spend the budget, then ask for exact (epsilon = inf) and weak (delta = 0.5)
    # releases from the spent ledger.
    ask("spend", "query.marginals",
        {**base, "phase": "measurement", "tree": [[0, 1]], "target_epsilon": 1.0})  # fmt: skip
    ask("spent", "query.statistics", {**stats, "schema": schema})
    ask("spent-inf", "query.statistics",
        {**stats, "epsilon": math.inf, "schema": schema})  # fmt: skip
    ask("spent-delta", "query.statistics", {**stats, "delta": 0.5, "schema": schema})
    with open(str(context.run_config["results-path"]), "w") as out:
        json.dump(results, out, default=str)
