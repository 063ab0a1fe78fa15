"""Federated audit: merchants audit on their own rows and keep it; the server reports DP only.

After the last round every merchant is sent the final synthesizer (``evaluate``) and writes its
full audit (fidelity, utility, attacks on its own rows) into a local report that never leaves
it. The server records who audited (the reply's state, nothing else) and builds its own report
from what it already holds under DP: the merged releases in ``<run-dir>/releases/`` (a
synthetic sample scored against them: post-processing) and the merchants' ledgers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from privacy.audit.dp_fidelity import DP_LABEL, column_fidelity, summarize, table_fidelity
from privacy.statistics import TableStatistics, release_statistics
from server.releases import MarginalsRecord, load_releases
from server.schema_round import wait_for_nodes
from server.strategy import sort_replies
from synth_models.artifact import load_artifact
from synth_models.encoder import TableEncoder, statistics_inputs
from synth_models.federation import CONFIG, DOCUMENT_KEY, FAILED, OK, REFUSED, dumps
from synth_models.marginals import column_domains, count_marginals, discretize
from synth_models.schema import TableSchema
from synth_models.synthesizer import TabularSynthesizer

logger = logging.getLogger(__name__)
LOCAL_AUDITS = "local-audits.json"  # in the run folder: each merchant's audit state
LABELS = {
    "dp_fidelity": DP_LABEL,
    "claimed": "the synthesizer's guarantee: the largest epsilon over the merchants' ledgers",
    "ledgers": "each merchant's DP mechanisms (noise multiplier, sample rate, steps)",
    "verification": "signatures of the server's manifest and each merchant's ledger claim",
    "rounds": "epsilon each merchant had spent after each round",
    "failures": "merchants that failed or refused a round (for the audit: the state only)",
    "merchants": (
        "who wrote its local audit report: fidelity, utility and attacks on the merchant's own "
        "rows are the merchant's local view, kept by it and never sent to the server"
    ),
    "encoder_notes": (
        "columns the merged DP statistics could not describe, as the encoder found them "
        "(post-processing of the DP statistics release)"
    ),
}


def request_local_audits(
    grid: Grid,
    *,
    artifact: Path,
    document: dict,
    min_nodes: int,
    timeout: float,
    owners: dict[str, int],
) -> dict[str, str]:
    """Send the final synthesizer to every merchant, which audits it on its own rows into its
    local report; each merchant's state (ok, refused, failed), nothing else from the replies."""
    manifest, weights = load_artifact(artifact)
    content = {
        **document,
        "schema": manifest["encoder"]["schema"],
        "encoder": manifest["encoder"],
        "metadata": manifest["metadata"],
        "model": manifest["model"],
        "model_options": manifest["model_options"],
    }
    messages = [
        Message(
            RecordDict(
                {
                    "arrays": ArrayRecord(weights),
                    CONFIG: ConfigRecord({DOCUMENT_KEY: dumps(content)}),
                }
            ),
            message_type="evaluate",
            dst_node_id=node,
        )
        for node in wait_for_nodes(grid, min_nodes, timeout)
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    _, outcome = sort_replies(replies, {}, owners, sent_to)
    return {merchant: _state(result.get("state")) for merchant, result in outcome.items()}


def _state(value) -> str:
    return value if value in (OK, REFUSED, FAILED) else FAILED


def save_local_audits(run_dir: Path, states: dict[str, str]) -> None:
    (run_dir / LOCAL_AUDITS).write_text(json.dumps(states, indent=1, sort_keys=True))


def load_local_audits(run_dir: Path) -> dict[str, str]:
    path = run_dir / LOCAL_AUDITS
    return json.loads(path.read_text()) if path.exists() else {}


def synthetic_statistics(synthetic: pd.DataFrame, schema: TableSchema) -> TableStatistics:
    """The statistics the schema round releases, computed exactly (no noise) on synthetic rows:
    the same categories and grid bins as the DP release."""
    stats, _ = release_statistics(
        statistics_inputs(synthetic, schema, source="synthetic sample"),
        noise_multiplier=0.0,
        threshold_delta=0.0,
    )
    return stats


def marginal_fidelity(record: MarginalsRecord, synthetic: pd.DataFrame) -> dict:
    """The synthetic rows' count tables on the release's cliques and domains, scored against
    the release's noisy tables."""
    domains = column_domains(record.encoder, max_bins=record.max_bins)
    codes = discretize(synthetic, record.encoder, domains, source="synthetic sample")
    release = record.release
    counts = count_marginals(codes, [d.size for d in domains], release.cliques)
    names = ["|".join(domains[j].name for j in clique) for clique in release.cliques]
    for name, noisy, synthetic_counts in zip(names, release.tables, counts, strict=True):
        if noisy.shape != synthetic_counts.shape:
            raise ValueError(f"{name}: the release's table does not fit its domains")
    return table_fidelity(
        dict(zip(names, release.tables, strict=True)),
        dict(zip(names, counts, strict=True)),
        noise_var=release.noise_var,
        contributors=release.contributors,
    )


def release_fidelity(
    statistics: TableStatistics | None,
    marginals: dict[str, MarginalsRecord],
    synthetic: pd.DataFrame,
    schema: TableSchema,
) -> dict:
    """Fidelity of ``synthetic`` against the DP releases the server holds (post-processing)."""
    blocks = {}
    if statistics is not None:
        blocks["statistics"] = column_fidelity(statistics, synthetic_statistics(synthetic, schema))
    for name, record in marginals.items():
        blocks[name] = marginal_fidelity(record, synthetic)
    return summarize(blocks)


def federated_report(
    run_dir: Path,
    artifact: Path,
    *,
    local_audits: dict[str, str],
    sample_rows: int,
    seed: int,
) -> dict:
    """The server's report document: fidelity against the persisted DP releases, the columns
    the DP statistics could not describe, the claim, the ledgers, epsilon per round, failures
    and who audited locally. Nothing in it was computed on a real row outside a DP release."""
    synth = TabularSynthesizer.load(artifact)
    statistics, marginals = load_releases(run_dir)
    if statistics is None and not marginals:
        logger.warning("audit: no DP releases in %s: no DP fidelity", run_dir / "releases")
    synthetic = synth.sample(sample_rows, seed=seed)
    return {
        "kind": "federated",
        "labels": LABELS,
        "dp_fidelity": release_fidelity(statistics, marginals, synthetic, synth.encoder_.schema),
        "encoder_notes": encoder_notes(synth.encoder_, statistics),
        "claimed": {
            "epsilon": synth.epsilon_spent,
            "delta": max((lg.delta for lg in synth.ledgers_.values()), default=None),
        },
        "ledgers": {m: lg.state_dict() for m, lg in synth.ledgers_.items()},
        # The artifact's signatures, as ``fedsynth verify`` checks them (without pinned keys).
        "verification": _verification(synth),
        "rounds": rounds_epsilon(run_dir),
        "failures": failures(run_dir, {m: {"state": s} for m, s in local_audits.items()}),
        "merchants": {
            m: {"state": s, "local_report": s == OK} for m, s in sorted(local_audits.items())
        },
    }


def encoder_notes(encoder: TableEncoder, statistics: TableStatistics | None) -> dict[str, str]:
    """What the DP statistics could not describe, by column: the notes of the encoder the
    schema round built from the statistics release (what its run log said), then the
    artifact encoder's own. Both are post-processing of DP releases. The statistics' notes
    are re-derived because a later re-binning of numeric columns (the marginal model's, from
    the selection release) builds new transforms without them."""
    notes = {}
    if statistics is not None:
        notes.update(TableEncoder.from_statistics(encoder.schema, statistics).notes)
    notes.update(encoder.notes)
    return notes


def _verification(synth: TabularSynthesizer) -> dict:
    found = synth.verification
    if found is None:
        return {"status": "unsigned", "server": "unsigned", "merchants": {}}
    return {
        "status": found.status,
        "server": found.server,
        "merchants": {name: check.status for name, check in found.ledgers.items()},
        "problems": list(found.problems),
    }


def rounds_epsilon(run_dir: Path) -> list[dict]:
    """Epsilon per merchant per round, from the run's rounds log."""
    path = run_dir / "rounds.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        eps = {
            m: r["epsilon"]
            for m, r in entry.get("merchants", {}).items()
            if isinstance(r.get("epsilon"), int | float)
        }
        if entry.get("round", 0) > 0:
            rows.append({"round": entry["round"], "epsilon": eps})
    return rows


def failures(run_dir: Path, audit_outcome: dict) -> list[dict]:
    found = []
    path = run_dir / "rounds.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    entries.append({"round": "audit", "merchants": audit_outcome})
    for entry in entries:
        for merchant, result in entry.get("merchants", {}).items():
            if result.get("state") != OK:
                found.append(
                    {
                        "round": entry.get("round"),
                        "merchant": merchant,
                        "state": result.get("state"),
                        "reason": result.get("reason"),
                    }
                )
    return found
