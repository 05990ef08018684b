"""The evolution bound: how far can the Lipschitz constant move given the path the parameters travelled?

For points x, x' of the data (radius r = max ||x - x'||_2) and C_theta = max over visited parameters and data
points of ||d f / d theta (theta, x)||_2 (the K x P parameter Jacobian), the study bounds the constant after t
updates by
    Bound 1(t) = (2 / r) * C_theta * sum_{s < t} ||theta_{s+1} - theta_s||_2 + C_x(theta_0)
    Bound 2(t) = (2 / r) * C_theta * B * eta * t + C_x(theta_0)    (gradients clipped to norm B, lr <= eta)
with C_x(theta_0) the constant at initialisation (in practice its lower bound C_lower(theta_0)). Both are
estimates of a bound: C_theta and C_x are maxima over measured points and checkpoints, so they err low.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from lipschitz_dd.bounds.result import Bound


def parameter_jacobian_norms(model: nn.Module, x: Tensor) -> Tensor:
    """||d f / d theta (x_i)||_2 per point, [B]: the top singular value of the K x P parameter Jacobian of the
    flattened output, exact: K VJPs (jacrev) give J, then sqrt of the top eigenvalue of the K x K Gram J J^T.
    Memory ~ B x K x P numbers: pass batches accordingly."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def outputs(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return functional_call(model, p, (xi.unsqueeze(0),)).reshape(-1)

    blocks = vmap(jacrev(outputs), in_dims=(None, 0))(params, x.detach())
    gram = sum(torch.einsum("bkp,bjp->bkj", b.flatten(2), b.flatten(2)) for b in blocks.values())
    return torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0).sqrt()


def data_radius(x: Tensor, chunk: int = 1024) -> float:
    """r = max_{i,j} ||x_i - x_j||_2 over the rows of x (flattened), exact, in chunks of `chunk` rows."""
    flat = x.detach().reshape(len(x), -1).double()
    best = 0.0
    for rows in flat.split(chunk):
        best = max(best, float(torch.cdist(rows, flat).max()))
    return best


def path_length_step(previous: dict[str, Tensor], model: nn.Module) -> float:
    """||theta - theta_prev||_2 over all parameters; updates `previous` in place to the current parameters."""
    total = torch.zeros((), dtype=torch.float64)
    for name, p in model.named_parameters():
        total += (p.detach() - previous[name]).double().pow(2).sum().cpu()
        previous[name].copy_(p.detach())
    return float(total.sqrt())


class EvolutionBounds(NamedTuple):
    """Bound 1 and Bound 2 of the module docstring, each a `Bound` (a float): kind "estimate" of an upper bound
    on the constant after t updates, errs "low" (C_theta and C_x are maxima over measured points and
    checkpoints), not certified. Unpacks as (bound1, bound2)."""

    # annotated float (a Bound is one): NamedTuple's generated __new__ cannot resolve the name Bound, which
    # breaks the API reference's signature
    bound1: float
    bound2: float


def evolution_bounds(
    c_theta: float,
    path_length: float,
    radius: float,
    c_x0: float,
    clip_norm: float | None = None,
    max_lr: float | None = None,
    steps: int = 0,
) -> EvolutionBounds:
    """(Bound 1, Bound 2) of the module docstring (see `EvolutionBounds`); Bound 2 is NaN without a clipping
    norm or a learning rate."""
    bound1 = 2.0 / radius * c_theta * path_length + c_x0
    bound2 = (
        float("nan")
        if clip_norm is None or max_lr is None
        else 2.0 / radius * c_theta * clip_norm * max_lr * steps + c_x0
    )
    return EvolutionBounds(
        Bound(bound1, "estimate", errs="low", certified=False, method="evolution bound 1 (path length)"),
        Bound(bound2, "estimate", errs="low", certified=False, method="evolution bound 2 (clip norm x lr x steps)"),
    )
