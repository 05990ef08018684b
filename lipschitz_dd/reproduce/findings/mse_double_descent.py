"""The MSE Lipschitz double descent: with the squared error on one-hot targets the interpolation threshold sits
near p = n K (parameters = training points x classes) instead of p = n, i.e. at larger widths than with CE.

Read from the `bias_variance_mse` finding's runs (the same sweep and scales, imported from bias_variance.py:
trained once): the cheap setting of finding 2 (MNIST-1D, n = 4,000 training points, K = 10 classes, 15 % random
labels, FCN 40-w-w-10 with biases, SGD lr 0.01 momentum 0.9, batch 100, 300 epochs) with `model.loss: mse`,
widths 4..512, 4 seeds.

Where the threshold should be. The FCN 40-w-w-10 with biases has p(w) = 40 w + w + w^2 + w + 10 w + 10 =
w^2 + 52 w + 10 parameters: p = n = 4,000 at w ~ 42 (CE's threshold; finding 2 locates CE's peaks at width 64 on
this grid) and p = n K = 40,000 at w ~ 176 (MSE's). A peak at a width above the geometric midpoint of the two,
sqrt(42 x 176) ~ 86, lies nearer (in log width) to p = n K than to p = n, and on this grid (..., 64, 96, 128, 256,
...) at 96 or more: above CE's peak. That is the declared threshold `BEYOND_CE`, for the width where most seeds'
test loss peaks and for the width where most seeds' C_lower peaks (no majority: not located).

The double descent itself is checked as in finding 2 (double_descent.peak_checks: each bound's peak interior and
within one grid step of the test-loss peak, and its fall after the peak beyond the seed spread).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from lipschitz_dd.metric_names import LOWER, TEST_LOSS
from lipschitz_dd.report import figures
from lipschitz_dd.report.threshold import Threshold as Line
from lipschitz_dd.report.threshold import empirical_thresholds, parameter_threshold
from lipschitz_dd.reproduce.analysis import completed_table, fmt, markdown_table
from lipschitz_dd.reproduce.findings.bias_variance import MSE_SCALES, MSE_SWEEP
from lipschitz_dd.reproduce.findings.double_descent import NOISE, WIDTH, peak_checks, peak_rows
from lipschitz_dd.reproduce.measures import SEED, fewest_seeds, mean_and_spread, peak_by_majority
from lipschitz_dd.reproduce.registry import Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check, Threshold

#: The setting's training points, classes and input dimension (configs/fcn_mnist1d_dd.yaml: 16,000 samples, a
#: 25 % train split; MNIST-1D has 40 inputs and 10 classes).
N_TRAIN, CLASSES, INPUTS = 4000, 10, 40


def fcn_parameters(width: float, inputs: int = INPUTS, classes: int = CLASSES) -> float:
    """Parameters of the FCN inputs-w-w-classes with biases: (inputs + 1) w + (w + 1) w + (w + 1) classes."""
    return (inputs + 1) * width + (width + 1) * width + (width + 1) * classes


def width_at(parameters: float, inputs: int = INPUTS, classes: int = CLASSES) -> float:
    """The (real) width w where fcn_parameters(w) = `parameters`: the positive root of
    w^2 + (inputs + classes + 2) w + classes - parameters = 0."""
    b, c = inputs + classes + 2, classes - parameters
    return (-b + math.sqrt(b * b - 4 * c)) / 2


#: The widths where p = n (CE's threshold, ~42) and p = n K (MSE's, ~176).
CE_WIDTH, MSE_WIDTH = width_at(N_TRAIN), width_at(N_TRAIN * CLASSES)
#: A peak nearer p = n K than p = n in log width: above the geometric midpoint (~86; on the grid: 96 or more).
BEYOND_CE = Threshold(">", round(math.sqrt(CE_WIDTH * MSE_WIDTH), 1))


def location_checks(table: pd.DataFrame) -> list[Check]:
    """Where most seeds' test loss and C_lower peak, against BEYOND_CE (at the one noise level of the runs; the
    smallest over levels if there are several). A level without a majority peak: not measured; a peak at the
    smallest or the largest width is no peak (a monotone curve): 0, which fails."""
    seeds = fewest_seeds(table, [NOISE, WIDTH])
    checks = []
    for metric, name in ((TEST_LOSS, "test loss"), (LOWER, "C_lower")):
        peaks = []
        for _, group in table.groupby(NOISE):
            widths = sorted(group[WIDTH].unique())
            peak, agree = peak_by_majority(group, WIDTH, metric)
            if peak is None or not agree > 0.5:
                peaks.append(math.nan)
            else:
                peaks.append(float(peak) if widths[0] < peak < widths[-1] else 0.0)
        value = min(peaks) if peaks and not any(math.isnan(p) for p in peaks) else math.nan
        checks.append(
            Check(
                f"the {name} peak sits beyond CE's threshold",
                f"width where most seeds' {name} peaks, smallest over noise levels (0: at an end of the grid, no "
                f"interior peak); p = n at w {CE_WIDTH:.0f}, p = n K at w {MSE_WIDTH:.0f}",
                value,
                BEYOND_CE,
                seeds=seeds,
            )
        )
    return checks


def analyse(records, out: Path) -> Analysis:
    """Finding 2's figure and peak table for the MSE runs, the parameter count at the peaks against n and n K,
    and the checks: peaks beyond CE's threshold (BEYOND_CE) and double_descent's peak checks."""
    table = completed_table(records, [WIDTH, NOISE, SEED])
    result = Analysis()
    if table.empty:
        return result
    table[SEED] = table[SEED].fillna(0)
    table[NOISE] = table[NOISE].fillna(0.0)
    lines = [Line(CE_WIDTH, f"CE: params = n = {N_TRAIN}")]
    mse_line = parameter_threshold(records, WIDTH)  # the runs' own count: n K for MSE runs
    lines += [mse_line] if mse_line else [Line(MSE_WIDTH, f"params = n K = {N_TRAIN * CLASSES}")]
    lines += empirical_thresholds(table, WIDTH, NOISE)
    try:
        result.figures.append(figures.plot_double_descent(table, WIDTH, NOISE, lines, out / "mse_double_descent.png"))
    except figures.SkipFigure as skipped:
        result.lines.append(f"figure skipped: {skipped}")
    peaks = peak_rows(table, NOISE)
    result.lines += markdown_table(peaks)
    for column in ("test-loss peak", "C_lower peak"):
        if column in peaks and peaks[column].notna().any():
            p = [fcn_parameters(float(w)) for w in peaks[column].dropna()]
            result.lines += [
                "",
                f"{column}: parameters {', '.join(fmt(x) for x in p)} = "
                f"{', '.join(fmt(x / N_TRAIN) for x in p)} n = {', '.join(fmt(x / (N_TRAIN * CLASSES)) for x in p)} n K",
            ]
    spread = mean_and_spread(table, [NOISE, WIDTH], (TEST_LOSS, LOWER, "train/acc"))
    result.lines += ["", "Means over seeds with their spread (min, max):", "", *markdown_table(spread)]
    result.lines += [
        "",
        f"p = n at width {CE_WIDTH:.1f}, p = n K at width {MSE_WIDTH:.1f}; a peak beyond CE's threshold: width "
        f"{BEYOND_CE} (CE's peaks on this grid, finding 2: width 64)",
    ]
    result.checks += location_checks(table) + peak_checks(table, NOISE)
    return result


register(
    Finding(
        name="mse_double_descent",
        number="2.0.3",
        section="Finding 2 with MSE (the threshold near p = n K)",
        claim="With MSE on one-hot targets the double descent's threshold sits near p = n K, at larger widths than "
        "with CE: test loss and bounds peak there and fall after it.",
        paper={"threshold": "params ~ n K for MSE (~ n for CE)"},
        sweep=MSE_SWEEP,
        scales=MSE_SCALES,
        cost={
            "quick": "~45 s (6 runs; bias_variance_mse's quick runs)",
            "cpu": "none beyond bias_variance_mse (its runs: ~18 min, 48 runs x 300 epochs, 2 workers)",
            "full": "bias_variance_mse's full-scale runs",
        },
        analyse=analyse,
        setting="the bias_variance_mse runs (FCN widths 4..512 on MNIST-1D, noise 0.15, MSE, 4 seeds)",
        compares=True,
        recorded=Recorded(
            "holds in part",
            seeds=4,
            minutes=0.2,
            date="2026-12-06",
            note="test loss, C_avg and C_upper peak beyond p = n; C_lower peaks at width 32, below p = n",
        ),
    )
)
