"""What a benchmark runs: its configuration, its contenders and the job each contender gets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

SDV_MODELS = {
    "gaussiancopula": "GaussianCopulaSynthesizer",
    "ctgan": "CTGANSynthesizer",
    "tvae": "TVAESynthesizer",
}
SDV_LABELS = {"gaussiancopula": "GaussianCopula", "ctgan": "CTGAN", "tvae": "TVAE"}
SETUP_LABELS = {"central": "central", "iid": "IID", "dirichlet": "Dirichlet"}
SETUPS = tuple(SETUP_LABELS)
FEDERATED = ("none", "iid", "dirichlet")
FULL_EPSILONS = (1.0, 3.0, 10.0, math.inf)


def fedsynth_models() -> list[str]:
    """The fedsynth model kinds, read from ``MODELS`` (so new kinds join automatically)."""
    from synth_models.synthesizer import MODELS

    return list(MODELS)


def epsilon_slug(epsilon: float) -> str:
    """``epsilon`` as file names and ``--epsilons`` spell it (``inf``: no DP)."""
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to run. ``None`` fields get the full or ``--quick`` default in :meth:`resolved`."""

    models: tuple[str, ...] | None = None
    epsilons: tuple[float, ...] | None = None
    federated: tuple[str, ...] | None = None
    merchants: int = 5
    alpha: float = 0.5
    partition_column: str | None = None
    rows: int | None = None
    holdout: float = 0.2
    epochs: int | None = None
    rounds: int | None = None
    sdv_epochs: int | None = None
    batch_size: int = 500
    delta: float = 1e-5
    sample_rows: int | None = None
    seed: int = 0
    timeout: float | None = None
    dcr_synthetic_rows: int = 40
    threads: int | None = None  # torch / OpenMP threads of each contender (None: default)
    central: bool = True  # fedsynth models also centrally (one merchant)
    model_options: dict = field(default_factory=dict)
    quick: bool = False

    def resolved(self) -> BenchmarkConfig:
        """Defaults filled in and values checked; resolving a resolved config changes nothing."""
        quick = self.quick
        known = [*SDV_MODELS, *fedsynth_models()]
        models = self.models or tuple(known)
        unknown = [m for m in models if m not in known]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; choose from {known}")
        federated = self.federated
        if federated is None:
            federated = ("dirichlet",) if quick else ("iid", "dirichlet")
        if "none" in federated:  # () after resolving: resolving again keeps it
            if len(federated) > 1:
                raise ValueError("--federated none cannot be combined with iid/dirichlet")
            federated = ()
        bad = [f for f in federated if f not in FEDERATED]
        if bad:
            raise ValueError(f"unknown --federated value(s) {bad}; choose from {FEDERATED}")
        epsilons = self.epsilons or ((1.0, math.inf) if quick else FULL_EPSILONS)
        if any(not (e > 0) for e in epsilons):
            raise ValueError(f"epsilons must be > 0 (or inf), got {list(epsilons)}")
        return replace(
            self,
            models=tuple(dict.fromkeys(models)),
            epsilons=tuple(sorted(set(epsilons))),
            federated=tuple(dict.fromkeys(federated)),
            rows=self.rows if self.rows is not None else (2000 if quick else None),
            epochs=self.epochs or (2 if quick else 10),
            rounds=self.rounds or (2 if quick else 5),
            sdv_epochs=self.sdv_epochs or (2 if quick else 50),
            timeout=self.timeout or (600.0 if quick else 3600.0),
        )

    @property
    def local_epochs(self) -> int:
        """Local epochs per federated round: ``rounds`` of them take each merchant about as
        many passes over its rows as ``epochs`` take the central model over all rows."""
        return max(1, math.ceil(self.epochs / self.rounds))


@dataclass(frozen=True)
class Contender:
    """One fit: a model in a setup at a target epsilon (``inf``: no DP)."""

    family: str  # "sdv" | "fedsynth"
    model: str
    setup: str = "central"  # "central" | "iid" | "dirichlet"
    epsilon: float = math.inf

    @property
    def label(self) -> str:
        if self.family == "sdv":
            return f"SDV {SDV_LABELS[self.model]}"
        return f"fedsynth {self.model.upper()} {SETUP_LABELS[self.setup]}"

    @property
    def slug(self) -> str:
        return f"{self.family}-{self.model}-{self.setup}-eps{epsilon_slug(self.epsilon)}"


def contenders(config: BenchmarkConfig) -> list[Contender]:
    """Every contender of a resolved configuration, in run order."""
    out = [Contender("sdv", m) for m in config.models if m in SDV_MODELS]
    for model in (m for m in config.models if m not in SDV_MODELS):
        for setup in ("central",) * config.central + config.federated:
            out += [Contender("fedsynth", model, setup, eps) for eps in config.epsilons]
    return out


@dataclass(frozen=True)
class ContenderJob:
    """Everything a contender's process needs besides its training rows (pickled to it).

    ``partition_column`` is already resolved (``--partition-column``, else the target) and
    ``sample_rows`` too (``--sample-rows``, else as many as the training rows)."""

    config: BenchmarkConfig  # resolved
    dataset: str
    metadata: dict
    table_name: str
    target: str | None
    partition_column: str | None
    sample_rows: int
