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

The merged DP releases (the schema round's statistics, the summed marginals) are kept in
``<run-dir>/releases/``; after the last round each merchant audits on its own rows and keeps
that report, and the server's report is scored against those releases only
(``server/evaluation.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from privacy.claims import load_or_create_key, load_private_key
from privacy.ledger import PrivacyLedger
from server.config import FederationConfig
from server.evaluation import federated_report, request_local_audits, save_local_audits
from server.marginal_rounds import ROUNDS, MarginalRounds, run_marginal_rounds
from server.prompt_grid import PromptGrid
from server.releases import clear_releases, save_marginals, save_statistics
from server.run_log import run_log
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
        ledger_documents=ledgers,  # the merchants' signed documents, verbatim
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
    rounds_trained: int | None = None,
) -> None:
    """Write the global synthesizer with where the federation stands (resume reads it),
    its manifest signed with the server's key (``server_signing_key``). ``rounds_completed``
    counts the rounds run, ``rounds_trained`` those that changed the model (default: all)."""
    synth.save(
        artifact,
        signing_key=server_signing_key(config, artifact.parent),
        federation={
            "rounds_completed": rounds_completed,
            "rounds_trained": rounds_completed if rounds_trained is None else rounds_trained,
            "num_rounds": config.num_rounds if num_rounds is None else num_rounds,
            "config": config.to_dict(),
        },
    )


def server_signing_key(config: FederationConfig, run_dir: Path):
    """The run config's ``signing-key-path``, else ``<run-dir>/server.key`` (made once)."""
    if config.signing_key_path:
        return load_private_key(config.resolve(config.signing_key_path))
    return load_or_create_key(run_dir / "server.key")


def _append_jsonl(path: Path, entry: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(entry, default=str) + "\n")


def federation_id(run_dir: Path, config: FederationConfig) -> str:
    """One id for a federation across its runs: a resumed run asks merchants for the same
    releases (round by round), and merchants answer a retried or resumed round with what they
    released before, at no new cost (``client.state.replayed_release``)."""
    if config.federation_id:
        return config.federation_id
    path = run_dir / "federation-id"
    if config.resume and path.exists():
        return path.read_text().strip()
    identity = uuid.uuid4().hex
    path.write_text(identity + "\n")
    return identity


def run_federation(grid: Grid, config: FederationConfig) -> Path:
    """Run (or resume) a whole federation; returns the artifact path."""
    run_dir = config.resolve(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(config, federation_id=federation_id(run_dir, config))
    artifact = run_dir / ARTIFACT
    metadata = load_metadata(config.resolve(config.metadata_path))
    schema = TableSchema.from_metadata(metadata, config.table_name or None)
    ledgers: dict[str, dict] = {}
    owners: dict[str, int] = {}  # merchant name -> node id, for this run
    done = trained_before = 0
    if config.resume and artifact.exists():
        manifest, weights = load_artifact(artifact)
        synth = TabularSynthesizer.from_parts(manifest, weights, source=str(artifact))
        encoder = synth.encoder_
        ledgers = dict(synth.ledger_documents_)  # as the merchants signed them
        done = int(manifest["federation"]["rounds_completed"])
        trained_before = int(manifest["federation"].get("rounds_trained", done))
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
                "federation_id": config.federation_id,
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
        clear_releases(run_dir)
        save_statistics(run_dir, merged)  # the federated report is scored against it
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
        if not done:
            marginal_federation(grid, config, metadata, encoder, artifact, run_dir, ledgers, owners)
        return finish(grid, config, artifact, run_dir, owners)

    strategy = MerchantFedAvg(
        round_offset=done,
        min_train_replies=config.min_train_replies,
        ledgers=ledgers,
        total_dp_rows=MerchantFedAvg.total_dp_rows_of(run_dir),
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
                    "federation_id": config.federation_id,
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
        trained = trained_before + sum(bool(e.get("aggregated")) for e in strategy.round_log)
        _save_checkpoint(synth, artifact, config, number, rounds_trained=trained)
        entry = strategy.round_log[-1] if strategy.round_log else {"round": number}
        entry = {
            **entry,
            "epsilon": synth.epsilon_spent if synth.ledgers_ else None,
            "seconds": time.perf_counter() - started,
        }
        _append_jsonl(run_dir / "rounds.jsonl", entry)
        outcome = "trained" if entry.get("aggregated", True) else "NOT trained (model unchanged)"
        elapsed = time.perf_counter() - started
        left = (remaining - server_round) * elapsed / server_round
        logger.info(
            "round %d/%d %s (epsilon %s, %.0f s, about %.0f s left); checkpoint %s",
            number, config.num_rounds, outcome, _eps(entry["epsilon"]), elapsed, left, artifact,
        )  # fmt: skip
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
    return finish(grid, config, artifact, run_dir, owners)


def finish(
    grid: Grid,
    config: FederationConfig,
    artifact: Path,
    run_dir: Path,
    owners: dict[str, int],
) -> Path:
    """After the last round: the synthetic sample and the federated audit, as configured."""
    if config.sample_rows:
        synthetic = TabularSynthesizer.load(artifact).sample(config.sample_rows, seed=config.seed)
        synthetic.to_csv(run_dir / "synthetic.csv", index=False)
    if config.audit:
        federated_audit(grid, config, artifact, run_dir, owners)
    return artifact


def _save_marginal_releases(
    run_dir: Path, prefix: str, rounds: MarginalRounds, max_bins: int
) -> None:
    """Keep the summed marginals the model was fitted from (the federated report's DP
    fidelity is scored against them)."""
    for phase, (release, encoder) in rounds.releases.items():
        save_marginals(run_dir, f"{prefix}-{phase}", release, encoder, max_bins)


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
            "federation_id": config.federation_id,
        },
        min_replies=config.min_train_replies,
        min_nodes=config.min_nodes,
        timeout=config.round_timeout,
        ledgers=ledgers,
        owners=owners,
    )
    _save_marginal_releases(run_dir, "marginals", rounds, model.max_bins)
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
            "federation_id": config.federation_id,
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
    _save_marginal_releases(run_dir, "warm-start", rounds, marginal.max_bins)
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
) -> Path:
    """Merchants audit the final synthesizer on their own rows and keep their reports; the
    server's report holds only DP releases it already has and the ledgers."""
    from privacy.report import write_federated_report

    document = {
        "seed": config.seed,
        "target": config.target or None,
        "sensitive": [c.strip() for c in config.sensitive_columns.split(",") if c.strip()],
        "sample_rows": config.audit_rows,
    }
    states = request_local_audits(
        grid,
        artifact=artifact,
        document=document,
        min_nodes=config.min_nodes,
        timeout=config.round_timeout,
        owners=owners,
    )
    save_local_audits(run_dir, states)
    report = federated_report(
        run_dir, artifact, local_audits=states, sample_rows=config.audit_rows, seed=config.seed
    )
    html, _ = write_federated_report(
        report, run_dir / "report", title=f"fedsynth audit: {run_dir.name}"
    )
    audited = sorted(m for m, state in states.items() if state == "ok")
    logger.info("audit: local reports by %s; federated report %s", audited or "nobody", html)
    return html


def _eps(epsilon: float | None) -> str:
    return "n/a" if epsilon is None else f"{epsilon:.4f}"


def make_server_app() -> ServerApp:
    """The ServerApp: its settings are the run config (``[tool.flwr.app.config]``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = FederationConfig.from_run_config(dict(context.run_config))
        with run_log(config.resolve(config.run_dir)):
            run_federation(PromptGrid(grid), config)

    return app


app = make_server_app()
