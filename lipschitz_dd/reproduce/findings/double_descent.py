"""Finding 2: Lipschitz double descent over width on MNIST-1D (the cheap setting)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from lipschitz_dd.report import figures
from lipschitz_dd.report.threshold import empirical_thresholds, parameter_threshold
from lipschitz_dd.reproduce.analysis import BOUNDS, completed_table, fmt, markdown_table
from lipschitz_dd.reproduce.measures import SEED, fewest_seeds, mean_and_spread, peak_by_majority, separated_ratio
from lipschitz_dd.reproduce.registry import Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check, Threshold

WIDTH, NOISE = "model.width", "data.label_noise"

#: A bound's peak (the width most seeds peak at) lies within this many grid steps of the test-loss peak.
PEAK_STEPS = 1
#: Fraction of the hue levels (noise levels, settings) at which a per-level statement must hold.
EVERY_LEVEL = Threshold(">=", 1.0)
#: After its peak C_lower falls beyond the seed spread: min over seeds at the peak / max over seeds at the
#: largest width.
FALLS = Threshold(">", 1.0)

NAMES = {"lipschitz/lower": "C_lower", "lipschitz/avg": "C_avg", "lipschitz/upper": "C_upper"}


def peak_rows(table: pd.DataFrame, hue: str) -> pd.DataFrame:
    """Per level of `hue`: the width where most seeds' test loss peaks and where most seeds' bound peaks (None
    when no majority), whether that peak is interior and within PEAK_STEPS grid steps of the test-loss peak,
    and the bound's fall after its peak (seed-separated: min at the peak width / max at the largest width)."""
    rows = []
    for level, group in table.groupby(hue):
        widths = sorted(group[WIDTH].unique())
        loss_peak, _ = peak_by_majority(group, WIDTH, "test/loss")
        row = {hue: level, "test-loss peak": loss_peak}
        for metric in BOUNDS:
            if metric not in group.columns or group[metric].isna().all():
                continue
            name = NAMES[metric]
            peak, agree = peak_by_majority(group, WIDTH, metric)
            if agree <= 0.5 or loss_peak is None:  # no majority of seeds: the peak is not located
                peak = None
            row[f"{name} peak"] = peak
            row[f"{name} seeds agreeing"] = agree
            if peak is None:
                row[f"{name} with test loss"] = math.nan
                row[f"{name} falls after"] = math.nan
                continue
            i, j = widths.index(peak), widths.index(loss_peak)
            row[f"{name} with test loss"] = float(abs(i - j) <= PEAK_STEPS and 0 < i < len(widths) - 1)
            at_peak = group.loc[group[WIDTH] == peak, metric]
            at_last = group.loc[group[WIDTH] == widths[-1], metric]
            row[f"{name} falls after"] = separated_ratio(at_peak, at_last) if peak != widths[-1] else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def peak_checks(table: pd.DataFrame, hue: str) -> list[Check]:
    """The double-descent checks over every level of `hue` (seed-level: peaks located by the majority of seeds,
    the fall judged beyond the seed spread). C_lower's are essential; C_avg's and C_upper's count when logged."""
    peaks = peak_rows(table, hue)
    seeds = fewest_seeds(table, [hue, WIDTH])
    checks, levels = [], figures.label(hue)
    for metric in BOUNDS:
        name = NAMES[metric]
        if f"{name} with test loss" not in peaks.columns:
            continue
        essential = metric == "lipschitz/lower"
        together = peaks[f"{name} with test loss"]
        falls = peaks[f"{name} falls after"]
        checks.append(
            Check(
                f"{name} peaks with the test loss",
                f"share of {levels} levels where most seeds' {name} peak is interior and within {PEAK_STEPS} grid "
                "step of the test-loss peak",
                together.mean() if together.notna().all() else math.nan,
                EVERY_LEVEL,
                essential=essential,
                seeds=seeds,
            )
        )
        checks.append(
            Check(
                f"{name} falls after its peak",
                f"smallest over {levels} levels of min over seeds of {name} at its peak / max at the largest width",
                falls.min() if falls.notna().all() else math.nan,
                FALLS,
                essential=essential,
                seeds=seeds,
            )
        )
    return checks


def analyse(records, out: Path, hue: str = NOISE) -> Analysis:
    """Per level of `hue` (default: the label noise): the width where test loss and each bound peak (for most
    seeds) and how far each bound falls after its peak; the means over seeds with their spread (min..max)."""
    table = completed_table(records, [WIDTH, hue, SEED])
    result = Analysis()
    if table.empty:
        return result
    threshold = parameter_threshold(records, WIDTH)
    thresholds = ([threshold] if threshold else []) + empirical_thresholds(table, WIDTH, hue)
    try:
        result.figures.append(figures.plot_double_descent(table, WIDTH, hue, thresholds, out / "double_descent.png"))
    except figures.SkipFigure as skipped:
        result.lines.append(f"figure skipped: {skipped}")
    result.lines += markdown_table(peak_rows(table, hue))
    spread = mean_and_spread(table, [hue, WIDTH], ("test/loss", "lipschitz/lower"))
    result.lines += ["", "Means over seeds with their spread (min, max):", "", *markdown_table(spread)]
    if threshold:
        result.lines += ["", f"Interpolation threshold (params = n): width {fmt(threshold.x)}"]
    result.checks += peak_checks(table, hue)
    return result


#: The sweep and scales of this finding: the findings that analyse its runs (no_dd_at_init, parameter_distance)
#: import them, so that `reproduce` trains the grid once for all of them.
SWEEP = "fcn_mnist1d_dd"
SCALES = {
    "quick": {WIDTH: [8, 64], NOISE: 0.15, "trainer.max_epochs": 3, "data.num_samples": 1000},
    "cpu": {SEED: [0, 1, 2]},
    "full": {"sweep": "fcn_mnist1d_ce_width_noise"},
}

register(
    Finding(
        name="double_descent",
        number="2",
        section="Finding 2; 'A double descent that fits on two CPU cores'",
        claim="Test loss and the lower, average and upper bounds peak together at the interpolation threshold "
        "over width and fall after it.",
        paper={"peak": "at the interpolation threshold (params ~ n for CE)", "after the peak": "all bounds fall"},
        sweep=SWEEP,
        scales=SCALES,
        cost={
            "quick": "~30 s (2 runs)",
            "cpu": "~60 min on idle cores (72 runs x 300 epochs, 2 workers; measured 79 min, heavily shared)",
            "full": "GPU days",
        },
        analyse=analyse,
        setting="FCN widths 4..512 on MNIST-1D, noise 0 / 0.15, 300 epochs",
        compares=True,
        recorded=Recorded("holds", seeds=3, minutes=79, date="2026-12-06", shared=True),
    )
)
