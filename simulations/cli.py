"""The ``fedsynth`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

from simulations.datasets import DATASETS, Dataset, load_dataset, load_user_dataset

logger = logging.getLogger("fedsynth")


def _dataset(args: argparse.Namespace) -> Dataset:
    if args.data:
        if not args.metadata:
            raise SystemExit("--data needs --metadata (an SDV metadata JSON)")
        return load_user_dataset(args.data, args.metadata, target=args.target)
    return load_dataset(args.dataset)


def _run_dir(out: str | None, label: str) -> Path:
    path = Path(out) if out else Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _log_to(run_dir: Path, verbose: bool) -> None:
    handlers = [logging.StreamHandler(sys.stderr), logging.FileHandler(run_dir / "run.log")]
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    for noisy in ("opacus", "matplotlib", "PIL", "rdt", "sdv", "sdmetrics", "copulas"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Flower prints to the console itself; its records go to the run log once, not twice.
    flower = logging.getLogger("flwr")
    flower.propagate = False
    flower.addHandler(handlers[1])


def _epsilon(text: str) -> float:
    return math.inf if text.lower() in ("inf", "infinity", "none") else float(text)


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default="pizzaplace",
        help="embedded dataset (default: pizzaplace)",
    )
    parser.add_argument("--data", help="your own table (CSV or Parquet) instead")
    parser.add_argument("--metadata", help="SDV metadata JSON for --data")
    parser.add_argument("--target", help="target column for utility metrics")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=("marginal", "vae", "gan"), default="marginal")
    parser.add_argument(
        "--epsilon",
        type=_epsilon,
        default=1.0,
        help="privacy budget per data owner ('inf' disables DP)",
    )
    parser.add_argument(
        "--delta", type=float, default=None, help="default: a power of ten below 1/(10 n)"
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit one DP synthesizer on one table, write artifact, sample and audit scores."""
    from privacy.audit import quality_scores
    from privacy.report import LOCAL_VIEW
    from synth_models.synthesizer import TabularSynthesizer
    from synth_models.training import TrainingConfig

    dataset = _dataset(args)
    run_dir = _run_dir(args.out, f"fit-{dataset.name}-{args.model}")
    _log_to(run_dir, args.verbose)
    config = TrainingConfig(epochs=args.epochs, batch_size=args.batch_size)
    logger.info(
        "fitting %s on %s (%d rows), epsilon=%s",
        args.model,
        dataset.name,
        len(dataset.table),
        args.epsilon,
    )
    synth = TabularSynthesizer(
        dataset.metadata,
        model=args.model,
        epsilon=args.epsilon,
        delta=args.delta,
        training=config,
        seed=args.seed,
    )

    def progress(epoch: int, summary: dict) -> None:
        losses = " ".join(f"{k}={v:.4f}" for k, v in summary.items() if k != "epoch")
        logger.info("epoch %d/%d %s", epoch + 1, config.epochs, losses)

    started = time.perf_counter()
    synth.fit(dataset.table, source=dataset.name, on_epoch=progress)
    fit_seconds = time.perf_counter() - started
    synth.save(run_dir / "synthesizer")
    synthetic = synth.sample(args.rows or len(dataset.table), seed=args.seed)
    synthetic.to_csv(run_dir / "synthetic.csv", index=False)
    # The owner's local view (exact row count, scores on its rows): beside the artifact, never
    # in it, since the synthesizer is what gets shared.
    audit = {
        "view": LOCAL_VIEW,
        "dataset": dataset.name,
        "rows": len(dataset.table),
        "fit_seconds": fit_seconds,
        "privacy": synth.manifest()["privacy"],
        **quality_scores(dataset.table, synthetic, dataset.metadata, dataset.table_name),
    }
    (run_dir / "audit.json").write_text(json.dumps(audit, indent=1, default=str))
    (run_dir / "config.json").write_text(json.dumps(vars(args), indent=1, default=str))
    (run_dir / "history.json").write_text(json.dumps(synth.history_, indent=1))
    logger.info(
        "epsilon spent %.4f (delta %g); quality %.3f, diagnostic %.3f; fit %.1f s",
        synth.epsilon_spent,
        audit["privacy"]["delta"] or float("nan"),
        audit["quality"],
        audit["diagnostic"],
        fit_seconds,
    )
    print(f"run folder: {run_dir}")
    return 0


def _default_partition(dataset: Dataset) -> str:
    if dataset.natural_partition:
        return f"natural:{dataset.natural_partition}"
    return f"dirichlet:{dataset.target}:0.5" if dataset.target else "iid"


def cmd_simulate(args: argparse.Namespace) -> int:
    """Federated simulation: merchants train locally with DP-SGD, a Flower server averages."""
    from simulations.runner import SimulationSettings, run_simulation_job

    dataset = _dataset(args)
    run_dir = _run_dir(args.out, f"simulate-{dataset.name}-{args.model}")
    _log_to(run_dir, args.verbose)
    partition = args.partition or _default_partition(dataset)
    federation = {
        "model": args.model,
        "epsilon": args.epsilon,
        "delta": args.delta if args.delta is not None else 1e-5,
        "num-rounds": args.rounds,
        "local-epochs": args.local_epochs,
        "batch-size": args.batch_size,
        "min-train-replies": args.min_train_replies,
        "resume": args.resume,
    }
    merchants = (
        0 if partition.startswith("natural:") and args.merchants is None else (args.merchants or 5)
    )
    settings = SimulationSettings(
        merchants=merchants or None,
        partition=partition,
        holdout=args.holdout,
        seed=args.seed,
        federation=federation,
    )
    logger.info(
        "simulating %d merchants (%s) on %s: %s, epsilon=%s, %d rounds x %d local epochs",
        merchants,
        partition,
        dataset.name,
        args.model,
        args.epsilon,
        args.rounds,
        args.local_epochs,
    )
    summary = run_simulation_job(dataset, settings, run_dir)
    rounds = summary["rounds"]
    if (rounds["rounds_trained"] or 0) < (rounds["num_rounds"] or 0):
        logger.warning(
            "only %s of %s rounds trained the model (merchants refused or failed: see %s)",
            rounds["rounds_trained"],
            rounds["num_rounds"],
            run_dir / "rounds.jsonl",
        )
    logger.info(
        "finished in %.0f s: epsilon %.4f (max over merchants), quality %.3f "
        "(all pairs %.3f), diagnostic %.3f",
        summary["simulation_seconds"],
        summary["epsilon"],
        summary["quality"],
        summary["quality_all_pairs"],
        summary["diagnostic"],
    )
    print(f"run folder: {run_dir}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Audit report for a simulation run folder, or for one real table and its synthetic data."""
    from privacy.audit import audit_table
    from privacy.report import write_report
    from synth_models.io import load_metadata, read_table
    from synth_models.synthesizer import TabularSynthesizer

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.run:
        html = audit_run_folder(Path(args.run), out=args.out)
    else:
        if not (args.real and args.metadata and (args.synthetic or args.synthesizer)):
            raise SystemExit(
                "give a run folder, or --real, --metadata and --synthetic or --synthesizer"
            )
        metadata = load_metadata(args.metadata)
        table_name = next(iter(metadata["tables"]))
        real = read_table(args.real)
        holdout = read_table(args.holdout) if args.holdout else real.iloc[:0]
        claimed = {}
        if args.synthesizer:
            synth = TabularSynthesizer.load(args.synthesizer)
            synthetic = synth.sample(len(real), seed=0)
            claimed = {
                "epsilon": synth.epsilon_spent,
                "delta": max((lg.delta for lg in synth.ledgers_.values()), default=None),
            }
        else:
            synthetic = read_table(args.synthetic)
        audit = audit_table(
            real,
            holdout,
            synthetic,
            metadata,
            table_name,
            target=args.target,
            delta=claimed.get("delta"),
            claimed_epsilon=claimed.get("epsilon"),
        )
        audit["claimed"] = claimed
        html, _ = write_report(audit, Path(args.out or "audit-report"))
    print(f"report: {html}")
    return 0


def audit_run_folder(run_dir: Path, *, out: str | None) -> Path:
    """The federated (DP-only) report of a run folder, recomputed from what its server kept:
    the DP releases in ``releases/``, the ledgers, the rounds log and who audited locally."""
    from privacy.report import write_federated_report
    from server.app import ARTIFACT
    from server.evaluation import federated_report, load_local_audits
    from synth_models.artifact import load_artifact

    manifest, _ = load_artifact(run_dir / ARTIFACT)
    config = manifest.get("federation", {}).get("config", {})
    report = federated_report(
        run_dir,
        run_dir / ARTIFACT,
        local_audits=load_local_audits(run_dir),
        sample_rows=int(config.get("audit_rows", 20_000)),
        seed=int(config.get("seed", 0)),
    )
    html, _ = write_federated_report(
        report, Path(out) if out else run_dir / "report", title=f"fedsynth audit: {run_dir.name}"
    )
    return html


def cmd_sample(args: argparse.Namespace) -> int:
    from synth_models.synthesizer import TabularSynthesizer

    synth = TabularSynthesizer.load(args.artifact)
    conditions = dict(c.split("=", 1) for c in args.condition)
    for column, value in list(conditions.items()):
        categories = (
            synth.encoder_.transforms[column].categories
            if (column in synth.encoder_.transforms)
            else []
        )
        typed = {str(c): c for c in categories}
        conditions[column] = typed.get(value, value)
    frame = synth.sample(args.rows, conditions=conditions or None, seed=args.seed)
    if args.out:
        frame.to_csv(args.out, index=False)
    else:
        frame.to_csv(sys.stdout, index=False)
    return 0


def _key_pair(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def _number(value) -> str:
    return "-" if value is None else f"{value:.6g}"


def cmd_verify(args: argparse.Namespace) -> int:
    """Check an artifact's signed privacy claims; exit 0 verified, 1 failed, 2 unsigned."""
    from privacy.claims import FAILED, VERIFIED, SigningKeyError, load_public_key, verify_manifest
    from synth_models.artifact import ArtifactError, load_artifact

    try:
        server_key = load_public_key(args.server_key) if args.server_key else None
        merchant_keys = {name: load_public_key(path) for name, path in args.merchant_key}
        manifest, _ = load_artifact(args.artifact)  # the weights' SHA-256 is checked here
    except (ArtifactError, SigningKeyError) as exc:
        print(f"{args.artifact}: {FAILED}: {exc}")
        return 1
    result = verify_manifest(manifest, server_key=server_key, merchant_keys=merchant_keys)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1, default=str))
    else:
        print(f"artifact: {args.artifact}")
        print(f"server signature: {result.server} ({result.server_key or 'no key'})")
        header = ("merchant", "signature", "round", "eps claimed", "eps recomputed", "budget")
        rows = [
            (
                name,
                check.status,
                "-" if check.round is None else str(check.round),
                _number(check.epsilon_claimed),
                _number(check.epsilon_recomputed),
                _number(check.epsilon_budget),
            )
            for name, check in sorted(result.ledgers.items())
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        keys = {name: check.key for name, check in sorted(result.ledgers.items()) if check.key}
        for name, key in keys.items():
            print(f"key {name}: {key}")
        print(f"manifest epsilon: {_number(result.epsilon)}")
        for problem in result.problems:
            print(f"problem: {problem}")
        print(f"result: {result.status}")
    return {VERIFIED: 0, FAILED: 1}.get(result.status, 2)


def cmd_benchmark(args: argparse.Namespace) -> int:
    """fedsynth against SDV synthesizers, one split (simulations/benchmarks/compare/)."""
    from simulations.benchmarks.compare import config_from_args, run_benchmark

    dataset = _dataset(args)
    run_dir = _run_dir(args.out, f"benchmark-{dataset.name}")
    _log_to(run_dir, args.verbose)
    run_benchmark(dataset, config_from_args(args), run_dir, data_args=args)
    print(f"results: {run_dir / 'results.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsynth", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="fit a DP synthesizer on one table (a federation of one)")
    _add_data_args(fit)
    _add_model_args(fit)
    fit.add_argument("--rows", type=int, default=None, help="synthetic rows to write")
    fit.add_argument("--out", help="run folder (default: runs/<time>-fit-...)")
    fit.set_defaults(func=cmd_fit)

    simulate = sub.add_parser("simulate", help="federated simulation with N merchants")
    _add_data_args(simulate)
    _add_model_args(simulate)
    simulate.set_defaults(epochs=None)
    simulate.add_argument("--merchants", type=int, default=None, help="default: 5")
    simulate.add_argument(
        "--partition",
        default=None,
        help="iid | dirichlet:<column>:<alpha> | natural:<column> "
        "(default: the dataset's natural column, else dirichlet over "
        "its target with alpha 0.5)",
    )
    simulate.add_argument("--rounds", type=int, default=10)
    simulate.add_argument("--local-epochs", type=int, default=2)
    simulate.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="share of each merchant's rows it keeps out of training for its audit",
    )
    simulate.add_argument("--min-train-replies", type=int, default=1)
    simulate.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint in --out"
    )
    simulate.add_argument("--out", help="run folder (default: runs/<time>-simulate-...)")
    simulate.set_defaults(func=cmd_simulate)

    audit = sub.add_parser("audit", help="audit report (HTML + JSON) for a run or a table pair")
    audit.add_argument(
        "run", nargs="?", help="a run folder: its federated report, from the DP releases it kept"
    )
    audit.add_argument(
        "--real", help="real table (CSV/Parquet) for a one-table audit (the owner's local view)"
    )
    audit.add_argument("--holdout", help="real rows not used for training (non-members)")
    audit.add_argument("--synthetic", help="synthetic table to audit")
    audit.add_argument("--synthesizer", help="or a synthesizer artifact to sample from")
    audit.add_argument("--metadata", help="SDV metadata JSON")
    audit.add_argument("--target", help="column for train-on-synthetic / test-on-real utility")
    audit.add_argument("--out", help="report folder (default: <run>/report or audit-report)")
    audit.set_defaults(func=cmd_audit)

    sample = sub.add_parser("sample", help="sample rows from a saved synthesizer")
    sample.add_argument("artifact")
    sample.add_argument("--rows", type=int, default=1000)
    sample.add_argument("--condition", action="append", default=[], metavar="COLUMN=VALUE")
    sample.add_argument("--seed", type=int, default=None)
    sample.add_argument("--out")
    sample.set_defaults(func=cmd_sample)

    verify = sub.add_parser(
        "verify",
        help="check a synthesizer's signed privacy claims (exit 0 verified, 1 failed, 2 unsigned)",
    )
    verify.add_argument("artifact")
    verify.add_argument(
        "--merchant-key",
        type=_key_pair,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="the public key (PEM, OpenSSH .pub, or the private key) a merchant must have signed "
        "with; repeatable",
    )
    verify.add_argument("--server-key", help="the public key the manifest must be signed with")
    verify.add_argument("--json", action="store_true", help="the result as JSON")
    verify.set_defaults(func=cmd_verify)

    from simulations.benchmarks.compare import add_arguments as add_benchmark_arguments

    benchmark = sub.add_parser("benchmark", help="fedsynth vs SDV synthesizers, one split")
    _add_data_args(benchmark)
    add_benchmark_arguments(benchmark)
    benchmark.set_defaults(func=cmd_benchmark)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
