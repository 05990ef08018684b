"""Combine per-rank partial results into global ones. Every rank must call these (they are collectives)."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch import Trainer

from lipschitz_dd.bounds import LowerBoundStats
from lipschitz_dd.callbacks._warm import WarmStats

Reduction = Literal["max", "min", "sum"]


def reduce_across_ranks(trainer: Trainer, values: dict[str, float], ops: dict[str, Reduction]) -> dict[str, float]:
    """`values` combined over all ranks, key by key, with `ops[key]` in {"max", "min", "sum"} (NaN propagates,
    so a diverged rank shows). One all_gather of a float64 vector on the strategy's device; with one process the
    values come back unchanged. Every rank must pass the same keys; call it on every rank, never under a
    rank-zero guard."""
    if trainer.world_size <= 1:
        return dict(values)
    keys = sorted(values)
    local = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=trainer.strategy.root_device)
    gathered = trainer.strategy.all_gather(local).reshape(trainer.world_size, len(keys))
    reducers = {"max": lambda c: c.amax(), "min": lambda c: c.amin(), "sum": lambda c: c.sum()}
    return {k: float(reducers[ops[k]](gathered[:, i])) for i, k in enumerate(keys)}


def reduce_stats(trainer: Trainer, stats: dict[str, LowerBoundStats]) -> dict[str, LowerBoundStats]:
    """Each rank's `LowerBoundStats` of every point set -> the statistics of all ranks' points together
    (`LowerBoundStats.merge` in rank order: counts and sums add, the max is the max, NaN propagates). One
    all_gather of a [sets, 6] float64 tensor (count, sum, sum_sq, max, tol_sum, tol_count; the last two 0 for
    plain statistics); every rank must pass the same names. A set for which some rank sent `WarmStats` (tol_count
    > 0) comes back as `WarmStats` with the summed tol_sum / tol_count, so avg_tol is the mean over all
    points. The merged objects carry no argmax point (points stay on their rank); with one process `stats` is
    returned as it is."""
    if trainer.world_size <= 1:
        return dict(stats)
    names = sorted(stats)
    rows = []
    for n in names:
        tol = (stats[n].tol_sum, stats[n].tol_count) if isinstance(stats[n], WarmStats) else (0.0, 0)
        rows.append([stats[n].count, stats[n].sum, stats[n].sum_sq, stats[n].max, *tol])
    local = torch.tensor(rows, dtype=torch.float64, device=trainer.strategy.root_device).reshape(len(names), 6)
    gathered = trainer.strategy.all_gather(local).reshape(trainer.world_size, len(names), 6).cpu()
    merged: dict[str, LowerBoundStats] = {}
    for i, name in enumerate(names):
        total = LowerBoundStats()
        for count, sum_, sum_sq, max_, _, _ in gathered[:, i].tolist():
            part = LowerBoundStats(count=int(count), sum=sum_, sum_sq=sum_sq, max=max_)
            part.argmax_index = 0 if part.count else None  # position within the rank's points is not kept
            total = total.merge(part)
        tol_sum, tol_count = float(gathered[:, i, 4].sum()), int(gathered[:, i, 5].sum())
        if tol_count > 0:
            total = WarmStats(
                total.count,
                total.sum,
                total.sum_sq,
                total.max,
                total.argmax_index,
                tol_sum=tol_sum,
                tol_count=tol_count,
            )
        merged[name] = total
    return merged


class TrainerRanks:
    """The `Ranks` of a Trainer (see callbacks/meter.py): its global rank, world size and root device, and the
    reductions above over its strategy. Every rank must call the reductions."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.rank, self.world_size = trainer.global_rank, trainer.world_size
        self.device = trainer.strategy.root_device

    def reduce_scalars(self, values: dict[str, float], ops: dict[str, Reduction]) -> dict[str, float]:
        return reduce_across_ranks(self.trainer, values, ops)

    def reduce_stats(self, stats: dict[str, LowerBoundStats]) -> dict[str, LowerBoundStats]:
        return reduce_stats(self.trainer, stats)
