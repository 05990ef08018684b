"""The catalogue of the study's findings and the command that reproduces each one (`lipschitz-dd reproduce`).

A finding = a shipped sweep file, per-scale overrides of its parameters, and an analysis of the run folders into
figures, a summary.md and a verdict derived from declared checks (verdict.py). See registry.py for how to add one.
"""

from lipschitz_dd.reproduce.registry import SCALES, Analysis, Finding, Recorded, all_findings, get_finding, register
from lipschitz_dd.reproduce.run import MissingData, NotAvailable, Outcome, analyse_folder, run_finding, scaled_sweep
from lipschitz_dd.reproduce.verdict import Check, Threshold, Verdict, decide

__all__ = [
    "SCALES",
    "Analysis",
    "Check",
    "Finding",
    "MissingData",
    "NotAvailable",
    "Outcome",
    "Recorded",
    "Threshold",
    "Verdict",
    "analyse_folder",
    "decide",
    "all_findings",
    "get_finding",
    "register",
    "run_finding",
    "scaled_sweep",
]
