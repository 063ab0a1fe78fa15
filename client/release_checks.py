"""Typed checks of what a merchant releases, against the public schema and the request.

Each ``*_problems`` function returns why a document is not a release of its type (empty: it
is): its keys, its shapes and its noise must follow from the public schema, the server's
request (encoder, model, tree) and the merchant's own ledger, never from the rows. A
document that carries anything else (a table in a status, rows in a category list, a raw
column sent as a zero-noise marginal) does not pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from client.policy import MerchantPolicy
from privacy.claims import LEDGER_FIELDS, SIGNATURE_FIELDS, VERIFIED, verify_ledger
from privacy.ledger import MechanismRecord, PrivacyLedger
from privacy.statistics import (
    MAX_DECIMALS,
    OPEN_VOCABULARY,
    OTHER,
    canonical_order,
    category_key,
    open_column_weight,
    squared_sensitivity,
)
from synth_models.encoder import TableEncoder, grid_for
from synth_models.federation import (
    FAILED,
    MAX_MARGINAL_DOMAIN,
    OK,
    REASON_CODES,
    REFUSED,
    STATUS_KEYS,
)
from synth_models.marginal_model import MarginalModel
from synth_models.marginals import (
    MEASUREMENT,
    MEASUREMENT_LABEL,
    SELECTION,
    SELECTION_LABEL,
    all_pairs,
)
from synth_models.schema import CATEGORICAL, DATETIME, TableSchema
from synth_models.synthesizer import STATISTICS_LABEL, build_model
from synth_models.training import TRAINING_LABEL

MECHANISM_LABELS = frozenset({STATISTICS_LABEL, SELECTION_LABEL, MEASUREMENT_LABEL, TRAINING_LABEL})
MAX_LEDGER_RECORDS = 10_000
MAX_CATEGORY_CHARS = 256  # a released category label; longer is free text, not a category
# The ledger's own fields, and its signature (``privacy/claims.py``): the round answered,
# the merchant's public key (PEM) and the signature over the claim.
LEDGER_KEYS = frozenset(LEDGER_FIELDS) | frozenset(SIGNATURE_FIELDS)
MAX_PUBLIC_KEY_CHARS = 1024
STATISTICS_KEYS = frozenset({"columns", "row_count", "row_count_var", "contributors"})
COLUMN_KEYS = frozenset(
    {"kind", "counts", "missing", "noise_var", "categories", "public_domain", "grid", "decimals"}
)
MARGINAL_KEYS = frozenset({"cliques", "shapes", "tables", "noise_var", "contributors"})
AUDIT_KEYS = frozenset({"local_report"})


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(values) -> bool:
    return isinstance(values, list) and all(_number(v) for v in values)


def _shape(table) -> list[int] | None:
    """The shape of a nested list of finite numbers (None if ragged or not numbers)."""
    if _number(table):
        return []
    if not isinstance(table, list) or not table:
        return None
    shapes = [_shape(row) for row in table]
    if shapes[0] is None or any(s != shapes[0] for s in shapes):
        return None
    return [len(table), *shapes[0]]


def status_problems(document, *, merchant: str, columns: Iterable[str]) -> list[str]:
    if not isinstance(document, dict) or not {"state", "merchant", "code"} <= set(document):
        return ["status is not a state, a merchant and a code"]
    if not set(document) <= STATUS_KEYS:
        return [f"status holds unknown fields {sorted(set(document) - STATUS_KEYS)}"]
    problems = []
    if document["state"] not in (OK, REFUSED, FAILED):
        problems.append("status state is not ok, refused or failed")
    if document["code"] not in REASON_CODES:
        problems.append("status code is not a known reason code")
    if document["merchant"] != merchant:
        problems.append("status names another merchant")
    if "column" in document and document["column"] not in set(columns):
        problems.append("status names a column outside the public schema")
    return problems


def ledger_problems(document, *, merchant: str, policy: MerchantPolicy) -> list[str]:
    """A signed ledger summary: the merchant's own, with known mechanisms, whose epsilon is
    what its records compose to, signed by the key it carries (a PEM public key and a round:
    nothing else rides along)."""
    if not isinstance(document, dict) or set(document) != LEDGER_KEYS:
        return ["ledger document does not have a ledger's fields"]
    if document["owner"] != merchant:
        return ["ledger names another owner"]
    records = document["records"]
    if not isinstance(records, list) or len(records) > MAX_LEDGER_RECORDS:
        return ["ledger records are not a list of mechanisms"]
    fields = set(MechanismRecord.__dataclass_fields__)
    for record in records:
        if not isinstance(record, dict) or not set(record) <= fields:
            return ["a ledger record is not a mechanism record"]
        if record.get("label") not in MECHANISM_LABELS:
            return ["a ledger record has an unknown mechanism label"]
        numbers = [v for k, v in record.items() if k not in ("label", "mechanism")]
        if not all(_number(v) for v in numbers) or not record.get("noise_multiplier", 0) > 0:
            return ["a ledger record's parameters are not positive finite numbers"]
    if not (_number(document["epsilon_budget"]) and _number(document["delta"])):
        return ["ledger budget or delta is not a number"]
    if document["epsilon_budget"] != policy.epsilon_budget or document["delta"] > policy.max_delta:
        return ["ledger budget or delta is not the merchant's policy"]
    try:
        epsilon = PrivacyLedger.from_state_dict(document).epsilon()
    except (TypeError, ValueError) as exc:
        return [f"ledger records do not compose ({type(exc).__name__})"]
    if not _number(document["epsilon"]) or not math.isclose(
        epsilon, document["epsilon"], rel_tol=1e-9, abs_tol=1e-12
    ):
        return ["ledger epsilon is not what its records compose to"]
    return _signature_problems(document, merchant)


def _signature_problems(document: dict, merchant: str) -> list[str]:
    signature, key = document["signature"], document["public_key"]
    if (
        not isinstance(document["round"], int)
        or isinstance(document["round"], bool)
        or not isinstance(key, str)
        or len(key) > MAX_PUBLIC_KEY_CHARS
        or not isinstance(signature, dict)
        or set(signature) != {"algorithm", "value"}
        or not all(isinstance(v, str) and len(v) <= 256 for v in signature.values())
    ):
        return ["ledger signature fields are not a round, a key and a signature"]
    if verify_ledger(document, owner=merchant).status != VERIFIED:
        return ["ledger signature does not verify"]
    return []


def last_record(ledger: dict | None, label: str) -> dict | None:
    records = [] if ledger is None else [r for r in ledger["records"] if r["label"] == label]
    return records[-1] if records else None


def _noise_problems(
    noise_var, *, tables: float, ledger: dict | None, label: str, private: bool
) -> list[str]:
    """A release's per-cell noise variance must be that of its ledger record: noise
    multiplier squared times the release's squared L2 sensitivity (``tables``)."""
    if not _number(noise_var) or noise_var < 0:
        return ["noise variance is not a non-negative number"]
    if not private:
        return []
    record = last_record(ledger, label)
    if record is None:
        return [f"a private release with no {label!r} record in the ledger"]
    expected = record["noise_multiplier"] ** 2 * tables
    if not noise_var > 0 or not math.isclose(noise_var, expected, rel_tol=1e-6):
        return [f"noise variance {noise_var:g} is not the ledger's {label!r} noise"]
    return []


def statistics_problems(
    document, *, schema: TableSchema, ledger: dict | None, private: bool
) -> list[str]:
    """DP column statistics: one histogram per schema column on its public grid or domain."""
    if not isinstance(document, dict) or set(document) != STATISTICS_KEYS:
        return ["statistics document does not have the statistics' fields"]
    columns = document["columns"]
    names = [spec.name for spec in schema.columns]
    if not isinstance(columns, dict) or sorted(columns) != sorted(names):
        return ["statistics columns are not the public schema's"]
    if document["contributors"] != 1 or not _number(document["row_count"]):
        return ["statistics row count or contributors are not one merchant's number"]
    problems, histograms, noise_vars = [], 1, []
    for spec in schema.columns:
        column = columns[spec.name]
        where = f"statistics of column {spec.name!r}"
        if not isinstance(column, dict) or set(column) != COLUMN_KEYS:
            problems.append(f"{where} do not have a histogram's fields")
            continue
        if not (_numbers(column["counts"]) and _number(column["missing"])):
            problems.append(f"{where}: counts are not finite numbers")
            continue
        # An open column's histogram has its own (smaller) noise: checked once all are counted.
        noise_vars.append((where, column["noise_var"], _is_open(spec)))
        histograms += 1
        if spec.kind == CATEGORICAL:
            problems += _category_problems(column, spec.categories, where)
        else:
            grid = grid_for(spec)
            decimals = spec.kind != DATETIME and spec.decimals is None
            histograms += int(decimals)
            if (
                column["kind"] != "numeric"
                or column["grid"] != grid.to_dict()
                or len(column["counts"]) != grid.num_bins
                or column["categories"] is not None
                or column["public_domain"]
                or ((column["decimals"] is None) if decimals else column["decimals"] is not None)
                or (
                    decimals
                    and not (
                        _numbers(column["decimals"]) and len(column["decimals"]) == MAX_DECIMALS + 1
                    )
                )
            ):
                problems.append(f"{where} are not counts on the column's public grid")
    open_columns = sum(_is_open(spec) for spec in schema.columns)
    weight = open_column_weight(histograms=histograms, open_columns=open_columns)
    for where, noise_var, is_open in noise_vars:
        expected = document["row_count_var"] / (weight if is_open else 1.0)
        if not (_number(noise_var) and math.isclose(noise_var, expected, rel_tol=1e-9)):
            problems.append(f"{where}: noise differs from the rest of the release")
    return problems + _noise_problems(
        document["row_count_var"],
        tables=squared_sensitivity(histograms=histograms, open_columns=open_columns),
        ledger=ledger,
        label=STATISTICS_LABEL,
        private=private,
    )


def _is_open(spec) -> bool:
    return spec.kind == CATEGORICAL and spec.categories is None


_PUBLIC_CELLS = frozenset(category_key(v) for v in OPEN_VOCABULARY)


def _category_problems(column: dict, domain: tuple | None, where: str) -> list[str]:
    categories = column["categories"]
    if column["kind"] != "categorical" or column["grid"] is not None or column["decimals"]:
        return [f"{where} are not a categorical histogram"]
    if not isinstance(categories, list) or len(categories) != len(column["counts"]):
        return [f"{where}: categories and counts differ in number"]
    if domain is not None:
        if not column["public_domain"] or categories != list(domain):
            return [f"{where}: categories are not the declared domain"]
        return []
    if column["public_domain"] or len(categories) > MAX_MARGINAL_DOMAIN + len(OPEN_VOCABULARY):
        return [f"{where}: too many released categories"]
    scalar = (str, int, float, bool)
    if not all(
        isinstance(c, scalar) and (not isinstance(c, str) or len(c) <= MAX_CATEGORY_CHARS)
        for c in categories
    ):
        return [f"{where}: a released category is not a short scalar"]
    if categories != sorted(categories, key=canonical_order):
        return [f"{where}: released categories are not in canonical order"]
    keys = [category_key(c) for c in categories]
    # Every public cell, zeros included (its absence would say no row holds it), once each;
    # never OTHER itself, which only the server's closing of the domain adds.
    if len(set(keys)) != len(keys) or not set(keys) >= _PUBLIC_CELLS:
        return [f"{where}: released categories are not every public cell once plus found labels"]
    if category_key(OTHER) in keys:
        return [f"{where}: a release holds the {OTHER!r} value"]
    return []


def marginal_problems(document, *, request: dict, ledger: dict | None, private: bool) -> list[str]:
    """Noisy marginals: exactly the tables the request's phase asks for, shaped by the
    request's encoder domains, with the noise of the ledger's record."""
    if not isinstance(document, dict) or set(document) != MARGINAL_KEYS:
        return ["marginals document does not have the fields of noisy count tables"]
    encoder = TableEncoder.from_dict(request["encoder"])
    model = build_model("marginal", encoder, request.get("model_options") or {})
    if not isinstance(model, MarginalModel):
        return ["marginals requested of a model that is not the marginal model"]
    phase = request.get("phase")
    requested = requested_tables(model, request)
    if requested is None:
        return ["marginals of an unknown phase"]
    cliques, atoms = requested
    expected_cliques = cliques + [[-1 - i] for i in range(len(atoms))]
    expected_shapes = [[model.sizes[j] for j in c] for c in cliques] + atoms
    if document["cliques"] != expected_cliques or document["shapes"] != expected_shapes:
        return ["marginal tables are not the ones the request's phase measures"]
    if document["contributors"] != 1 or not isinstance(document["tables"], list):
        return ["marginals are not one merchant's tables"]
    if [_shape(t) for t in document["tables"]] != expected_shapes:
        return ["marginal tables are not tables of finite numbers of their declared shapes"]
    limits = _domain_limits(model, request)
    pair_shapes = expected_shapes[: len(cliques)]
    if any(
        n > limits[j]
        for clique, shape in zip(cliques, pair_shapes, strict=True)
        for j, n in zip(clique, shape, strict=True)
    ) or any(n > MAX_MARGINAL_DOMAIN for shape in atoms for n in shape):
        return ["a marginal domain is longer than its column's limit"]
    return _noise_problems(
        document["noise_var"],
        tables=len(cliques) + model.atom_weight * len(atoms),
        ledger=ledger,
        label=SELECTION_LABEL if phase == SELECTION else MEASUREMENT_LABEL,
        private=private,
    )


def requested_tables(
    model: MarginalModel, request: dict
) -> tuple[list[list[int]], list[list[int]]] | None:
    """The cliques (column indices) and the 1-way atom shapes (grid bins) the request's phase
    measures; None for an unknown phase."""
    phase = request.get("phase")
    if phase == SELECTION:
        cliques = [list(c) for c in all_pairs(len(model.sizes))]
        atoms = [[grid_for(model.encoder.schema[name]).num_bins] for name in model.atom_columns()]
        return cliques, atoms
    if phase == MEASUREMENT:
        return [list(c) for c in model.measurement_cliques([tuple(p) for p in request["tree"]])], []
    return None


def requested_cells(request: dict) -> int:
    """How many numbers the marginals a request asks for hold: public, from its encoder (a
    declared domain of 20,000 postcodes makes large tables, and says nothing about the rows)."""
    encoder = TableEncoder.from_dict(request["encoder"])
    model = build_model("marginal", encoder, request.get("model_options") or {})
    if not isinstance(model, MarginalModel):
        return 0
    requested = requested_tables(model, request)
    if requested is None:
        return 0
    cliques, atoms = requested
    return sum(math.prod(model.sizes[j] for j in c) for c in cliques) + sum(
        math.prod(shape) for shape in atoms
    )


def _domain_limits(model: MarginalModel, request: dict) -> list[int]:
    """The longest domain each column's marginals may have: ``MAX_MARGINAL_DOMAIN``, or a
    declared categorical column's whole public domain (plus its missing slot) where the
    request's encoder holds exactly that domain. A declared domain is public, so its length
    says nothing about the rows (a shop's 20,000 postcodes); a domain the server chose (DP
    categories, numeric bins) keeps the cap."""
    schema = model.encoder.schema
    pinned = request.get("schema") is None or request["schema"] == schema.to_dict()
    limits = []
    for domain in model.domains:
        spec, transform = schema[domain.name], model.encoder.transforms[domain.name]
        declared = (
            pinned
            and spec.kind == CATEGORICAL
            and spec.categories is not None
            and list(getattr(transform, "categories", ())) == list(spec.categories)
        )
        limits.append(
            max(MAX_MARGINAL_DOMAIN, len(spec.categories) + 1) if declared else MAX_MARGINAL_DOMAIN
        )
    return limits


def weights_problems(arrays: dict[str, torch.Tensor], *, request: dict) -> list[str]:
    """Model weights: exactly the tensors of the requested model, finite."""
    model = build_model(
        request["model"], TableEncoder.from_dict(request["encoder"]), request["model_options"]
    )
    expected = {name: (tuple(t.shape), t.dtype) for name, t in model.state_dict().items()}
    found = {name: (tuple(t.shape), t.dtype) for name, t in arrays.items()}
    if found != expected:
        return ["weights are not the tensors of the requested model"]
    if not all(torch.isfinite(t).all() for t in arrays.values() if t.is_floating_point()):
        return ["weights hold non-finite values"]
    return []


def audit_problems(document) -> list[str]:
    """An audit reply says only whether the merchant wrote its local report."""
    if not isinstance(document, dict) or not set(document) <= AUDIT_KEYS:
        return ["audit document holds more than whether a local report was written"]
    if not all(isinstance(v, bool) for v in document.values()):
        return ["audit document values are not flags"]
    return []
