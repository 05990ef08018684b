"""The catalogue of the study's findings and the command that reproduces each one (`lipschitz-dd reproduce`).

A finding = a shipped sweep file, per-scale overrides of its parameters, and an analysis of the run folders into
figures and a summary.md. See registry.py for how to add one.
"""

from lipschitz_dd.reproduce.registry import SCALES, Analysis, Finding, findings, get_finding, register
from lipschitz_dd.reproduce.run import MissingData, NotAvailable, Outcome, analyse_folder, run_finding, scaled_sweep

__all__ = [
    "SCALES",
    "Analysis",
    "Finding",
    "MissingData",
    "NotAvailable",
    "Outcome",
    "analyse_folder",
    "findings",
    "get_finding",
    "register",
    "run_finding",
    "scaled_sweep",
]
