"""Closed-form Lipschitz constants (L2 -> L2) of single layers: the math behind the rules in rules.py.

* activations: ``max_derivative`` (sup |f'| of a smooth scalar function by a float64 grid plus golden-section
  refinement, padded to err high) and the closed forms of GELU and SELU;
* BatchNorm in eval mode: an exact per-channel affine map;
* pooling: exact constants of max pooling (from how many windows cover one entry) and the norm of average
  pooling, a linear map with nonnegative entries (a guaranteed Schur-test bound or a power-iteration
  estimate from below).
Each function states whether it is exact, a guaranteed bound (errs high) or an estimate (errs low).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lipschitz_dd.bounds.norm_estimates import power_iteration

__all__ = [
    "max_derivative",
    "cached_max_derivative",
    "GELU_CONSTANT",
    "SELU_SCALE",
    "SELU_ALPHA",
    "batchnorm_constant",
    "max_pool_constant",
    "adaptive_max_pool_constant",
    "nonnegative_linear_norm",
]


# ------------------------------------------------------------------------------------------ activations
def max_derivative(fn: Callable[[Tensor], Tensor], lo: float = -20.0, hi: float = 20.0) -> float:
    """sup_x |fn'(x)| of a smooth scalar activation, the Lipschitz constant of fn applied elementwise.

    A float64 grid of 400,001 points locates the maximum, then golden-section search refines it; the
    result is accurate to ~1e-12 and is padded by a relative 1e-9 so that it errs high.
    """

    def derivative(x: Tensor) -> Tensor:
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(x).sum(), x)
        return grad.abs()

    grid = torch.linspace(lo, hi, 400_001, dtype=torch.float64)
    i = int(derivative(grid).argmax())
    a, b = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, len(grid) - 1)])
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if derivative(torch.tensor([c], dtype=torch.float64)) >= derivative(torch.tensor([d], dtype=torch.float64)):
            b = d
        else:
            a = c
    best = max(float(derivative(torch.tensor([x], dtype=torch.float64))) for x in (a, b, float(grid[i])))
    return best * (1 + 1e-9)


# max_derivative evaluates 400,001 derivatives: each function's value is computed once per process.
cached_max_derivative = functools.cache(max_derivative)

# GELU: d/dx x Phi(x) = Phi(x) + x phi(x), maximal where its derivative phi(x) (2 - x^2) vanishes: x = sqrt(2).
GELU_CONSTANT = 0.5 * (1 + math.erf(1.0)) + math.sqrt(2) * math.exp(-1.0) / math.sqrt(2 * math.pi)  # 1.1289
# SELU: slope scale for x > 0 and scale * alpha * exp(x) for x < 0, so sup |f'| = scale * alpha (1.7581).
SELU_SCALE, SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717


# --------------------------------------------------------------------------------------- normalisation
def batchnorm_constant(bn: nn.modules.batchnorm._BatchNorm) -> float:
    """Exact Lipschitz constant of BatchNorm in eval mode: the per-channel affine map
    x_c -> gamma_c (x_c - mu_c) / sqrt(var_c + eps) + beta_c has constant max_c |gamma_c| / sqrt(var_c + eps)."""
    if bn.running_var is None:
        raise ValueError("BatchNorm without running statistics normalises by batch statistics")
    scale = (bn.running_var.detach().double() + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double().abs()
    return float(scale.max())


# ---------------------------------------------------------------------------------------------- pooling
def _window_counts(n: int, windows: Sequence[range]) -> int:
    """The largest number of windows (ranges of positions, clipped to [0, n)) that cover one position."""
    counts = [0] * n
    for window in windows:
        for pos in window:
            if 0 <= pos < n:
                counts[pos] += 1
    return max(counts)


def max_pool_constant(
    in_spatial: Sequence[int],
    out_spatial: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> float:
    """Exact L2 Lipschitz constant of max pooling: sqrt(max number of windows covering one input entry).

    Almost everywhere the Jacobian selects one entry per window, so J^T J = diag(m_i) with m_i the number
    of windows whose max is entry i; an entry larger than its neighbours is the max of every window that
    covers it, so sup ||J|| = sqrt(max_i cover(i)). Windows are products of per-dim ranges, so cover(i)
    factorises over dims. Non-overlapping windows give 1; 3x3 stride 2 gives sqrt(2 * 2) = 2.
    """
    total = 1
    for n, o, k, s, p, d in zip(in_spatial, out_spatial, kernel, stride, padding, dilation, strict=False):
        total *= _window_counts(n, [range(j * s - p, j * s - p + d * (k - 1) + 1, d) for j in range(o)])
    return math.sqrt(total)


def adaptive_max_pool_constant(in_spatial: Sequence[int], out_spatial: Sequence[int]) -> float:
    """As max_pool_constant, with PyTorch's adaptive windows [floor(j n / o), ceil((j + 1) n / o))."""
    total = 1
    for n, o in zip(in_spatial, out_spatial, strict=False):
        total *= _window_counts(n, [range(j * n // o, -(-(j + 1) * n // o)) for j in range(o)])
    return math.sqrt(total)


def nonnegative_linear_norm(fn: Callable[[Tensor], Tensor], input_shape: Sequence[int], certified: bool) -> float:
    """||A||_2 of a linear map with nonnegative entries (average pooling), applied per channel to one
    channel of shape ``input_shape`` (1, 1, *spatial).

    certified=True: the Schur test ||A||_2 <= sqrt(max row sum * max column sum) = sqrt(max(A 1) max(A^T 1)),
    a guaranteed bound, exact for uniform pools such as non-overlapping k x k averaging (1/k).
    certified=False: power iteration run to convergence (an estimate from below, float64).
    """

    def apply(v: Tensor) -> Tensor:
        return fn(v)

    def adjoint(u: Tensor) -> Tensor:
        with torch.inference_mode(False), torch.enable_grad():
            v = torch.zeros(tuple(input_shape), dtype=torch.float64, requires_grad=True)
            (grad,) = torch.autograd.grad(fn(v), v, u.clone())
        return grad

    ones = torch.ones(tuple(input_shape), dtype=torch.float64)
    if certified:
        rows = apply(ones)
        return math.sqrt(float(rows.max()) * float(adjoint(torch.ones_like(rows)).max()))
    init = torch.rand(tuple(input_shape), dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    return power_iteration(apply, adjoint, init, max_iters=2000, tol=1e-12).value
