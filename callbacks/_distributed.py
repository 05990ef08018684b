"""Combine per-rank partial results into global ones. Every rank must call these (they are collectives)."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch import Trainer

from lipschitz_dd.bounds import LowerBoundStats

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
    all_gather of a [sets, 4] float64 tensor (count, sum, sum_sq, max); every rank must pass the same names.
    The merged objects carry no argmax point (points stay on their rank); with one process `stats` is returned
    as it is."""
    if trainer.world_size <= 1:
        return dict(stats)
    names = sorted(stats)
    local = torch.tensor(
        [[stats[n].count, stats[n].sum, stats[n].sum_sq, stats[n].max] for n in names],
        dtype=torch.float64,
        device=trainer.strategy.root_device,
    ).reshape(len(names), 4)
    gathered = trainer.strategy.all_gather(local).reshape(trainer.world_size, len(names), 4).cpu()
    merged: dict[str, LowerBoundStats] = {}
    for i, name in enumerate(names):
        total = LowerBoundStats()
        for count, sum_, sum_sq, max_ in gathered[:, i].tolist():
            part = LowerBoundStats(count=int(count), sum=sum_, sum_sq=sum_sq, max=max_)
            part.argmax_index = 0 if part.count else None  # position within the rank's points is not kept
            total = total.merge(part)
        merged[name] = total
    return merged
