"""One data owner's privacy ledger: every mechanism that touched its rows, composed with RDP.

The project runs two kinds of mechanism: DP-SGD steps, subsampled Gaussian mechanisms (noise
multiplier sigma, Poisson rate q), and one-shot releases of integer count tables with discrete
Gaussian noise (the encoder statistics, the marginals: q = 1, one step). Rényi DP composes them
exactly by adding their RDP curves; the sum is converted to (epsilon, delta) once. A release
that thresholds noisy counts of an unknown category domain also fails with a small
probability; that probability is added to delta (``extra_delta``), so epsilon is reported at
``delta - extra_delta``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, replace

import numpy as np
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

# Fractional orders near 1 matter only for large epsilon; integer orders keep recomputation exact.
# Above 64 the grid is sparse: such orders are optimal only for heavily noised releases (small
# merchants, small epsilon), where a coarse grid costs little.
RDP_ORDERS: tuple[float, ...] = (
    1.25, 1.5, 1.75, *map(float, range(2, 65)), 72.0, 80.0, 96.0, 128.0, 192.0, 256.0,
    384.0, 512.0, 768.0, 1024.0,
)  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _step_rdp(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """RDP of one step at every order (composition over steps is linear)."""
    rdp = compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(RDP_ORDERS)
    )
    return np.asarray(rdp, dtype=float)


GAUSSIAN, DISCRETE_GAUSSIAN = "gaussian", "discrete-gaussian"
MECHANISMS = (GAUSSIAN, DISCRETE_GAUSSIAN)


def _discrete_gaussian_rdp(noise_multiplier: float) -> np.ndarray:
    """RDP of integer counts plus independent discrete Gaussian noise, L2 sensitivity Delta2
    and noise sigma = noise_multiplier * Delta2 per cell (sigma_j per cell: Delta2^2 / sigma^2
    is sum_j delta_j^2 / sigma_j^2): alpha * Delta2^2 / (2 sigma^2) = alpha / (2 nm^2).

    Canonne, Kamath & Steinke 2020 (Section 2: the discrete Gaussian's concentrated DP, and
    its multivariate form with independent coordinates): N_Z(0, sigma^2) on an integer query
    of sensitivity Delta is 1/2 (Delta/sigma)^2-zCDP. In one line: for an integer shift mu,
    sum_x p(x)^alpha p(x - mu)^(1 - alpha) is exp(alpha (alpha - 1) mu^2 / (2 sigma^2)) times
    a theta sum shifted by (1 - alpha) mu, which is at most the unshifted one (equal at
    integer alpha: exact there, and the same curve as the continuous Gaussian's). Independent
    cells compose. Kairouz, Liu & Steinke 2021 (Proposition 14) add
    tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1)) for a *sum of n parties'*
    discrete Gaussians (which is not a discrete Gaussian); each release here is one owner's
    own noise, seen alone by the server (n = 1, tau = 0), and their bound is the one above."""
    return np.asarray(RDP_ORDERS) / (2.0 * noise_multiplier**2)


class BudgetExceededError(RuntimeError):
    """The next mechanism would take an owner past its (epsilon, delta) budget."""


@dataclass(frozen=True)
class MechanismRecord:
    """One mechanism applied ``steps`` times: a (subsampled) Gaussian (``mechanism="gaussian"``)
    or a discrete Gaussian release of integer counts (``"discrete-gaussian"``, ``sample_rate``
    1). ``noise_multiplier`` is the noise std over the L2 sensitivity; ``l2_sensitivity`` (in
    units of the release's count-table noise) and ``dimension`` (noisy cells; 0: not recorded,
    or not public, as a sparse domain's size) describe the release and do not change its RDP."""

    label: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    extra_delta: float = 0.0
    mechanism: str = GAUSSIAN
    l2_sensitivity: float = 1.0
    dimension: int = 0

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"unknown mechanism {self.mechanism!r}; one of {MECHANISMS}")
        if self.mechanism == DISCRETE_GAUSSIAN and self.sample_rate != 1.0:
            raise ValueError("a discrete Gaussian release is not subsampled (sample_rate 1)")

    def rdp(self) -> np.ndarray:
        """RDP at each of ``RDP_ORDERS``."""
        if self.mechanism == DISCRETE_GAUSSIAN:
            return self.steps * _discrete_gaussian_rdp(self.noise_multiplier)
        return self.steps * _step_rdp(self.sample_rate, self.noise_multiplier)


class PrivacyLedger:
    """Composition of all mechanisms run on one owner's table, with a budget.

    The ledger is the only source of the epsilon that fedsynth reports. It persists across
    federated rounds and runs through :meth:`state_dict` / :meth:`from_state_dict`.
    """

    def __init__(self, *, epsilon_budget: float, delta: float, owner: str = "local") -> None:
        if not epsilon_budget > 0:
            raise ValueError(f"epsilon budget must be > 0, got {epsilon_budget}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.epsilon_budget = float(epsilon_budget)
        self.delta = float(delta)
        self.owner = owner
        self.records: list[MechanismRecord] = []

    # -- accounting --------------------------------------------------------------------------
    @property
    def extra_delta(self) -> float:
        return sum(r.extra_delta for r in self.records)

    def epsilon(self, records: list[MechanismRecord] | None = None) -> float:
        """Epsilon at the ledger's delta for ``records`` (default: everything recorded)."""
        records = self.records if records is None else records
        if not records:
            return 0.0
        if any(r.noise_multiplier == 0 for r in records):
            return math.inf
        extra = sum(r.extra_delta for r in records)
        if extra >= self.delta:
            return math.inf
        rdp = sum(r.rdp() for r in records)
        eps, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=self.delta - extra)
        return float(eps)

    def epsilon_after(self, planned: list[MechanismRecord]) -> float:
        """Epsilon if ``planned`` mechanisms ran next."""
        return self.epsilon(self.records + list(planned))

    @property
    def remaining(self) -> float:
        return max(0.0, self.epsilon_budget - self.epsilon())

    def check(self, planned: list[MechanismRecord]) -> None:
        """Refuse (raise) when running ``planned`` would pass the budget."""
        after = self.epsilon_after(planned)
        if after > self.epsilon_budget * (1 + 1e-9):
            what = ", ".join(f"{r.label} ({r.steps} steps)" for r in planned)
            raise BudgetExceededError(
                f"privacy budget of {self.owner!r} would be exceeded: epsilon spent "
                f"{self.epsilon():.4f}, after {what} it would be {after:.4f} > budget "
                f"{self.epsilon_budget:.4f} (delta={self.delta:g}); refusing to run"
            )

    def record(self, record: MechanismRecord) -> None:
        """Add a mechanism that has run; consecutive identical mechanisms merge their steps."""
        last = self.records[-1] if self.records else None
        if (
            last is not None
            and record.extra_delta == 0.0
            and replace(last, steps=record.steps) == record
        ):
            self.records[-1] = replace(last, steps=last.steps + record.steps)
        else:
            self.records.append(record)

    def optimizer_hook(self, *, sample_rate: float, label: str = "dp-sgd"):
        """A hook for ``DPOptimizer.attach_step_hook``: each DP-SGD step is recorded here."""

        def hook(optimizer) -> None:
            self.record(MechanismRecord(label, float(optimizer.noise_multiplier), sample_rate, 1))

        return hook

    # -- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "owner": self.owner,
            "epsilon_budget": self.epsilon_budget,
            "delta": self.delta,
            "records": [asdict(r) for r in self.records],
            "epsilon": self.epsilon(),
            "accountant": "rdp",
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> PrivacyLedger:
        ledger = cls(
            epsilon_budget=float(state["epsilon_budget"]),
            delta=float(state["delta"]),
            owner=str(state.get("owner", "local")),
        )
        ledger.records = [MechanismRecord(**r) for r in state["records"]]
        return ledger

    def epsilon_by_label(self) -> dict[str, float]:
        """Epsilon of each mechanism label alone (the stated budget split)."""
        labels = dict.fromkeys(r.label for r in self.records)
        return {
            label: self.epsilon([r for r in self.records if r.label == label]) for label in labels
        }

    def __repr__(self) -> str:
        return (
            f"PrivacyLedger(owner={self.owner!r}, epsilon={self.epsilon():.4f}, "
            f"budget={self.epsilon_budget}, delta={self.delta:g}, records={len(self.records)})"
        )
