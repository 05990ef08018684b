"""Small numerical helpers shared by the findings' analyses (plain numpy/pandas on run records)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

from lipschitz_dd.metric_names import AVG, LOWER, TEST_ACC, TEST_LOSS, TRAIN_ACC, TRAIN_LOSS, UPPER
from lipschitz_dd.report.figures import tidy_log_ticks
from lipschitz_dd.report.records import LoadedRun
from lipschitz_dd.report.tables import runs_table

BOUNDS = (LOWER, AVG, UPPER)
METRICS = (TRAIN_LOSS, TRAIN_ACC, TEST_LOSS, TEST_ACC, *BOUNDS)


@dataclass(frozen=True)
class LogLogFit:
    """log y = log c + slope * log x by least squares on the points with x, y > 0; r2 = R^2 of that fit."""

    slope: float
    r2: float
    n: int

    def __str__(self) -> str:
        return f"{self.slope:.3g} (R^2 {self.r2:.2f}, {self.n} points)"


def loglog_fit(x: Sequence[float], y: Sequence[float]) -> LogLogFit:
    """The log-log slope and its R^2; NaN with fewer than two distinct usable x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    lx, ly = np.log(x[keep]), np.log(y[keep])
    if np.unique(lx).size < 2:
        return LogLogFit(math.nan, math.nan, int(keep.sum()))
    slope, intercept = np.polyfit(lx, ly, 1)
    residual = ly - (slope * lx + intercept)
    total = ((ly - ly.mean()) ** 2).sum()
    r2 = 1.0 - (residual**2).sum() / total if total > 0 else 1.0
    return LogLogFit(float(slope), float(r2), int(keep.sum()))


def completed_table(records: Sequence[LoadedRun], axes: Sequence[str]) -> pd.DataFrame:
    """One row per completed run: the config `axes` and the final value of each metric of METRICS."""
    table = runs_table(records, list(axes), METRICS)
    return table[table["status"].isin(("finished", "stopped_converged"))].reset_index(drop=True)


def completed_by_width(records: Sequence[LoadedRun], key: str = "model.width") -> list[LoadedRun]:
    """The completed runs, sorted by the config value `key` (the width by default)."""
    return sorted((r for r in records if r.completed), key=lambda r: float(r.config.get(key, 0)))


def means(table: pd.DataFrame, by: Sequence[str], metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Mean over seeds (the other columns) of `metrics`, one row per value of `by`."""
    present = [m for m in metrics if m in table.columns]
    return table.groupby(list(by), sort=True)[present].mean().reset_index()


def initial_value(record: LoadedRun, metric: str) -> float:
    """The metric at epoch 0 (before the first update) from metrics.csv; NaN if not logged."""
    frame = record.metrics
    if metric not in frame.columns or 0 not in frame.index:
        return math.nan
    value = frame.loc[0, metric]
    return float(value) if pd.notna(value) else math.nan


def growth_since_init(record: LoadedRun, metric: str) -> float:
    """The metric's final value over its value at epoch 0 (NaN if either is missing)."""
    return record.final_value(metric) / initial_value(record, metric)


def argmax_of(frame: pd.DataFrame, x: str, metric: str) -> Any:
    """The value of `x` at the row where `metric` is largest (None if no value)."""
    values = frame[metric].dropna() if metric in frame.columns else pd.Series(dtype=float)
    return None if values.empty else frame.loc[values.idxmax(), x]


def fmt(value: Any) -> str:
    """A number with 4 significant digits (NaN as '-'), anything else as str."""
    if isinstance(value, (float, np.floating)):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """`frame` as GitHub Markdown lines."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    return [header, rule] + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]


def save_figure(figure: Figure, path: Path, x_ticks=None) -> Path:
    """Save a finding's figure at 120 dpi, with the report's readable log-axis ticks on every axes; with
    `x_ticks` (the grid's points), every x axis is ticked exactly there instead (x_ticks_at)."""
    for ax in figure.axes:
        tidy_log_ticks(ax)
        if x_ticks is not None:
            x_ticks_at(ax, x_ticks)
    figure.savefig(path, dpi=120)
    return path


def errorbar_spread(ax, x, mean, low, high, label: str | None = None, fmt: str = "o-", **options) -> None:
    """Plot `mean` against `x` with error bars from `low` to `high` (the seed spread min..max: how every figure
    of the catalogue draws it); `options` go to matplotlib's errorbar (e.g. color)."""
    mean, low, high = (np.asarray(v, dtype=float) for v in (mean, low, high))
    ax.errorbar(x, mean, yerr=[mean - low, high - mean], fmt=fmt, capsize=3, label=label, **options)


def errorbar_min_max(ax, values_by_x, label: str | None = None, fmt: str = "o-", **options):
    """Plot `values_by_x` (a pandas SeriesGroupBy: the seeds' values grouped by the x axis) as the mean per x with
    error bars from the smallest to the largest value (min..max over seeds); returns the means."""
    mean = values_by_x.mean()
    errorbar_spread(ax, mean.index, mean, values_by_x.min(), values_by_x.max(), label, fmt, **options)
    return mean


def x_ticks_at(ax, values) -> None:
    """x ticks exactly at `values`, as plain numbers ("250", "4000"), no minor ticks; labels turned 45 degrees
    when they hold more than 16 characters in all, so that neighbours never overlap."""
    values = sorted({float(v) for v in values if v == v})
    labels = [f"{v:g}" for v in values]
    ax.xaxis.set_major_locator(FixedLocator(values))
    ax.xaxis.set_major_formatter(FixedFormatter(labels))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.tick_params(axis="x", labelrotation=45 if sum(map(len, labels)) > 16 else 0)
