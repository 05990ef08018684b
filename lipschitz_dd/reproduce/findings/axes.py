"""Finding 5, other axes: SGD vs Adam, CE vs MSE, depth, training-set size (one sweep each)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lipschitz_dd.report.figures import label
from lipschitz_dd.report.records import LoadedRun
from lipschitz_dd.reproduce.analysis import (
    BOUNDS,
    completed_table,
    errorbar_min_max,
    fmt,
    initial_value,
    loglog_fit,
    markdown_table,
    means,
    save_figure,
)
from lipschitz_dd.reproduce.measures import fewest_seeds, separated_ratio, spread
from lipschitz_dd.reproduce.registry import Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check, Threshold

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


def _seed_values(table: pd.DataFrame, key: str, level, width, metric: str) -> list[float]:
    rows = table[(table[key] == level) & (table[WIDTH] == width)]
    return [float(v) for v in rows[metric]]


def ratio_checks(
    table: pd.DataFrame,
    key: str,
    numerator: str,
    denominator: str,
    direction: Threshold,
    size: Threshold | None = None,
    size_words: str = "",
    matched: pd.DataFrame | None = None,
    matched_name: str = "",
) -> list[Check]:
    """C_lower of `numerator` against `denominator` at every width, seed-level: with direction ">" (larger),
    the smallest over widths of min over numerator's seeds / max over denominator's seeds (> 1: every seed above
    every seed); with "<" (smaller), the largest over widths of max / min. `size`: the size of the effect, on
    the ratio of the means (smallest over widths for ">", largest for "<"). `matched`: matched_rows' table, its
    ratio at equal `matched_name` (worst over widths) against `direction`."""
    larger = direction.op.startswith(">")
    seeds = fewest_seeds(table, [key, WIDTH])
    separated, mean_ratio = [], []
    for width in sorted(table[WIDTH].unique()):
        top = _seed_values(table, key, numerator, width, "lipschitz/lower")
        bottom = _seed_values(table, key, denominator, width, "lipschitz/lower")
        if not top or not bottom:
            continue
        separated.append(separated_ratio(top, bottom) if larger else 1 / separated_ratio(bottom, top))
        mean_ratio.append(float(np.mean(top) / np.mean(bottom)))
    worst = (min if larger else max)(separated) if separated else math.nan
    word = "larger" if larger else "smaller"
    checks = [
        Check(
            f"C_lower {numerator} {word} than {denominator}, beyond the seed spread",
            f"{'smallest' if larger else 'largest'} over widths of "
            f"{'min' if larger else 'max'} over {numerator}'s seeds / {'max' if larger else 'min'} over "
            f"{denominator}'s",
            worst,
            direction,
            seeds=seeds,
        )
    ]
    if size is not None and size.op.startswith(">"):  # "much": the smallest ratio of the means
        checks.append(
            Check(
                size_words,
                f"smallest over widths of mean C_lower {numerator} / {denominator}",
                min(mean_ratio) if mean_ratio else math.nan,
                size,
                seeds=seeds,
            )
        )
    elif size is not None:  # "slightly": the ratio of the means within a factor 2^bound of 1, either way
        checks.append(
            Check(
                size_words,
                f"largest over widths of |log2(mean C_lower {numerator} / {denominator})|",
                max(abs(math.log2(r)) for r in mean_ratio) if mean_ratio else math.nan,
                size,
                seeds=seeds,
            )
        )
    if matched is not None:
        column = f"C_lower {numerator}/{denominator} at equal {matched_name}"
        values = matched[column] if column in matched else pd.Series(dtype=float)
        checks.append(
            Check(
                f"also at equal {matched_name}",
                f"{'smallest' if larger else 'largest'} over widths of C_lower {numerator} / {denominator} at equal "
                f"{matched_name} (matched_rows)",
                (values.min() if larger else values.max()) if len(values) and values.notna().all() else math.nan,
                direction,
                seeds=seeds,
            )
        )
    return checks


def _ratio_analysis(
    key: str,
    numerator: str,
    denominator: str,
    direction: Threshold,
    size: Threshold | None = None,
    size_words: str = "",
    matched_on: str | None = None,
):
    """An analysis comparing two values of the config `key` at each width: ratio numerator/denominator of each
    bound's mean over seeds, and the checks of ratio_checks (with `matched_on`, a metric of MATCHED_METRICS, C_lower
    also compared at the same value of that training metric: settings that train at different speeds)."""

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
        result.figures.append(_bar_figure(table, key, out / f"{key.split('.')[-1]}.png"))
        matched, name = None, ""
        if matched_on:
            name = MATCHED_METRICS[matched_on][0]
            matched = matched_rows(records, key, numerator, denominator, matched_on)
            if not matched.empty:
                result.lines += ["", f"At equal {name} (the run that trained further, read at the first epoch where"]
                result.lines += [f"its {name} reaches the other's final value):", ""]
                result.lines += markdown_table(matched)
        result.checks += ratio_checks(table, key, numerator, denominator, direction, size, size_words, matched, name)
        return result

    return analyse


def _bar_figure(table: pd.DataFrame, key: str, path: Path) -> Path:
    """Each bound against width, one line per setting: mean over seeds, error bars min..max; ticks at the widths."""
    figure = Figure(figsize=(4.2 * len(BOUNDS), 3.8), layout="constrained")
    axes = figure.subplots(1, len(BOUNDS))
    widths = sorted(table[WIDTH].unique())
    for ax, metric in zip(axes, BOUNDS, strict=False):
        for level, group in table.groupby(key):
            errorbar_min_max(ax, group.groupby(WIDTH)[metric], str(level))
        ax.set(xscale="log", yscale="log", xlabel=label(WIDTH), ylabel=label(metric))
        ax.legend(title=label(key), fontsize="small")
    figure.suptitle("mean over seeds, bars min..max", fontsize="small")
    return save_figure(figure, path, x_ticks=widths)


def _per_seed_slopes(points: pd.DataFrame) -> list[float]:
    """The log-log slope of y against x per seed (columns seed, x, y)."""
    return [loglog_fit(g["x"], g["y"]).slope for _, g in points.groupby("seed")]


def slope_check(name: str, measures: str, slopes: list[float], threshold: Threshold) -> Check:
    """A check on per-seed slopes: the worst seed against `threshold` (smallest for >, largest for <)."""
    finite = [s for s in slopes if not math.isnan(s)]
    value = (
        ((min if threshold.op.startswith(">") else max)(finite)) if finite and len(finite) == len(slopes) else math.nan
    )
    return Check(name, measures, value, threshold, seeds=len(slopes) or None)


def _slope_analysis(key: str, paper: dict[str, float], expected: dict, extra=None):
    """An analysis fitting log(bound) = a + k log(config `key`) per seed, at epoch 0 and after training, with R^2
    of the mean over seeds. `expected`: {(stage, bound): Threshold on the slope, or SUB_LINEAR: slope in (0, 1)}
    (the claim), checked on the worst seed. `extra(records, result, out)` adds more lines, checks and figures."""

    def analyse(records, out: Path) -> Analysis:
        done = [r for r in records if r.completed]
        result = Analysis()
        if not done:
            return result
        rows, figure_rows = [], []
        stages = list(dict.fromkeys(stage for stage, _ in expected))
        for stage in stages:
            initial = stage == "at init"
            for metric in BOUNDS:
                points = _points(done, key, metric, initial)
                x, y = _mean_points(points)
                fit = loglog_fit(x, y)
                slopes = _per_seed_slopes(points)
                _, low, high = spread(slopes)
                rows.append(
                    {"stage": stage, "bound": metric, "slope": fit.slope, "R^2": fit.r2, "points": fit.n}
                    | {"seed slopes min..max": f"{fmt(low)}..{fmt(high)}"}
                    | ({"study's slope": paper.get(metric, float("nan"))} if not initial else {})
                )
                figure_rows.append((stage, metric, points))
                wanted = expected.get((stage, metric))
                if wanted is SUB_LINEAR:
                    outside = [max(-s, s - 1.0) for s in slopes]  # > 0: the slope lies outside (0, 1)
                    result.checks.append(
                        slope_check(
                            f"{label(metric)} rises sub-linearly with {label(key)} {stage}",
                            "largest over seeds of the log-log slope's distance outside (0, 1) (< 0: inside)",
                            outside,
                            INSIDE,
                        )
                    )
                elif wanted is not None:
                    word = "rises" if wanted.op.startswith(">") else "falls"
                    result.checks.append(
                        slope_check(
                            f"{label(metric)} {word} with {label(key)} {stage}",
                            f"{'smallest' if word == 'rises' else 'largest'} over seeds of the log-log slope",
                            slopes,
                            wanted,
                        )
                    )
        result.lines += markdown_table(pd.DataFrame(rows))
        result.figures.append(_slope_figure(figure_rows, key, out / f"{key.split('.')[-1]}_slopes.png"))
        if extra is not None:
            extra(done, result, out)
        return result

    return analyse


def _points(records: list[LoadedRun], key: str, metric: str, initial: bool) -> pd.DataFrame:
    """One row per run: its seed, x = config `key`, y = the metric at epoch 0 (`initial`) or at the end."""
    return pd.DataFrame(
        {
            "seed": [r.config.get(SEED, 0) for r in records],
            "x": [float(r.config.get(key, float("nan"))) for r in records],
            "y": [initial_value(r, metric) if initial else r.final_value(metric) for r in records],
        }
    )


def _mean_points(points: pd.DataFrame) -> tuple[list[float], list[float]]:
    frame = points.groupby("x")["y"].mean()
    return list(frame.index), list(frame.to_numpy())


def _slope_figure(rows, key: str, path: Path) -> Path:
    """Per stage: each bound against `key` (mean over seeds, error bars min..max), slope of the means."""
    stages = list(dict.fromkeys(stage for stage, *_ in rows))
    figure = Figure(figsize=(4.5 * len(stages), 3.8), layout="constrained")
    axes = dict(zip(stages, np.atleast_1d(figure.subplots(1, len(stages))), strict=True))
    for stage, metric, points in rows:
        mean = points.groupby("x")["y"].mean()
        fit = loglog_fit(mean.index, mean.to_numpy())
        errorbar_min_max(axes[stage], points.groupby("x")["y"], f"{label(metric)}: slope {fmt(fit.slope)}")
    for stage, ax in axes.items():
        ax.set(xscale="log", yscale="log", xlabel=label(key), ylabel="bound", title=stage)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")
    return save_figure(figure, path, x_ticks={x for _, _, points in rows for x in points["x"]})


def updates_per_epoch(record: LoadedRun) -> float:
    """ceil(training-set size / batch size) from the run's config (NaN when either is not recorded)."""
    n = float(record.config.get("data.train_subset", math.nan))
    batch = float(record.config.get("data.batch_size", math.nan))
    return float(math.ceil(n / batch)) if n > 0 and batch > 0 else math.nan


def _value_at_or_before(record: LoadedRun, epoch: float, metric: str = "lipschitz/lower") -> float:
    if metric not in record.metrics.columns or math.isnan(epoch):
        return math.nan
    series = pd.to_numeric(record.metrics[metric], errors="coerce").dropna()
    series = series[series.index <= epoch]
    return float(series.iloc[-1]) if len(series) else math.nan


def equal_budget_rows(records: list[LoadedRun]) -> pd.DataFrame:
    """Per run: C_lower after the same number of updates U (the fewest any run made: its final epoch x updates per
    epoch), read at the last measured epoch <= U / its updates per epoch; and C_lower at the same training loss T
    (the largest final training loss of any run), read at the first epoch with train/loss <= T and C_lower
    measured. NaN where a run has no such epoch."""
    budgets = [int(r.metrics.index.max()) * updates_per_epoch(r) for r in records]
    fewest = min(budgets) if budgets else math.nan
    target = max((r.final_value("train/loss") for r in records), default=math.nan)
    rows = []
    for record in records:
        per_epoch = updates_per_epoch(record)
        epoch = math.floor(fewest / per_epoch) if per_epoch == per_epoch and fewest == fewest else math.nan
        frame = record.metrics.reindex(columns=["train/loss", "lipschitz/lower"]).dropna()
        reached = frame[frame["train/loss"] <= target]
        rows.append(
            {
                "seed": record.config.get(SEED, 0),
                "x": float(record.config.get("data.train_subset", math.nan)),
                "epoch at equal updates": epoch,
                "C_lower at equal updates": _value_at_or_before(record, epoch),
                "epoch at equal train loss": float(reached.index[0]) if len(reached) else math.nan,
                "C_lower at equal train loss": float(reached["lipschitz/lower"].iloc[0]) if len(reached) else math.nan,
            }
        )
    return pd.DataFrame(rows)


#: The comparison at equal updates / equal training loss: C_lower still rises with the set size.
RISES = Threshold(">", 0.0)


def _budget_figure(done: list[LoadedRun], rows: pd.DataFrame, path: Path) -> Path:
    """C_lower against the training-set size after the same epochs (the end), after the same number of updates
    and at the same training loss: mean over seeds, bars min..max."""
    end = pd.DataFrame(
        {"x": float(r.config.get("data.train_subset", math.nan)), "y": r.final_value("lipschitz/lower")} for r in done
    )
    figure = Figure(figsize=(5.2, 3.8), layout="constrained")
    ax = figure.subplots()
    for name, points in (
        ("after the same epochs (end)", end),
        ("after the same updates", rows.rename(columns={"C_lower at equal updates": "y"})),
        ("at the same training loss", rows.rename(columns={"C_lower at equal train loss": "y"})),
    ):
        errorbar_min_max(ax, points.groupby("x")["y"], name)
    ax.set(xscale="log", yscale="log", xlabel=label("data.train_subset"), ylabel=label("lipschitz/lower"))
    ax.legend(fontsize="small")
    figure.suptitle("mean over seeds, bars min..max", fontsize="small")
    return save_figure(figure, path, x_ticks=end["x"])


def train_size_budget(done: list[LoadedRun], result: Analysis, out: Path) -> None:
    """train_size: at a fixed number of epochs larger sets get more updates; compare at equal updates and at
    equal training loss too (per-seed slopes of C_lower against the set size)."""
    rows = equal_budget_rows(done).sort_values(["x", "seed"], ignore_index=True)
    result.lines += ["", "C_lower at equal updates and at equal training loss (per run):", ""]
    result.lines += markdown_table(rows)
    if not rows.empty:
        result.figures.append(_budget_figure(done, rows, out / "train_size_budget.png"))
    for column in ("C_lower at equal updates", "C_lower at equal train loss"):
        slopes = _per_seed_slopes(rows.rename(columns={column: "y"})[["seed", "x", "y"]])
        result.checks.append(
            slope_check(
                f"{column} rises with the set size",
                "smallest over seeds of the log-log slope of " + column,
                slopes,
                RISES,
            )
        )


#: Adam's C_lower above SGD's / MSE's below CE's, beyond the seed spread (the direction of the claim).
ABOVE, BELOW = Threshold(">", 1.0), Threshold("<", 1.0)
#: "Much larger": Adam / SGD, ratio of the means, at least 2 at every width.
MUCH_LARGER = Threshold(">=", 2.0)
#: "Slightly smaller": |log2(MSE / CE)| of the means at most 1 (within 2x) at every width.
SLIGHTLY = Threshold("<=", 1.0)
#: Slopes of log bound against log depth / log set size: falls (< 0); SUB_LINEAR marks "rises sub-linearly",
#: a slope inside (0, 1): its check is the distance outside the interval, INSIDE (< 0) when within.
FALLS, SUB_LINEAR, INSIDE = Threshold("<", 0.0), object(), Threshold("<", 0.0)

QUICK = {"trainer.max_epochs": 3, "data.num_samples": 1000, SEED: 0}
#: The optimizer finding's sweep and scales (parameter_distance_optimizer analyses the same runs: trained once).
#: Momentum 0 at every scale: the cheap config's SGD momentum 0.9 is refused with Adam, and the study's SGD has none.
OPTIMIZER_SWEEP = "fcn_mnist1d_optimizer"
OPTIMIZER_SCALES = {
    "quick": {**QUICK, WIDTH: 16, "model.momentum": 0.0},
    "cpu": {"model.momentum": 0.0},
    "full": {"model.momentum": 0.0},
}

register(
    Finding(
        name="optimizer",
        number="5.1",
        section="Finding 5: SGD vs Adam",
        claim="Adam gives much larger bounds than SGD.",
        paper={"Adam / SGD": "much larger than 1"},
        sweep=OPTIMIZER_SWEEP,
        scales=OPTIMIZER_SCALES,
        cost={
            "quick": "~25 s (2 runs)",
            "cpu": "~9 min (24 runs x 300 epochs, 2 workers; measured 9 min on idle cores)",
            "full": "as cpu x 50",
        },
        analyse=_ratio_analysis(
            "model.optimizer", "adam", "sgd", ABOVE, MUCH_LARGER, "Adam's C_lower much larger", matched_on="train/loss"
        ),
        setting="FCN widths 16 / 48 / 256 on MNIST-1D, SGD vs Adam, 300 epochs",
        compares=True,
        recorded=Recorded("holds", seeds=4, minutes=9, date="2026-12-06"),
    )
)
#: The loss finding's scales; softmax measures the CE runs of the same sweep and scales (trained once).
LOSS_SCALES = {"quick": {**QUICK, WIDTH: 16}, "cpu": {}, "full": {}}

register(
    Finding(
        name="loss",
        number="5.2",
        section="Finding 5: CE vs MSE (softmax outputs)",
        claim="MSE gives slightly smaller bounds than CE (the softmax of a CE network far smaller: see "
        "'softmax' below).",
        paper={"MSE / CE": "slightly below 1"},
        sweep="fcn_mnist1d_loss",
        scales=LOSS_SCALES,
        cost={
            "quick": "~25 s (2 runs)",
            "cpu": "~8 min (24 runs x 300 epochs, 2 workers; measured 7.7 min idle, 14 min shared)",
            "full": "as cpu x 50",
        },
        # CE and MSE values are not comparable: the two are also compared at equal training accuracy
        analyse=_ratio_analysis(
            "model.loss", "mse", "ce", BELOW, SLIGHTLY, "MSE's C_lower within 2x of CE's", matched_on="train/acc"
        ),
        setting="FCN widths 16 / 48 / 256 on MNIST-1D, CE vs MSE, 300 epochs",
        compares=True,
        recorded=Recorded("holds in part", seeds=4, minutes=7.7, date="2026-12-06"),
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
            "cpu": "~6 min (20 runs x 300 epochs, 2 workers; measured 6.4 min idle, 14 min under load)",
            "full": "as cpu x 50",
        },
        analyse=_slope_analysis(
            "model.depth",
            {"lipschitz/upper": 3.3, "lipschitz/lower": 2.0, "lipschitz/avg": 1.2},
            {
                ("at init", "lipschitz/lower"): FALLS,
                ("at init", "lipschitz/avg"): FALLS,
                ("at init", "lipschitz/upper"): RISES,
                ("after training", "lipschitz/lower"): RISES,
                ("after training", "lipschitz/avg"): RISES,
                ("after training", "lipschitz/upper"): RISES,
            },
        ),
        setting="FCN 64 on MNIST-1D, 1..6 hidden layers, 300 epochs",
        compares=True,
        recorded=Recorded("holds", seeds=4, minutes=6.4, date="2026-12-06"),
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
            "cpu": "~5 min (20 runs x 300 epochs, 2 workers; measured 4.7 min idle, 15 min under load)",
            "full": "as cpu x 50",
        },
        analyse=_slope_analysis(
            "data.train_subset",
            {"lipschitz/upper": 0.53, "lipschitz/lower": 0.37, "lipschitz/avg": 0.36},
            {("after training", m): SUB_LINEAR for m in BOUNDS},
            extra=train_size_budget,
        ),
        setting="FCN 64 on MNIST-1D, 250..4,000 training points, 300 epochs",
        compares=True,
        recorded=Recorded(
            "holds in part",
            seeds=4,
            minutes=4.7,
            date="2026-12-06",
            note="at the end and at equal training loss; C_lower falls with n after equal updates",
        ),
    )
)
