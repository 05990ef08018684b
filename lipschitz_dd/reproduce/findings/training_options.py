"""Findings on the training options of the companion issue: CNN double descent on Fashion-MNIST, constrained
double descent, and C_lower as a regulariser (Jacobian-norm penalty)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from lipschitz_dd.report.figures import label
from lipschitz_dd.report.power_law import power_law_table
from lipschitz_dd.reproduce.analysis import (
    BOUNDS,
    completed_table,
    errorbar_spread,
    fmt,
    growth_since_init,
    markdown_table,
    save_figure,
)
from lipschitz_dd.reproduce.findings.double_descent import analyse as double_descent
from lipschitz_dd.reproduce.findings.evolution import fit_from_epoch
from lipschitz_dd.reproduce.measures import fewest_seeds, mean_and_spread, separated_ratio, spread
from lipschitz_dd.reproduce.registry import FASHION_MNIST, Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check, Threshold

PENALTY = "model.jacobian_penalty"


#: The best penalised test loss below the unpenalised one beyond the seed spread: min over lambda = 0's seeds /
#: max over the best lambda's seeds.
IMPROVES = Threshold(">", 1.0)
#: "C_upper barely changes": |mean C_upper at the best lambda / at lambda = 0 - 1|.
BARELY = Threshold("<=", 0.25)


def penalty_checks(table: pd.DataFrame) -> list[Check]:
    """The best penalised lambda (lowest mean test loss) against lambda = 0: its test loss (seed-separated) and
    C_upper's relative change (means)."""
    seeds = fewest_seeds(table, [PENALTY])
    base, penalised = table[table[PENALTY] == 0], table[table[PENALTY] > 0]
    better = change = math.nan
    if len(base) and len(penalised):
        best = penalised.groupby(PENALTY)["test/loss"].mean().idxmin()
        chosen = penalised[penalised[PENALTY] == best]
        better = separated_ratio(base["test/loss"], chosen["test/loss"])
        change = abs(chosen["lipschitz/upper"].mean() / base["lipschitz/upper"].mean() - 1)
    return [
        Check(
            "the penalty improves the test loss",
            "min over seeds of test loss at lambda = 0 / max at the best lambda",
            better,
            IMPROVES,
            seeds=seeds,
        ),
        Check(
            "C_upper barely changes",
            "|C_upper at the best lambda / at lambda = 0 - 1| (means)",
            change,
            BARELY,
            seeds=seeds,
        ),
    ]


def analyse_penalty(records, out: Path) -> Analysis:
    """Mean over seeds (and spread) of test loss and the bounds per penalty weight lambda; checks: the best
    penalised run against lambda = 0 (test loss lower beyond the spread; C_upper barely changes)."""
    table = completed_table(records, [PENALTY, "seed_everything"])
    result = Analysis()
    if table.empty:
        return result
    mean = mean_and_spread(table, [PENALTY], ("test/loss", "test/acc", *BOUNDS)).sort_values(PENALTY)
    result.lines += markdown_table(mean)
    result.figures.append(_penalty_figure(mean, out / "regulariser.png"))
    result.checks += penalty_checks(table)
    return result


def _penalty_figure(mean, path: Path) -> Path:
    """Test loss and the three bounds against lambda (symlog x: lambda = 0 is shown)."""
    from matplotlib.figure import Figure

    metrics = ["test/loss", *BOUNDS]
    figure = Figure(figsize=(3.6 * len(metrics), 3.4), layout="constrained")
    for ax, metric in zip(figure.subplots(1, len(metrics)), metrics, strict=True):
        errorbar_spread(ax, mean[PENALTY], mean[metric], mean[f"{metric} min"], mean[f"{metric} max"])
        positive = mean[PENALTY][mean[PENALTY] > 0]
        ax.set_xscale("symlog", linthresh=float(positive.min()) if len(positive) else 1e-3)
        ax.set(xlabel="penalty weight lambda", ylabel=label(metric))
    figure.suptitle("mean over seeds, bars min..max", fontsize="small")
    return save_figure(figure, path)


def analyse_cnn_double_descent(records, out: Path) -> Analysis:
    """The double-descent analysis, plus the bounds' evolution per width (the study's Table 8 CNN row): the
    log-log slope of each bound against the epoch, fitted from the evolution finding's start (1/8 of the run) on,
    and C_lower's growth final / epoch 0 (means over seeds)."""
    result = double_descent(records, out)
    done = [r for r in records if r.completed and len(r.metrics)]
    if not done:
        return result
    from_epoch = fit_from_epoch(done)
    slopes = power_law_table(done, ["model.width"], from_epoch, BOUNDS)
    if slopes.empty:
        return result
    table = slopes.pivot_table(index="model.width", columns="metric", values="exponent").reset_index()
    table.columns = ["width", *(f"slope {c.split('/')[-1]}" for c in table.columns[1:])]
    growth = (
        pd.DataFrame(
            {
                "width": [r.config.get("model.width") for r in done],
                "growth": [growth_since_init(r, "lipschitz/lower") for r in done],
            }
        )
        .groupby("width")["growth"]
        .mean()
    )
    table["C_lower final / epoch 0"] = table["width"].map(growth)
    result.lines += ["", f"Evolution per width: log-log slope against the epoch from epoch {from_epoch} on:", ""]
    result.lines += markdown_table(table)
    return result


TEMPERATURE = "model.logit_temperature"


#: Each tighter constraint lowers the height of the double descent beyond the seed spread: the smallest over
#: consecutive settings of min over the looser setting's seeds / max over the tighter one's, of each seed's
#: largest value over width.
DAMPED = Threshold(">", 1.0)


def heights(table: pd.DataFrame, metric: str) -> dict[float, list[float]]:
    """Per temperature: each seed's largest `metric` over width."""
    frame = table.assign(_seed=table["seed_everything"] if "seed_everything" in table else 0)
    peak = frame.groupby([TEMPERATURE, "_seed"])[metric].max().reset_index()
    return {t: list(g[metric]) for t, g in peak.groupby(TEMPERATURE)}


def constrained_checks(table: pd.DataFrame) -> list[Check]:
    seeds = fewest_seeds(table, [TEMPERATURE, "model.width"])
    checks = []
    for metric, name in (("test/loss", "the test-loss peak"), ("lipschitz/lower", "the largest C_lower")):
        by_setting = heights(table, metric)
        temperatures = sorted(by_setting)
        pairs = [
            separated_ratio(by_setting[a], by_setting[b]) for a, b in zip(temperatures, temperatures[1:], strict=False)
        ]
        checks.append(
            Check(
                f"{name} falls with each tighter constraint",
                "smallest over consecutive settings of min over the looser's seeds / max over the tighter's "
                "(each seed's largest value over width)",
                min(pairs) if pairs else math.nan,
                DAMPED,
                seeds=seeds,
            )
        )
    return checks


def analyse_constrained(records, out: Path) -> Analysis:
    """The double-descent figure and peak table with one line per setting (logit temperature 1 / 10 / 40 =
    unconstrained / C = 10 / C = 1), plus per setting the height of the double descent (mean over seeds and
    spread of each seed's largest test loss and C_lower over width). Checks: each tighter constraint lowers the
    test-loss peak and the largest C_lower, beyond the seed spread (the double-descent checks are not the claim
    here and are left out)."""
    result = double_descent(records, out, hue=TEMPERATURE)
    result.checks = []
    table = completed_table(records, [TEMPERATURE, "model.width", "seed_everything"])
    if table.empty:
        return result
    rows = []
    for temperature in sorted(table[TEMPERATURE].unique()):
        row = {"logit temperature": temperature}
        for metric, name in (("test/loss", "max test loss"), ("lipschitz/lower", "max C_lower")):
            mean, low, high = spread(heights(table, metric)[temperature])
            row[name] = mean
            row[f"{name} min..max"] = f"{fmt(low)}..{fmt(high)}"
        rows.append(row)
    result.lines += ["", "Height of the double descent per setting (tighter constraint = higher temperature):", ""]
    result.lines += markdown_table(pd.DataFrame(rows))
    result.checks += constrained_checks(table)
    return result


QUICK_DD = {"model.width": [4, 32], "trainer.max_epochs": 2, "data.num_samples": 1000}

CNN_DD_SCALES = {
    "quick": {
        "model.width": [1, 4],
        "trainer.max_epochs": 2,
        "data.train_subset": 200,
        "data.test_subset": 200,
    },
    # 8 of the file's 10 widths, 3 seeds
    "cpu": {"model.width": [1, 2, 3, 4, 6, 8, 12, 16], "seed_everything": [0, 1, 2]},
    "full": {"seed_everything": [0, 1, 2, 3]},
}
"""cnn_fashion_mnist_dd's grid; the adversarial findings analyse its quick / cpu runs (trained once)."""

register(
    Finding(
        name="cnn_fashion_mnist_dd",
        number="2.2",
        section="Companion issue: CNN double descent on Fashion-MNIST",
        claim="CNN widths across the interpolation threshold on Fashion-MNIST (20 % noise) show the Lipschitz "
        "double descent.",
        paper={"peak": "C_lower and test loss peak together near the threshold"},
        sweep="cnn_fashion_mnist_dd",
        data=FASHION_MNIST,
        scales=CNN_DD_SCALES,
        cost={
            "quick": "~30 s (2 runs)",
            "cpu": "~2 h (24 runs x 300 epochs, 2 workers; measured 134 min, mostly on shared cores: 3-4 min a run at "
            "widths 1-4, 24-33 min at width 16)",
            "full": "GPU hours",
        },
        analyse=analyse_cnn_double_descent,
        setting="CNN widths 1..16 on 1,000 Fashion-MNIST images, 20 % noise, Adam (the study's CNNs: SGD), 300 epochs",
        compares=True,
        recorded=Recorded("holds", seeds=3, minutes=134, date="2026-12-07", shared=True),
    )
)
register(
    Finding(
        name="constrained",
        number="2.3",
        section="Constrained double descent",
        claim="Renormalising every weight to spectral norm <= C^(1/depth) (logits times a temperature) damps the "
        "double descent in test loss and in the bounds.",
        paper={"settings": "unconstrained (tau 1), C = 10 (tau 10), C = 1 (tau 40)"},
        sweep="fcn_mnist1d_constrained_dd",
        scales={
            "quick": {**QUICK_DD, "model.width": 16},
            # 9 of the file's 12 widths, 3 seeds
            "cpu": {"model.width": [4, 8, 12, 16, 24, 32, 64, 128, 512], "seed_everything": [0, 1, 2]},
            "full": {"seed_everything": [0, 1, 2, 3]},
        },
        cost={
            "quick": "~40 s (3 runs)",
            "cpu": "~31 min (81 runs x 300 epochs, 2 workers; measured 31 min idle)",
            "full": "as cpu x 4",
        },
        analyse=analyse_constrained,
        setting="FCN widths 4..512 on MNIST-1D, unconstrained / C = 10 / C = 1, 300 epochs",
        compares=True,
        recorded=Recorded("holds", seeds=3, minutes=31, date="2026-12-06"),
    )
)
register(
    Finding(
        name="regulariser",
        number="7",
        section="C_lower as a regulariser",
        claim="loss + lambda * C_lower (max Jacobian norm over the batch) improves the test loss while C_upper barely "
        "changes.",
        paper={"test loss": "improves", "C_upper": "barely changes"},
        sweep="fcn_mnist1d_jacobian_penalty",
        scales={
            "quick": {PENALTY: [0.0, 0.01], "trainer.max_epochs": 2, "data.num_samples": 1000, "seed_everything": 0},
            "cpu": {"seed_everything": [0, 1, 2]},
            "full": {"seed_everything": [0, 1, 2, 3]},
        },
        cost={
            "quick": "~30 s (2 runs)",
            "cpu": "~11 min (15 runs x 300 epochs, 2 workers; measured 10.5 min, shared)",
            "full": "as cpu x 2",
        },
        analyse=analyse_penalty,
        setting="FCN 256 (one hidden layer) on MNIST-1D, lambda 0..0.1, 300 epochs",
        compares=True,
        recorded=Recorded("holds in part", seeds=3, minutes=10.5, date="2026-12-06", shared=True),
    )
)
