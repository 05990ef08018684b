"""The study's appendix: no double descent at initialisation. The three Lipschitz quantities at epoch 0 (before
the first update) are flat or monotone over width: the double descent of finding 2 is made by training.

Read from the `double_descent` finding's runs (the same sweep and scales, imported from that module, so that
`reproduce` trains the grid once): each run's metrics.csv row of epoch 0, where the callback logged
C_lower = max over the training points of ||J(x)||_2 (a lower bound of Lip(f)), C_avg = their mean (an average,
not a bound) and C_upper = the product of the layers' spectral norms (an upper bound).

What "a double descent" means here, at seed level (reproduce/measures.py): a bound has a *hump* when some
interior width lies, in every seed, above every seed at the smallest width and above every seed at the largest
width. Its size is

    hump = max over interior widths p of min( min_s y_p / max_s y_first , min_s y_p / max_s y_last )

(`measures.separated_ratio`): > 1 exactly when such a width exists (a rise and a fall beyond the seed spread);
<= 1 for a flat, rising or falling curve (and for one whose bumps stay within the seed spread). The claim holds
for a bound when its hump at epoch 0 is <= 1 at every noise level. The same measure of the final values (the
trained networks) is listed beside it, for contrast: there it should exceed 1 (finding 2).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from lipschitz_dd.report.figures import label
from lipschitz_dd.reproduce.analysis import BOUNDS, fmt, initial_value, loglog_fit, markdown_table, save_figure
from lipschitz_dd.reproduce.findings.double_descent import NAMES, NOISE, SCALES, SWEEP, WIDTH
from lipschitz_dd.reproduce.measures import SEED, fewest_seeds, separated_ratio
from lipschitz_dd.reproduce.registry import Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check, Threshold

#: "Flat or monotone, no double descent": the hump (module docstring) of each bound at epoch 0, largest over the
#: noise levels, at most 1 (no interior width above both ends beyond the seed spread).
NO_HUMP = Threshold("<=", 1.0)

FINAL = " final"


def epoch0_table(records) -> pd.DataFrame:
    """One row per completed run: width, noise, seed, each bound at epoch 0 (column = the metric name; NaN when
    epoch 0 was not logged) and at the end (column `<metric> final`)."""
    rows = []
    for record in records:
        if not record.completed:
            continue
        row = {key: record.config.get(key) for key in (WIDTH, NOISE, SEED)}
        for metric in BOUNDS:
            row[metric] = initial_value(record, metric)
            row[metric + FINAL] = record.final_value(metric)
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table[SEED] = table[SEED].fillna(0)
        table[NOISE] = table[NOISE].fillna(0.0)
    return table


def hump_at(group: pd.DataFrame, column: str) -> tuple[float, float]:
    """(interior width, hump): the hump of `column` over the widths of `group` (module docstring) and the
    interior width that gives it; (NaN, NaN) with fewer than three widths or a missing value."""
    widths = sorted(group[WIDTH].unique())
    if len(widths) < 3 or column not in group.columns or group[column].isna().any():
        return math.nan, math.nan
    values = {w: group.loc[group[WIDTH] == w, column].to_numpy(float) for w in widths}
    first, last = values[widths[0]], values[widths[-1]]
    sizes = {w: min(separated_ratio(values[w], first), separated_ratio(values[w], last)) for w in widths[1:-1]}
    width = max(sizes, key=sizes.get)
    return float(width), sizes[width]


def hump(group: pd.DataFrame, column: str) -> float:
    """The hump of `column` over the widths of `group` (module docstring); NaN with fewer than three widths or
    a missing value."""
    return hump_at(group, column)[1]


def trend_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Per noise level and bound: the epoch-0 mean over seeds at the smallest and the largest width, the largest
    over the smallest mean across widths, the log-log slope of the means against the width, and the hump at
    epoch 0 and after training."""
    rows = []
    for level, group in table.groupby(NOISE):
        for metric in BOUNDS:
            if group[metric].isna().all():
                continue
            mean = group.groupby(WIDTH)[metric].mean().sort_index()
            rows.append(
                {
                    "noise": level,
                    "bound": NAMES[metric],
                    f"epoch 0 at width {fmt(mean.index[0])}": mean.iloc[0],
                    f"epoch 0 at width {fmt(mean.index[-1])}": mean.iloc[-1],
                    "epoch 0 max / min over widths": mean.max() / mean.min() if mean.min() > 0 else math.nan,
                    "epoch 0 log-log slope": loglog_fit(mean.index.to_numpy(float), mean.to_numpy()).slope,
                    "hump at epoch 0": hump(group, metric),
                    "at width": hump_at(group, metric)[0],
                    "hump after training": hump(group, metric + FINAL),
                }
            )
    return pd.DataFrame(rows)


def checks(table: pd.DataFrame) -> list[Check]:
    """Per bound logged at epoch 0: its largest hump over the noise levels against NO_HUMP (C_lower's essential,
    C_avg's and C_upper's counted when logged)."""
    seeds = fewest_seeds(table, [NOISE, WIDTH])
    result = []
    for metric in BOUNDS:
        if metric not in table.columns or table[metric].isna().all():
            continue
        humps = [hump(group, metric) for _, group in table.groupby(NOISE)]
        value = max(humps) if humps and not any(math.isnan(h) for h in humps) else math.nan
        name = NAMES[metric]
        result.append(
            Check(
                f"{name} at epoch 0 has no double descent",
                f"largest over noise levels of {name}'s hump at epoch 0 (an interior width above both ends in every "
                "seed: min at it / max at an end, the smaller of the two, largest over interior widths)",
                value,
                NO_HUMP,
                essential=metric == "lipschitz/lower",
                seeds=seeds,
            )
        )
    return result


def _figure(table: pd.DataFrame, path: Path) -> Path:
    """One panel per bound: the mean over seeds against width at epoch 0 (solid, band min..max over seeds) and
    after training (dashed, same colour), one colour per noise level; log-log."""
    figure = Figure(figsize=(4.4 * len(BOUNDS), 3.9), layout="constrained")
    axes = figure.subplots(1, len(BOUNDS))
    colours = [f"C{i}" for i in range(10)]
    for ax, metric in zip(axes, BOUNDS, strict=True):
        for i, (level, group) in enumerate(table.groupby(NOISE)):
            colour = colours[i % len(colours)]
            for column, style, when in ((metric, "o-", "epoch 0"), (metric + FINAL, "s--", "trained")):
                by_width = group.groupby(WIDTH)[column]
                mean = by_width.mean().dropna()
                if mean.empty:
                    continue
                ax.plot(mean.index, mean, style, color=colour, label=f"{when}, noise {fmt(level)}", markersize=4)
                if when == "epoch 0":
                    ax.fill_between(
                        mean.index,
                        by_width.min().loc[mean.index],
                        by_width.max().loc[mean.index],
                        color=colour,
                        alpha=0.2,
                        linewidth=0,
                    )
        ax.set(xscale="log", yscale="log", xlabel=label(WIDTH), ylabel=label(metric), title=NAMES[metric])
        if ax is axes[0] and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")
    figure.suptitle("at initialisation (epoch 0) and after training: mean over seeds, band min..max", fontsize="small")
    return save_figure(figure, path)


def analyse(records, out: Path) -> Analysis:
    """The bounds at epoch 0 over width, per noise level: their trend, their hump (module docstring) and the
    trained networks' hump beside it; the checks: no hump at epoch 0."""
    table = epoch0_table(records)
    result = Analysis()
    if table.empty:
        return result
    present = [m for m in BOUNDS if table[m].notna().any()]
    if not present:
        result.lines.append("no run logged the bounds at epoch 0")
        return result
    result.figures.append(_figure(table, out / "no_dd_at_init.png"))
    result.lines += markdown_table(trend_rows(table))
    means = table.groupby([NOISE, WIDTH])[present].mean().reset_index()
    means.columns = [c if c in (NOISE, WIDTH) else f"{NAMES[c]} at epoch 0" for c in means.columns]
    result.lines += ["", "Means over seeds at epoch 0:", "", *markdown_table(means)]
    result.checks += checks(table)
    return result


register(
    Finding(
        name="no_dd_at_init",
        number="2.0.1",
        section="Appendix: no double descent at initialisation (finding 2's runs at epoch 0)",
        claim="At initialisation (epoch 0) C_lower, C_avg and C_upper are flat or monotone over width: the "
        "double descent appears only through training.",
        paper={"at init": "flat or monotone over width, no peak at the threshold"},
        sweep=SWEEP,
        scales=SCALES,
        cost={
            "quick": "~30 s (2 runs; double_descent's quick runs)",
            "cpu": "none beyond double_descent (its runs: ~60 min, 72 runs x 300 epochs, 2 workers)",
            "full": "double_descent's full-scale runs",
        },
        analyse=analyse,
        setting="the double_descent runs (FCN widths 4..512, noise 0 / 0.15) at epoch 0",
        compares=True,
        recorded=Recorded(
            "holds",
            seeds=3,
            minutes=0.2,
            date="2026-12-06",
            shared=True,
            note="largest hump at epoch 0: C_lower 0.65, C_avg 0.89, C_upper 0.76",
        ),
    )
)
