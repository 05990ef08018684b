"""The bias-variance view of the study (docs/study.md, finding 3), from the run records of a sweep with several seeds.

For networks f_s (seeds s = 1..S), their average f_bar = mean_s f_s, Lipschitz constants L_s and L_bar,
and every input x, the triangle inequality through the zero input gives
    ||f_s(x) - f_bar(x)|| <= L_s ||x|| + ||f_s(0) - f_bar(0)|| + L_bar ||x||,
and (a + b + c)^2 <= 3(a^2 + b^2 + c^2) averaged over s and over the test inputs x gives
    function variance  V = E_x mean_s ||f_s(x) - f_bar(x)||^2
                         <= 3 (L_bar^2 + mean_s L_s^2) E||x||^2 + 3 Var f(0),
with Var f(0) = mean_s ||f_s(0) - f_bar(0)||^2 (population variance over the S seeds). Three versions are
computed, each only when its inputs are recorded:

- ``bound (paper)``: L_bar = C_bar, the lower bound of the seed-averaged network, L_s = C_lower,s. Lower
  bounds replace the true constants, so this is an estimate that may err LOW (it is the paper's quantity).
- ``bound (proxy, C_bar = mean C_lower)``: C_bar not recorded, replaced by mean_s C_lower,s. Neither a bound
  nor the paper's estimate; a proxy, labelled as such.
- ``bound (guaranteed, C_upper)``: L_s = C_upper,s and L_bar <= mean_s C_upper,s (the Lipschitz constant of
  an average is at most the average of the constants). A guaranteed upper bound on V when the upper bounds
  are certified (power-iteration upper bounds are estimates that may err low).

Per run, results.json ``final`` must hold: ``lipschitz/lower`` (and ``lipschitz/upper`` for the guaranteed
version), ``data/mean_sq_norm`` = E||x||^2 over the test inputs, ``f0/0`` .. ``f0/<K-1>`` = the K logits at
the zero input (eval mode). Per grid point, C_bar and V need all seeds' networks at once: they are computed
from the seeds' ``snapshot.npz`` files (outputs and input Jacobians at shared fixed points, see ensemble.py,
which puts them in each seed's ``final`` as ``ensemble/lipschitz_lower`` and ``ensemble/function_variance``
before this table is made). Beside them the table always shows the sample variance over seeds of the final
test loss, which is what can be measured from per-run scalars alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from lipschitz_dd.metric_names import LOWER, TEST_LOSS, UPPER
from lipschitz_dd.report.records import LoadedRun

MEAN_SQ_NORM = "data/mean_sq_norm"
F0_PREFIX = "f0/"
ENSEMBLE_LOWER = "ensemble/lipschitz_lower"
FUNCTION_VARIANCE = "ensemble/function_variance"

TEST_LOSS_VARIANCE = "test loss variance over seeds"
PAPER_BOUND = "bound (paper)"
PROXY_BOUND = "bound (proxy, C_bar = mean C_lower)"
GUARANTEED_BOUND = "bound (guaranteed, C_upper)"
#: Table columns that the figure draws (measured quantities first, bounds after).
PLOTTED_COLUMNS = (TEST_LOSS_VARIANCE, FUNCTION_VARIANCE, PAPER_BOUND, PROXY_BOUND, GUARANTEED_BOUND)


def variance_bound(c_bar: float, mean_c_sq: float, mean_sq_norm: float, var_f0: float) -> float:
    """3 (c_bar^2 + mean_c_sq) * mean_sq_norm + 3 * var_f0 (see the module docstring for what it bounds)."""
    return 3.0 * (c_bar**2 + mean_c_sq) * mean_sq_norm + 3.0 * var_f0


def output_at_zero_variance(f0: np.ndarray) -> float:
    """Var f(0) = mean_s ||f_s(0) - mean_t f_t(0)||^2 for an S x K array of logits at the zero input
    (population variance over the S seeds, summed over the K outputs). Exact."""
    f0 = np.asarray(f0, dtype=float)
    return float(((f0 - f0.mean(axis=0)) ** 2).sum(axis=1).mean())


def bias_variance_table(
    records: Sequence[LoadedRun], axes: Sequence[str], seed_key: str
) -> tuple[pd.DataFrame, list[str]]:
    """One row per grid point (``axes`` without ``seed_key``) with at least two completed seeds:
    the axes, ``seeds``, ``test loss variance over seeds`` (sample variance, ddof=1), ``mean C_lower^2``,
    ``E||x||^2``, ``Var f(0)``, ``C_bar``, ``ensemble/function_variance`` and the three bounds of the
    module docstring (NaN where an input is missing). Also returns one-line notes naming what is missing."""
    group_keys = [axis for axis in axes if axis != seed_key]
    rows, missing = [], set()
    for runs in seed_groups(records, axes, seed_key):
        row = {axis: runs[0].config.get(axis) for axis in group_keys}
        row.update(_group_quantities(runs, missing))
        rows.append(row)
    notes = []
    if not rows:
        notes.append("bias-variance needs at least two completed seeds per grid point; skipped")
    elif missing:
        notes.append("bias-variance: not recorded per run: " + ", ".join(sorted(missing)))
    return pd.DataFrame(rows), notes


def seed_groups(records: Sequence[LoadedRun], axes: Sequence[str], seed_key: str) -> list[list[LoadedRun]]:
    """The completed runs grouped by grid point (equal config values on ``axes`` other than ``seed_key``),
    in order of first appearance; only groups with at least two runs (seeds)."""
    group_keys = [axis for axis in axes if axis != seed_key]
    groups: dict[tuple, list[LoadedRun]] = {}
    for record in records:
        if record.completed:
            key = tuple(repr(record.config.get(axis)) for axis in group_keys)
            groups.setdefault(key, []).append(record)
    return [runs for runs in groups.values() if len(runs) >= 2]


def _group_quantities(runs: Sequence[LoadedRun], missing: set[str]) -> dict[str, float]:
    def per_run(metric: str) -> np.ndarray:
        values = np.array([run.final_value(metric) for run in runs])
        if np.isnan(values).any():
            missing.add(metric)
        return values

    lower, upper = per_run(LOWER), per_run(UPPER)
    mean_sq_norm = float(per_run(MEAN_SQ_NORM).mean())
    var_f0 = _f0_variance(runs, missing)
    c_bar = float(per_run(ENSEMBLE_LOWER).mean())
    mean_lower_sq = float((lower**2).mean())
    mean_upper_sq = float((upper**2).mean())
    return {
        "seeds": len(runs),
        TEST_LOSS_VARIANCE: float(np.var([run.final_value(TEST_LOSS) for run in runs], ddof=1)),
        "mean C_lower^2": mean_lower_sq,
        "E||x||^2": mean_sq_norm,
        "Var f(0)": var_f0,
        "C_bar": c_bar,
        FUNCTION_VARIANCE: float(per_run(FUNCTION_VARIANCE).mean()),
        PAPER_BOUND: variance_bound(c_bar, mean_lower_sq, mean_sq_norm, var_f0),
        PROXY_BOUND: variance_bound(float(lower.mean()), mean_lower_sq, mean_sq_norm, var_f0),
        GUARANTEED_BOUND: variance_bound(float(upper.mean()), mean_upper_sq, mean_sq_norm, var_f0),
    }


def _f0_variance(runs: Sequence[LoadedRun], missing: set[str]) -> float:
    keys = sorted(k for k in runs[0].final if k.startswith(F0_PREFIX))
    if not keys or any(sorted(k for k in run.final if k.startswith(F0_PREFIX)) != keys for run in runs):
        missing.add(f"{F0_PREFIX}<k> (logits at the zero input)")
        return math.nan
    return output_at_zero_variance(np.array([[run.final_value(k) for k in keys] for run in runs]))
