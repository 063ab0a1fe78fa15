"""Checks of a ``fedsynth`` command before it starts anything: no run folder, no simulation
engine, no privacy budget spent.

Argument values are checked as they are parsed (the ``argparse`` types here); what needs the
table (its size, the partition into merchants, the tables the merchants will read) is checked
by :func:`check_fit` and :func:`check_simulation` once the dataset is loaded and validated. A
problem is a :class:`UsageError` (or a :class:`~synth_models.schema.DataError` about a file),
which the command line prints as one line and exits with :data:`EXIT_USAGE`.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from simulations.datasets import Dataset
from synth_models.schema import DataError

logger = logging.getLogger(__name__)

EXIT_USAGE = 2  # argparse's own exit status for a bad command line
# Fewer rows than this are too few to train on: under the default budget (epsilon 1, a tenth
# of it for the statistics) the DP row count alone has a noise of about 30 rows, so the DP
# statistics of a smaller table are mostly noise. ``fit``: the table; ``simulate``: each
# merchant's training rows (its rows less its audit holdout).
MIN_TRAINING_ROWS = 100


class UsageError(ValueError):
    """A command line that cannot work: what is wrong and what to do instead."""


# -- argument types ------------------------------------------------------------------------------


def _argument_type(
    parse: Callable[[str], float],
    accepts: Callable[[float], bool],
    *,
    expected: str,
    bounds: str,
    words: dict[str, float] | None = None,
    doc: str,
) -> Callable[[str], float]:
    """An ``argparse`` type: ``text`` parsed by ``parse`` (else "expected <expected>") and in
    ``accepts`` (else "must be <bounds>"); ``words``: spellings of special values."""

    def value(text: str):
        word = text.strip().lower()
        if words and word in words:
            return words[word]
        try:
            number = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accepts(number):  # NaN fails every comparison: refused too
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text!r}")
        return number

    value.__doc__ = doc
    return value


epsilon_value = _argument_type(
    float,
    lambda v: v > 0,
    expected="a number > 0, or 'inf' for no DP",
    bounds="> 0 (or 'inf' for no DP)",
    words=dict.fromkeys(("inf", "infinity", "none"), math.inf),
    doc="A privacy budget: a number > 0, or ``inf`` (no DP).",
)
delta_value = _argument_type(
    float,
    lambda v: 0 < v < 1,
    expected="a number in (0, 1)",
    bounds="in (0, 1), e.g. 1e-5",
    doc="A DP delta: strictly between 0 and 1.",
)
count_value = _argument_type(
    int,
    lambda v: v >= 1,
    expected="a whole number >= 1",
    bounds=">= 1",
    doc="A whole number >= 1 (rounds, merchants, epochs, rows, batch size).",
)
seed_value = _argument_type(
    int,
    lambda v: v >= 0,
    expected="a whole number >= 0",
    bounds=">= 0",
    doc="A random seed: a whole number >= 0 (what numpy's generators take).",
)
holdout_value = _argument_type(
    float,
    lambda v: 0 <= v < 1,
    expected="a share in [0, 1)",
    bounds="in [0, 1), e.g. 0.2",
    doc="A share of rows kept out of training: in [0, 1) (0: no holdout, no membership audit).",
)


def condition_value(text: str) -> str:
    """``COLUMN=VALUE`` for ``fedsynth sample --condition``."""
    column, sep, _ = text.partition("=")
    if not sep or not column:
        raise argparse.ArgumentTypeError(f"expected COLUMN=VALUE, got {text!r}")
    return text


# -- checks that need the table ------------------------------------------------------------------


def check_output_folder(out: str | None, *, resume: bool = False) -> None:
    """``--out`` must be a folder (or not exist yet); ``--resume`` continues one."""
    if resume and not out:
        raise UsageError("--resume needs --out: the run folder to continue")
    if not out:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder; choose another --out")
    if not resume and (path / "synthesizer").exists() and (path / "state").is_dir():
        # Its merchants' ledgers already hold what that run spent: a new run would start
        # from a spent budget; a resumed one replays the kept rounds at no cost.
        raise UsageError(
            f"--out {out}: already holds a simulation; pass --resume to continue it, or "
            "choose another --out"
        )


def check_fit(dataset: Dataset, *, source: str) -> None:
    """A table large enough to train on (``source``: where it was read from)."""
    rows = len(dataset.table)
    if rows < MIN_TRAINING_ROWS:
        raise UsageError(
            f"{source}: {rows} row(s), too few to train on: fit needs at least "
            f"{MIN_TRAINING_ROWS} rows"
        )


def simulation_delta(dataset: Dataset, delta: float | None) -> float:
    """The run's delta: the one asked for, else the 1/(10 n) rule of ``fit`` on all the
    merchants' rows together (n the whole table's rows: below 1/(10 n_i) of every merchant,
    and the delta a ``fit`` of the same table gets)."""
    from synth_models.synthesizer import default_delta

    rows = len(dataset.table)
    if delta is None:
        return default_delta(rows)
    if delta >= 1 / rows:
        logger.warning(
            "delta %g is not below 1/n = %g (n = %d rows): a guarantee that allows about one "
            "row to leak; the default is %g",
            delta,
            1 / rows,
            rows,
            default_delta(rows),
        )
    return delta


def check_simulation(dataset: Dataset, settings, *, source: str) -> list[pd.DataFrame]:
    """The partition the simulation will make, each merchant's table as it will read it, and
    the run configuration the server and the merchants' policy will parse: every problem a
    simulation would otherwise meet after its engine started (``settings``: the
    ``simulations.runner.SimulationSettings`` the run gets; ``source``: where the table was
    read from). Returns the merchants' tables, checked: the run takes them as they are
    (``run_simulation_job(parts=...)``) rather than partitioning again."""
    from client.merchant import find_table, load_merchant_table
    from client.policy import MerchantPolicy
    from server.config import FederationConfig
    from simulations.partition import partition_table, write_partitions

    try:
        config = FederationConfig.from_run_config(settings.federation)
        MerchantPolicy.for_run(epsilon=config.epsilon, delta=config.delta)
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error
    try:
        parts = partition_table(
            dataset.table,
            settings.partition,
            num_merchants=settings.merchants,
            seed=settings.seed,
            min_rows=settings.min_rows,
        )
    except ValueError as error:
        raise UsageError(f"--partition {settings.partition}: {error}") from error
    if config.min_train_replies > len(parts):
        raise UsageError(
            f"--min-train-replies {config.min_train_replies}: more than the {len(parts)} "
            "merchant(s); at most as many as merchants"
        )
    for index, part in enumerate(parts):
        training = len(part) - round(settings.holdout * len(part))
        if training < MIN_TRAINING_ROWS:
            raise UsageError(
                f"merchant {index} of --partition {settings.partition} gets {len(part)} rows, "
                f"{training} to train on after its {settings.holdout:g} holdout: too few to "
                f"train on (each merchant needs at least {MIN_TRAINING_ROWS}); use fewer "
                "merchants, a smaller --holdout or a bigger table"
            )
    # Each merchant reads its partition back from a file and validates it against the public
    # schema: the same functions here, so that no merchant fails for its table once started.
    schema = dataset.schema()
    with tempfile.TemporaryDirectory(prefix="fedsynth-preflight-") as folder:
        write_partitions(parts, folder)
        for index in range(len(parts)):
            try:
                load_merchant_table(find_table(folder, index), schema)
            except DataError as error:
                raise DataError(
                    error.problem,
                    source=f"merchant {index}'s table (from {source})",
                    column=error.column,
                ) from error
    return parts
