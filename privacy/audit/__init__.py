"""Audit of a synthetic table: fidelity, utility, membership inference, empirical epsilon and
heuristic privacy indicators. Pure functions on DataFrames; :func:`audit_table` runs them all
and returns one JSON-serialisable dict of aggregates (no per-row values)."""

from privacy.audit.attacks import membership_attack
from privacy.audit.empirical_epsilon import audit_scores, epsilon_lower_bound
from privacy.audit.fidelity import fidelity, quality_scores
from privacy.audit.heuristics import dcr_histogram, heuristics
from privacy.audit.run import audit_table
from privacy.audit.utility import utility

__all__ = [
    "audit_scores",
    "audit_table",
    "dcr_histogram",
    "epsilon_lower_bound",
    "fidelity",
    "heuristics",
    "membership_attack",
    "quality_scores",
    "utility",
]
