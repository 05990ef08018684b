"""Measurements several findings share: per-sample Jacobian norms of a saved network, the finite maximum of
ratios, and the seed-level statistics the checks of a comparison rest on.

Seed-level statistics (issue: an effect counts when it exceeds the spread over seeds; a peak is located by the
majority of seeds): the spread of a setting is the range min..max of its seeds' values (what the figures draw as
a band). Setting A is above setting B beyond the spread when min over A's seeds > max over B's seeds:
`separated_ratio(a, b)` = min(a) / max(b) > 1. With one seed the range is a point and the ratio is just the
ratio of the two values: the checks then also carry `seeds` so that the verdict is undecided.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

SEED = "seed_everything"


def jacobian_norms(model: torch.nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """||J_f(x_i)||_2 (spectral norm of the input Jacobian, exact: bounds.jacobian_spectral_norms "exact") at
    every row of `x`, in batches; a vector of len(x). Their maximum is C_lower over `x` (a lower bound of
    Lip(f), exact up to float rounding)."""
    from lipschitz_dd.bounds import jacobian_spectral_norms

    return torch.cat([jacobian_spectral_norms(model, b, method="exact").detach() for b in x.split(batch)])


def finite_max(values: torch.Tensor | Sequence[float]) -> float:
    """The largest finite entry of `values` (NaN when there is none: e.g. 0/0 ratios where PGD did not move)."""
    values = torch.as_tensor(values, dtype=torch.float64)
    finite = values[torch.isfinite(values)]
    return float(finite.max()) if len(finite) else math.nan


def seeds_of(table: pd.DataFrame, seed: str = SEED) -> pd.Series:
    """The seed column of a runs table (all 0 when the table has none: one seed)."""
    return table[seed] if seed in table.columns else pd.Series(0, index=table.index)


def fewest_seeds(table: pd.DataFrame, by: Sequence[str], seed: str = SEED) -> int:
    """The fewest distinct seeds behind any group of `by` in `table` (0 for an empty table)."""
    if table.empty:
        return 0
    seeds = seeds_of(table, seed)
    by = [b for b in by if b in table.columns]
    if not by:
        return int(seeds.nunique())
    return int(seeds.groupby([table[b] for b in by]).nunique().min())


def peak_by_majority(table: pd.DataFrame, x: str, metric: str, seed: str = SEED) -> tuple[Any, float]:
    """The value of `x` where most seeds have their largest `metric`, and the fraction of seeds that agree
    (ties: the smallest such x). (None, NaN) when no seed has a value."""
    frame = table.assign(_seed=seeds_of(table, seed))
    frame = frame[frame[metric].notna()] if metric in frame.columns else frame.iloc[0:0]
    if frame.empty:
        return None, math.nan
    peaks = frame.loc[frame.groupby("_seed")[metric].idxmax(), x]
    counts = peaks.value_counts()
    best = counts.max()
    peak = min(v for v, n in counts.items() if n == best)
    return peak, float(best / len(peaks))


def separated_ratio(higher: Sequence[float], lower: Sequence[float]) -> float:
    """min(higher) / max(lower) over the seeds of two settings: > 1 when every seed of the first lies above every
    seed of the second (the effect exceeds the spread); NaN when either is empty or a value is missing."""
    a, b = np.asarray(higher, dtype=float), np.asarray(lower, dtype=float)
    if a.size == 0 or b.size == 0 or np.isnan(a).any() or np.isnan(b).any() or b.max() == 0:
        return math.nan
    return float(a.min() / b.max())


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, min, max) of the seeds' values (NaN when empty)."""
    v = np.asarray([x for x in values if x == x], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    return float(v.mean()), float(v.min()), float(v.max())


def mean_and_spread(table: pd.DataFrame, by: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Per group of `by`: for each metric its mean over seeds and its spread as "min..max" columns
    (`<metric>` = mean, `<metric> min`, `<metric> max`), and the number of seeds."""
    present = [m for m in metrics if m in table.columns]
    grouped = table.groupby(list(by), sort=True)
    frame = grouped[present].mean()
    for m in present:
        frame[f"{m} min"] = grouped[m].min()
        frame[f"{m} max"] = grouped[m].max()
    frame["seeds"] = grouped.size()
    return frame.reset_index()


def binomial_upper_tail(successes: int, trials: int, p: float) -> float:
    """P[X >= successes] for X ~ Binomial(trials, p), exact (sum of the pmf in log space)."""
    if trials <= 0:
        return math.nan
    if successes <= 0:
        return 1.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    total = 0.0
    for k in range(successes, trials + 1):
        log_pmf = (
            math.lgamma(trials + 1)
            - math.lgamma(k + 1)
            - math.lgamma(trials - k + 1)
            + k * math.log(p)
            + (trials - k) * math.log1p(-p)
        )
        total += math.exp(log_pmf)
    return min(1.0, total)
