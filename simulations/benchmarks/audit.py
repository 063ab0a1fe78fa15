"""Seconds per module of a full audit (``privacy.audit.audit_table``) at 50,000 x 50,000.

Real data: the embedded ``pizzaplace`` table (49,574 rows) split 80/20 into train (members) and
holdout (non-members); synthetic data: 50,000 rows drawn with replacement from the whole table
plus small noise on the numeric columns (the speed of the audit does not depend on how the rows
were made). ``type`` is the utility target and is declared sensitive, so every module runs.

Run: ``python -m simulations.benchmarks.audit [--rows 50000] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from client.merchant import holdout_split
from privacy.audit import audit_table
from simulations.datasets import load_dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="synthetic rows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dataset = load_dataset("pizzaplace")
    train, holdout = holdout_split(dataset.table, 0.2, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    synthetic = dataset.table.sample(args.rows, replace=True, random_state=args.seed)
    synthetic = synthetic.reset_index(drop=True)
    synthetic["price"] = synthetic["price"] + rng.normal(0, 0.5, len(synthetic))
    print(
        f"real train {len(train):,}, holdout {len(holdout):,}, synthetic {len(synthetic):,}; "
        f"torch threads {torch.get_num_threads()}"
    )
    start = time.perf_counter()
    report = audit_table(
        train,
        holdout,
        synthetic,
        dataset.metadata,
        dataset.table_name,
        target=dataset.target,
        sensitive_columns=(dataset.target,),
        seed=args.seed,
    )
    total = time.perf_counter() - start
    for module, seconds in report["seconds"].items():
        print(f"{module:>12}: {seconds:7.2f} s")
    print(f"{'total':>12}: {total:7.2f} s")


if __name__ == "__main__":
    main()
