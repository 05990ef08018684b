"""Dropout and weight decay (the study: CIFAR ResNet-20; here the same network on a Fashion-MNIST subset):
C_lower against the dropout rate p (weight decay 1e-4) and against the weight decay (no dropout), and, on the
final networks, how the per-sample norms ||J(x)||_2 split between correctly and wrongly classified training
points and how they correlate with the per-sample loss (bounds.correctness_split).

Two entries, one per shipped sweep (sweeps/resnet20_fashion_mnist_dropout.yaml, _weight_decay.yaml), with one
analysis: the swept key is whichever of model.dropout / model.weight_decay takes more than one value.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lipschitz_dd.report.figures import label
from lipschitz_dd.reproduce.analysis import completed_table, errorbar_spread, markdown_table, save_figure
from lipschitz_dd.reproduce.checkpoints import load_trained
from lipschitz_dd.reproduce.measures import (
    binomial_upper_tail,
    fewest_seeds,
    jacobian_norms,
    mean_and_spread,
    separated_ratio,
)
from lipschitz_dd.reproduce.registry import FASHION_MNIST, Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check, Threshold

DROPOUT, DECAY, SEED = "model.dropout", "model.weight_decay", "seed_everything"


def correctness_row(record) -> dict:
    """The final network's correct/wrong split on its training points: mean norm of each group, share of the
    wrongly classified among the 10 % highest norms (and the counts behind it), Pearson correlation of per-sample
    loss and norm."""
    import torch

    from lipschitz_dd.bounds import correctness_split

    model, x, y = load_trained(record)
    norms = jacobian_norms(model, x)
    with torch.no_grad():
        logits = torch.cat([model(b) for b in x.split(512)])
    split = correctness_split(norms, logits, y)
    wrong = logits.argmax(-1) != y
    top = norms.topk(max(1, len(norms) // 10)).indices
    return {
        "mean norm wrong / correct": split.mean_wrong / split.mean_correct,
        "wrong share, top 10 % norms": float(wrong[top].double().mean()),
        "wrong share, all": float(wrong.double().mean()),
        "corr(loss, norm)": split.loss_norm_correlation,
        "top points": len(top),
        "wrong in top": int(wrong[top].sum()),
        "points": len(wrong),
        "wrong": int(wrong.sum()),
    }


#: C_lower falls from the smallest to the largest setting beyond the seed spread: min over the smallest
#: setting's seeds / max over the largest's.
FALLS = Threshold(">", 1.0)
#: Loss and norm "barely correlate" (the study ~0.03): the largest |corr(loss, norm)| over runs.
BARELY = Threshold("<=", 0.1)
#: Wrong points over-represented among the 10 % highest norms, beyond binomial noise: at every setting with wrong
#: points (seeds pooled), P[X >= wrong in top] for X ~ Binomial(top points, wrong share overall); the largest.
SIGNIFICANT = Threshold("<=", 0.05)


def over_representation(table: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per setting with wrong points (counts summed over seeds): top points, wrong among them, the overall wrong
    share and the one-sided binomial p-value of seeing that many wrong points among the top by chance."""
    rows = []
    for level, group in table.groupby(key):
        points, wrong = group["points"].sum(), group["wrong"].sum()
        if not points or not wrong:
            continue
        top, wrong_top = int(group["top points"].sum()), int(group["wrong in top"].sum())
        share = wrong / points
        rows.append(
            {
                key: level,
                "top points": top,
                "wrong in top": wrong_top,
                "expected wrong in top": top * share,
                "p-value": binomial_upper_tail(wrong_top, top, share),
            }
        )
    return pd.DataFrame(rows)


def checks(table: pd.DataFrame, key: str, over_represented: bool) -> list[Check]:
    """C_lower falls (seed-separated), |corr(loss, norm)| small, and (dropout) the binomial over-representation."""
    seeds = fewest_seeds(table, [key])
    levels = sorted(table[key].unique())
    first = table.loc[table[key] == levels[0], "lipschitz/lower"]
    last = table.loc[table[key] == levels[-1], "lipschitz/lower"]
    correlation = table["corr(loss, norm)"].abs() if "corr(loss, norm)" in table else pd.Series(dtype=float)
    out = [
        Check(
            f"C_lower falls with {label(key)}",
            f"min over seeds of C_lower at {levels[0]:g} / max at {levels[-1]:g}",
            separated_ratio(first, last),
            FALLS,
            seeds=seeds,
        ),
        Check(
            "loss and norm barely correlate",
            "largest |corr(loss, norm)| over runs",
            float(correlation.max()) if correlation.notna().any() else math.nan,
            BARELY,
        ),
    ]
    if over_represented:
        tests = over_representation(table[table[key] > 0], key) if "points" in table else pd.DataFrame()
        out.append(
            Check(
                "wrong points over-represented among high norms at every p > 0",
                "largest one-sided binomial p-value over p > 0 (seeds pooled)",
                float(tests["p-value"].max()) if len(tests) else math.nan,
                SIGNIFICANT,
            )
        )
    return out


def make_analyse(over_represented: bool):
    """The analysis of either sweep; `over_represented`: also test the wrong points' over-representation."""

    def analyse(records, out: Path) -> Analysis:
        """Mean over seeds (and spread) of C_lower, C_avg, test loss and the correctness columns per value of the
        swept key, and the checks."""
        result = Analysis()
        table = completed_table(records, [DROPOUT, DECAY, SEED])
        if table.empty:
            return result
        key = next((k for k in (DROPOUT, DECAY) if table[k].nunique() > 1), None)
        if key is None:
            result.lines.append("one setting only: nothing is swept")
            return result
        names = set(table["run"])
        extra = pd.DataFrame([{"run": r.name, **correctness_row(r)} for r in records if r.name in names])
        table = table.merge(extra, on="run", how="left")
        columns = ["lipschitz/lower", "lipschitz/avg", "test/loss", "test/acc", "mean norm wrong / correct"]
        columns += ["wrong share, top 10 % norms", "wrong share, all", "corr(loss, norm)"]
        mean = mean_and_spread(table, [key], columns).sort_values(key)
        result.lines += markdown_table(mean)
        if over_represented:
            tests = over_representation(table[table[key] > 0], key)
            result.lines += ["", "Wrong points among the 10 % highest norms (seeds pooled), binomial test:", ""]
            result.lines += markdown_table(tests) if len(tests) else ["(no wrong points)"]
        result.figures.append(_figure(mean, key, out / f"{key.split('.')[-1]}.png"))
        result.checks += checks(table, key, over_represented)
        return result

    return analyse


def _figure(mean: pd.DataFrame, key: str, path: Path) -> Path:
    """C_lower and C_avg against the swept key, and the mean-norm ratio wrong / correct on a second panel when some
    run has wrong points (no empty panel); mean over seeds, bars min..max."""
    ratio = "mean norm wrong / correct"
    with_ratio = ratio in mean and mean[ratio].notna().any()
    figure = Figure(figsize=(10 if with_ratio else 5.2, 3.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, 2 if with_ratio else 1))
    for metric, style in (("lipschitz/lower", "o-"), ("lipschitz/avg", "s--")):
        low, high = mean[f"{metric} min"], mean[f"{metric} max"]
        errorbar_spread(axes[0], mean[key], mean[metric], low, high, label(metric), fmt=style)
    axes[0].set(xlabel=label(key), ylabel="bound", yscale="log", title="mean over seeds, bars min..max")
    axes[0].legend(fontsize="small")
    if with_ratio:
        errorbar_spread(axes[1], mean[key], mean[ratio], mean[f"{ratio} min"], mean[f"{ratio} max"])
        axes[1].axhline(1.0, color="grey", lw=0.8, ls=":")
        axes[1].set(xlabel=label(key), ylabel="mean ||J|| wrong / correct", title="mean over seeds, bars min..max")
    return save_figure(figure, path)


TINY = {
    "model.width": 4,
    "trainer.max_epochs": 1,
    "data.train_subset": 64,
    "data.test_subset": 64,
    "lipschitz.points.max_samples": 32,
    SEED: 0,
}

# The cpu scale: ResNet-20 at width 8 (8-16-32 channels, a quarter of the convolutions' cost), 100 epochs, three
# seeds, bounds at epochs 0, 25, 50, 75, 100: ~5-6 min a run on one core here. Width 16 for 200 epochs with
# the bounds every 10 epochs measured ~15 s per epoch plus ~30 s per measurement: hours per run on this machine.
CPU = {
    "model.width": 8,
    "trainer.max_epochs": 100,
    SEED: [0, 1, 2],
    "lipschitz.dense_epochs": 0,
    "lipschitz.every_n_epochs": 25,
}
CPU_COST = "~50 min (15 runs x 100 epochs of ResNet-20 at width 8, 2 workers; measured 47-51 min, partly shared)"

register(
    Finding(
        name="dropout_weight_decay",
        number="5.6",
        section="Dropout and weight decay (CIFAR ResNet-20; here on a Fashion-MNIST subset): dropout",
        claim="C_lower falls with dropout p; misclassified points are over-represented among the largest norms (beyond "
        "binomial noise), loss and norm barely correlate (~0.03).",
        paper={"C_lower": "falls with p", "corr(loss, norm)": "~0.03"},
        sweep="resnet20_fashion_mnist_dropout",
        data=FASHION_MNIST,
        scales={"quick": {**TINY, DROPOUT: [0.0, 0.4]}, "cpu": CPU, "full": {"trainer.max_epochs": 500}},
        cost={"quick": "~40 s (2 tiny runs)", "cpu": CPU_COST, "full": "GPU"},
        analyse=make_analyse(over_represented=True),
        setting="ResNet-20 at width 8 on 1,000 Fashion-MNIST images, 20 % noise, p 0..0.4, 100 epochs",
        compares=True,
        recorded=Recorded("holds in part", seeds=3, minutes=51, date="2026-12-07", shared=True),
    )
)
register(
    Finding(
        name="weight_decay",
        number="5.7",
        section="Dropout and weight decay (CIFAR ResNet-20; here on a Fashion-MNIST subset): weight decay",
        claim="C_lower falls with weight decay; loss and norm barely correlate.",
        paper={"C_lower": "falls with weight decay", "corr(loss, norm)": "~0.03"},
        sweep="resnet20_fashion_mnist_weight_decay",
        data=FASHION_MNIST,
        scales={"quick": {**TINY, DECAY: [0.0, 0.0025]}, "cpu": CPU, "full": {"trainer.max_epochs": 500}},
        cost={"quick": "~40 s (2 tiny runs)", "cpu": CPU_COST, "full": "GPU"},
        analyse=make_analyse(over_represented=False),
        setting="ResNet-20 at width 8 on 1,000 Fashion-MNIST images, 20 % noise, decay 0..2.5e-3, 100 epochs",
        compares=True,
        recorded=Recorded("holds", seeds=3, minutes=47, date="2026-12-07", shared=True),
    )
)
