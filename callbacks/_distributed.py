"""Combine per-rank partial results into global ones. Every rank must call this (it is a collective)."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch import Trainer

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
