"""Where along the width axis a network starts to interpolate its training set.

Two definitions, used in this order:

1. **By parameter count** (the paper's): the x where the number of parameters P crosses n (CE) or n*K (MSE),
   n = number of training samples, K = number of classes. Needs every completed run to record its parameter
   count (``params/count`` or ``model/params`` in results.json ``final``) and n (``data/train_size``), and
   for MSE (``model.loss`` containing "mse") K (``data/num_classes``). P is interpolated linearly in
   log(x) - log(P) between the two grid points around the crossing; the result is exact only for P = c x^a.
2. **Empirically**: per hue level (e.g. label noise), the smallest x whose mean final ``train/acc`` over
   seeds reaches ``min_train_acc`` (default 0.99, i.e. train error <= 1 %, measured on the labels the
   model was trained on, noisy ones included). A grid value, so it errs high by up to one grid step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lipschitz_dd.metric_names import PARAMS_COUNT, TRAIN_ACC
from lipschitz_dd.report.records import LoadedRun

PARAM_COUNT_METRICS = (PARAMS_COUNT, "model/params")
TRAIN_SIZE_METRIC = "data/train_size"
NUM_CLASSES_METRIC = "data/num_classes"
LOSS_CONFIG_KEY = "model.loss"


@dataclass(frozen=True)
class Threshold:
    """A vertical line at ``x``; ``hue_level`` is None when it holds for every hue level."""

    x: float
    label: str
    hue_level: str | None = None


def parameter_threshold(records: Sequence[LoadedRun], x: str) -> Threshold | None:
    """Definition 1 of the module docstring; None when a needed quantity is not recorded or P never
    crosses the target within the grid."""
    points, targets = [], set()
    for record in records:
        if not record.completed:
            continue
        params = next(
            (record.final_value(m) for m in PARAM_COUNT_METRICS if not math.isnan(record.final_value(m))), math.nan
        )
        n_train = record.final_value(TRAIN_SIZE_METRIC)
        x_value = _as_float(record.config.get(x))
        if math.isnan(params) or math.isnan(n_train) or math.isnan(x_value):
            return None
        is_mse = "mse" in str(record.config.get(LOSS_CONFIG_KEY, "")).lower()
        n_classes = record.final_value(NUM_CLASSES_METRIC) if is_mse else 1.0
        if math.isnan(n_classes):
            return None
        targets.add((n_train * n_classes, "n*K" if is_mse else "n"))
        points.append((x_value, params))
    if len(targets) != 1 or not points:
        return None
    ((target, target_name),) = targets
    by_x = pd.DataFrame(points, columns=["x", "params"]).groupby("x")["params"].mean().sort_index()
    xs, params = by_x.index.to_numpy(float), by_x.to_numpy(float)
    above = np.nonzero(params >= target)[0]
    if len(above) == 0 or above[0] == 0 or np.any(xs <= 0) or np.any(params <= 0):
        return None
    i = above[0]
    t = (math.log(target) - math.log(params[i - 1])) / (math.log(params[i]) - math.log(params[i - 1]))
    crossing = math.exp(math.log(xs[i - 1]) + t * (math.log(xs[i]) - math.log(xs[i - 1])))
    return Threshold(crossing, f"params = {target_name} = {target:.0f}")


def empirical_thresholds(table: pd.DataFrame, x: str, hue: str | None, min_train_acc: float = 0.99) -> list[Threshold]:
    """Definition 2 of the module docstring, one threshold per hue level (levels that never reach
    ``min_train_acc`` get none). ``table`` is the completed rows of the runs table."""
    if TRAIN_ACC not in table.columns or x not in table.columns:
        return []
    levels = [(None, table)] if hue is None or hue not in table.columns else list(table.groupby(hue))
    thresholds = []
    for level, rows in levels:
        mean_acc = rows.groupby(x)[TRAIN_ACC].mean().dropna().sort_index()
        reached = mean_acc[mean_acc >= min_train_acc]
        if len(reached):
            label = f"train acc >= {min_train_acc:g}" + ("" if level is None else f" ({hue}={level})")
            thresholds.append(Threshold(float(reached.index[0]), label, None if level is None else str(level)))
    return thresholds


def _as_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
