"""The ``fedsynth`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import pandas as pd

from simulations.datasets import DATASETS, Dataset, load_dataset, load_user_dataset
from simulations.preflight import (
    EXIT_USAGE,
    UsageError,
    check_fit,
    check_output_folder,
    check_simulation,
    condition_value,
    count_value,
    delta_value,
    epsilon_value,
    holdout_value,
    seed_value,
    simulation_delta,
)

logger = logging.getLogger("fedsynth")


def _dataset(args: argparse.Namespace) -> Dataset:
    if args.data:
        if not args.metadata:
            raise UsageError(
                "--data needs --metadata (an SDV metadata JSON; fedsynth metadata drafts one)"
            )
        return load_user_dataset(args.data, args.metadata, target=args.target)
    if args.metadata:
        raise UsageError("--metadata needs --data: the table it describes")
    return load_dataset(args.dataset)


def _data_source(args: argparse.Namespace) -> str:
    return args.data or f"dataset {args.dataset}"


def _start_run(args: argparse.Namespace, label: str) -> Path:
    """The run folder (``--out``, else ``runs/<time>-<label>``), logging into its run.log."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(args.out) if args.out else Path("runs") / f"{stamp}-{label}"
    path.mkdir(parents=True, exist_ok=True)
    _log_to(path / "run.log", args.verbose)
    return path


def _log_to(log_file: Path | None, verbose: bool) -> None:
    """Records to stderr, and to ``log_file`` when given."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    for noisy in ("opacus", "matplotlib", "PIL", "rdt", "sdv", "sdmetrics", "copulas"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if log_file is not None:
        # Flower prints to the console itself; its records go to the run log once, not twice.
        flower = logging.getLogger("flwr")
        flower.propagate = False
        flower.addHandler(handlers[-1])


def _check_columns(flag: str, given, columns: list[str], where: str) -> None:
    """Every column named by ``flag`` is one of ``columns`` (those of ``where``)."""
    unknown = sorted(set(given) - set(columns))
    if unknown:
        raise UsageError(f"{flag}: no column(s) {unknown} in {where} (columns: {columns})")


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


def _add_model_args(parser: argparse.ArgumentParser, command: str) -> None:
    """The model, its budget and training; ``--out``, the run folder of ``command``."""
    parser.add_argument("--out", help=f"run folder (default: runs/<time>-{command}-...)")
    parser.add_argument("--model", choices=("marginal", "vae", "gan"), default="marginal")
    parser.add_argument(
        "--epsilon",
        type=epsilon_value,
        default=1.0,
        help="privacy budget per data owner ('inf' disables DP)",
    )
    parser.add_argument(
        "--delta",
        type=delta_value,
        default=None,
        help="in (0, 1); default: a power of ten below 1/(10 n), n the table's rows (simulate: "
        "all merchants' rows together, below 1/(10 n) of each merchant and the delta fit "
        "gets on the same table)",
    )
    parser.add_argument("--epochs", type=count_value, default=10)
    parser.add_argument("--batch-size", type=count_value, default=500)
    parser.add_argument("--seed", type=seed_value, default=0)


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit one DP synthesizer on one table, write artifact, sample and audit scores."""
    from privacy.audit import quality_scores
    from privacy.report import LOCAL_VIEW
    from synth_models.synthesizer import TabularSynthesizer
    from synth_models.training import TrainingConfig

    check_output_folder(args.out)
    dataset = _dataset(args)
    check_fit(dataset, source=_data_source(args))
    run_dir = _start_run(args, f"fit-{dataset.name}-{args.model}")
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

    if args.epochs is not None:
        raise UsageError("--epochs is fit's: a simulation's merchants train --local-epochs a round")
    check_output_folder(args.out, resume=args.resume)
    dataset = _dataset(args)
    partition = args.partition or _default_partition(dataset)
    federation = {
        "model": args.model,
        "epsilon": args.epsilon,
        "delta": simulation_delta(dataset, args.delta),
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
    parts = check_simulation(dataset, settings, source=_data_source(args))  # before anything starts
    run_dir = _start_run(args, f"simulate-{dataset.name}-{args.model}")
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
    summary = run_simulation_job(dataset, settings, run_dir, parts=parts)
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
    from privacy.report import NOTES_KEY, write_report
    from synth_models.booleans import parse_declared_booleans
    from synth_models.io import load_metadata, read_table
    from synth_models.schema import TableSchema
    from synth_models.synthesizer import TabularSynthesizer

    _log_to(None, args.verbose)
    if args.run:
        html = audit_run_folder(Path(args.run), out=args.out)
    else:
        if not (args.real and args.metadata and (args.synthetic or args.synthesizer)):
            raise UsageError(
                "give a run folder, or --real, --metadata and --synthetic or --synthesizer"
            )
        metadata = load_metadata(args.metadata)
        table_name = next(iter(metadata["tables"]))
        schema = TableSchema.from_metadata(metadata, table_name)

        def read(path: str) -> pd.DataFrame:  # booleans spelled yes/no as the merchants read them
            return parse_declared_booleans(read_table(path), schema)

        real = read(args.real)
        holdout = read(args.holdout) if args.holdout else real.iloc[:0]
        claimed, notes = {}, None
        if args.synthesizer:
            synth = TabularSynthesizer.load(args.synthesizer)
            synthetic = synth.sample(len(real), seed=0)
            claimed = {
                "epsilon": synth.epsilon_spent,
                "delta": max((lg.delta for lg in synth.ledgers_.values()), default=None),
            }
            notes = synth.encoder_.notes
        else:
            synthetic = read(args.synthetic)
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
        if notes is not None:  # what the synthesizer's DP statistics could not describe
            audit[NOTES_KEY] = notes
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
    _check_columns("--condition", conditions, synth.encoder_.schema.names, "the synthesizer")
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
    run_dir = _start_run(args, f"benchmark-{dataset.name}")
    run_benchmark(dataset, config_from_args(args), run_dir, data_args=args)
    print(f"results: {run_dir / 'results.md'}")
    return 0


def cmd_metadata(args: argparse.Namespace) -> int:
    """Draft SDV metadata for your own table; values read off its rows stay private proposals."""
    from synth_models.io import metadata_from_dict, read_table
    from synth_models.metadata_draft import (
        PRIVATE_DECLARATIONS_NOTICE,
        draft_metadata,
        private_declarations_path,
    )
    from synth_models.schema import TableSchema

    data = Path(args.data)
    out = Path(args.out) if args.out else data.with_name(f"{data.name.split('.')[0]}.metadata.json")
    private_path = private_declarations_path(out)
    existing = [str(p) for p in (out, private_path) if p.exists()]
    if existing and not args.force:
        raise UsageError(f"{', '.join(existing)} exist(s): pass --force to overwrite")
    table = read_table(data)
    draft = draft_metadata(table, table_name=args.table_name or data.name.split(".")[0])
    public = [name.strip() for text in args.public for name in text.split(",") if name.strip()]
    _check_columns("--public", public, draft.names, str(data))
    metadata = draft.metadata(public=public)
    TableSchema.from_metadata(metadata_from_dict(metadata, source=str(out)))  # as simulate reads it
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metadata, indent=1) + "\n", encoding="utf-8")
    # Values from the rows: readable by the owner only, like the table itself should be.
    private_path.touch(mode=0o600, exist_ok=True)
    private_path.chmod(0o600)  # also when --force rewrites an older file
    private_path.write_text(
        json.dumps(draft.private_declarations(public=public, source=str(data)), indent=1) + "\n",
        encoding="utf-8",
    )
    print(f"table {draft.table_name!r}: {len(draft.columns)} columns")
    print("\n".join(draft.summary(public=public)))
    print(f"\nmetadata (public, share it): {out}")
    print(f"proposals (private, keep it): {private_path}\n")
    print(PRIVATE_DECLARATIONS_NOTICE)
    print(f"\nnext: check the sdtypes, then fedsynth simulate --data {data} --metadata {out}")
    print(f"to confirm public columns: fedsynth metadata {data} --out {out} --public A,B --force")
    return 0


class _Parser(argparse.ArgumentParser):
    """A bad command line is one line (argparse prints its usage first), exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedsynth", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (anywhere on the line)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="fit a DP synthesizer on one table (a federation of one)")
    _add_data_args(fit)
    _add_model_args(fit, "fit")
    fit.add_argument("--rows", type=count_value, default=None, help="synthetic rows to write")
    fit.set_defaults(func=cmd_fit)

    simulate = sub.add_parser("simulate", help="federated simulation with N merchants")
    _add_data_args(simulate)
    _add_model_args(simulate, "simulate")
    simulate.set_defaults(epochs=None)
    simulate.add_argument("--merchants", type=count_value, default=None, help="default: 5")
    simulate.add_argument(
        "--partition",
        default=None,
        help="iid | dirichlet:<column>:<alpha> | natural:<column> "
        "(default: the dataset's natural column, else dirichlet over "
        "its target with alpha 0.5)",
    )
    simulate.add_argument("--rounds", type=count_value, default=10)
    simulate.add_argument("--local-epochs", type=count_value, default=2)
    simulate.add_argument(
        "--holdout",
        type=holdout_value,
        default=0.2,
        help="share of each merchant's rows it keeps out of training for its audit",
    )
    simulate.add_argument("--min-train-replies", type=count_value, default=1)
    simulate.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint in --out"
    )
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
    sample.add_argument("--rows", type=count_value, default=1000)
    sample.add_argument(
        "--condition", type=condition_value, action="append", default=[], metavar="COLUMN=VALUE"
    )
    sample.add_argument("--seed", type=seed_value, default=None)
    sample.add_argument("--out")
    sample.set_defaults(func=cmd_sample)

    metadata = sub.add_parser(
        "metadata",
        help="draft SDV metadata for your own table (values from its rows stay private proposals)",
    )
    metadata.add_argument("data", help="your table (CSV or Parquet)")
    metadata.add_argument(
        "--out", help="metadata JSON to write (default: <data>.metadata.json beside the table)"
    )
    metadata.add_argument("--table-name", help="default: the file name without extensions")
    metadata.add_argument(
        "--public",
        action="append",
        default=[],
        metavar="COLUMN[,COLUMN...]",
        help="declare these columns' proposed values (range, decimals, categories, missing) "
        "public: written into the metadata as is, not protected by DP; repeatable",
    )
    metadata.add_argument("--force", action="store_true", help="overwrite existing files")
    metadata.set_defaults(func=cmd_metadata)

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


# A user's mistake (an argument, a file, a table, its metadata, an artifact, a key): one line,
# exit status 2. Named by module, not imported: an artifact's module imports torch.
USER_ERRORS = (
    ("simulations.preflight", "UsageError"),
    ("synth_models.schema", "DataError"),
    ("synth_models.artifact", "ArtifactError"),
    ("privacy.claims", "SigningKeyError"),
)


EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


def _user_error(error: Exception) -> bool:
    kinds = (getattr(sys.modules.get(module), name, None) for module, name in USER_ERRORS)
    return any(kind is not None and isinstance(error, kind) for kind in kinds)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:  # a global flag, also where it is typed after the command
        argv = ["--debug", *(arg for arg in argv if arg != "--debug")]
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as error:
        if args.debug:
            raise
        raise _exit(args, error) from None
    except SystemExit as stop:
        if args.debug or not isinstance(stop.code, str):
            raise
        raise _exit(args, UsageError(stop.code)) from None
    except KeyboardInterrupt:
        if args.debug:
            raise
        # What the command started is stopped by now (the engine's processes on the way out).
        print(f"fedsynth {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _exit(args: argparse.Namespace, error: Exception) -> SystemExit:
    """Print ``error`` as one line; the SystemExit to raise (its text is the message)."""
    message = " ".join(str(error).split()) or type(error).__name__
    if _user_error(error):
        print(f"fedsynth {args.command}: error: {message}", file=sys.stderr)
        code = EXIT_USAGE
    else:
        print(
            f"fedsynth {args.command}: failed: {type(error).__name__}: {message} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        code = 1
    stop = SystemExit(message)
    stop.code = code
    return stop


if __name__ == "__main__":
    raise SystemExit(main())
