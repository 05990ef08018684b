"""Off the training points: out-of-distribution points (Gaussian noise) and adversarial points (PGD).

out_of_distribution: the runs' Lipschitz callback measures C_lower over the training points plus Gaussian noise
of several radii (point sets `NoisePoints`, configs/fcn_mnist1d_dd_ood.yaml); the analysis adds the test loss
on the test points plus the same noise, from each run's final checkpoint.

adversarial: the runs' callback measures C_lower over PGD points of several radii eps (point sets `PGDPoints`,
configs/cnn_fashion_mnist_adversarial.yaml); the analysis adds, from the final checkpoint, the largest
finite-difference ratio ||f(x') - f(x)|| / ||x' - x|| at the PGD points x' of each eps against C_lower.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from lipschitz_dd.reproduce.analysis import completed_by_width, markdown_table, save_figure
from lipschitz_dd.reproduce.checkpoints import load_trained
from lipschitz_dd.reproduce.measures import SEED, fewest_seeds, finite_max, jacobian_norms
from lipschitz_dd.reproduce.registry import CIFAR10, FASHION_MNIST, Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check, Threshold

WIDTH = "model.width"

RADII = {0.1: "noise_r10pct", 0.5: "noise_r50pct", 1.0: "noise_r100pct"}
"""r -> the point set's name in configs/fcn_mnist1d_dd_ood.yaml (sigma = r x the data's RMS per coordinate)."""

EPS = {0.1: "pgd_eps_0p1", 0.5: "pgd_eps_0p5", 1.0: "pgd_eps_1p0"}
"""eps (L2 radius) -> the point set's name in configs/cnn_fashion_mnist_adversarial.yaml."""


def noisy_test_losses(model, x_test: torch.Tensor, y_test: torch.Tensor, sigmas: list[float]) -> list[float]:
    """Mean cross-entropy of the logits at x_test + sigma * N(0, I) (a fixed generator, seed 0) per sigma."""
    losses = []
    for sigma in sigmas:
        generator = torch.Generator().manual_seed(0)
        noisy = x_test + sigma * torch.randn(x_test.shape, generator=generator)
        with torch.no_grad():
            logits = torch.cat([model(b) for b in noisy.split(1024)])
        losses.append(float(torch.nn.functional.cross_entropy(logits, y_test)))
    return losses


def analyse_out_of_distribution(records, out: Path) -> Analysis:
    """Per completed run (one per width): C_lower over the noisy training points of each radius r against
    C_lower over the training points (final values), and the test loss at the test points plus noise of
    standard deviation r x the training data's RMS per coordinate (r = 0: the clean test loss)."""
    result, rows = Analysis(), []
    for record in completed_by_width(records):
        c_lower = record.final_value("lipschitz/lower")
        model, x_train, _ = load_trained(record, "train")
        _, x_test, y_test = load_trained(record, "test")
        scale = float(x_train.pow(2).mean().sqrt())
        losses = noisy_test_losses(model, x_test, y_test, [0.0] + [r * scale for r in RADII])
        row = {"width": record.config.get(WIDTH), "seed": record.config.get(SEED, 0), "C_lower": c_lower}
        row["test loss"] = losses[0]
        for (r, name), loss in zip(RADII.items(), losses[1:], strict=True):
            row[f"C_lower(r={r}) / C_lower"] = record.final_value(f"lipschitz/lower_{name}") / c_lower
            row[f"test loss (r={r})"] = loss
        rows.append(row)
    if not rows:
        return result
    table = pd.DataFrame(rows)
    result.lines += markdown_table(table)
    result.figures.append(_ood_figure(table, out / "out_of_distribution.png"))
    result.checks += ood_checks(table)
    return result


#: "Barely changes": the largest |C_lower(noisy train) / C_lower(train) - 1| over radii, widths and seeds.
BARELY = Threshold("<", 0.25)
#: "The noisy test loss rises": the smallest over widths and seeds of test loss(r = max) / clean test loss.
RISES = Threshold(">", 1.0)


def ood_checks(table: pd.DataFrame) -> list[Check]:
    seeds = fewest_seeds(table, ["width"], seed="seed")
    ratios = table[[f"C_lower(r={r}) / C_lower" for r in RADII]].to_numpy(dtype=float)
    change = float(abs(ratios - 1).max()) if ratios.size and not np.isnan(ratios).all() else math.nan
    rise = table[f"test loss (r={max(RADII)})"] / table["test loss"]
    return [
        Check(
            "C_lower barely moves off the data",
            f"largest |C_lower(noisy train) / C_lower - 1| over r <= {max(RADII)}, widths and seeds",
            change,
            BARELY,
            seeds=seeds,
        ),
        Check(
            "the noisy test loss rises",
            f"smallest over widths and seeds of test loss at r = {max(RADII)} / clean test loss",
            float(rise.min()) if rise.notna().all() else math.nan,
            RISES,
            seeds=seeds,
        ),
    ]


def _ood_figure(table: pd.DataFrame, path: Path) -> Path:
    """Left: C_lower(r) / C_lower against r; right: the test loss against r; one line per width."""
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    radii = [0.0, *RADII]
    for width, group in table.groupby("width"):
        label = f"width {width:g}"
        ratios = np.column_stack([np.ones(len(group))] + [group[f"C_lower(r={r}) / C_lower"] for r in RADII])
        losses = np.column_stack([group["test loss"]] + [group[f"test loss (r={r})"] for r in RADII])
        for ax, values in ((left, ratios), (right, losses)):
            mean = values.mean(axis=0)
            error = [mean - values.min(axis=0), values.max(axis=0) - mean]
            ax.errorbar(radii, mean, yerr=error, fmt="o-", capsize=3, label=label)
    left.set(xlabel="noise radius r (x data RMS)", ylabel="C_lower(noisy train) / C_lower(train)")
    right.set(xlabel="noise radius r (x data RMS)", ylabel="test loss on noisy test points")
    right.legend(fontsize="small")
    return save_figure(figure, path)


def analyse_adversarial(records, out: Path) -> Analysis:
    """Per completed run (one per width): C_lower over the PGD points of each eps against C_lower over the
    training points (the callback's final values), and, from the final checkpoint, the largest finite-difference
    ratio at PGD points of each eps (10 steps, CE loss on the logits) against C_lower of that checkpoint."""
    from lipschitz_dd.bounds import finite_difference_ratio, pgd_perturbations

    result, rows = Analysis(), []
    for record in completed_by_width(records):
        c_lower = record.final_value("lipschitz/lower")
        model, x, y = load_trained(record)
        c_checkpoint = float(jacobian_norms(model, x).max())
        row = {"width": record.config.get(WIDTH), "seed": record.config.get(SEED, 0), "C_lower": c_lower}
        row["test loss"] = record.final_value("test/loss")
        for eps, name in EPS.items():
            row[f"C_lower(PGD {eps}) / C_lower"] = record.final_value(f"lipschitz/lower_{name}") / c_lower
            moved = torch.cat(
                [pgd_perturbations(model, b, t, eps=eps) for b, t in zip(x.split(512), y.split(512), strict=True)]
            )
            row[f"max FD({eps}) / C_lower"] = finite_max(finite_difference_ratio(model, x, moved)) / c_checkpoint
        rows.append(row)
    if not rows:
        return result
    table = pd.DataFrame(rows)
    result.lines += markdown_table(table)
    result.figures.append(_adversarial_figure(table, out / "adversarial.png"))
    result.checks += adversarial_checks(table)
    return result


#: C_lower over PGD points of eps 0.5 moves by at most 10 % (the study: ~5 % on CIFAR-10), largest over widths
#: and seeds.
PGD_MOVE = Threshold("<=", 0.10)
#: Finite-difference ratios at PGD points stay below C_lower (largest finite ratio over eps, widths, seeds).
FD_BELOW = Threshold("<=", 1.0)


def adversarial_checks(table: pd.DataFrame) -> list[Check]:
    seeds = fewest_seeds(table, ["width"], seed="seed")
    move = (table["C_lower(PGD 0.5) / C_lower"] - 1).abs()
    fd = pd.concat([table[f"max FD({eps}) / C_lower"] for eps in EPS], ignore_index=True)
    return [
        Check(
            "C_lower over PGD points within 10 %",
            "largest |C_lower(PGD eps 0.5) / C_lower - 1| over widths and seeds",
            float(move.max()) if move.notna().all() else math.nan,
            PGD_MOVE,
            seeds=seeds,
        ),
        Check(
            "finite differences at PGD points below C_lower",
            "largest finite max FD ratio / C_lower over eps, widths and seeds (runs without one left out)",
            float(fd.max()) if fd.notna().any() else math.nan,
            FD_BELOW,
        ),
    ]


def _adversarial_figure(table: pd.DataFrame, path: Path) -> Path:
    """Left: C_lower and C_lower over the PGD points of each eps against width; right: max FD ratio / C_lower."""
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    table = table.assign(
        **{f"C_lower(PGD {eps})": table["C_lower"] * table[f"C_lower(PGD {eps}) / C_lower"] for eps in EPS}
    )

    def draw(ax, column, style, label, **options):
        by_width = table.groupby("width")[column]
        mean = by_width.mean()
        error = [mean - by_width.min(), by_width.max() - mean]
        ax.errorbar(mean.index, mean, yerr=error, fmt=style, capsize=3, label=label, **options)

    draw(left, "C_lower", "o-", "training points", color="k")
    for eps in EPS:
        draw(left, f"C_lower(PGD {eps})", "o--", f"PGD eps {eps}")
        draw(right, f"max FD({eps}) / C_lower", "o-", f"PGD eps {eps}")
    right.axhline(1.0, color="grey", lw=0.8, ls=":", label="= C_lower")
    left.set(xlabel="width", ylabel="C_lower", yscale="log")
    right.set(xlabel="width", ylabel="max finite-difference ratio / C_lower")
    left.legend(fontsize="small")
    right.legend(fontsize="small")
    return save_figure(figure, path)


register(
    Finding(
        name="out_of_distribution",
        number="6.2",
        section="Out-of-distribution points",
        claim="C_lower over training points plus Gaussian noise (times the data radius) barely changes; the test "
        "loss on noisy test points rises.",
        paper={"C_lower": "barely changes", "noisy test loss": "rises with r"},
        config="fcn_mnist1d_dd_ood",
        parameters={WIDTH: [8, 32, 64, 256], "data.label_noise": 0.15, "trainer.max_epochs": 300},
        scales={
            "quick": {WIDTH: [8, 32], "trainer.max_epochs": 2, "data.num_samples": 1000},
            "cpu": {SEED: [0, 1, 2]},
            "full": {WIDTH: [4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512], "seed_everything": [0, 1, 2, 3]},
        },
        cost={
            "quick": "~25 s (2 runs)",
            "cpu": "~8 min (12 runs x 300 epochs; 4 runs measured 2.5 min)",
            "full": "~3 h (48 runs)",
        },
        analyse=analyse_out_of_distribution,
        setting="FCN widths 8 / 32 / 64 / 256 on MNIST-1D, noise 0.15, 300 epochs; Gaussian noise r = 0.1..1",
        compares=True,
        recorded=Recorded("holds", seeds=1, minutes=2.5, date="2026-12-01", rule="former"),
    )
)
register(
    Finding(
        name="adversarial",
        number="6.3",
        section="Adversarial points (Table 6), here on Fashion-MNIST CNNs (the study: CIFAR-10 CNNs)",
        claim="C_lower over PGD points (L2, eps 0.5) moves by at most ~5 %; the finite-difference ratio at PGD points "
        "stays below C_lower.",
        paper={"C_lower(PGD 0.5)": "within ~5 % of C_lower", "FD ratio": "below C_lower"},
        config="cnn_fashion_mnist_adversarial",
        data=f"{FASHION_MNIST}; at full scale {CIFAR10}",
        parameters={WIDTH: [1, 2, 3, 4, 6, 8, 12, 16], "lipschitz.every_n_epochs": 50},
        scales={
            "quick": {
                WIDTH: 4,
                "trainer.max_epochs": 1,
                "data.train_subset": 100,
                "data.test_subset": 100,
                "lipschitz.points.max_samples": 50,
            },
            # 5 of the 8 widths, 3 seeds
            "cpu": {WIDTH: [1, 2, 4, 8, 16], SEED: [0, 1, 2]},
            "full": {"sweep": "cnn_cifar10_adversarial"},
        },
        cost={
            "quick": "~40 s (1 run)",
            "cpu": "~2.5 h (15 runs x 300 epochs, 2 workers; 8 runs measured 72 min)",
            "full": "GPU hours (CIFAR-10)",
        },
        analyse=analyse_adversarial,
        setting="CNN widths 1..16 on Fashion-MNIST, 300 epochs; PGD (L2) eps 0.1 / 0.5 / 1",
        compares=True,
        recorded=Recorded("does not hold", seeds=1, minutes=72, date="2026-12-01", shared=True, rule="former"),
    )
)
