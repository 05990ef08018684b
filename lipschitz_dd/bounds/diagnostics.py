"""Diagnostics of lower bounds: sub-sampling error, finite-difference ratios, norms split by correctness."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class SubsampleError:
    """C_lower of random subsets of `size` points against the full-set maximum: mean and (sample) std over the
    repeats of max(subset)/max(all), `mean_below_pct` = 100 * (1 - mean), and `share_below` the fraction of
    subsets whose maximum is strictly below the full one (they missed every maximiser)."""

    size: int
    repeats: int
    mean_ratio: float
    std_ratio: float
    share_below: float

    @property
    def mean_below_pct(self) -> float:
        return 100.0 * (1.0 - self.mean_ratio)


def subsample_error(
    norms: Tensor, sizes: list[int], repeats: int = 100, generator: torch.Generator | None = None
) -> list[SubsampleError]:
    """For each size n: draw `repeats` subsets of n distinct points (uniformly, without replacement) from the
    per-sample norms and compare their maximum with the full maximum. The subset maximum is never above the
    full one: ratios lie in [0, 1]."""
    norms = norms.detach().flatten().double()
    full = float(norms.max())
    generator = generator or torch.Generator().manual_seed(0)
    rows = []
    for size in sizes:
        if not 1 <= size <= len(norms):
            raise ValueError(f"subset size {size} is not in 1..{len(norms)}")
        maxima = torch.stack(
            [norms[torch.randperm(len(norms), generator=generator)[:size]].max() for _ in range(repeats)]
        )
        ratios = maxima / full
        std = float(ratios.std()) if repeats > 1 else float("nan")
        share = float((maxima < full).double().mean())
        rows.append(SubsampleError(size, repeats, float(ratios.mean()), std, share))
    return rows


def finite_difference_ratio(model: nn.Module, x: Tensor, x_other: Tensor) -> Tensor:
    """||f(x_i') - f(x_i)||_2 / ||x_i' - x_i||_2 per pair, [B] (flattened outputs and inputs). By the mean-value
    inequality it is <= the max of ||J|| along the segment, hence <= the Lipschitz constant: a lower bound."""
    with torch.no_grad():
        diff = (model(x_other) - model(x)).flatten(1).norm(dim=1)
    return diff / (x_other - x).flatten(1).norm(dim=1)


@dataclass(frozen=True)
class CorrectnessSplit:
    """Per-sample norms of correctly and wrongly classified points, their means, and the Pearson correlation
    between per-sample loss and norm over all points."""

    correct: Tensor
    wrong: Tensor
    loss_norm_correlation: float

    @property
    def mean_correct(self) -> float:
        return float(self.correct.mean()) if len(self.correct) else float("nan")

    @property
    def mean_wrong(self) -> float:
        return float(self.wrong.mean()) if len(self.wrong) else float("nan")


def correctness_split(norms: Tensor, logits: Tensor, labels: Tensor, losses: Tensor | None = None) -> CorrectnessSplit:
    """Split ||J(x_i)|| by whether argmax logits_i == labels_i; correlation of `losses` (default: per-sample
    cross-entropy of the logits) with the norms (NaN if either is constant)."""
    norms, logits = norms.detach().double().flatten(), logits.detach().double()
    if losses is None:
        losses = nn.functional.cross_entropy(logits, labels, reduction="none")
    losses = losses.detach().double().flatten()
    right = logits.argmax(dim=1) == labels
    a, b = losses - losses.mean(), norms - norms.mean()
    denominator = float(a.norm() * b.norm())
    correlation = float((a * b).sum()) / denominator if denominator > 0 else float("nan")
    return CorrectnessSplit(norms[right], norms[~right], correlation)
