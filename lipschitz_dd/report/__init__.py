"""Read run folders (results.json, metrics.csv) and draw the study's figures and tables.

Imports nothing of the training code: run folders and W&B runs are the only input (see docs/run_folder.md).
"""

from lipschitz_dd.report.bias_variance import bias_variance_table, output_at_zero_variance, variance_bound
from lipschitz_dd.report.build import ReportSummary, build_report
from lipschitz_dd.report.power_law import PowerLawFit, fit_power_law, power_law_table
from lipschitz_dd.report.records import LoadedRun, find_run_folders, load_run, load_runs, read_metrics_csv
from lipschitz_dd.report.tables import aggregate_over_seeds, config_axes, runs_table, to_markdown

__all__ = [
    "LoadedRun",
    "PowerLawFit",
    "ReportSummary",
    "aggregate_over_seeds",
    "bias_variance_table",
    "build_report",
    "config_axes",
    "find_run_folders",
    "fit_power_law",
    "load_run",
    "load_runs",
    "output_at_zero_variance",
    "power_law_table",
    "read_metrics_csv",
    "runs_table",
    "to_markdown",
    "variance_bound",
]


def __getattr__(name: str):
    """Deprecated names (see lipschitz_dd/compat.py)."""
    from lipschitz_dd.compat import deprecated_name

    return deprecated_name(__name__, name)
