"""Finding 2: Lipschitz double descent over width on MNIST-1D (the cheap setting)."""

from __future__ import annotations

from pathlib import Path

from lipschitz_dd.report import figures
from lipschitz_dd.report.threshold import empirical_thresholds, parameter_threshold
from lipschitz_dd.reproduce.analysis import BOUNDS, argmax_of, completed_table, fmt, markdown_table, means
from lipschitz_dd.reproduce.registry import Analysis, Finding, register

WIDTH, NOISE = "model.width", "data.label_noise"


def analyse(records, out: Path, hue: str = NOISE) -> Analysis:
    """Per level of `hue` (default: the label noise): the width where test loss and each bound peak, and how far
    each bound falls after its peak (value at the largest width / peak value)."""
    NOISE = hue  # noqa: N806 - the grouping key of this call
    table = completed_table(records, [WIDTH, NOISE, "seed_everything"])
    result = Analysis()
    if table.empty:
        return result
    threshold = parameter_threshold(records, WIDTH)
    thresholds = ([threshold] if threshold else []) + empirical_thresholds(table, WIDTH, NOISE)
    try:
        result.figures.append(figures.plot_double_descent(table, WIDTH, NOISE, thresholds, out / "double_descent.png"))
    except figures.SkipFigure as skipped:
        result.lines.append(f"figure skipped: {skipped}")
    rows, together = [], []
    for noise, group in means(table, [NOISE, WIDTH]).groupby(NOISE):
        group = group.sort_values(WIDTH)
        peak_loss = argmax_of(group, WIDTH, "test/loss")
        row = {NOISE: noise, "peak width of test/loss": peak_loss}
        for metric in BOUNDS:
            if metric in group.columns and group[metric].notna().any():
                peak = argmax_of(group, WIDTH, metric)
                row[f"peak width of {metric}"] = peak
                row[f"{metric}: last/peak"] = group[metric].iloc[-1] / group[metric].max()
                if metric == "lipschitz/lower":
                    widths = list(group[WIDTH])
                    near = abs(widths.index(peak) - widths.index(peak_loss)) <= 1
                    interior = 0 < widths.index(peak) < len(widths) - 1
                    together.append(near and interior and row[f"{metric}: last/peak"] < 0.9)
        rows.append(row)
    import pandas as pd

    result.lines += markdown_table(pd.DataFrame(rows))
    if threshold:
        result.lines += ["", f"Interpolation threshold (params = n): width {fmt(threshold.x)}"]
    if together and all(together):
        result.verdict = "holds: C_lower peaks within one grid step of the test-loss peak and falls after it"
    elif any(together):
        result.verdict = "holds in part: the peaks coincide for some noise levels only"
    else:
        result.verdict = "does not hold at this scale: no interior C_lower peak next to the test-loss peak"
    return result


register(
    Finding(
        name="double_descent",
        number="2",
        section="Finding 2; 'A double descent that fits on two CPU cores'",
        claim="Test loss and the lower, average and upper bounds peak together at the interpolation threshold "
        "over width and fall after it.",
        paper={"peak": "at the interpolation threshold (params ~ n for CE)", "after the peak": "all bounds fall"},
        sweep="fcn_mnist1d_dd",
        scales={
            "quick": {WIDTH: [8, 64], NOISE: 0.15, "trainer.max_epochs": 3, "data.num_samples": 1000},
            "cpu": {},
            "full": {"sweep": "fcn_mnist1d_ce_width_noise"},
        },
        cost={
            "quick": "~30 s (2 runs)",
            "cpu": "~20 min (24 runs x 300 epochs, 2 workers; measured 21 min, shared)",
            "full": "GPU days",
        },
        analyse=analyse,
    )
)
