"""The study's parameter distance, second statement: Adam travels further in parameter space than SGD,
||theta - theta_0||_2 (params/dist_init, exact) larger, which goes with its much larger bounds (finding 5.1).

Read from the `optimizer` finding's runs (the same sweep and scales, imported from axes.py: trained once): FCN
widths 16 / 48 / 256 on MNIST-1D, SGD (no momentum) vs Adam, lr 0.01, 300 epochs. Two checks, at seed level
(reproduce/measures.py):

- after the same epochs: at every width every Adam seed's final distance lies above every SGD seed's (smallest
  over widths of min over Adam's seeds / max over SGD's > 1);
- at equal training loss (the optimizer finding saw SGD far from fitting after 300 epochs while Adam
  interpolates, so the first comparison mixes the optimiser with how far each run trained): the setting whose
  mean final training loss is larger ("behind") sets the target T; each run of the other is read at its first
  epoch with train/loss <= T where the distance was logged; the same seed-level ratio, Adam over SGD, there
  (runs that never reach T are left out; none reaching: not measured).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lipschitz_dd.metric_names import LOWER, TRAIN_LOSS
from lipschitz_dd.report.figures import label
from lipschitz_dd.reproduce.analysis import errorbar_min_max, markdown_table, save_figure
from lipschitz_dd.reproduce.findings.axes import ABOVE, OPTIMIZER_SCALES, OPTIMIZER_SWEEP
from lipschitz_dd.reproduce.findings.parameter_distance import DIST, distance_table
from lipschitz_dd.reproduce.measures import SEED, fewest_seeds, separated_ratio
from lipschitz_dd.reproduce.registry import Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check

OPTIMIZER, WIDTH = "model.optimizer", "model.width"
ADAM, SGD = "adam", "sgd"


def value_at_loss(record, target: float, metric: str = DIST) -> tuple[float, float]:
    """(epoch, `metric`) at the first epoch whose train/loss is <= `target` and where `metric` was logged;
    (NaN, NaN) when the run never gets there."""
    frame = record.metrics.reindex(columns=[TRAIN_LOSS, metric]).dropna()
    reached = frame[frame[TRAIN_LOSS] <= target]
    if reached.empty:
        return math.nan, math.nan
    return float(reached.index[0]), float(reached[metric].iloc[0])


def comparison_rows(records) -> pd.DataFrame:
    """Per width: the final distance of each optimiser (mean over seeds), Adam / SGD of the means and seed-level
    (min over Adam / max over SGD), C_lower Adam / SGD of the means (finding 5.1's ratio), and the same
    seed-level distance ratio at equal training loss (module docstring)."""
    done = [r for r in records if r.completed]
    table = distance_table(done, (OPTIMIZER, WIDTH, SEED))
    rows = []
    for width in sorted(table[WIDTH].unique()) if not table.empty else []:
        runs = {
            level: [r for r in done if r.config.get(OPTIMIZER) == level and r.config.get(WIDTH) == width]
            for level in (ADAM, SGD)
        }
        if not all(runs.values()):
            continue
        final = {level: [r.final_value(DIST) for r in rs] for level, rs in runs.items()}
        lower = {level: np.mean([r.final_value(LOWER) for r in rs]) for level, rs in runs.items()}
        loss = {level: np.mean([r.final_value(TRAIN_LOSS) for r in rs]) for level, rs in runs.items()}
        behind = max(loss, key=loss.get)
        ahead = SGD if behind == ADAM else ADAM
        read = [value_at_loss(r, loss[behind]) for r in runs[ahead]]
        reached = [d for _, d in read if not math.isnan(d)]
        matched = {behind: final[behind], ahead: reached}
        rows.append(
            {
                "width": width,
                "distance Adam (mean)": float(np.mean(final[ADAM])),
                "distance SGD (mean)": float(np.mean(final[SGD])),
                "Adam / SGD (means)": float(np.mean(final[ADAM]) / np.mean(final[SGD])),
                "Adam / SGD (min Adam / max SGD)": separated_ratio(final[ADAM], final[SGD]),
                "C_lower Adam / SGD (means)": float(lower[ADAM] / lower[SGD]),
                "behind": behind,
                "its final train loss": float(loss[behind]),
                "runs of the other reaching it": f"{len(reached)}/{len(read)}",
                "their epoch there": float(np.nanmean([e for e, _ in read])) if reached else math.nan,
                "at equal train loss: min Adam / max SGD": separated_ratio(matched[ADAM], matched[SGD])
                if reached
                else math.nan,
            }
        )
    return pd.DataFrame(rows)


def checks(rows: pd.DataFrame, seeds: int) -> list[Check]:
    """Adam's distance above SGD's beyond the seed spread at every width, after the same epochs and at equal
    training loss."""

    def worst(column: str) -> float:
        if rows.empty or column not in rows or rows[column].isna().any():
            return math.nan
        return float(rows[column].min())

    return [
        Check(
            "Adam travels further than SGD, beyond the seed spread",
            "smallest over widths of min over Adam's seeds / max over SGD's of the final ||theta - theta_0||",
            worst("Adam / SGD (min Adam / max SGD)"),
            ABOVE,
            seeds=seeds,
        ),
        Check(
            "also at equal training loss",
            "smallest over widths of min over Adam / max over SGD of ||theta - theta_0||, the run that trained "
            "further read where its train loss first reaches the other's final mean",
            worst("at equal train loss: min Adam / max SGD"),
            ABOVE,
            seeds=seeds,
        ),
    ]


def _figure(table: pd.DataFrame, path: Path) -> Path:
    """||theta - theta_0|| and C_lower against width, one line per optimiser (mean over seeds, bars min..max)."""
    figure = Figure(figsize=(9, 3.8), layout="constrained")
    axes = figure.subplots(1, 2)
    widths = sorted(table[WIDTH].unique())
    for ax, metric in zip(axes, (DIST, LOWER), strict=True):
        for level, group in table.groupby(OPTIMIZER):
            errorbar_min_max(ax, group.groupby(WIDTH)[metric], str(level))
        ax.set(xscale="log", yscale="log", xlabel=label(WIDTH), ylabel=label(metric))
        ax.legend(title="optimizer", fontsize="small")
    figure.suptitle("after the same epochs: mean over seeds, bars min..max", fontsize="small")
    return save_figure(figure, path, x_ticks=widths)


def analyse(records, out: Path) -> Analysis:
    """Adam against SGD: the final ||theta - theta_0|| per width (and C_lower's ratio beside it), after the same
    epochs and at equal training loss."""
    result = Analysis()
    table = distance_table(records, (OPTIMIZER, WIDTH, SEED))
    if table.empty:
        return result
    rows = comparison_rows(records)
    if not rows.empty and table[DIST].notna().any():
        result.figures.append(_figure(table, out / "parameter_distance_optimizer.png"))
    result.lines += markdown_table(rows) if not rows.empty else ["(no width with both optimisers)"]
    result.checks += checks(rows, fewest_seeds(table, [OPTIMIZER, WIDTH]))
    return result


register(
    Finding(
        name="parameter_distance_optimizer",
        number="5.1.1",
        section="Parameter distance, SGD vs Adam (finding 5.1's runs)",
        claim="Adam travels further in parameter space than SGD: ||theta - theta_0|| larger at every width, with "
        "its larger bounds.",
        paper={"Adam vs SGD": "Adam travels further"},
        sweep=OPTIMIZER_SWEEP,
        scales=OPTIMIZER_SCALES,
        cost={
            "quick": "~25 s (2 runs; optimizer's quick runs)",
            "cpu": "none beyond optimizer (its runs: ~11 min, 24 runs x 300 epochs, 2 workers)",
            "full": "optimizer's full-scale runs",
        },
        analyse=analyse,
        setting="the optimizer runs (FCN widths 16 / 48 / 256, SGD vs Adam, 4 seeds), ||theta - theta_0||",
        compares=True,
        recorded=Recorded("holds", seeds=4, minutes=0.2, date="2026-12-06"),
    )
)
