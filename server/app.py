"""The federation's Flower ServerApp.

1. Schema round: merchants release DP statistics; their sum builds the shared encoder.
2. Training rounds (FedAvg weighted by DP row counts, ``MerchantFedAvg``): merchants train
   locally with DP-SGD and return weights and their ledgers.
3. After every round the global synthesizer (weights, encoder, every merchant's ledger, the
   round) is written atomically to ``<run-dir>/synthesizer``; ``resume = true`` continues from
   it, skipping the schema round and keeping the ledgers.

The marginal model (``model = "marginal"``) replaces step 2 by two rounds of noisy marginals
(``server/marginal_rounds.py``) and is checkpointed once, fitted. The GAN and the VAE run the
same two rounds first, at ``warm-start-share`` of the budget, and start training from a network
the server fits to that marginal model's rows (``synth_models/warm_start.py``); the warm-started
weights are checkpointed as round 0.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from privacy.ledger import PrivacyLedger
from server.config import FederationConfig
from server.evaluation import collect_audits, combine, failures, rounds_epsilon
from server.marginal_rounds import ROUNDS, run_marginal_rounds
from server.schema_round import schema_round
from server.strategy import MerchantFedAvg
from synth_models.artifact import load_artifact
from synth_models.encoder import TableEncoder
from synth_models.federation import DOCUMENT_KEY, dumps
from synth_models.io import load_metadata
from synth_models.schema import TableSchema
from synth_models.synthesizer import TabularSynthesizer, build_model
from synth_models.warm_start import (
    marginal_for_warm_start,
    network_encoder,
    uses_warm_start,
    warm_start,
    warm_start_target,
)

logger = logging.getLogger(__name__)
ARTIFACT = "synthesizer"


def _synthesizer(
    config: FederationConfig, metadata: dict, encoder, weights, ledgers: dict[str, dict]
) -> TabularSynthesizer:
    return TabularSynthesizer.from_fitted(
        metadata,
        model=config.model,
        encoder=encoder,
        weights=weights,
        ledgers={m: PrivacyLedger.from_state_dict(s) for m, s in ledgers.items()},
        epsilon=config.epsilon,
        statistics_share=config.statistics_share,
        training=config.training(),
        model_options=config.model_options,
    )


def _save_checkpoint(
    synth: TabularSynthesizer,
    artifact: Path,
    config: FederationConfig,
    rounds_completed: int,
    *,
    num_rounds: int | None = None,
) -> None:
    """Write the global synthesizer with where the federation stands (resume reads it)."""
    synth.save(
        artifact,
        federation={
            "rounds_completed": rounds_completed,
            "num_rounds": config.num_rounds if num_rounds is None else num_rounds,
            "config": config.to_dict(),
        },
    )


def _append_jsonl(path: Path, entry: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(entry, default=str) + "\n")


def run_federation(grid: Grid, config: FederationConfig) -> Path:
    """Run (or resume) a whole federation; returns the artifact path."""
    run_dir = config.resolve(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    artifact = run_dir / ARTIFACT
    metadata = load_metadata(config.resolve(config.metadata_path))
    schema = TableSchema.from_metadata(metadata, config.table_name or None)
    ledgers: dict[str, dict] = {}
    owners: dict[str, int] = {}  # merchant name -> node id, for this run
    done = 0
    if config.resume and artifact.exists():
        manifest, weights = load_artifact(artifact)
        synth = TabularSynthesizer.from_parts(manifest, weights, source=str(artifact))
        encoder = synth.encoder_
        ledgers = {m: lg.state_dict() for m, lg in synth.ledgers_.items()}
        done = int(manifest["federation"]["rounds_completed"])
        logger.info("resuming from %s after round %d", artifact, done)
    else:
        encoder, merged, outcome = schema_round(
            grid,
            schema=schema,
            document={
                "epsilon": config.epsilon,
                "delta": config.delta,
                "statistics_share": config.statistics_share,
                "seed": config.seed,
            },
            min_replies=config.min_train_replies,
            min_nodes=config.min_nodes,
            timeout=config.round_timeout,
            ledgers=ledgers,
            owners=owners,
        )
        _append_jsonl(
            run_dir / "rounds.jsonl",
            {"round": 0, "merchants": outcome, "dp_rows": merged.row_count},
        )
        if uses_warm_start(config.model, config.training(), schema):
            encoder, weights = warm_start_federation(
                grid, config, encoder, merged.row_count, run_dir, ledgers, owners
            )
            _save_checkpoint(
                _synthesizer(config, metadata, encoder, weights, ledgers), artifact, config, 0
            )
        else:
            torch.manual_seed(config.seed)
            weights = build_model(config.model, encoder, config.model_options).state_dict()

    if config.model == "marginal":
        round_log = (
            []
            if done
            else marginal_federation(
                grid, config, metadata, encoder, artifact, run_dir, ledgers, owners
            )
        )
        return finish(grid, config, artifact, run_dir, owners, round_log)

    strategy = MerchantFedAvg(
        round_offset=done,
        min_train_replies=config.min_train_replies,
        ledgers=ledgers,
        min_available_nodes=config.min_nodes,
        min_train_nodes=config.min_nodes,
    )
    strategy.owners = owners
    train_config = ConfigRecord(
        {
            DOCUMENT_KEY: dumps(
                {
                    "schema": schema.to_dict(),
                    "encoder": encoder.to_dict(),
                    "model": config.model,
                    "model_options": config.model_options,
                    "training": config.training().to_dict(),
                    "num_rounds": config.num_rounds,
                    "seed": config.seed,
                    "epsilon": config.epsilon,
                    "delta": config.delta,
                }
            )
        }
    )
    started = time.perf_counter()

    def checkpoint(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        number = server_round + done
        synth = _synthesizer(
            config, metadata, encoder, arrays.to_torch_state_dict(), strategy.ledgers
        )
        _save_checkpoint(synth, artifact, config, number)
        entry = strategy.round_log[-1] if strategy.round_log else {"round": number}
        entry = {
            **entry,
            "epsilon": synth.epsilon_spent if synth.ledgers_ else None,
            "seconds": time.perf_counter() - started,
        }
        _append_jsonl(run_dir / "rounds.jsonl", entry)
        logger.info("round %d/%d done; checkpoint %s", number, config.num_rounds, artifact)
        for merchant, result in sorted(entry.get("merchants", {}).items()):
            details = ", ".join(
                f"{k} {v:.4g}" for k, v in result.items() if k == "epsilon" or k.endswith("loss")
            )
            logger.info("  %s: %s %s", merchant, result["state"], details or result.get("reason"))
        return None

    last = min(config.num_rounds, config.stop_after_round or config.num_rounds)
    remaining = last - done
    if remaining > 0:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(weights),
            num_rounds=remaining,
            timeout=config.round_timeout,
            train_config=train_config,
            evaluate_fn=checkpoint,
        )
    elif not artifact.exists():
        _save_checkpoint(
            _synthesizer(config, metadata, encoder, weights, ledgers), artifact, config, done
        )
    return finish(grid, config, artifact, run_dir, owners, strategy.round_log)


def finish(
    grid: Grid,
    config: FederationConfig,
    artifact: Path,
    run_dir: Path,
    owners: dict[str, int],
    round_log: list[dict],
) -> Path:
    """After the last round: the synthetic sample and the federated audit, as configured."""
    if config.sample_rows:
        synthetic = TabularSynthesizer.load(artifact).sample(config.sample_rows, seed=config.seed)
        synthetic.to_csv(run_dir / "synthetic.csv", index=False)
    if config.audit:
        federated_audit(grid, config, artifact, run_dir, owners, round_log)
    return artifact


def marginal_federation(
    grid: Grid,
    config: FederationConfig,
    metadata: dict,
    encoder,
    artifact: Path,
    run_dir: Path,
    ledgers: dict[str, dict],
    owners: dict[str, int],
) -> list[dict]:
    """The marginal model's rounds, logged and checkpointed like training rounds."""
    started = time.perf_counter()
    model = build_model(config.model, encoder, config.model_options)
    rounds = run_marginal_rounds(
        grid,
        encoder=encoder,
        model=model,
        document={
            "model": config.model,
            "model_options": config.model_options,
            "epsilon": config.epsilon,
            "delta": config.delta,
            "seed": config.seed,
        },
        min_replies=config.min_train_replies,
        min_nodes=config.min_nodes,
        timeout=config.round_timeout,
        ledgers=ledgers,
        owners=owners,
    )
    synth = _synthesizer(config, metadata, encoder, rounds.weights, ledgers)
    _save_checkpoint(synth, artifact, config, len(ROUNDS), num_rounds=len(ROUNDS))
    _log_marginal_rounds(run_dir, rounds.round_log, started)
    logger.info(
        "marginal model fitted (epsilon %.4f); checkpoint %s", synth.epsilon_spent, artifact
    )
    return rounds.round_log


def warm_start_federation(
    grid: Grid,
    config: FederationConfig,
    encoder: TableEncoder,
    dp_rows: float,
    run_dir: Path,
    ledgers: dict[str, dict],
    owners: dict[str, int],
) -> tuple[TableEncoder, dict[str, torch.Tensor]]:
    """The GAN's or VAE's warm start: the marginal model's two rounds up to the warm start's
    share of every merchant's budget, then the network trained here on the fitted marginal
    model's rows (post-processing). Returns the encoder the training rounds use
    (``network_encoder``) and the network's weights."""
    started = time.perf_counter()
    training = config.training()
    marginal = marginal_for_warm_start(encoder)
    rounds = run_marginal_rounds(
        grid,
        encoder=marginal.encoder,
        model=marginal,
        document={
            "model": "marginal",
            "model_options": {},
            "epsilon": config.epsilon,
            "delta": config.delta,
            "seed": config.seed,
            "target_epsilon": warm_start_target(
                config.epsilon, statistics_share=config.statistics_share, config=training
            ),
        },
        min_replies=config.min_train_replies,
        min_nodes=config.min_nodes,
        timeout=config.round_timeout,
        ledgers=ledgers,
        owners=owners,
    )
    _log_marginal_rounds(
        run_dir,
        [{**e, "round": 0, "phase": f"warm start {e['phase']}"} for e in rounds.round_log],
        started,
    )
    encoder = network_encoder(marginal)
    torch.manual_seed(config.seed)
    network = build_model(config.model, encoder, config.model_options)
    warm_start(network, encoder, marginal, num_rows=dp_rows, config=training, seed=config.seed)
    logger.info("warm start done in %.1f s", time.perf_counter() - started)
    return encoder, network.state_dict()


def _log_marginal_rounds(run_dir: Path, round_log: list[dict], started: float) -> None:
    for entry in round_log:
        _append_jsonl(
            run_dir / "rounds.jsonl",
            {
                **entry,
                "epsilon": max(
                    (r["epsilon"] for r in entry["merchants"].values() if "epsilon" in r),
                    default=None,
                ),
                "seconds": time.perf_counter() - started,
            },
        )


def federated_audit(
    grid: Grid,
    config: FederationConfig,
    artifact: Path,
    run_dir: Path,
    owners: dict[str, int],
    round_log: list[dict],
) -> Path | None:
    """Merchants audit the final synthesizer on their own rows; the server writes the report."""
    from privacy.report import write_report

    document = {
        "seed": config.seed,
        "target": config.target or None,
        "sensitive": [c.strip() for c in config.sensitive_columns.split(",") if c.strip()],
        "sample_rows": config.audit_rows,
    }
    audits, outcome = collect_audits(
        grid,
        artifact=artifact,
        document=document,
        min_nodes=config.min_nodes,
        timeout=config.round_timeout,
        owners=owners,
    )
    if not audits:
        logger.warning("audit: no merchant returned an audit: %s", outcome)
        return None
    rows = {
        m: r["num-examples"]
        for entry in round_log
        for m, r in entry["merchants"].items()
        if "num-examples" in r
    }  # DP row counts, latest round last
    synth = TabularSynthesizer.load(artifact)
    report = {
        **combine(audits, rows),
        "claimed": {
            "epsilon": synth.epsilon_spent,
            "delta": max((lg.delta for lg in synth.ledgers_.values()), default=None),
        },
        "ledgers": {m: lg.state_dict() for m, lg in synth.ledgers_.items()},
        "rounds": rounds_epsilon(run_dir),
        "merchants": audits,
        "failures": failures(run_dir, outcome),
    }
    html, _ = write_report(report, run_dir / "report", title=f"fedsynth audit: {run_dir.name}")
    logger.info("audit: %d merchant(s) audited; report %s", len(audits), html)
    return html


def make_server_app(overrides: dict | None = None) -> ServerApp:
    """A ServerApp whose settings are the run config with ``overrides`` on top (simulations
    started with ``run_simulation`` have an empty run config)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = FederationConfig.from_run_config({**context.run_config, **(overrides or {})})
        run_federation(grid, config)

    return app


app = make_server_app()
