"""Federated vs central quality of the marginal model on real tables ("Real tables" benchmark).

For every table (``--tables``, files ``<name>.csv.gz`` in ``--data-dir``; default
``../shared/data`` from the project root, a development folder the product never reads) the
metadata is drafted as ``fedsynth metadata`` drafts it (:func:`draft_metadata`), with only the
columns ``--public name=A,B`` names declared public (default none: every range and category
list is learnt with DP). Then, on ``fedsynth benchmark``'s split and with its contender runner
(:mod:`.compare`: each contender in a fresh process), it fits the marginal model centrally
(``TabularSynthesizer``, one owner) and as 5 merchants, IID and Dirichlet over ``--target``
(``--partition`` to choose another column), through :func:`simulations.runner.run_simulation_job`,
at each ``--epsilons``. Scores: SDMetrics quality (default and all pairs) against the training
rows, TSTR/TRTR on ``--target`` against the holdout. Fit seconds: the fit call (federated:
Flower's whole run). Peak memory: the contender's process tree (Ray's processes included),
resident memory sampled from ``/proc`` every 0.2 s (:mod:`.compare.isolation`). ``--rows N``
subsamples each table first (seeded by ``--seed``).

``--gap`` instead decomposes the federated-vs-central gap in-process (the merchants' and the
server's functions without Flower, as :mod:`.marginal_replay` does): see :data:`VARIANTS`.
Not the Audit's whole report: its DCR heuristics fail on integer columns with missing values.

Run: ``python -m simulations.benchmarks.real_tables --rows 5000 --target credit_data=Status``
(the commands of BENCHMARKS.md's "Real tables" section).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import statistics
from pathlib import Path

import pandas as pd

from server.config import PROJECT_ROOT
from simulations.benchmarks import environment, markdown_table, setup_logging, write_json
from simulations.benchmarks.compare.config import (
    SETUP_LABELS,
    BenchmarkConfig,
    ContenderJob,
    contenders,
)
from simulations.benchmarks.compare.isolation import run_isolated
from simulations.benchmarks.compare.report import json_safe
from simulations.benchmarks.compare.run import split
from simulations.datasets import Dataset, load_user_dataset

logger = logging.getLogger(__name__)

TABLES = ("pizzaplace", "oj", "credit_data", "hotel_rates", "diamonds", "flights")
DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"
SCORES = ("quality", "quality_all_pairs", "tstr_trtr", "fit_seconds", "peak_rss_mb")
HEADERS = ("table", "train rows", "setup", "ε", "quality", "all pairs", "TSTR/TRTR", "fit s",
           "peak MB", "gap to central")  # fmt: skip
# The --gap variants, each adding one difference of a federation. "noise-*": all rows at one
# owner plus merchants - 1 owners without rows, i.e. the pooled counts with k merchants' noise.
VARIANTS = {
    "central": "one owner",
    "noise-marginals": "one owner's statistics; marginals with 5 merchants' summed noise",
    "noise-all": "statistics and marginals with 5 merchants' summed noise (pooled counts)",
    "iid": "5 IID merchants (summed noise, per-merchant statistics)",
    "dirichlet": "5 merchants, Dirichlet(0.5) over the target",
}


def named(values: list[str]) -> dict[str, str]:
    """``["a=x", "b=y"]`` as ``{"a": "x", "b": "y"}`` (per-table options)."""
    pairs = [v.split("=", 1) for v in values]
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected TABLE=VALUE, got {values}")
    return dict(pairs)


def draft_dataset(path: Path, *, public: list[str], target: str | None, work: Path) -> Dataset:
    """The table at ``path`` with metadata drafted from it (``public`` columns declared),
    written to ``work/metadata.json`` and read back as ``fedsynth simulate --data`` reads it."""
    from synth_models.io import read_table
    from synth_models.metadata_draft import draft_metadata

    draft = draft_metadata(read_table(path), table_name=path.name.split(".")[0])
    work.mkdir(parents=True, exist_ok=True)
    metadata_path = work / "metadata.json"
    metadata_path.write_text(json.dumps(draft.metadata(public=public), indent=1))
    dataset = load_user_dataset(path, metadata_path, target=target)
    return dataset


def benchmark_table(dataset: Dataset, args: argparse.Namespace, out: Path) -> dict:
    """The marginal model on one table, central and 5 merchants IID and Dirichlet, each
    contender fitted in its own process as ``fedsynth benchmark`` fits it, then scored."""
    partition = args.partition.get(dataset.name) or dataset.target
    federated = [s for s in args.setups if s == "iid" or (s == "dirichlet" and partition)]
    config = BenchmarkConfig(
        models=("marginal",),
        epsilons=tuple(args.epsilons),
        federated=tuple(federated) or ("none",),
        central="central" in args.setups,
        merchants=args.merchants,
        partition_column=partition,
        rows=args.rows,
        sample_rows=args.sample_rows,
        seed=args.seed,
        timeout=args.timeout,
    ).resolved()
    train, holdout = split(dataset.table, config)
    job = ContenderJob(
        config=config, dataset=dataset.name, metadata=dataset.metadata,
        table_name=dataset.table_name, target=dataset.target, partition_column=partition,
        sample_rows=config.sample_rows or len(train),
    )  # fmt: skip
    payload = {"dataset": dataset.name, "train_rows": len(train), "results": []}
    for contender in contenders(config):
        logger.info("%s: %s at ε %g", dataset.name, contender.label, contender.epsilon)
        work = out / "work" / contender.slug
        shutil.rmtree(work, ignore_errors=True)  # an earlier run's app folder fails flwr run
        synthetic, info = run_isolated(
            contender, job=job, train=train, work=work, timeout=config.timeout
        )
        record = {"setup": contender.setup, "epsilon": contender.epsilon, **info}
        if synthetic is not None:
            record.update(scores(dataset, train, holdout, synthetic, seed=config.seed))
        (out / "logs").mkdir(exist_ok=True)  # keep the log, not the run folder (merchants' rows)
        shutil.copy(work / "contender.log", out / "logs" / f"{contender.slug}.log")
        shutil.rmtree(work, ignore_errors=True)
        logger.info("%s: %s", contender.slug, {k: record.get(k) for k in SCORES})
        payload["results"].append(record)
        write_json(out / "results.json", json_safe(payload))
    return payload


def scores(dataset: Dataset, train, holdout, synthetic, *, seed: int) -> dict:
    """SDMetrics quality against ``train`` (the runner's), TSTR/TRTR against ``holdout``.
    Not the whole audit: its DCR heuristics fail on integer columns with missing values."""
    from privacy.audit.fidelity import quality_scores
    from privacy.audit.utility import utility

    out = quality_scores(train, synthetic, dataset.metadata, dataset.table_name)
    if dataset.target:
        util = utility(
            train, holdout, synthetic, target=dataset.target, metadata=dataset.metadata,
            table_name=dataset.table_name, seed=seed,
        )  # fmt: skip
        out["tstr_trtr"] = util.get("ratio")
    return out


def summary_rows(payload: dict) -> list[list[str]]:
    """One row per contender of one table's payload, with its gap to the central fit."""
    results = payload["results"]
    central = {r["epsilon"]: r.get("quality") for r in results if r["setup"] == "central"}
    rows = []
    for r in results:
        gap = central.get(r["epsilon"])
        gap = gap - r["quality"] if gap is not None and r.get("quality") is not None else None
        rows.append([
            payload["dataset"], payload["train_rows"], SETUP_LABELS[r["setup"]],
            f"{r['epsilon']:g}", _num(r.get("quality")), _num(r.get("quality_all_pairs")),
            _num(r.get("tstr_trtr"), 2), _num(r.get("fit_seconds"), 1),
            _num(r.get("peak_rss_mb"), 0), "" if r["setup"] == "central" else _num(gap),
        ])  # fmt: skip
    return rows


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# -- the gap, decomposed in-process --------------------------------------------------------
def owners(train: pd.DataFrame, variant: str, *, merchants: int, column: str | None, seed: int):
    """The owners' tables for ``variant``, and how many of them add noise to the statistics."""
    from simulations.partition import partition_table

    empty = [train.iloc[:0]] * (merchants - 1)
    if variant == "central":
        return [train], 1
    if variant == "noise-marginals":
        return [train, *empty], 1
    if variant == "noise-all":
        return [train, *empty], merchants
    spec = "iid" if variant == "iid" else f"dirichlet:{column}:0.5"
    return partition_table(train, spec, num_merchants=merchants, seed=seed), merchants


def replay(dataset: Dataset, train: pd.DataFrame, parts: list, stat_owners: int, *,
           epsilon: float, statistics_share: float, options: dict, seed: int) -> dict:  # fmt: skip
    """What the merchants and the server run for the marginal model (as ``client.merchant``
    and ``server.marginal_rounds`` do), each owner with its own ledger and secure noise; only
    the first ``stat_owners`` release encoder statistics. Scores against ``train``."""
    import torch

    from privacy.audit.fidelity import quality_scores
    from privacy.ledger import PrivacyLedger
    from privacy.statistics import merge_statistics
    from synth_models.encoder import TableEncoder
    from synth_models.marginal_fit import choose_structure, fit_structure, release_marginals
    from synth_models.marginals import MEASUREMENT, SELECTION, merge_releases
    from synth_models.synthesizer import build_model, release_encoder_statistics

    schema = dataset.schema()
    ledgers = [PrivacyLedger(epsilon_budget=epsilon, delta=1e-5, owner=f"m{i}") for i in
               range(len(parts))]  # fmt: skip
    stats = [release_encoder_statistics(p, schema, lg, epsilon=epsilon * statistics_share)
             for p, lg in list(zip(parts, ledgers, strict=True))[:stat_owners]]  # fmt: skip
    encoder = TableEncoder.from_statistics(schema, merge_statistics(stats))
    model = build_model("marginal", encoder, options)

    def release(phase: str, pairs=None):
        return merge_releases([
            release_marginals(p, model=model, ledger=lg, phase=phase, tree=pairs)
            for p, lg in zip(parts, ledgers, strict=True)
        ])  # fmt: skip

    selection = release(SELECTION)
    structure = choose_structure(model, selection)
    fit_structure(model, structure, selection, release(MEASUREMENT, structure.measured_pairs))
    synthetic = encoder.inverse_transform(
        model.generate(len(train), torch.Generator().manual_seed(seed)).numpy()
    )
    scores = quality_scores(train, synthetic, dataset.metadata, dataset.table_name)
    return {"quality": scores["quality"], "quality_all_pairs": scores["quality_all_pairs"]}


def gap_table(dataset: Dataset, args: argparse.Namespace) -> list[dict]:
    """Mean quality of every variant over ``--seeds`` (seed: partition and sampling; the DP
    noise is secure, fresh every run)."""
    config = BenchmarkConfig(rows=args.rows, seed=0, holdout=0.2)
    train, _ = split(dataset.table, config)
    column = args.partition.get(dataset.name) or dataset.target
    results = []
    for epsilon, variant in itertools.product(args.epsilons, args.variants):
        runs = []
        for seed in range(args.seeds):
            parts, stat_owners = owners(
                train, variant, merchants=args.merchants, column=column, seed=seed
            )
            runs.append(replay(
                dataset, train, parts, stat_owners, epsilon=epsilon,
                statistics_share=args.statistics_share, options=args.options, seed=seed,
            ))  # fmt: skip
        result = {
            "table": dataset.name, "variant": variant, "epsilon": epsilon,
            "options": args.options, "statistics_share": args.statistics_share,
            **{k: statistics.mean(r[k] for r in runs) for k in ("quality", "quality_all_pairs")},
            "qualities": [r["quality"] for r in runs],
        }  # fmt: skip
        logger.info("%s %s: %s", dataset.name, variant, result)
        results.append(result)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--tables", type=lambda s: s.split(","), default=list(TABLES))
    parser.add_argument("--public", nargs="*", default=[], help="TABLE=COL1,COL2 declared public")
    parser.add_argument("--target", nargs="*", default=[], help="TABLE=COLUMN for TSTR/TRTR")
    parser.add_argument("--partition", nargs="*", default=[], help="TABLE=COLUMN (Dirichlet)")
    parser.add_argument("--epsilons", type=lambda s: [float(e) for e in s.split(",")],
                        default=[1.0, 3.0])  # fmt: skip
    parser.add_argument(
        "--setups",
        type=lambda s: s.split(","),
        default=list(SETUP_LABELS),
        help="central,iid,dirichlet (Dirichlet needs a target or --partition)",
    )
    parser.add_argument("--merchants", type=int, default=5)
    parser.add_argument("--rows", type=int, default=None, help="subsample each table (seeded)")
    parser.add_argument("--sample-rows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per contender")
    parser.add_argument("--gap", action="store_true", help="decompose the gap (in-process)")
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3, help="--gap: runs per variant")
    parser.add_argument("--statistics-share", type=float, default=0.3, help="--gap")
    parser.add_argument("--options", type=json.loads, default={}, help="--gap: MarginalModel")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/real_tables"))
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.public, args.target, args.partition = map(named, (args.public, args.target,
                                                          args.partition))  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    payload = {"environment": environment(), "settings": {k: str(v) for k, v in vars(args).items()}}
    rows, gaps = [], []
    for name in args.tables:
        work = args.out / name
        dataset = draft_dataset(
            args.data_dir / f"{name}.csv.gz",
            public=[c for c in args.public.get(name, "").split(",") if c],
            target=args.target.get(name),
            work=work,
        )
        if args.gap:
            gaps += gap_table(dataset, args)
            continue
        rows += summary_rows(benchmark_table(dataset, args, work))
    if args.gap:
        print(markdown_table(
            ("table", "variant", "ε", "quality (mean)", "all pairs (mean)", "runs"),
            [[g["table"], g["variant"], f"{g['epsilon']:g}", _num(g["quality"]),
              _num(g["quality_all_pairs"]), " ".join(f"{q:.3f}" for q in g["qualities"])]
             for g in gaps],
        ))  # fmt: skip
        payload["gap"] = gaps
    else:
        print(markdown_table(HEADERS, rows))
        payload["rows"] = [dict(zip(HEADERS, r, strict=True)) for r in rows]
    write_json(args.out / ("gap.json" if args.gap else "results.json"), payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
