"""The study's parameter distance: ||theta - theta_0||_2 (params/dist_init: the Euclidean norm of all parameters
flattened, minus their values at epoch 0; exact) after training shows the same double descent over width as the
test loss and the Lipschitz bounds.

Read from the `double_descent` finding's runs (the same sweep and scales, imported from that module: trained
once). The checks are double_descent's, applied to the distance, at seed level (reproduce/measures.py): per
noise level the width where most seeds' final distance is largest is interior and within PEAK_STEPS grid steps
of the width where most seeds' test loss peaks (no majority: not located), and after its peak the distance
falls beyond the seed spread (min over seeds at the peak / max over seeds at the largest width > 1).

The study's second statement, that Adam travels further than SGD, is the finding `parameter_distance_optimizer`
(the optimizer finding's runs).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lipschitz_dd.metric_names import DIST_INIT, LOWER, TEST_LOSS, TRAIN_ACC
from lipschitz_dd.report.figures import label
from lipschitz_dd.report.tables import runs_table
from lipschitz_dd.reproduce.analysis import fmt, markdown_table, save_figure
from lipschitz_dd.reproduce.findings.double_descent import (
    EVERY_LEVEL,
    FALLS,
    NOISE,
    PEAK_STEPS,
    SCALES,
    SWEEP,
    WIDTH,
)
from lipschitz_dd.reproduce.measures import SEED, fewest_seeds, mean_and_spread, peak_by_majority, separated_ratio
from lipschitz_dd.reproduce.registry import Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check

DIST = DIST_INIT
METRICS = (TEST_LOSS, TRAIN_ACC, LOWER, DIST)


def distance_table(records, axes=(WIDTH, NOISE, SEED)) -> pd.DataFrame:
    """One row per completed run: the config `axes` and the final test loss, train accuracy, C_lower and
    ||theta - theta_0||."""
    table = runs_table(records, list(axes), METRICS)
    table = table[table["status"].isin(("finished", "stopped_converged"))].reset_index(drop=True)
    for axis in axes:
        if axis not in table.columns:
            table[axis] = 0
    return table


def peak_rows(table: pd.DataFrame, metric: str = DIST, hue: str = NOISE) -> pd.DataFrame:
    """Per level of `hue`: the widths where most seeds' test loss and most seeds' `metric` peak (None: no
    majority), whether the metric's peak is interior and within PEAK_STEPS grid steps of the test-loss peak
    (1/0), and its fall after the peak beyond the seed spread (min over seeds at the peak / max at the largest
    width; 0 when the peak is the largest width)."""
    rows = []
    for level, group in table.groupby(hue):
        widths = sorted(group[WIDTH].unique())
        loss_peak, _ = peak_by_majority(group, WIDTH, TEST_LOSS)
        peak, agree = peak_by_majority(group, WIDTH, metric)
        if agree <= 0.5 or loss_peak is None:
            peak = None
        row = {hue: level, "test-loss peak": loss_peak, "distance peak": peak, "seeds agreeing": agree}
        if peak is None:
            row["with test loss"], row["falls after"] = math.nan, math.nan
        else:
            i, j = widths.index(peak), widths.index(loss_peak)
            row["with test loss"] = float(abs(i - j) <= PEAK_STEPS and 0 < i < len(widths) - 1)
            at_peak = group.loc[group[WIDTH] == peak, metric]
            at_last = group.loc[group[WIDTH] == widths[-1], metric]
            row["falls after"] = separated_ratio(at_peak, at_last) if peak != widths[-1] else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def checks(table: pd.DataFrame) -> list[Check]:
    """The distance peaks with the test loss at every noise level, and falls after its peak beyond the spread."""
    seeds = fewest_seeds(table, [NOISE, WIDTH])
    peaks = peak_rows(table)
    together, falls = peaks["with test loss"], peaks["falls after"]
    return [
        Check(
            "||theta - theta_0|| peaks with the test loss",
            f"share of noise levels where most seeds' distance peak is interior and within {PEAK_STEPS} grid step "
            "of the test-loss peak",
            together.mean() if len(together) and together.notna().all() else math.nan,
            EVERY_LEVEL,
            seeds=seeds,
        ),
        Check(
            "||theta - theta_0|| falls after its peak",
            "smallest over noise levels of min over seeds of the distance at its peak / max at the largest width",
            falls.min() if len(falls) and falls.notna().all() else math.nan,
            FALLS,
            seeds=seeds,
        ),
    ]


def correlation_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Per noise level: the Pearson correlation over runs of log ||theta - theta_0|| with log C_lower (the
    linearisation argument: the displacement drives the bound's growth). Descriptive, not a check."""
    rows = []
    for level, group in table.groupby(NOISE):
        frame = group[[DIST, LOWER]].dropna()
        frame = frame[(frame > 0).all(axis=1)]
        r = float(np.corrcoef(np.log(frame[DIST]), np.log(frame[LOWER]))[0, 1]) if len(frame) > 2 else math.nan
        rows.append({"noise": level, "runs": len(frame), "corr(log distance, log C_lower)": r})
    return pd.DataFrame(rows)


def _figure(table: pd.DataFrame, path: Path) -> Path:
    """Test loss, ||theta - theta_0|| and C_lower against width, one line per noise level (mean over seeds, band
    min..max)."""
    panels = [m for m in (TEST_LOSS, DIST, LOWER) if m in table.columns and table[m].notna().any()]
    figure = Figure(figsize=(4.4 * len(panels), 3.9), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(panels)))
    for ax, metric in zip(axes, panels, strict=True):
        for i, (level, group) in enumerate(table.groupby(NOISE)):
            by_width = group.groupby(WIDTH)[metric]
            mean = by_width.mean()
            ax.plot(mean.index, mean, "o-", color=f"C{i}", markersize=4, label=f"noise {fmt(level)}")
            ax.fill_between(mean.index, by_width.min(), by_width.max(), color=f"C{i}", alpha=0.2, linewidth=0)
        ax.set(xscale="log", yscale="log", xlabel=label(WIDTH), ylabel=label(metric))
        ax.legend(fontsize="x-small")
    figure.suptitle("final values: mean over seeds, band min..max", fontsize="small")
    return save_figure(figure, path)


def analyse(records, out: Path) -> Analysis:
    """Per noise level: where the final ||theta - theta_0|| and the test loss peak over width, the distance's
    fall after its peak, its means with their spread, and its correlation with C_lower."""
    table = distance_table(records)
    result = Analysis()
    if table.empty:
        return result
    if table[DIST].isna().all():
        result.lines.append("no run logged params/dist_init (lipschitz.track_params false?)")
        result.checks += checks(table)
        return result
    result.figures.append(_figure(table, out / "parameter_distance.png"))
    result.lines += markdown_table(peak_rows(table))
    spread = mean_and_spread(table, [NOISE, WIDTH], (TEST_LOSS, DIST, LOWER))
    result.lines += ["", "Means over seeds with their spread (min, max):", "", *markdown_table(spread)]
    result.lines += ["", *markdown_table(correlation_rows(table))]
    result.checks += checks(table)
    return result


register(
    Finding(
        name="parameter_distance",
        number="2.0.2",
        section="Parameter distance ||theta - theta_0|| over width (finding 2's runs)",
        claim="The distance travelled from the initialisation, ||theta - theta_0||, shows the same double descent "
        "over width as the test loss and the bounds.",
        paper={"||theta - theta_0||": "peaks at the interpolation threshold, falls after it"},
        sweep=SWEEP,
        scales=SCALES,
        cost={
            "quick": "~30 s (2 runs; double_descent's quick runs)",
            "cpu": "none beyond double_descent (its runs: ~60 min, 72 runs x 300 epochs, 2 workers)",
            "full": "double_descent's full-scale runs",
        },
        analyse=analyse,
        setting="the double_descent runs (FCN widths 4..512, noise 0 / 0.15), final ||theta - theta_0||",
        compares=True,
        recorded=Recorded(
            "holds",
            seeds=3,
            minutes=0.2,
            date="2026-12-06",
            shared=True,
            note="peaks at 48 / 64 with the test loss, falls 1.32x beyond the seeds",
        ),
    )
)
