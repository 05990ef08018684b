"""Finding 4: label noise x width; the C_lower peak ("memorisation threshold") moves to larger widths with noise."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from lipschitz_dd.report import figures
from lipschitz_dd.reproduce.analysis import completed_table, markdown_table
from lipschitz_dd.reproduce.findings.label_noise_protocol import (
    MATCHED_N,
    MATCHED_W,
    interior_share,
    matched,
    peak_shift,
    run_table,
)
from lipschitz_dd.reproduce.measures import fewest_seeds, mean_and_spread, peak_by_majority
from lipschitz_dd.reproduce.registry import CIFAR10, Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check, Threshold

WIDTH, NOISE, LOWER, TEST_LOSS = "model.width", "data.label_noise", "lipschitz/lower", "test/loss"


#: The C_lower peak (width most seeds peak at) at the largest noise over the one at the smallest noise.
MOVES_RIGHT = Threshold(">", 1.0)
#: Share of consecutive noise levels where the peak does not move to a smaller width (a qualifier of MOVES_RIGHT:
#: not essential, and not measured when the peak does not move right, where it would pass vacuously).
MONOTONE = Threshold(">=", 1.0)
#: Share of widths at which most seeds' C_lower peaks at an interior noise level ("first rises then falls").
INTERIOR = Threshold(">=", 0.5)


def peaks(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per noise level: the width of the C_lower and test-loss peaks; per width: the noise level of the C_lower
    peak), each located by the majority of seeds (None without a majority)."""

    def majority(group, x, metric):
        peak, agree = peak_by_majority(group, x, metric)
        return peak if agree > 0.5 else None

    by_noise = pd.DataFrame(
        [
            {
                "label noise": n,
                "width of the C_lower peak": majority(g, WIDTH, LOWER),
                "width of the test-loss peak": majority(g, WIDTH, TEST_LOSS),
            }
            for n, g in table.groupby(NOISE)
        ]
    )
    by_width = pd.DataFrame(
        [{"width": w, "label noise of the C_lower peak": majority(g, NOISE, LOWER)} for w, g in table.groupby(WIDTH)]
    )
    return by_noise, by_width


def checks(table: pd.DataFrame) -> list[Check]:
    by_noise, by_width = peaks(table)
    seeds = fewest_seeds(table, [NOISE, WIDTH])
    located = by_noise["width of the C_lower peak"]
    moved = monotone = interior = math.nan
    if located.notna().all() and len(located) > 1:
        widths = located.astype(float).to_list()
        moved = widths[-1] / widths[0]
        if moved > 1:  # "monotonically" qualifies a move: a peak that stays put would pass it vacuously
            monotone = sum(b >= a for a, b in zip(widths, widths[1:], strict=False)) / (len(widths) - 1)
    at_width = by_width["label noise of the C_lower peak"]
    if at_width.notna().all() and len(at_width):
        levels = sorted(table[NOISE].unique())
        interior = float(((at_width > levels[0]) & (at_width < levels[-1])).mean())
    return [
        Check(
            "the C_lower peak moves to larger widths",
            "width of the C_lower peak at the largest noise / at the smallest (peaks of most seeds)",
            moved,
            MOVES_RIGHT,
            seeds=seeds,
        ),
        Check(
            "it moves monotonically",
            "share of consecutive noise levels where the peak width does not fall (measured only when the peak "
            "moves right)",
            monotone,
            MONOTONE,
            essential=False,
            seeds=seeds,
        ),
        Check(
            "at a fixed width C_lower peaks at an interior noise",
            "share of widths whose C_lower peak (most seeds) is at an interior noise level",
            interior,
            INTERIOR,
            seeds=seeds,
        ),
    ]


def matched_loss_reading(records) -> tuple[list[str], list[Check]]:
    """C_lower read at a matched training loss (section 4.1's reading, on these runs): within each width across
    noise levels, and within each noise level across widths, the level is the largest of the runs' lowest
    training losses (train/loss as logged: the epoch's mean minibatch loss on the noisy labels), and each run's
    C_lower is read, interpolated in the epoch, at its first epoch at or below it. Networks that fit more noise
    reach a given loss later: this separates "more noise" from "trained less far". Returns the table's lines and
    the two claims' checks at matched loss."""
    runs = run_table(records)
    if runs.empty:
        return [], []
    runs = matched(matched(runs, WIDTH, MATCHED_W), NOISE, MATCHED_N)
    grouped = runs.groupby([WIDTH, NOISE])
    table = grouped[[MATCHED_W, MATCHED_N]].mean()
    table["level (per width)"] = grouped[MATCHED_W + " level"].first()
    table["level (per noise)"] = grouped[MATCHED_N + " level"].first()
    lines = [
        "",
        "C_lower at matched training loss (mean over seeds; the level is the largest of the compared runs' lowest "
        "train/loss, each run read at its first epoch at or below it):",
        "",
        *markdown_table(table.reset_index()),
    ]
    seeds = fewest_seeds(runs, [NOISE, WIDTH])
    checks = [
        Check(
            "at matched training loss: C_lower peaks at an interior noise",
            f"share of widths whose {MATCHED_W} peak over noise (most seeds) is at an interior noise level",
            interior_share(runs, MATCHED_W),
            INTERIOR,
            seeds=seeds,
        ),
        Check(
            "at matched training loss: the C_lower peak moves to larger widths",
            f"width of the {MATCHED_N} peak (most seeds) at the largest noise / at the smallest",
            peak_shift(runs, MATCHED_N),
            MOVES_RIGHT,
            seeds=seeds,
        ),
    ]
    return lines, checks


def analyse(records, out: Path) -> Analysis:
    """Width of the C_lower peak per noise level (the study: moves to larger widths with noise), beside the width
    of the test-loss peak, and noise level of the C_lower peak per width (the study: interior). Peaks are
    located per seed on the grid's points and taken where most seeds agree, so they move in grid steps. Both
    claims are read at the end of training and at a matched training loss (matched_loss_reading)."""
    table = completed_table(records, [WIDTH, NOISE, "seed_everything"])
    result = Analysis()
    if table.empty:
        return result
    try:
        result.figures.append(figures.plot_heatmap(table, WIDTH, NOISE, out / "heatmap.png"))
    except figures.SkipFigure as skipped:
        result.lines.append(f"figure skipped: {skipped}")
    by_noise, by_width = peaks(table)
    result.lines += [*markdown_table(by_noise), "", *markdown_table(by_width)]
    spread = mean_and_spread(table, [NOISE, WIDTH], (LOWER,))
    result.lines += ["", "C_lower: mean over seeds and spread (min, max):", "", *markdown_table(spread)]
    result.checks += checks(table)
    lines, at_matched_loss = matched_loss_reading(records)
    result.lines += lines
    result.checks += at_matched_loss
    return result


register(
    Finding(
        name="heatmap",
        number="4",
        section="Finding 4; 'Label noise x capacity' (main figure 8)",
        claim="For a fixed width C_lower first rises then falls with the label noise; its peak over width moves to "
        "larger widths with more noise.",
        paper={"setting": "CNN widths 5..40 on CIFAR-10, shuffled fraction 0..100 %", "peak": "moves right with noise"},
        sweep="fcn_mnist1d_heatmap",
        data=f"at full scale only: {CIFAR10}",
        scales={
            "quick": {WIDTH: [8, 32], NOISE: [0.0, 0.3], "trainer.max_epochs": 2, "data.num_samples": 1000},
            # a reduced grid (6 widths x 5 noise levels) with 3 seeds instead of the file's 10 x 8 with one
            "cpu": {WIDTH: [8, 16, 32, 64, 128, 512], NOISE: [0.0, 0.1, 0.2, 0.3, 0.5], "seed_everything": [0, 1, 2]},
            "full": {"sweep": "cnn_cifar10_width_noise"},
        },
        cost={
            "quick": "~45 s (4 runs)",
            "cpu": "~35 min (90 runs x 300 epochs, 2 workers; measured 35 min idle; the 80-run grid 70 min, shared)",
            "full": "GPU days",
        },
        analyse=analyse,
        setting="FCN widths 8..512 x label noise 0..0.5 on MNIST-1D, 300 epochs",
        compares=True,
        recorded=Recorded("does not hold", seeds=3, minutes=35, date="2026-12-06"),
    )
)
