"""Tables of runs: one row per run, and the mean/std over seeds of each grid point, as CSV and Markdown."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from lipschitz_dd.metric_names import AVG, LOWER, TEST_ACC, TEST_LOSS, TRAIN_ACC, TRAIN_LOSS, UPPER
from lipschitz_dd.report.records import COMPLETED_STATUSES, LoadedRun

#: Final metrics shown for every run (names in docs/conventions.md).
TABLE_METRICS = (
    TEST_LOSS,
    TRAIN_LOSS,
    TEST_ACC,
    TRAIN_ACC,
    LOWER,
    AVG,
    UPPER,
)
DEFAULT_SEED_KEY = "seed_everything"

# Config keys that name or place a run rather than describe the experiment; never used as axes.
_BOOKKEEPING_NAMES = {
    "run_name",
    "save_dir",
    "experiment",
    "config",
    "name",
    "version",
    "id",
    "dirpath",
    "default_root_dir",
    "ckpt_path",
    "data_dir",
    "project",
    "group",
    "tags",
}
_BOOKKEEPING_PARTS = {"logger", "callbacks"}


def config_axes(records: Sequence[LoadedRun], always: Sequence[str] = ()) -> list[str]:
    """Config keys that describe the grid: every key whose value differs between runs (bookkeeping keys
    such as run names, folders and loggers excluded), plus the keys in ``always`` present in any run.
    Order: ``always`` first (in the given order), then the others alphabetically."""
    present = {key for record in records for key in record.config}
    varying = []
    for key in sorted(present):
        parts = key.split(".")
        if parts[-1] in _BOOKKEEPING_NAMES or _BOOKKEEPING_PARTS.intersection(parts):
            continue
        values = {_hashable(record.config.get(key)) for record in records}
        if len(values) > 1:
            varying.append(key)
    first = [key for key in dict.fromkeys(always) if key in present]
    return first + [key for key in varying if key not in first]


def runs_table(
    records: Sequence[LoadedRun], axes: Sequence[str], metrics: Sequence[str] = TABLE_METRICS
) -> pd.DataFrame:
    """One row per run: ``run``, ``experiment``, the config ``axes``, ``status``, the final value of each
    metric (results.json ``final``, else the last value in metrics.csv, else NaN), ``epochs``, ``seconds``,
    ``problems`` (what was missing or wrong) and ``path``. Every run is listed, whatever its status."""
    rows = []
    for record in records:
        row: dict[str, Any] = {"run": record.name, "experiment": record.experiment}
        row.update({axis: record.config.get(axis) for axis in axes})
        row["status"] = record.status
        row.update({metric: record.final_value(metric) for metric in metrics})
        row["epochs"] = record.epochs
        row["seconds"] = record.seconds
        row["problems"] = "; ".join(record.problems)
        row["path"] = str(record.path)
        rows.append(row)
    table = pd.DataFrame(rows)
    sortable = [axis for axis in axes if axis in table.columns and _sortable(table[axis])]
    return table.sort_values(sortable + ["run"], kind="stable").reset_index(drop=True)


def aggregate_over_seeds(
    table: pd.DataFrame, axes: Sequence[str], seed_key: str = DEFAULT_SEED_KEY, metrics: Sequence[str] = TABLE_METRICS
) -> pd.DataFrame:
    """One row per grid point (``axes`` without ``seed_key``): ``runs`` (all runs), ``completed`` (runs
    with a completed status, the only ones averaged) and, per metric, ``<metric> mean`` and ``<metric> std``
    (sample standard deviation over seeds, NaN with one seed)."""
    group_keys = [axis for axis in axes if axis != seed_key and axis in table.columns]
    frame = table.copy()
    frame["_completed"] = frame["status"].isin(COMPLETED_STATUSES)
    for key in group_keys:  # lists (e.g. model.widths) cannot be grouped on: use their repr
        frame[key] = frame[key].map(_hashable)
    groups = frame.groupby(group_keys, sort=True, dropna=False) if group_keys else [((), frame)]
    rows = []
    for key_values, group in groups:
        key_values = key_values if isinstance(key_values, tuple) else (key_values,)
        row: dict[str, Any] = dict(zip(group_keys, key_values, strict=False))
        row["runs"] = len(group)
        done = group[group["_completed"]]
        row["completed"] = len(done)
        for metric in metrics:
            if metric in done.columns:
                row[f"{metric} mean"] = done[metric].mean()
                row[f"{metric} std"] = done[metric].std(ddof=1) if len(done) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame, significant_digits: int = 4) -> str:
    """A GitHub Markdown table; numbers with ``significant_digits`` significant digits, NaN as ``-``."""

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:.{significant_digits}g}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(column) for column in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(value) for value in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _hashable(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def _sortable(column: pd.Series) -> bool:
    try:
        sorted(column.dropna().tolist())
        return True
    except TypeError:
        return False
