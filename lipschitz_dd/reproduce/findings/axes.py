"""Finding 5, other axes: SGD vs Adam, CE vs MSE, depth, training-set size (one sweep each)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lipschitz_dd.report.records import RunRecord
from lipschitz_dd.reproduce.analysis import (
    BOUNDS,
    completed_table,
    fmt,
    initial_value,
    loglog_fit,
    markdown_table,
    means,
    save_figure,
)
from lipschitz_dd.reproduce.registry import Analysis, Finding, register

WIDTH, SEED, EPOCHS = "model.width", "seed_everything", "trainer.max_epochs"


#: Training metrics two settings can be compared at: metric -> (reader's name, True if lower is further trained).
MATCHED_METRICS = {"train/loss": ("training loss", True), "train/acc": ("training accuracy", False)}


def matched_rows(records, key: str, numerator: str, denominator: str, metric: str = "train/loss") -> pd.DataFrame:
    """C_lower of the two settings of `key` compared at the same value of a training metric (MATCHED_METRICS:
    train/loss, or train/acc for settings whose losses are not comparable), per width: the setting whose mean
    final metric is further from done ("behind") sets the target T; in each run of the other setting, C_lower
    is read at its first epoch with the metric at or past T at which C_lower was measured. Columns: width,
    behind, T, how many runs of the other setting reach T, their epoch and C_lower there (means over those
    runs), C_lower of `behind` (final, mean over seeds), and C_lower numerator / denominator at T (NaN where
    no run reaches T)."""
    name, lower_is_further = MATCHED_METRICS[metric]
    done = [r for r in records if r.completed]
    rows = []
    for width in sorted({float(r.config.get(WIDTH, math.nan)) for r in done}):
        runs = {
            level: [r for r in done if r.config.get(key) == level and float(r.config.get(WIDTH, math.nan)) == width]
            for level in (numerator, denominator)
        }
        if not all(runs.values()):
            continue
        final = {level: np.mean([r.final_value(metric) for r in rs]) for level, rs in runs.items()}
        behind = (max if lower_is_further else min)(final, key=final.get)
        ahead = denominator if behind == numerator else numerator
        target = final[behind]
        epochs, values = [], []
        for record in runs[ahead]:
            frame = record.metrics.reindex(columns=[metric, "lipschitz/lower"]).dropna()
            reached = frame[frame[metric] <= target] if lower_is_further else frame[frame[metric] >= target]
            epochs.append(float(reached.index[0]) if len(reached) else math.nan)
            values.append(float(reached["lipschitz/lower"].iloc[0]) if len(reached) else math.nan)
        reaching = int(np.isfinite(epochs).sum())
        lower = {
            ahead: float(np.nanmean(values)) if reaching else math.nan,
            behind: float(np.mean([r.final_value("lipschitz/lower") for r in runs[behind]])),
        }
        rows.append(
            {
                "width": width,
                "behind": behind,
                f"its final {name}": target,
                "runs of the other reaching it": f"{reaching}/{len(epochs)}",
                "their epoch there": float(np.nanmean(epochs)) if reaching else math.nan,
                "their C_lower there": lower[ahead],
                "C_lower of behind, final": lower[behind],
                f"C_lower {numerator}/{denominator} at equal {name}": lower[numerator] / lower[denominator],
            }
        )
    return pd.DataFrame(rows)


def _ratio_analysis(key: str, numerator: str, denominator: str, expect: str, matched_on: str | None = None):
    """An analysis comparing two values of the config `key` at each width: ratio numerator/denominator of each
    bound's mean over seeds. expect: "larger" (ratio > 1 at every width) or "smaller" (ratio < 1). With
    `matched_on` (a metric of MATCHED_METRICS), also C_lower compared at the same value of that training metric
    (matched_rows), for settings that train at different speeds, and the verdict quotes that ratio's range."""

    def analyse(records, out: Path) -> Analysis:
        table = completed_table(records, [key, WIDTH, SEED])
        result = Analysis()
        if table.empty:
            return result
        mean = means(table, [key, WIDTH])
        rows = []
        for width, group in mean.groupby(WIDTH):
            top, bottom = group[group[key] == numerator], group[group[key] == denominator]
            if top.empty or bottom.empty:
                continue
            row = {"width": width}
            row.update({f"{m} {numerator}/{denominator}": top[m].iloc[0] / bottom[m].iloc[0] for m in BOUNDS})
            rows.append(row)
        ratios = pd.DataFrame(rows)
        if ratios.empty:
            return result
        result.lines += markdown_table(ratios)
        lower = ratios[f"lipschitz/lower {numerator}/{denominator}"]
        ok = (lower > 1).all() if expect == "larger" else (lower < 1).all()
        some = (lower > 1).any() if expect == "larger" else (lower < 1).any()
        result.figures.append(_bar_figure(mean, key, out / f"{key.split('.')[-1]}.png"))
        word = f"C_lower with {numerator} is {expect} than with {denominator}"
        result.verdict = (
            f"holds: {word} at every width"
            if ok
            else (f"holds in part: {word} at some widths" if some else f"does not hold here: {word} at no width")
        )
        if matched_on:
            name = MATCHED_METRICS[matched_on][0]
            matched = matched_rows(records, key, numerator, denominator, matched_on)
            if not matched.empty:
                ratio = matched[f"C_lower {numerator}/{denominator} at equal {name}"]
                result.lines += ["", f"At equal {name} (the run that trained further, read at the first epoch where"]
                result.lines += [f"its {name} reaches the other's final value):", ""]
                result.lines += markdown_table(matched)
                result.verdict += (
                    f" (after the same epochs); at equal {name} the ratio is {fmt(ratio.min())}..{fmt(ratio.max())}"
                )
        return result

    return analyse


def _bar_figure(mean: pd.DataFrame, key: str, path: Path) -> Path:
    figure = Figure(figsize=(4.2 * len(BOUNDS), 3.6), layout="constrained")
    axes = figure.subplots(1, len(BOUNDS))
    for ax, metric in zip(axes, BOUNDS, strict=False):
        for level, group in mean.groupby(key):
            ax.plot(group[WIDTH], group[metric], "o-", label=str(level))
        ax.set(xscale="log", yscale="log", xlabel=WIDTH, ylabel=metric)
        ax.legend(title=key, fontsize="small")
    return save_figure(figure, path)


def _slope_analysis(key: str, paper: dict[str, float], at_init: bool):
    """An analysis fitting log(bound) = a + k log(config `key`) over the runs (mean over seeds), at epoch 0 (if
    `at_init`) and after training, with R^2."""

    def analyse(records, out: Path) -> Analysis:
        done = [r for r in records if r.completed]
        result = Analysis()
        if not done:
            return result
        rows, figure_rows = [], []
        stages = (("at init", True), ("after training", False)) if at_init else (("after training", False),)
        for stage, initial in stages:
            for metric in BOUNDS:
                x, y = _values(done, key, metric, initial)
                fit = loglog_fit(x, y)
                rows.append(
                    {"stage": stage, "bound": metric, "slope": fit.slope, "R^2": fit.r2, "points": fit.n}
                    | ({"study's slope": paper.get(metric, float("nan"))} if not initial else {})
                )
                figure_rows.append((stage, metric, x, y))
        result.lines += markdown_table(pd.DataFrame(rows))
        result.figures.append(_slope_figure(figure_rows, key, out / f"{key.split('.')[-1]}_slopes.png"))
        trained = [r for r in rows if r["stage"] == "after training"]
        rising = [r["slope"] > 0 for r in trained]
        result.verdict = (
            "holds: all three bounds rise with " + key
            if all(rising)
            else ("holds in part: some bounds rise with " + key if any(rising) else "does not hold here")
        ) + " after training (signs of the slopes; compare magnitudes in the table)"
        return result

    return analyse


def _values(records: list[RunRecord], key: str, metric: str, initial: bool) -> tuple[list[float], list[float]]:
    x, y = [], []
    for record in records:
        value = initial_value(record, metric) if initial else record.final_value(metric)
        x.append(float(record.config.get(key, float("nan"))))
        y.append(value)
    frame = pd.DataFrame({"x": x, "y": y}).groupby("x")["y"].mean()
    return list(frame.index), list(frame.to_numpy())


def _slope_figure(rows, key: str, path: Path) -> Path:
    stages = list(dict.fromkeys(stage for stage, *_ in rows))
    figure = Figure(figsize=(4.5 * len(stages), 3.8), layout="constrained")
    axes = dict(zip(stages, np.atleast_1d(figure.subplots(1, len(stages))), strict=True))
    for stage, metric, x, y in rows:
        fit = loglog_fit(x, y)
        axes[stage].plot(x, y, "o-", label=f"{metric}: slope {fmt(fit.slope)}, R^2 {fmt(fit.r2)}")
    for stage, ax in axes.items():
        ax.set(xscale="log", yscale="log", xlabel=key, ylabel="bound", title=stage)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")
    return save_figure(figure, path)


QUICK = {"trainer.max_epochs": 3, "data.num_samples": 1000, SEED: 0}

register(
    Finding(
        name="optimizer",
        number="5.1",
        section="Finding 5: SGD vs Adam",
        claim="Adam gives much larger bounds than SGD.",
        paper={"Adam / SGD": "much larger than 1"},
        sweep="fcn_mnist1d_optimizer",
        # momentum 0 at every scale: the cheap config's SGD momentum 0.9 is refused with Adam, and the study's
        # SGD has no momentum
        scales={
            "quick": {**QUICK, WIDTH: 16, "model.momentum": 0.0},
            "cpu": {"model.momentum": 0.0},
            "full": {"model.momentum": 0.0},
        },
        cost={
            "quick": "~25 s (2 runs)",
            "cpu": "~11 min (24 runs x 300 epochs, 2 workers; measured)",
            "full": "as cpu x 50",
        },
        analyse=_ratio_analysis("model.optimizer", "adam", "sgd", "larger", matched_on="train/loss"),
    )
)
register(
    Finding(
        name="loss",
        number="5.2",
        section="Finding 5: CE vs MSE (softmax outputs)",
        claim="MSE gives slightly smaller bounds than CE (the softmax of a CE network far smaller: see "
        "'softmax' below).",
        paper={"MSE / CE": "slightly below 1"},
        sweep="fcn_mnist1d_loss",
        scales={"quick": {**QUICK, WIDTH: 16}, "cpu": {}, "full": {}},
        cost={
            "quick": "~25 s (2 runs)",
            "cpu": "~14 min (24 runs x 300 epochs, 2 workers; measured)",
            "full": "as cpu x 50",
        },
        # CE and MSE values are not comparable: the two are also compared at equal training accuracy
        analyse=_ratio_analysis("model.loss", "mse", "ce", "smaller", matched_on="train/acc"),
    )
)
register(
    Finding(
        name="depth",
        number="5.4",
        section="Finding 5: depth (FCN 64, 1..5 hidden layers)",
        claim="At init the lower/avg bounds fall with depth and the product bound rises slightly; after training all "
        "three rise with depth.",
        paper={"slopes after training": "about 3.3 / 2.0 / 1.2 (read here as upper / lower / avg)"},
        sweep="fcn_mnist1d_depth",
        scales={"quick": {**QUICK, "model.depth": [1, 3]}, "cpu": {}, "full": {}},
        cost={
            "quick": "~25 s (2 runs)",
            "cpu": "~14 min (20 runs x 300 epochs, 2 workers; measured under load)",
            "full": "as cpu x 50",
        },
        analyse=_slope_analysis(
            "model.depth", {"lipschitz/upper": 3.3, "lipschitz/lower": 2.0, "lipschitz/avg": 1.2}, at_init=True
        ),
    )
)
register(
    Finding(
        name="train_size",
        number="5.5",
        section="Finding 5: training-set size (FCN 256 on 100..4,000 points)",
        claim="All bounds rise sub-linearly with the training-set size.",
        paper={"slopes": "about 0.53 / 0.37 / 0.36 (read here as upper / lower / avg)"},
        sweep="fcn_mnist1d_train_size",
        scales={"quick": {**QUICK, "data.train_subset": [100, 200]}, "cpu": {}, "full": {}},
        cost={
            "quick": "~25 s (2 runs)",
            "cpu": "~15 min (20 runs x 300 epochs, 2 workers; measured under load)",
            "full": "as cpu x 50",
        },
        analyse=_slope_analysis(
            "data.train_subset",
            {"lipschitz/upper": 0.53, "lipschitz/lower": 0.37, "lipschitz/avg": 0.36},
            at_init=False,
        ),
    )
)
