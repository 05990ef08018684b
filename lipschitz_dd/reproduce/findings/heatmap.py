"""Finding 4: label noise x width; the C_lower peak ("memorisation threshold") moves to larger widths with noise."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lipschitz_dd.report import figures
from lipschitz_dd.reproduce.analysis import argmax_of, completed_table, markdown_table, means
from lipschitz_dd.reproduce.registry import CIFAR10, Analysis, Finding, register

WIDTH, NOISE, LOWER, TEST_LOSS = "model.width", "data.label_noise", "lipschitz/lower", "test/loss"


def analyse(records, out: Path) -> Analysis:
    """Width of the C_lower peak per noise level (the study: moves to larger widths with noise), beside the width
    of the test-loss peak (the double-descent peak, for comparison), and noise level of the C_lower peak per
    width (the study: interior, C_lower first rising then falling with noise at a fixed width). Peaks are of
    the means over seeds on the grid's points, so they move in steps of the grid."""
    table = completed_table(records, [WIDTH, NOISE, "seed_everything"])
    result = Analysis()
    if table.empty:
        return result
    try:
        result.figures.append(figures.plot_heatmap(table, WIDTH, NOISE, out / "heatmap.png"))
    except figures.SkipFigure as skipped:
        result.lines.append(f"figure skipped: {skipped}")
    mean = means(table, [NOISE, WIDTH])
    by_noise = pd.DataFrame(
        [
            {
                "label noise": n,
                "width of the C_lower peak": argmax_of(g, WIDTH, LOWER),
                "width of the test-loss peak": argmax_of(g, WIDTH, TEST_LOSS),
            }
            for n, g in mean.groupby(NOISE)
        ]
    )
    by_width = pd.DataFrame(
        [{"width": w, "label noise of the C_lower peak": argmax_of(g, NOISE, LOWER)} for w, g in mean.groupby(WIDTH)]
    )
    result.lines += [*markdown_table(by_noise), "", *markdown_table(by_width)]
    peaks = by_noise["width of the C_lower peak"].dropna().astype(float).to_list()
    monotone = all(b >= a for a, b in zip(peaks, peaks[1:], strict=False))
    moved = len(peaks) > 1 and peaks[-1] > peaks[0]
    noise_levels = sorted(mean[NOISE].unique())
    at_width = by_width["label noise of the C_lower peak"].dropna().astype(float)
    interior = int(((at_width > noise_levels[0]) & (at_width < noise_levels[-1])).sum())
    if monotone and moved:
        result.verdict = "holds: the C_lower peak moves to larger widths as the label noise grows"
    elif moved:
        result.verdict = "holds in part: the peak moves to larger widths overall, not monotonically"
    else:
        result.verdict = "does not hold at this scale: the C_lower peak does not move to larger widths with noise"
    result.verdict += (
        f"; at a fixed width, C_lower peaks at an interior noise level at {interior} of {len(at_width)} widths"
    )
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
            "cpu": {},
            "full": {"sweep": "cnn_cifar10_width_noise"},
        },
        cost={
            "quick": "~45 s (4 runs)",
            "cpu": "~70 min (80 runs x 300 epochs, 2 workers; measured, shared)",
            "full": "GPU days",
        },
        analyse=analyse,
    )
)
