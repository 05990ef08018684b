"""Hard convex combinations: midpoints of all pairs of the points with the largest Jacobian norms."""

from __future__ import annotations

import torch
from torch import Tensor


def top_pair_midpoints(x: Tensor, norms: Tensor, m: int) -> Tensor:
    """(x_i + x_j) / 2 for every pair i < j of the m points of `x` with the largest `norms` (m(m-1)/2 points,
    in the order of torch.combinations over those m sorted by decreasing norm). Every such point is a valid
    place to evaluate ||J||: a lower bound of the constant over the data's convex hull."""
    if x.shape[0] != norms.shape[0]:
        raise ValueError(f"x has {x.shape[0]} points but norms has {norms.shape[0]}")
    if m < 2:
        raise ValueError(f"m must be >= 2 to form pairs, got {m}")
    top = torch.nan_to_num(norms, nan=-torch.inf).topk(min(m, len(norms))).indices
    pairs = torch.combinations(torch.arange(len(top), device=x.device), r=2)
    return (x[top[pairs[:, 0]]] + x[top[pairs[:, 1]]]) / 2
