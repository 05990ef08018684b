"""Power-law growth of a metric over epochs: least-squares fit of log(value) = log(c) + k * log(epoch)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lipschitz_dd.metric_names import AVG, LOWER, UPPER
from lipschitz_dd.report.records import LoadedRun

BOUND_METRICS = (LOWER, AVG, UPPER)


@dataclass(frozen=True)
class PowerLawFit:
    """value ~ prefactor * epoch ** exponent, fitted on ``n_points`` epochs >= ``from_epoch``."""

    exponent: float
    prefactor: float
    from_epoch: int
    n_points: int

    def __call__(self, epochs: np.ndarray) -> np.ndarray:
        """The fitted curve at ``epochs``."""
        return self.prefactor * np.asarray(epochs, dtype=float) ** self.exponent


def fit_power_law(
    epochs: Sequence[float], values: Sequence[float], from_epoch: int = 1, min_points: int = 3
) -> PowerLawFit:
    """Ordinary least squares on log-log axes: minimise sum_i (log v_i - log c - k log e_i)^2 over the
    points with epoch e_i >= max(from_epoch, 1) and a finite value v_i > 0.

    Exact for data that follow c * e^k; otherwise the slope of the best straight line in log-log space
    (it weights late epochs no more than early ones). Returns NaN exponent/prefactor when fewer than
    ``min_points`` usable points remain.
    """
    epochs = np.asarray(epochs, dtype=float)
    values = np.asarray(values, dtype=float)
    if epochs.shape != values.shape:
        raise ValueError(f"epochs and values differ in shape: {epochs.shape} vs {values.shape}")
    start = max(int(from_epoch), 1)
    usable = (epochs >= start) & np.isfinite(values) & (values > 0)
    n_points = int(usable.sum())
    if n_points < min_points or np.unique(epochs[usable]).size < 2:
        return PowerLawFit(math.nan, math.nan, start, n_points)
    exponent, log_prefactor = np.polyfit(np.log(epochs[usable]), np.log(values[usable]), deg=1)
    return PowerLawFit(float(exponent), float(math.exp(log_prefactor)), start, n_points)


def power_law_table(
    records: Sequence[LoadedRun], axes: Sequence[str], from_epoch: int, metrics: Sequence[str] = BOUND_METRICS
) -> pd.DataFrame:
    """One row per (completed run, metric logged by it): the run, its ``axes``, ``metric``, ``exponent``,
    ``prefactor``, ``from_epoch`` and ``n_points`` of :func:`fit_power_law` on the run's metrics.csv."""
    rows = []
    for record in records:
        if not record.completed:
            continue
        for metric in metrics:
            if metric not in record.metrics.columns:
                continue
            series = pd.to_numeric(record.metrics[metric], errors="coerce").dropna()  # any cell a reader let in
            fit = fit_power_law(series.index.to_numpy(), series.to_numpy(), from_epoch)
            row = {"run": record.name, **{axis: record.config.get(axis) for axis in axes}, "metric": metric}
            row.update(exponent=fit.exponent, prefactor=fit.prefactor, from_epoch=fit.from_epoch, n_points=fit.n_points)
            rows.append(row)
    return pd.DataFrame(rows)
