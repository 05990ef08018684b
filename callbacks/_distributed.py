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
    """Each rank's `LowerBoundStats` of every point set -> the statistics of all ranks' points together: one
    all_gather of the sets' `state_vector`s ([sets, len(STATE)] float64), then `LowerBoundStats.merge` in rank
    order (counts, sums and tolerance sums add, the max is the max, NaN propagates). Every rank must pass the
    same names. The merged objects carry no argmax point (points stay on their rank) and none of the warm
    estimator's diagnostics; with one process `stats` is returned as it is."""
    if trainer.world_size <= 1:
        return dict(stats)
    names = sorted(stats)
    width = len(LowerBoundStats.STATE)
    rows = [stats[n].state_vector() for n in names]
    local = torch.tensor(rows, dtype=torch.float64, device=trainer.strategy.root_device).reshape(len(names), width)
    gathered = trainer.strategy.all_gather(local).reshape(trainer.world_size, len(names), width).cpu()
    return {
        name: LowerBoundStats.merge_all(LowerBoundStats.from_state_vector(row) for row in gathered[:, i].tolist())
        for i, name in enumerate(names)
    }


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
