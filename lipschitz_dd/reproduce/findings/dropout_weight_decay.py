"""Dropout and weight decay (the study: CIFAR ResNet-20; here the same network on a Fashion-MNIST subset):
C_lower against the dropout rate p (weight decay 1e-4) and against the weight decay (no dropout), and, on the
final networks, how the per-sample norms ||J(x)||_2 split between correctly and wrongly classified training
points and how they correlate with the per-sample loss (bounds.correctness_split).

Two entries, one per shipped sweep (sweeps/resnet20_fashion_mnist_dropout.yaml, _weight_decay.yaml), with one
analysis: the swept key is whichever of model.dropout / model.weight_decay takes more than one value.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from lipschitz_dd.reproduce.analysis import completed_table, fmt, markdown_table, means, save_figure
from lipschitz_dd.reproduce.checkpoints import load_trained
from lipschitz_dd.reproduce.findings.checkpoint_measures import _norms
from lipschitz_dd.reproduce.registry import FASHION_MNIST, Analysis, Finding, register

DROPOUT, DECAY, SEED = "model.dropout", "model.weight_decay", "seed_everything"


def correctness_row(record) -> dict:
    """The final network's correct/wrong split on its training points: mean norm of each group, share of the
    wrongly classified among the 10 % highest norms, Pearson correlation of per-sample loss and norm."""
    import torch

    from lipschitz_dd.bounds import correctness_split

    model, x, y = load_trained(record)
    norms = _norms(model, x)
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
    }


def analyse(records, out: Path) -> Analysis:
    """Mean over seeds of C_lower, C_avg, test loss and the correctness columns per value of the swept key; the
    verdict: does C_lower fall from the smallest to the largest value, and how large is corr(loss, norm)."""
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
    columns = ["lipschitz/lower", "lipschitz/avg", "test/loss", "test/acc", *extra.columns.drop("run")]
    mean = means(table, [key], columns).sort_values(key)
    result.lines += markdown_table(mean)
    result.figures.append(_figure(mean, key, out / f"{key.split('.')[-1]}.png"))
    first, last = mean["lipschitz/lower"].iloc[0], mean["lipschitz/lower"].iloc[-1]
    correlation = float(mean["corr(loss, norm)"].abs().max()) if "corr(loss, norm)" in mean else float("nan")
    falls = last < first
    result.verdict = (
        f"{'holds' if falls else 'does not hold here'}: C_lower goes from {fmt(first)} at {key} = "
        f"{mean[key].iloc[0]:g} to {fmt(last)} at {mean[key].iloc[-1]:g}; |corr(loss, norm)| at most "
        f"{fmt(correlation)} (the study: ~0.03)"
    )
    return result


def _figure(mean: pd.DataFrame, key: str, path: Path) -> Path:
    """C_lower and C_avg (left) and the mean-norm ratio wrong / correct (right) against the swept key."""
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.plot(mean[key], mean["lipschitz/lower"], "o-", label="C_lower")
    left.plot(mean[key], mean["lipschitz/avg"], "s--", label="C_avg")
    left.set(xlabel=key, ylabel="bound", yscale="log")
    left.legend(fontsize="small")
    if "mean norm wrong / correct" in mean:
        right.plot(mean[key], mean["mean norm wrong / correct"], "o-")
    right.axhline(1.0, color="grey", lw=0.8)
    right.set(xlabel=key, ylabel="mean ||J|| wrong / correct")
    return save_figure(figure, path)


TINY = {
    "model.width": 4,
    "trainer.max_epochs": 1,
    "data.train_subset": 64,
    "data.test_subset": 64,
    "lipschitz.points.max_samples": 32,
    SEED: 0,
}

# The cpu scale: ResNet-20 at width 8 (8-16-32 channels, a quarter of the convolutions' cost), 100 epochs, one
# seed, bounds at epochs 0, 25, 50, 75, 100: ~5 s per epoch here, ~10 min a run. Width 16 for 200 epochs with
# the bounds every 10 epochs measured ~15 s per epoch plus ~30 s per measurement: hours per run on this machine.
CPU = {
    "model.width": 8,
    "trainer.max_epochs": 100,
    SEED: 0,
    "lipschitz.dense_epochs": 0,
    "lipschitz.every_n_epochs": 25,
}
CPU_COST = "~25 min (5 runs x 100 epochs of ResNet-20 at width 8, 2 workers; measured, shared)"

register(
    Finding(
        name="dropout_weight_decay",
        number="5.6",
        section="Dropout and weight decay (CIFAR ResNet-20; here on a Fashion-MNIST subset): dropout",
        claim="C_lower falls with dropout p; misclassified points have larger norms more often, loss and norm barely "
        "correlate (~0.03).",
        paper={"C_lower": "falls with p", "corr(loss, norm)": "~0.03"},
        sweep="resnet20_fashion_mnist_dropout",
        data=FASHION_MNIST,
        scales={"quick": {**TINY, DROPOUT: [0.0, 0.4]}, "cpu": CPU, "full": {"trainer.max_epochs": 500}},
        cost={"quick": "~40 s (2 tiny runs)", "cpu": CPU_COST, "full": "GPU"},
        analyse=analyse,
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
        analyse=analyse,
    )
)
