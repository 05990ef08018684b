"""Estimates of a linear map's spectral norm from below: power iteration and restarted Lanczos, warm-started.

For a linear map A given by its products ``v -> A v`` and ``u -> A^T u``, the L2 operator norm
``||A||_2 = max_{||v||_2 = 1} ||A v||_2`` is the square root of the top eigenvalue of ``B = A^T A``.
Both methods work with B's Krylov subspace and report ``||A v||`` (or ``||B v|| / ||A v||``) for a unit vector
v, which is at most ||A|| (up to floating-point rounding): every value returned here is an *estimate from
below*; it errs low and approaches the norm as the vector converges.
A start vector from a previous call on slightly changed weights (a warm start) converges in a few steps,
which makes a bound recomputed every epoch cheap. For a guaranteed upper bound see gram.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "NormEstimate",
    "power_iteration",
    "lanczos_norm",
    "estimate_norm",
    "scaled_estimate",
    "working_precision",
    "random_unit",
]


@dataclass
class NormEstimate:
    """The L2 operator norm of one linear map.

    value: the norm estimate (power iteration: <= the true norm) or bound (certified: >= the true norm).
    certified: True when ``value`` is a guaranteed upper bound.
    iterations: power/Gram iterations run.
    vector: the last power-iteration input vector (unit norm), to warm-start the next call; None if certified.
    """

    value: float
    certified: bool
    iterations: int
    vector: Tensor | None = None


def _unit(v: Tensor) -> Tensor:
    """v / ||v||_2 (a zero v stays zero)."""
    return v / torch.linalg.vector_norm(v).clamp_min(torch.finfo(v.dtype).tiny)


def power_iteration(
    apply: Callable[[Tensor], Tensor],
    adjoint: Callable[[Tensor], Tensor],
    init: Tensor,
    *,
    max_iters: int = 500,
    tol: float = 1e-6,
) -> NormEstimate:
    """Estimate ``||A||_2`` from below by power iteration on ``B = A^T A``.

    apply(v) = A v, adjoint(u) = A^T u; init: the start vector (any nonzero tensor of A's input shape).
    Each step reports ``s = ||B v|| / ||A v||`` for the unit vector v, which satisfies ``||A v|| <= s <= ||A||``:
    the result errs low (and grows with every step). Stops after ``max_iters`` steps, once the residual
    ``||B v - theta v||`` (theta = ``||A v||^2``) is below ``sqrt(tol) * theta`` (a warm start from a converged
    vector stops after one step), or once the value grew by less than ``tol`` (relative) in one step.
    """
    if max_iters < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")
    norm = torch.linalg.vector_norm
    v = _unit(init)
    value = 0.0
    for step in range(1, max_iters + 1):
        u = apply(v)
        w = adjoint(u)
        u_norm, w_norm = float(norm(u)), float(norm(w))
        if not u_norm > 0:  # A v = 0: A = 0 or an unlucky start; a zero estimate is still a lower bound
            return NormEstimate(0.0, False, step, v)
        theta = u_norm**2  # = v^T B v, and ||B v - theta v||^2 = ||B v||^2 - theta^2
        previous, value, v = value, w_norm / u_norm, w / w_norm
        if w_norm**2 - theta**2 <= tol * theta**2 or (step > 1 and value - previous <= tol * value):
            return NormEstimate(value, False, step, v)
    return NormEstimate(value, False, max_iters, v)


def lanczos_norm(
    apply: Callable[[Tensor], Tensor],
    adjoint: Callable[[Tensor], Tensor],
    init: Tensor,
    *,
    max_iters: int = 500,
    tol: float = 1e-6,
    subspace: int = 16,
) -> NormEstimate:
    """Estimate ``||A||_2`` from below with restarted Lanczos on ``B = A^T A`` (power iteration accelerated
    by keeping the Krylov subspace; one step = one apply + one adjoint, as in power iteration).

    Every ``subspace`` steps the iteration restarts from the top Ritz pair (theta, y). theta lies in B's
    numerical range, so sqrt(theta) <= ||A||; the returned value is ``||A y||`` for the unit Ritz vector y,
    a lower bound even with rounding. Stops after ``max_iters`` steps or once the Ritz residual
    ``||B y - theta y||`` is below ``sqrt(tol) * theta`` (the eigenvalue error is then about tol * theta^2 / gap),
    so a warm start from a converged vector stops after one step.
    """
    if max_iters < 1 or subspace < 1:
        raise ValueError(f"max_iters and subspace must be >= 1, got {max_iters}, {subspace}")
    norm = torch.linalg.vector_norm
    v = _unit(init)
    steps, done = 0, False
    while not done:
        basis = [v.flatten()]
        alphas: list[float] = []
        betas: list[float] = []
        while True:
            u = apply(basis[-1].view_as(v))
            w = adjoint(u).flatten()
            steps += 1
            alphas.append(float(w @ basis[-1]))
            if len(basis) == 1:  # the first step: theta = v^T B v = ||A v||^2, residual ||B v - theta v||
                w = w - alphas[0] * basis[0]
                theta, ritz, beta = alphas[0], np.ones(1), float(norm(w))
                first_value = float(norm(u))
            else:
                q = torch.stack(basis)
                w = w - q.T @ (q @ w)
                w = w - q.T @ (q @ w)  # twice is enough (Kahan): keeps the basis orthogonal in float32
                beta = float(norm(w))
                tri = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)  # small: numpy is faster here
                evals, evecs = np.linalg.eigh(tri)
                theta, ritz = float(evals[-1]), evecs[:, -1]
            residual = beta * abs(float(ritz[-1]))
            done = residual <= math.sqrt(tol) * abs(theta) or beta == 0 or steps >= max_iters
            if done or len(basis) >= subspace:
                break
            betas.append(beta)
            basis.append(w / beta)
        if len(basis) == 1:  # the Ritz vector is v itself and ||A v|| is known
            if done:
                return NormEstimate(first_value, False, steps, v)
            v = (w + alphas[0] * basis[0]).view_as(v)  # subspace == 1: plain power iteration, v <- B v
            v = _unit(v)
            continue
        y = (torch.as_tensor(ritz, dtype=v.dtype).to(v.device) @ torch.stack(basis)).view_as(v)
        v = _unit(y)
    return NormEstimate(float(norm(apply(v))), False, steps, v)


def estimate_norm(
    apply: Callable[[Tensor], Tensor],
    adjoint: Callable[[Tensor], Tensor],
    init: Tensor,
    *,
    warm: bool,
    max_iters: int,
    tol: float,
) -> NormEstimate:
    """Estimate from below: a warm start (init from a previous call) first tries up to 3 cheap power steps,
    then, like a cold start, continues with Lanczos for the rest of the ``max_iters`` budget."""
    if warm:
        result = power_iteration(apply, adjoint, init, max_iters=min(3, max_iters), tol=tol)
        if result.iterations < min(3, max_iters) or result.iterations == max_iters:
            return result
        more = lanczos_norm(apply, adjoint, result.vector, max_iters=max_iters - result.iterations, tol=tol)
        return NormEstimate(
            max(more.value, result.value),
            False,
            result.iterations + more.iterations,
            more.vector if more.value >= result.value else result.vector,
        )
    return lanczos_norm(apply, adjoint, init, max_iters=max_iters, tol=tol)


def scaled_estimate(w: Tensor, estimate: Callable[[Tensor], NormEstimate]) -> NormEstimate:
    """estimate(w), redone as estimate(w / m) * m with m = max |w_ij| when it came out non-finite or 0:
    ||c A|| = |c| ||A||, and the rescaled weight cannot overflow or underflow (float32 weights of 1e10 square to
    inf in ||A^T A v||, and the estimate came out 0). Weights with a non-finite entry have no norm: NaN. The
    usual case costs nothing extra (the warm upper bound is a few small calls per layer)."""
    try:
        result = estimate(w)
    except np.linalg.LinAlgError:  # the Lanczos step's eigh on NaN entries
        result = NormEstimate(math.nan, False, 0, None)
    if math.isfinite(result.value) and result.value > 0:
        return result
    m = float(w.abs().max()) if w.numel() else 0.0
    if not math.isfinite(m):
        return NormEstimate(math.nan, False, result.iterations, None)
    if m == 0.0:
        return NormEstimate(0.0, False, result.iterations, None)
    with torch.inference_mode(False):  # a normal tensor even under inference mode: adjoints may use autograd
        scaled = w / m
    rescaled = estimate(scaled)
    return NormEstimate(rescaled.value * m, False, result.iterations + rescaled.iterations, rescaled.vector)


def working_precision(w: Tensor) -> Tensor:
    """Power iteration in at least float32 (half precision is too coarse for a norm estimate)."""
    return w.detach().float() if w.dtype in (torch.float16, torch.bfloat16) else w.detach()


def random_unit(shape: Sequence[int], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """A Gaussian start vector of unit norm, drawn on the CPU from ``generator`` (so any device gives the same
    draw), in ``like``'s dtype and device."""
    v = torch.randn(tuple(shape), generator=generator, dtype=like.dtype)  # CPU generator, any device
    return (v / v.norm()).to(like.device)
