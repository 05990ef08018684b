"""Findings on the training options of the companion issue: CNN double descent on Fashion-MNIST, constrained
double descent, and C_lower as a regulariser (Jacobian-norm penalty)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lipschitz_dd.report.power_law import power_law_table
from lipschitz_dd.reproduce.analysis import (
    BOUNDS,
    completed_table,
    growth_since_init,
    markdown_table,
    means,
    save_figure,
)
from lipschitz_dd.reproduce.findings.double_descent import analyse as double_descent
from lipschitz_dd.reproduce.findings.evolution import fit_from_epoch
from lipschitz_dd.reproduce.registry import FASHION_MNIST, Analysis, Finding, register

PENALTY = "model.jacobian_penalty"


def analyse_penalty(records, out: Path) -> Analysis:
    """Mean over seeds of test loss and the bounds per penalty weight lambda; the verdict compares the best
    penalised run with lambda = 0 (test loss lower?) and C_upper's relative change there."""
    table = completed_table(records, [PENALTY, "seed_everything"])
    result = Analysis()
    if table.empty:
        return result
    mean = means(table, [PENALTY], ("test/loss", "test/acc", *BOUNDS)).sort_values(PENALTY)
    result.lines += markdown_table(mean)
    result.figures.append(_penalty_figure(mean, out / "regulariser.png"))
    base = mean[mean[PENALTY] == 0]
    penalised = mean[mean[PENALTY] > 0]
    if base.empty or penalised.empty:
        return result
    best = penalised.loc[penalised["test/loss"].idxmin()]
    upper_change = best["lipschitz/upper"] / base["lipschitz/upper"].iloc[0] - 1
    better = best["test/loss"] < base["test/loss"].iloc[0]
    result.verdict = (
        f"{'holds' if better and abs(upper_change) < 0.25 else 'holds in part' if better else 'does not hold here'}"
        f": best lambda {best[PENALTY]:g} gives test loss {best['test/loss']:.4g} against "
        f"{base['test/loss'].iloc[0]:.4g} without penalty; C_upper changes by {100 * upper_change:+.1f} %"
    )
    return result


def _penalty_figure(mean, path: Path) -> Path:
    """Test loss and the three bounds against lambda (symlog x: lambda = 0 is shown)."""
    from matplotlib.figure import Figure

    metrics = ["test/loss", *BOUNDS]
    figure = Figure(figsize=(3.6 * len(metrics), 3.4), layout="constrained")
    for ax, metric in zip(figure.subplots(1, len(metrics)), metrics, strict=True):
        ax.plot(mean[PENALTY], mean[metric], "o-")
        positive = mean[PENALTY][mean[PENALTY] > 0]
        ax.set_xscale("symlog", linthresh=float(positive.min()) if len(positive) else 1e-3)
        ax.set(xlabel="lambda", ylabel=metric)
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


def analyse_constrained(records, out: Path) -> Analysis:
    """The double-descent analysis with one line per setting (logit temperature 1 / 10 / 40 = unconstrained /
    C = 10 / C = 1), plus per setting the height of the double descent: the largest test loss over width against
    the test loss at the smallest width, and the largest C_lower and C_upper over width (means over seeds). The
    verdict: does each tighter constraint lower the test-loss peak and the largest C_lower?"""
    result = double_descent(records, out, hue=TEMPERATURE)
    table = completed_table(records, [TEMPERATURE, "model.width", "seed_everything"])
    if table.empty:
        return result
    mean = means(table, [TEMPERATURE, "model.width"], ("test/loss", *BOUNDS))
    rows = []
    for temperature, group in mean.groupby(TEMPERATURE):
        group = group.sort_values("model.width")
        rows.append(
            {
                "logit temperature": temperature,
                "max test loss": group["test/loss"].max(),
                "at width": group.loc[group["test/loss"].idxmax(), "model.width"],
                "max / smallest-width test loss": group["test/loss"].max() / group["test/loss"].iloc[0],
                "max C_lower": group["lipschitz/lower"].max(),
                "max C_upper": group["lipschitz/upper"].max(),
            }
        )
    heights = pd.DataFrame(rows).sort_values("logit temperature")
    result.lines += ["", "Height of the double descent per setting (tighter constraint = higher temperature):", ""]
    result.lines += markdown_table(heights)
    if len(heights) > 1:
        damped = all(heights[c].is_monotonic_decreasing for c in ("max test loss", "max C_lower"))
        result.verdict = (
            ("holds" if damped else "does not hold here")
            + ": the test-loss peak and the largest C_lower "
            + ("fall" if damped else "do not fall")
            + " with each tighter constraint (max test loss "
            + " / ".join(f"{v:.3g}" for v in heights["max test loss"])
            + ", max C_lower "
            + " / ".join(f"{v:.3g}" for v in heights["max C_lower"])
            + " at temperatures "
            + " / ".join(f"{v:g}" for v in heights["logit temperature"])
            + ")"
        )
    return result


QUICK_DD = {"model.width": [4, 32], "trainer.max_epochs": 2, "data.num_samples": 1000}

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
        scales={
            "quick": {
                "model.width": [1, 4],
                "trainer.max_epochs": 2,
                "data.train_subset": 200,
                "data.test_subset": 200,
            },
            "cpu": {},
            "full": {"seed_everything": [0, 1, 2, 3]},
        },
        cost={
            "quick": "~30 s (2 runs)",
            "cpu": "~45 min (10 runs x 300 epochs, 2 workers; measured 42 min)",
            "full": "GPU hours",
        },
        analyse=analyse_cnn_double_descent,
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
            "cpu": {},
            "full": {"seed_everything": [0, 1, 2, 3]},
        },
        cost={
            "quick": "~40 s (3 runs)",
            "cpu": "~25 min (36 runs x 300 epochs, 2 workers; measured, shared)",
            "full": "as cpu x 4",
        },
        analyse=analyse_constrained,
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
            "cpu": {},
            "full": {"seed_everything": [0, 1, 2, 3]},
        },
        cost={
            "quick": "~30 s (2 runs)",
            "cpu": "~7 min (10 runs x 300 epochs, 2 workers; measured)",
            "full": "as cpu x 2",
        },
        analyse=analyse_penalty,
    )
)
