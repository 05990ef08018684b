"""Pairwise lower bound C_alt = max over pairs x != y of ||f(x) - f(y)||_2 / ||x - y||_2.

Every ratio is a valid lower bound of the Lipschitz constant (by definition), so the max over any subset
of pairs is one too; it is usually looser than the Jacobian bound and costs O(n^2) distances.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lipschitz_dd.bounds.jacobian import check_eval_mode
from lipschitz_dd.bounds.lower import model_device
from lipschitz_dd.bounds.result import Bound


def _exact_distances(a: Tensor, b: Tensor) -> Tensor:
    # Not the matmul formula: ||a||^2 + ||b||^2 - 2ab cancels badly for close points and could inflate
    # the ratio of two tiny distances.
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def pairwise_lipschitz(
    model,
    x: Tensor,
    *,
    max_points: int = 2000,
    generator: torch.Generator | None = None,
    batch_size: int = 1024,
) -> Bound:
    """max_{i != j} ||f(x_i) - f(x_j)||_2 / ||x_i - x_j||_2 over a subsample of the rows of x, for any nn.Module f.

    If x has more than ``max_points`` rows, a uniform subsample of that many (without replacement, drawn
    with ``generator``; a fresh one seeded 0 if None) is used. Inputs and logits are flattened; pairs of
    identical inputs are skipped. Distances are computed directly (not through the Gram expansion) in
    blocks of ``batch_size`` rows, so memory is O(batch_size * max_points). Exact over the pairs used,
    hence a valid lower bound of the Lipschitz constant; 0.0 if no pair has distinct inputs.

    Pairs closer than sqrt(eps) * max(||x_i||, ||x_j||) (eps: the dtype's machine epsilon, ~3e-4 relative in
    float32) are skipped too: there the rounding error of f(x_i) - f(x_j), divided by the tiny distance, could
    exceed the true ratio (float32 points one ulp apart gave 20x the Lipschitz constant).

    A `Bound` (a float): kind "lower", errs "low", certified.
    """
    check_eval_mode(model)
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] < 2:
        raise ValueError(
            f"pairwise_lipschitz needs a Tensor with at least 2 points, got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
        )
    if not isinstance(max_points, int) or max_points < 2:
        raise ValueError(f"max_points must be an int >= 2, got {max_points!r}")
    if x.shape[0] > max_points:
        generator = torch.Generator(device="cpu").manual_seed(0) if generator is None else generator
        rows = torch.randperm(x.shape[0], generator=generator)[:max_points]
        x = x[rows.to(x.device)]
    device = model_device(model, x.device)
    with torch.no_grad():
        inputs = x.to(device).reshape(x.shape[0], -1)
        chunks = x.to(device).split(batch_size)
        outputs = torch.cat([model(chunk).reshape(chunk.shape[0], -1) for chunk in chunks])
        best = inputs.new_zeros(())
        norms = torch.linalg.vector_norm(inputs, dim=1)
        resolution = torch.finfo(torch.promote_types(inputs.dtype, outputs.dtype)).eps ** 0.5
        for start in range(0, inputs.shape[0], batch_size):
            stop = start + batch_size
            input_distance = _exact_distances(inputs[start:stop], inputs)
            output_distance = _exact_distances(outputs[start:stop], outputs)
            resolved = torch.maximum(norms[start:stop, None], norms[None, :]) * resolution
            safe_distance = input_distance.clamp_min(torch.finfo(input_distance.dtype).tiny)
            # resolved >= 0, so this also skips identical inputs
            ratio = torch.where(input_distance > resolved, output_distance / safe_distance, 0.0)
            best = torch.maximum(best, ratio.max())
    return Bound(float(best), "lower", certified=True, method="pairwise ratios")
