"""Findings measured on the saved final networks: softmax outputs, and the lower bound's diagnostics
(sub-sampling error, hard convex combinations, finite differences at PGD points, correct vs wrong points)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure

from lipschitz_dd.reproduce.analysis import completed_by_width, markdown_table, save_figure
from lipschitz_dd.reproduce.checkpoints import load_trained
from lipschitz_dd.reproduce.findings.axes import LOSS_SCALES, QUICK
from lipschitz_dd.reproduce.findings.dropout_weight_decay import CPU as RESNET_CPU
from lipschitz_dd.reproduce.findings.dropout_weight_decay import DROPOUT, TINY
from lipschitz_dd.reproduce.findings.robustness import ADVERSARIAL_ONLY, ADVERSARIAL_SCALES
from lipschitz_dd.reproduce.measures import SEED, finite_max, jacobian_norms
from lipschitz_dd.reproduce.registry import FASHION_MNIST, Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check, Threshold


def run_title(record) -> str:
    """A run as a reader names it: width and seed (never the run's folder name)."""
    return f"width {record.config.get('model.width')}, seed {record.config.get('seed_everything', 0)}"


def _histograms(named_norms: dict[str, torch.Tensor], title: str, path: Path) -> Path:
    """Overlaid histograms of per-sample norms (log-spaced bins), one per entry of `named_norms`."""
    import numpy as np

    figure = Figure(figsize=(6.5, 4), layout="constrained")
    ax = figure.subplots()
    values = torch.cat([v.flatten() for v in named_norms.values()])
    positive = values[values > 0]
    bins = np.geomspace(float(positive.min()), float(positive.max()), 40) if len(positive) else 40
    for label, norms in named_norms.items():
        ax.hist(norms.numpy(), bins=bins, alpha=0.55, label=label)
    ax.set(xscale="log", xlabel="$||J(x)||_2$", ylabel="points", title=title)
    ax.legend(fontsize="small")
    return save_figure(figure, path)


def analyse_softmax(records, out: Path) -> Analysis:
    """Per completed CE run: C_lower of the logits and of softmax(logits) over the training set, and their ratio
    (at most 1/2: the softmax is 1/2-Lipschitz)."""
    from lipschitz_dd.bounds import SoftmaxOutput

    result, rows = Analysis(), []
    for record in [r for r in records if r.completed and r.config.get("model.loss") == "ce"]:
        model, x, _ = load_trained(record)
        logit_norms, softmax_norms = jacobian_norms(model, x), jacobian_norms(SoftmaxOutput(model), x)
        logits, probabilities = float(logit_norms.max()), float(softmax_norms.max())
        result.figures.append(
            _histograms(
                {"logits": logit_norms, "softmax": softmax_norms},
                f"training set, {run_title(record)}",
                out / f"softmax_{record.name}.png",
            )
        )
        rows.append(
            {
                "run": record.name,
                "width": record.config.get("model.width"),
                "C_lower logits": logits,
                "C_lower softmax": probabilities,
                "softmax / logits": probabilities / logits,
            }
        )
    if not rows:
        return result
    table = pd.DataFrame(rows).sort_values("width")
    result.lines += markdown_table(table.drop(columns=["run"]))
    result.checks += softmax_checks(table)
    result.note = (
        "at most 1/2 of the logits' holds by construction (the softmax is 1/2-Lipschitz); the check is 'far below'"
    )
    return result


#: "Far below" the logits' C_lower: softmax / logits at most 1/4, i.e. at least 2x below the 1/2 that the softmax
#: gives by construction (diag p - p p^T has spectral norm <= 1/2); the largest ratio over the seeds of a width.
FAR_BELOW = Threshold("<=", 0.25)


def softmax_checks(table: pd.DataFrame) -> list[Check]:
    """One check per width: the largest softmax / logits ratio over its runs."""
    return [
        Check(
            f"width {width:g}: softmax C_lower far below the logits'",
            "largest over seeds of C_lower(softmax) / C_lower(logits) (<= 0.5 by construction)",
            float(group["softmax / logits"].max()),
            FAR_BELOW,
        )
        for width, group in table.groupby("width")
    ]


SUBSET_FRACTIONS = (0.125, 0.25, 0.5)
TOP_M = 64


def analyse_diagnostics(records, out: Path) -> Analysis:
    """Per completed run, on the training set: the sub-sampling error of C_lower (subsets of 1/8, 1/4, 1/2 of the
    points, 200 each), C_lower over the midpoints of all pairs of the TOP_M highest-norm points against C_lower,
    the largest finite-difference ratio at PGD points (eps 0.5) against C_lower, and the correct/wrong split."""
    from lipschitz_dd.bounds import (
        correctness_split,
        finite_difference_ratio,
        pgd_perturbations,
        subsample_error,
    )
    from lipschitz_dd.bounds.hard_points import top_pair_midpoints

    result, rows = Analysis(), []
    for record in [r for r in records if r.completed]:
        model, x, y = load_trained(record)
        norms = jacobian_norms(model, x)
        c_lower = float(norms.max())
        sizes = [max(1, int(f * len(x))) for f in SUBSET_FRACTIONS]
        errors = subsample_error(norms, sizes, repeats=200)
        midpoints = top_pair_midpoints(x, norms, TOP_M)
        hard = jacobian_norms(model, midpoints)
        result.figures.append(
            _histograms(
                {"training points": norms, f"top-{TOP_M} pair midpoints": hard},
                run_title(record),
                out / f"norms_{record.name}.png",
            )
        )
        adversarial = torch.cat(
            [pgd_perturbations(model, b, t, eps=0.5) for b, t in zip(x.split(512), y.split(512), strict=True)]
        )
        with torch.no_grad():
            logits = model(x)
        split = correctness_split(norms, logits, y)
        row = {"run": record.name, "width": record.config.get("model.width"), "C_lower": c_lower}
        row.update(
            {f"% below, n/{round(1 / f)}": e.mean_below_pct for f, e in zip(SUBSET_FRACTIONS, errors, strict=True)}
        )
        row["midpoints max / C_lower"] = float(hard.max()) / c_lower
        row["midpoints median / top-m median"] = float(hard.median()) / float(norms.topk(TOP_M).values.median())
        row["max FD ratio at PGD / C_lower"] = finite_max(finite_difference_ratio(model, x, adversarial)) / c_lower
        row["mean norm wrong / correct"] = split.mean_wrong / split.mean_correct
        row["corr(loss, norm)"] = split.loss_norm_correlation
        rows.append(row)
    if not rows:
        return result
    table = pd.DataFrame(rows).sort_values("width")
    result.lines += markdown_table(table.drop(columns=["run"]))
    result.checks += diagnostics_checks(table)
    return result


#: "A little below": mean % by which C_lower of an n/8 subset falls below the full set's (the study: 21 %..6 %).
SUBSAMPLE = Threshold("<=", 25.0)
#: Midpoints of high-norm pairs shift the norms by less than 2x (largest over runs).
MIDPOINTS = Threshold("<", 2.0)
#: Finite-difference ratios at PGD points stay below C_lower (largest finite ratio over runs).
FD_BELOW = Threshold("<=", 1.0)
#: Loss and norm "barely correlate" (the study ~0.03): the largest |corr| over runs.
BARELY = Threshold("<=", 0.1)


def diagnostics_checks(table: pd.DataFrame) -> list[Check]:
    """Checks of the diagnostics table (one row per run); a column without any finite value is not measured."""

    def worst(column: str, absolute: bool = False) -> float:
        values = pd.to_numeric(table[column], errors="coerce") if column in table else pd.Series(dtype=float)
        values = values.abs() if absolute else values
        return float(values.max()) if values.notna().any() else float("nan")

    eighth = f"% below, n/{round(1 / SUBSET_FRACTIONS[0])}"
    return [
        Check("sub-sampling error small", f"largest over runs of {eighth} (mean % below)", worst(eighth), SUBSAMPLE),
        Check(
            "hard midpoints within 2x",
            "largest over runs of midpoints max / C_lower",
            worst("midpoints max / C_lower"),
            MIDPOINTS,
        ),
        Check(
            "finite differences at PGD points below C_lower",
            "largest finite max FD ratio at PGD (eps 0.5) / C_lower over runs (runs without one are left out)",
            worst("max FD ratio at PGD / C_lower"),
            FD_BELOW,
        ),
        Check(
            "loss and norm barely correlate",
            "largest |corr(loss, norm)| over runs",
            worst("corr(loss, norm)", True),
            BARELY,
        ),
    ]


register(
    Finding(
        name="softmax",
        number="5.3",
        section="CE vs MSE, softmax outputs",
        claim="The lower bound of softmax(f) of a CE network is far below that of its logits.",
        paper={"softmax vs logits": "far smaller"},
        sweep="fcn_mnist1d_loss",
        # the loss finding's sweep and scales: its CE runs are measured, trained once for both findings
        scales=LOSS_SCALES,
        cost={
            "quick": "~25 s (2 runs, loss's quick runs)",
            "cpu": "the loss runs (~8 min, 24 runs x 300 epochs, 2 workers), then ~2 min on 12 final checkpoints",
            "full": "as cpu x 50",
        },
        analyse=analyse_softmax,
        setting="the CE runs of the loss sweep (FCN widths 16 / 48 / 256, 4 seeds), final checkpoints",
        recorded=Recorded(
            "holds in part",
            seeds=4,
            minutes=1.7,
            date="2026-12-06",
            shared=True,
            note="softmax / logits 0.18-0.22, 0.25-0.26, 0.011-0.012 at widths 16 / 48 / 256",
        ),
    )
)
register(
    Finding(
        name="lower_bound_diagnostics",
        number="6.6",
        section="Large scale (sub-sampling, hard convex combinations), adversarial points (finite differences), "
        "dropout/weight decay (correct vs wrong points): measured here on MNIST-1D FCNs",
        claim="C_lower from subsets falls a little below the full set's; midpoints of high-norm pairs shift norms by "
        "< 2x; finite-difference ratios at PGD points stay below C_lower; loss and norm barely correlate.",
        paper={"sub-sampling": "21 %..6 % below (ImageNet, 50k..400k)", "midpoints": "< 2x", "corr": "~0.03"},
        sweep="fcn_mnist1d_dd",
        scales={
            "quick": {**QUICK, "model.width": 16, "data.label_noise": 0.15},
            "cpu": {"model.width": [32, 256], "data.label_noise": 0.15},
            "full": {"model.width": [32, 256], "data.label_noise": 0.15, "seed_everything": [0, 1, 2, 3]},
        },
        cost={"quick": "~20 s (1 run)", "cpu": "~3 min (2 runs x 300 epochs; measured)", "full": "~20 min"},
        analyse=analyse_diagnostics,
        setting="FCN widths 32 / 256 on MNIST-1D, noise 0.15, 300 epochs, final checkpoints",
        recorded=Recorded("holds", seeds=1, minutes=3, date="2026-12-01", note="verdict rederived from its numbers"),
    )
)


def distribution_rows(records, label_of) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Per completed run: the shape of ||J(x)||_2 over its training set (exact norms on the final checkpoint):
    median, mean, 99th percentile / median, max / median, skewness; and the norms pooled per `label_of(record)`."""
    rows, pooled = [], {}
    for record in completed_by_width(records):
        model, x, _ = load_trained(record)
        norms = jacobian_norms(model, x).double()
        centred = norms - norms.mean()
        skew = float((centred**3).mean() / centred.pow(2).mean().pow(1.5))
        label = label_of(record)
        pooled[label] = torch.cat([pooled[label], norms]) if label in pooled else norms
        median = float(norms.median())
        rows.append(
            {
                "run": record.name,
                "width": record.config.get("model.width"),
                "seed": record.config.get("seed_everything", 0),
                "median": median,
                "mean": float(norms.mean()),
                "p99 / median": float(torch.quantile(norms, 0.99)) / median,
                "max / median": float(norms.max()) / median,
                "skewness": skew,
            }
        )
    return rows, pooled


def analyse_distributions(records, out: Path) -> Analysis:
    """Per completed run: the histogram of ||J(x)|| over the training set and its shape (median, mean, p99/median,
    max/median, skewness); the study reads a long right tail as max/median far above 1."""
    result = Analysis()
    rows, pooled = distribution_rows(records, lambda r: f"width {r.config.get('model.width')}")
    if not rows:
        return result
    result.figures.append(_histograms(pooled, "per-sample ||J(x)|| on the training set", out / "distributions.png"))
    table = pd.DataFrame(rows)
    result.lines += markdown_table(table.drop(columns=["run"]))
    result.checks += distribution_checks(table)
    result.note = (
        "the ResNet tail is measured by jacobian_distributions_resnet, the CNNs' by jacobian_distributions_cnn"
    )
    return result


#: "Compact" (the study's FCN/CNN histograms): max / median of the per-sample norms, largest over runs.
COMPACT = Threshold("<=", 10.0)
#: The ResNet claim, a long right tail: max / median far above 1 (>= 10), smallest over the ResNet runs.
LONG_TAIL = Threshold(">=", 10.0)


def distribution_checks(table: pd.DataFrame, resnet_tail: float = float("nan")) -> list[Check]:
    return [
        Check(
            "FCN distributions compact",
            "largest over runs of max / median of ||J(x)|| on the training set",
            float(table["max / median"].max()) if len(table) else float("nan"),
            COMPACT,
        ),
        Check(
            "ResNet distributions long-tailed",
            "max / median for a ResNet (measured by jacobian_distributions_resnet, not here)",
            resnet_tail,
            LONG_TAIL,
            essential=False,
        ),
    ]


def analyse_cnn_distributions(records, out: Path) -> Analysis:
    """As analyse_distributions, on CNN runs: each width's norms pooled over its seeds in the figure."""
    result = Analysis()
    # by width, then seed: distribution_rows' sort by width is stable
    records = sorted(records, key=lambda r: r.config.get(SEED, 0))
    rows, pooled = distribution_rows(records, lambda r: f"CNN width {r.config.get('model.width')}")
    if not rows:
        return result
    result.figures.append(_histograms(pooled, "per-sample ||J(x)|| on the training set", out / "distributions_cnn.png"))
    table = pd.DataFrame(rows)
    result.lines += markdown_table(table.drop(columns=["run"]))
    result.checks.append(
        Check(
            "CNN distributions compact",
            "largest over runs of max / median of ||J(x)|| on the training set",
            float(table["max / median"].max()),
            COMPACT,
        )
    )
    return result


def analyse_resnet_distributions(records, out: Path) -> Analysis:
    """As analyse_distributions, on ResNet-20 runs (one histogram per dropout rate, seeds pooled); the claim is a
    long right tail in every run: the smallest max / median over runs against LONG_TAIL."""
    result = Analysis()
    # by dropout rate, then seed (sorted() is stable: distribution_rows' sort by width keeps this order)
    records = sorted(records, key=lambda r: (float(r.config.get("model.dropout", 0.0)), r.config.get(SEED, 0)))
    rows, pooled = distribution_rows(records, lambda r: f"ResNet-20, dropout {r.config.get('model.dropout', 0.0)}")
    if not rows:
        return result
    result.figures.append(
        _histograms(pooled, "per-sample ||J(x)|| on the training set", out / "distributions_resnet.png")
    )
    table = pd.DataFrame(rows).assign(dropout=[r.config.get("model.dropout", 0.0) for r in completed_by_width(records)])
    result.lines += markdown_table(table.drop(columns=["run"]))
    result.checks += resnet_tail_checks(table)
    return result


def resnet_tail_checks(table: pd.DataFrame) -> list[Check]:
    return [
        Check(
            "ResNet distributions long-tailed",
            "smallest over runs of max / median of ||J(x)|| on the training set",
            float(table["max / median"].min()) if len(table) else float("nan"),
            LONG_TAIL,
        )
    ]


register(
    Finding(
        name="jacobian_distributions",
        number="6.4",
        section="Jacobian-norm distributions",
        claim="Per-sample norm histograms on the training set are compact for FCNs (tested here; CNNs and ResNet-20 in "
        "6.4.1 and 6.4.2).",
        paper={"FCN / CNN": "compact", "ResNet": "long right tail"},
        sweep="fcn_mnist1d_dd",
        scales={
            "quick": {**QUICK, "model.width": 16, "data.label_noise": 0.15},
            "cpu": {"model.width": [8, 48, 512], "data.label_noise": 0.15},
            "full": {"model.width": [8, 48, 512], "data.label_noise": 0.15},
        },
        cost={"quick": "~10 s (1 run)", "cpu": "~5 min (3 runs x 300 epochs; measured)", "full": "as cpu"},
        analyse=analyse_distributions,
        setting="FCN widths 8 / 48 / 512 on MNIST-1D, noise 0.15, 300 epochs, final checkpoints",
        recorded=Recorded("holds", seeds=1, minutes=5, date="2026-12-01", note="FCNs only (ResNets: 6.4.2)"),
    )
)


register(
    Finding(
        name="jacobian_distributions_cnn",
        number="6.4.1",
        section="Jacobian-norm distributions: CNNs (the runs of the adversarial finding)",
        claim="Per-sample norm histograms on the training set are compact for CNNs (max / median at most 10).",
        paper={"CNN": "compact (CIFAR-10, MNIST with noise)"},
        sweep="cnn_fashion_mnist_dd",
        data=FASHION_MNIST,
        scales=ADVERSARIAL_SCALES,
        analyse_only=ADVERSARIAL_ONLY,
        cost={
            "quick": "~1 min (1 run)",
            "cpu": "cnn_fashion_mnist_dd's runs, then ~30 s (9 runs)",
            "full": "as adversarial",
        },
        analyse=analyse_cnn_distributions,
        setting="widths 2 / 4 / 8 of section 2.2's CNN runs (Fashion-MNIST, 3 seeds), final checkpoints",
        recorded=Recorded("holds", seeds=3, minutes=0.5, date="2026-12-07", shared=True, note="max / median <= 2.27"),
    )
)
register(
    Finding(
        name="jacobian_distributions_resnet",
        number="6.4.2",
        section="Jacobian-norm distributions: ResNet-20 (the runs of the dropout finding)",
        claim="Per-sample norm histograms on the training set have a long right tail for ResNets (max / median >= 10).",
        paper={"ResNet": "long right tail (CIFAR ResNets)"},
        sweep="resnet20_fashion_mnist_dropout",
        data=FASHION_MNIST,
        scales={"quick": {**TINY, DROPOUT: [0.0, 0.4]}, "cpu": RESNET_CPU, "full": {"trainer.max_epochs": 500}},
        cost={
            "quick": "~40 s (2 tiny runs)",
            "cpu": "the runs of dropout_weight_decay, then ~5 min (15 runs, ~20 s each)",
            "full": "GPU",
        },
        analyse=analyse_resnet_distributions,
        setting="the ResNet-20 runs of dropout_weight_decay (width 8, 1,000 Fashion-MNIST images, p 0..0.4, 3 seeds)",
        recorded=Recorded(
            "does not hold",
            seeds=3,
            minutes=4.8,
            date="2026-12-07",
            shared=True,
            note="max / median 2.2-2.5 without dropout; >= 10 in 8 of 9 runs only from p = 0.2 on",
        ),
    )
)
