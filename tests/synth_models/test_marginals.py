"""Noisy marginals: discretization, the Gaussian releases and their ledger records, the
federated sum, and the private choice of pairs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from scipy.stats import norm

from client.merchant import marginals_round
from client.state import MerchantState
from privacy.ledger import (
    DISCRETE_GAUSSIAN,
    RDP_ORDERS,
    BudgetExceededError,
    MechanismRecord,
    PrivacyLedger,
)
from privacy.noise import SeededNoise
from simulations.datasets import load_dataset
from synth_models.encoder import TableEncoder, grid_for
from synth_models.federation import MAX_MARGINAL_DOMAIN, dumps
from synth_models.marginal_fit import choose_tree, fit_marginal_model, release_marginals
from synth_models.marginal_model import MarginalModel
from synth_models.marginals import (
    MEASUREMENT,
    MEASUREMENT_LABEL,
    SELECTION,
    SELECTION_LABEL,
    MarginalRelease,
    all_pairs,
    column_domains,
    count_atoms,
    count_marginals,
    discretize,
    measure_marginals,
    merge_releases,
    select_tree,
)
from synth_models.synthesizer import STATISTICS_LABEL, release_encoder_statistics

EPSILON, DELTA = 1.0, 1e-5


@pytest.fixture(scope="module")
def pizza():
    dataset = load_dataset("pizzaplace")
    return dataset.schema(), dataset.table


@pytest.fixture(scope="module")
def encoder(pizza) -> TableEncoder:
    schema, table = pizza
    ledger = PrivacyLedger(epsilon_budget=EPSILON, delta=DELTA)
    stats = release_encoder_statistics(table, schema, ledger, epsilon=0.1, noise=SeededNoise(0))
    return TableEncoder.from_statistics(schema, stats)


def test_discretize_follows_the_encoder_domains(pizza, encoder) -> None:
    _, table = pizza
    domains = column_domains(encoder, max_bins=6)
    codes = discretize(table, encoder, domains)
    assert codes.shape == (len(table), 8)
    for j, domain in enumerate(domains):
        assert codes[:, j].min() >= 0 and codes[:, j].max() < domain.size
        if domain.kind == "numeric":
            assert domain.size <= 6 and len(domain.edges) == domain.groups + 1
    # categorical codes are the encoder's slots
    size = encoder.transforms["size"]
    assert (codes[:, 4] == size.codes(table["size"])).all()
    # a numeric group holds the values whose DP CDF falls in it
    price = encoder.transforms["price"]
    u = price.to_unit(table["price"].to_numpy(float))
    edges = np.asarray(domains[6].edges)
    assert ((u >= edges[codes[:, 6]]) & (u <= edges[codes[:, 6] + 1])).all()


def _independent_epsilon(records: list[MechanismRecord], delta: float) -> float:
    """Epsilon recomputed without the ledger: a discrete Gaussian release's RDP from its
    recorded cell noise and sensitivity, alpha * Delta2^2 / (2 sigma^2) (CKS20), the Gaussian
    alpha / (2 sigma^2) for q = 1, Opacus' subsampled-Gaussian RDP otherwise, summed and
    converted once."""
    orders = np.asarray(RDP_ORDERS)
    rdp = np.zeros(len(orders))
    for r in records:
        if r.mechanism == DISCRETE_GAUSSIAN:
            cell_std = r.noise_multiplier * r.l2_sensitivity
            rdp += r.steps * orders * r.l2_sensitivity**2 / (2 * cell_std**2)
        elif r.sample_rate == 1.0:
            rdp += r.steps * orders / (2 * r.noise_multiplier**2)
        else:
            rdp += np.asarray(
                compute_rdp(
                    q=r.sample_rate,
                    noise_multiplier=r.noise_multiplier,
                    steps=r.steps,
                    orders=list(orders),
                )
            )
    eps, _ = get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(eps)


@pytest.mark.parametrize("dp_sgd", [False, True], ids=["marginals", "after-dp-sgd"])
def test_ledger_epsilon_equals_independent_recomputation(pizza, encoder, dp_sgd) -> None:
    """Selection and measurement end at the budget, and what the ledger says they cost is an
    independent RDP recomputation, alone and composed with an earlier DP-SGD spend."""
    schema, table = pizza
    ledger = PrivacyLedger(epsilon_budget=EPSILON, delta=DELTA)
    release_encoder_statistics(table, schema, ledger, epsilon=0.1, noise=SeededNoise(1))
    if dp_sgd:
        ledger.record(MechanismRecord("dp-sgd", 2.0, 0.01, 50))
    model = MarginalModel(encoder)
    noise = SeededNoise(2)
    selection = release_marginals(table, model=model, ledger=ledger, phase=SELECTION, noise=noise)
    tree = choose_tree(selection, len(model.sizes))
    measurement = release_marginals(
        table, model=model, ledger=ledger, phase=MEASUREMENT, tree=tree, noise=noise
    )
    labels = [r.label for r in ledger.records]
    assert labels[-2:] == [SELECTION_LABEL, MEASUREMENT_LABEL]
    assert labels[0] == STATISTICS_LABEL
    assert all(r.sample_rate == 1.0 and r.steps == 1 for r in ledger.records[-2:])
    # every counting release is a discrete Gaussian one, its shape on record
    assert [r.mechanism for r in ledger.records if r.label != "dp-sgd"] == [DISCRETE_GAUSSIAN] * 3
    for release, record in ((selection, ledger.records[-2]), (measurement, ledger.records[-1])):
        cells = sum(t.size for t in release.tables) + sum(t.size for t in release.atom_tables)
        assert record.dimension == cells
        assert record.l2_sensitivity**2 == pytest.approx(
            release.sensitivity_squared(model.atom_weight)
        )
        assert all(np.array_equal(t, np.round(t)) for t in release.tables)  # integer counts
    # the statistics release thresholds categories only for unknown domains (none here)
    assert ledger.extra_delta == 0.0
    expected = _independent_epsilon(ledger.records, DELTA)
    assert ledger.epsilon() == pytest.approx(expected, rel=1e-9)
    assert EPSILON * 0.995 <= ledger.epsilon() <= EPSILON
    # the noise added is the noise recorded: sigma * sqrt(k) per cell for k tables
    record = ledger.records[-2]
    # (the selection release also counts the atom grid of the declared-decimals columns)
    assert "price" in model.atom_columns()
    # each counting ``atom_weight`` tables' worth
    assert selection.num_tables == len(selection.cliques) + len(model.atom_columns())
    worth = len(selection.cliques) + model.atom_weight * len(model.atom_columns())
    assert selection.noise_var == pytest.approx(record.noise_multiplier**2 * worth)
    # nothing left: the next release is refused before it runs
    with pytest.raises(BudgetExceededError):
        release_marginals(table, model=model, ledger=ledger, phase=SELECTION, noise=noise)


def test_noise_is_gaussian_with_the_recorded_scale(pizza, encoder) -> None:
    _, table = pizza
    domains = column_domains(encoder, max_bins=64)
    sizes = [d.size for d in domains]
    codes = discretize(table, encoder, domains)
    pairs = all_pairs(len(sizes))
    exact = count_marginals(codes, sizes, pairs)
    release, record = measure_marginals(
        codes,
        sizes=sizes,
        cliques=pairs,
        noise_multiplier=3.0,
        noise=SeededNoise(3),
        label=SELECTION_LABEL,
    )
    noise = np.concatenate([(n - e).ravel() for n, e in zip(release.tables, exact, strict=True)])
    cells = sum(t.size for t in exact)
    assert record == MechanismRecord(
        SELECTION_LABEL, 3.0, 1.0, 1, mechanism=DISCRETE_GAUSSIAN,
        l2_sensitivity=math.sqrt(len(pairs)), dimension=cells,
    )  # fmt: skip
    assert np.array_equal(noise, np.round(noise))  # integer noise on integer counts
    assert noise.std() == pytest.approx(3.0 * math.sqrt(len(pairs)), rel=0.05)
    assert abs(noise.mean()) < 4 * noise.std() / math.sqrt(noise.size)


def test_the_same_release_twice_has_different_noise(pizza, encoder) -> None:
    """Default noise is the OS's (``SecureNoise``): nobody can replay a release."""
    _, table = pizza
    domains = column_domains(encoder, max_bins=16)
    sizes, codes = [d.size for d in domains], discretize(table.head(2000), encoder, domains)
    pairs = all_pairs(len(sizes))
    first, second = (
        measure_marginals(
            codes, sizes=sizes, cliques=pairs, noise_multiplier=2.0, label=SELECTION_LABEL
        )[0]
        for _ in range(2)
    )
    pairs_of_tables = zip(first.tables, second.tables, strict=True)
    cells = np.concatenate([(a != b).ravel() for a, b in pairs_of_tables])
    assert cells.mean() > 0.5


def test_summed_merchant_marginals_equal_the_pooled_marginals_in_expectation(
    pizza, encoder
) -> None:
    """K merchants' releases, sent as JSON and summed, are the pooled table's marginals plus
    zero-mean noise of K times one merchant's variance (many seeded repetitions)."""
    _, table = pizza
    sample = table.sample(3000, random_state=0).reset_index(drop=True)
    parts = np.array_split(np.random.default_rng(0).permutation(len(sample)), 3)
    merchants = [sample.iloc[p].reset_index(drop=True) for p in parts]
    model = MarginalModel(encoder)
    tree = [(3, 5), (4, 6)]
    pooled = count_marginals(
        discretize(sample, encoder, model.domains), model.sizes, model.measurement_cliques(tree)
    )
    differences, variances = [], []
    for _ in range(40):
        releases = []
        for i, rows in enumerate(merchants):
            # a fresh budget each repetition (the DP row count came from a schema round)
            state = MerchantState(merchant=f"merchant-{i}", dp_rows=float(len(rows)))
            release, metrics = marginals_round(
                rows,
                encoder=encoder,
                model_options={},
                state=state,
                epsilon=EPSILON,
                delta=DELTA,
                phase=MEASUREMENT,
                tree=[list(p) for p in tree],
                source="test",
            )
            assert metrics["epsilon"] <= EPSILON
            wire = json.loads(dumps(release.to_dict()))
            releases.append(MarginalRelease.from_dict(wire))
        total = merge_releases(releases)
        assert total.contributors == 3
        assert total.noise_var == pytest.approx(sum(r.noise_var for r in releases))
        differences.append(
            np.concatenate([(t - p).ravel() for t, p in zip(total.tables, pooled, strict=True)])
        )
        variances.append(total.noise_var)
    differences = np.asarray(differences)
    var = float(np.mean(variances))
    # The merchants' noise is their own (SecureNoise, not seeded): bounds that fail by chance
    # with probability below 1e-6. Unbiased: every cell's mean over repetitions is within
    # z standard errors of 0 (Bonferroni over the cells) ...
    standard_error = math.sqrt(var / len(differences))
    z = float(norm.isf(1e-6 / (2 * differences.shape[1])))
    assert np.abs(differences.mean(axis=0)).max() < z * standard_error
    # ... and the spread is the summed noise of the merchants (within 5 s.d. of the estimate)
    assert differences.var() == pytest.approx(var, rel=5 * math.sqrt(2 / differences.size))
    # exact counts sum exactly
    exact = merge_releases(
        [
            measure_marginals(
                discretize(rows, encoder, model.domains),
                sizes=model.sizes,
                cliques=model.measurement_cliques(tree),
                noise_multiplier=0.0,
                noise=SeededNoise(0),
                label=MEASUREMENT_LABEL,
            )[0]
            for rows in merchants
        ]
    )
    for summed, whole in zip(exact.tables, pooled, strict=True):
        np.testing.assert_array_equal(summed, whole)


def test_merge_refuses_different_cliques() -> None:
    a = MarginalRelease([(0, 1)], [np.zeros((2, 3))], 1.0)
    b = MarginalRelease([(0, 2)], [np.zeros((2, 3))], 1.0)
    with pytest.raises(ValueError, match="different cliques"):
        merge_releases([a, b])


def test_select_tree_is_a_maximum_spanning_tree() -> None:
    scores = {(0, 1): 5.0, (0, 2): 1.0, (1, 2): 4.0, (2, 3): 0.5, (1, 3): 0.7, (0, 3): 0.1}
    assert select_tree(scores, 4) == [(0, 1), (1, 2), (1, 3)]


def test_noisy_selection_finds_the_strong_pairs(pizza, encoder) -> None:
    """At epsilon = 1 the private tree holds name-type, name-price and size-price."""
    schema, table = pizza
    ledger = PrivacyLedger(epsilon_budget=EPSILON, delta=DELTA)
    release_encoder_statistics(table, schema, ledger, epsilon=0.1, noise=SeededNoise(4))
    model = MarginalModel(encoder)
    selection = release_marginals(
        table, model=model, ledger=ledger, phase=SELECTION, noise=SeededNoise(5)
    )
    names = [d.name for d in model.domains]
    tree = {(names[a], names[b]) for a, b in choose_tree(selection, len(names))}
    assert {("name", "type"), ("name", "price"), ("size", "price")} <= tree
    assert len(tree) == len(names) - 1


def _problems(document: dict, encoder, record, **model_options) -> list[str]:
    """What the merchant's reply guard says of a selection release (``client.release_checks``),
    with the ledger record of the release that made it."""
    from dataclasses import asdict

    from client.release_checks import marginal_problems

    request = {"encoder": encoder.to_dict(), "phase": "selection", "model_options": model_options}
    ledger = {"records": [asdict(record)]}
    return marginal_problems(
        json.loads(json.dumps(document)), request=request, ledger=ledger, private=True
    )


def test_guard_lets_noisy_marginals_out_and_nothing_per_row(encoder, pizza) -> None:
    _, table = pizza
    model = MarginalModel(encoder, atom_weight=1.0)
    codes = discretize(table.head(500), encoder, model.domains)
    atoms = count_atoms(table.head(500), encoder, model.atom_columns())
    release, record = measure_marginals(
        codes,
        sizes=model.sizes,
        cliques=all_pairs(len(model.sizes)),
        noise_multiplier=1.0,
        noise=SeededNoise(0),
        label=SELECTION_LABEL,
        atom_counts=atoms,
    )
    assert _problems(release.to_dict(), encoder, record, atom_weight=1.0) == []
    rows = pd.Series(table["price"].head(MAX_MARGINAL_DOMAIN + 1)).tolist()
    per_row = {**release.to_dict(), "cliques": [[6]], "shapes": [[len(rows)]], "tables": [rows]}
    assert "not the ones the request's phase measures" in " ".join(
        _problems(per_row, encoder, record, atom_weight=1.0)
    )
    document = release.to_dict()
    lying = {**document, "shapes": [[2, 2]] * len(document["shapes"])}
    assert _problems(lying, encoder, record, atom_weight=1.0)
    extra = {**document, "rows": [1, 2, 3]}
    assert _problems(extra, encoder, record, atom_weight=1.0)
    three_way = {
        **document,
        "cliques": [[0, 1, 2]],
        "shapes": [[2, 2, 2]],
        "tables": [[[[0.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]]],
    }
    assert _problems(three_way, encoder, record, atom_weight=1.0)


def test_atom_tables_travel_as_one_way_tables_and_add_up(encoder, pizza) -> None:
    """The atom-grid counts ride in the selection's Gaussian release (one more table in its
    sensitivity), pass the reply guard as 1-way tables and sum over merchants."""
    _, table = pizza
    model = MarginalModel(encoder)
    names = model.atom_columns()
    assert "price" in names
    codes = discretize(table.head(500), encoder, model.domains)
    exact = count_atoms(table.head(500), encoder, names)
    price = exact["price"]
    assert len(price) == 2621 and price.sum() == 500
    release, record = measure_marginals(
        codes,
        sizes=model.sizes,
        cliques=all_pairs(len(model.sizes)),
        noise_multiplier=1.0,
        noise=SeededNoise(0),
        label=SELECTION_LABEL,
        atom_counts=exact,
        atom_weight=4.0,
    )
    assert release.num_tables == len(all_pairs(len(model.sizes))) + len(names)
    worth = len(all_pairs(len(model.sizes))) + 4.0 * len(names)
    assert release.sensitivity_squared(4.0) == worth
    assert release.noise_var == pytest.approx(record.noise_multiplier**2 * worth)
    # the atom tables' noise is smaller by the weight: sum of 1/var_i is 1/z^2 as one table's
    assert np.std(release.atom_tables[names.index("price")] - price) == pytest.approx(
        (release.noise_var / 4.0) ** 0.5, rel=0.1
    )
    document = release.to_dict()
    assert _problems(document, encoder, record, atom_weight=4.0) == []
    back = MarginalRelease.from_dict(json.loads(json.dumps(document)))
    assert back.cliques == release.cliques and len(back.atom_tables) == len(names)
    merged = merge_releases([back, back])
    assert np.allclose(merged.atom_tables[0], 2 * release.atom_tables[0])
    assert merged.num_tables == release.num_tables


def test_rebin_takes_the_atoms_the_release_shows(encoder, pizza) -> None:
    """Exact counts (no noise): the model's price values become exactly the menu prices and
    the declared ends, whatever the encoder's statistics kept; sampling gives them all."""
    _, table = pizza
    own = TableEncoder.from_dict(encoder.to_dict())  # rebinning replaces transforms in place
    model = MarginalModel(own)
    fit_marginal_model(model, table, ledger=None, noise=SeededNoise(0))
    t = own.transforms["price"]
    menu = set(np.round(table["price"].unique(), 2))
    assert set(np.round(t.atoms, 2)) == menu | {9.75, 35.95}
    codes = model.sample_codes(50_000, torch.Generator().manual_seed(0))
    j = [d.name for d in model.domains].index("price")
    drawn = {round(float(t.atoms[c]), 2) for c in np.unique(codes[:, j].numpy())}
    assert menu <= drawn


def test_rows_outside_an_open_domain_count_as_other() -> None:
    """Merchant A releases "x", merchant B "y"; each also holds labels no one releases. On the
    server's domains (the union, then OTHER) every row of each merchant counts: B's few "x"
    rows as "x", the unreleased ones as OTHER, none vanish."""
    from privacy.statistics import OTHER, CategoricalInput, merge_statistics, release_statistics
    from synth_models.schema import TableSchema

    schema = TableSchema.from_metadata(
        {
            "tables": {
                "t": {
                    "columns": {
                        "c": {"sdtype": "categorical"},
                        "d": {"sdtype": "categorical", "range_values": ["p", "q"]},
                    }
                }
            }
        }
    )
    rng = np.random.default_rng(0)
    a = pd.DataFrame({"c": ["x"] * 300 + ["rare-a"] * 3 + ["y"] * 2})
    b = pd.DataFrame({"c": ["y"] * 300 + ["x"] * 5 + [f"id-{i}" for i in range(40)]})
    for table in (a, b):
        table["d"] = rng.choice(["p", "q"], len(table))
    parts = [
        release_statistics(
            {"c": CategoricalInput(t["c"]), "d": CategoricalInput(t["d"], domain=["p", "q"])},
            noise_multiplier=2.0,
            threshold_delta=1e-6,
            noise=SeededNoise(seed),
        )[0]
        for seed, t in enumerate((a, b))
    ]
    encoder = TableEncoder.from_statistics(schema, merge_statistics(parts))
    assert encoder.transforms["c"].categories == ["x", "y", OTHER]
    domains = column_domains(encoder, max_bins=4)
    for table, expected in ((a, [300, 2, 3]), (b, [5, 300, 40])):
        codes = discretize(table, encoder, domains)
        assert len(codes) == len(table)  # nothing left out
        (pair,) = count_marginals(codes, [d.size for d in domains], [(0, 1)])
        np.testing.assert_array_equal(pair.sum(1), expected)
    model = MarginalModel(encoder)
    release = release_marginals(b, model=model, ledger=None, phase=SELECTION)
    assert release.tables[0].sum() == len(b)  # exact counts: every row in a cell


def test_rebin_keeps_what_the_statistics_said_when_the_atoms_show_nothing() -> None:
    """An undeclared amount: grid counts that stand out replace its transform (and its note:
    it is described now); pure noise leaves the statistics' transform and note in place."""
    from privacy.statistics import NumericInput, release_statistics
    from synth_models.marginals import rebin_from_atoms
    from synth_models.schema import TableSchema

    schema = TableSchema.from_metadata(
        {"tables": {"t": {"columns": {"amount": {"sdtype": "numerical"}}}}}
    )
    grid = grid_for(schema["amount"])
    few = np.random.default_rng(1).lognormal(3, 1, 30)
    stats, _ = release_statistics(
        {"amount": NumericInput(few, grid)},
        noise_multiplier=40.0,
        threshold_delta=1e-6,
        noise=SeededNoise(2),
    )
    start = TableEncoder.from_statistics(schema, stats)
    assert "amount" in start.notes  # 30 rows under this noise: nothing stands out
    rng = np.random.default_rng(3)
    noise_var = 25.0
    pure_noise = rng.normal(0, 5.0, grid.num_bins)
    many = np.bincount(grid.bin_index(rng.lognormal(3, 1, 50_000)), minlength=grid.num_bins)
    kept = TableEncoder.from_dict(start.to_dict())
    release = MarginalRelease(cliques=[], tables=[], noise_var=noise_var, atom_tables=[pure_noise])
    assert rebin_from_atoms(kept, ["amount"], release) == []
    assert kept.notes == start.notes
    shown = TableEncoder.from_dict(start.to_dict())
    release = MarginalRelease(
        cliques=[], tables=[], noise_var=noise_var, atom_tables=[many + pure_noise]
    )
    assert rebin_from_atoms(shown, ["amount"], release) == ["amount"]
    assert "amount" not in shown.notes
    t = shown.transforms["amount"]
    assert t.lows[0] < 20 < 100 < t.highs[-1] < 1e4  # e^3 = 20: the bulk and its tail
