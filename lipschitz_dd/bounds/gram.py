"""Guaranteed upper bounds on the largest singular value of matrices by Gram iteration.

Gram iteration (Delattre, Barthélemy, Araujo & Allauzen, ICML 2023) squares every singular value per step:
with ``G_0 = A`` and ``G_{t+1} = G_t^H G_t``, ``G_t`` has the singular values ``sigma_i^(2^t)``, so

    b_t = ||G_t||_F^(1 / 2^t) = (sum_i sigma_i^(2^(t+1)))^(1 / 2^(t+1))  >=  sigma_1(A),

an *upper bound* at every step (it errs high, never low), shrinking towards sigma_1 with
``b_t / sigma_1 <= rank^(1 / 2^(t+1))`` and faster the larger the gap between sigma_1 and sigma_2.
To keep the squared entries finite each step divides G by its Frobenius norm f_t and carries the log of
the scale, ``r_{t+1} = 2 (r_t + log f_t)``, so ``b_t = (||G_t||_F exp(r_t))^(1 / 2^t)``. Everything runs in
float64 / complex128, so the only slack beyond the inequality is float64 rounding (~1e-15 relative).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gram_spectral_bound", "gram_max_spectral_bound", "to_float64"]


def gram_spectral_bound(matrices: Tensor, iters: int = 12, rtol: float = 1e-7) -> Tensor:
    """Guaranteed upper bound on the largest singular value of each matrix in a batch ``(..., m, n)``.

    Runs at most ``iters`` Gram steps, stopping once every b_t improves by less than ``rtol`` (relative);
    returns the smallest b_t of each matrix (each one >= its sigma_1). Real or complex input; computed in
    float64 / complex128. Returns a float64 tensor of shape ``(...)``.
    """
    if matrices.ndim < 2:
        raise ValueError(f"gram_spectral_bound needs matrices (..., m, n), got shape {tuple(matrices.shape)}")
    return _gram_iteration(to_float64(matrices), iters, rtol, keep_max_only=False)


def gram_max_spectral_bound(matrices: Tensor, iters: int = 12, rtol: float = 1e-7) -> float:
    """Guaranteed upper bound on max_i sigma_1(A_i) over a batch ``(B, m, n)``: Gram iteration as in
    gram_spectral_bound, dropping after each step every matrix whose bound b_i is below the largest valid
    lower bound ``max_j b_j / rank^(1 / 2^(t+1))`` (it cannot hold the max). The max of the remaining bounds is
    still >= max_i sigma_1(A_i), at a fraction of the cost when few matrices compete for the max."""
    g = to_float64(matrices).reshape(-1, *matrices.shape[-2:])
    return float(_gram_iteration(g, iters, rtol, keep_max_only=True).max())


def _gram_iteration(g: Tensor, iters: int, rtol: float, keep_max_only: bool) -> Tensor:
    """The rescaled Gram iteration on a float64 / complex128 batch ``(..., m, n)``: the smallest bound b_t of
    each matrix; with keep_max_only (g of shape (B, m, n)), only of those that may still hold the max."""
    if g.shape[-2] < g.shape[-1]:  # same nonzero singular values, smaller Gram matrix
        g = g.mH
    rank = min(g.shape[-2:])
    g, log_scale = _prescale(g)
    fro = torch.linalg.matrix_norm(g)
    best = fro * log_scale.exp()  # b_0 = ||A||_F
    for step in range(1, iters + 1):
        fro = fro.clamp_min(1e-300)
        g = g / fro[..., None, None].to(g.dtype)
        log_scale = 2.0 * (log_scale + fro.log())
        g = g.mH @ g
        fro = torch.linalg.matrix_norm(g)
        bound = torch.exp((fro.log() + log_scale) / 2.0**step)
        converged = bool((bound >= best * (1 - rtol)).all())
        best = torch.minimum(best, bound)
        if keep_max_only:
            keep = best >= (best / rank ** (1 / 2 ** (step + 1))).max()  # lower bound: ||G||_F / sqrt(rank)
            g, fro, log_scale, best = g[keep], fro[keep], log_scale[keep], best[keep]
        if converged:
            break
    return best


def _prescale(g: Tensor) -> tuple[Tensor, Tensor]:
    """(g / m, log m) with m = max |g_ij| per matrix (1 for zero matrices): the Gram iteration's first
    Frobenius norm then neither under- nor overflows (entries of 1e-200 or 1e160 square to 0 or inf)."""
    m = g.abs().amax(dim=(-2, -1))
    m = torch.where(m > 0, m, torch.ones_like(m))
    return g / m[..., None, None].to(g.dtype), m.log()


def to_float64(t: Tensor) -> Tensor:
    """t in float64 / complex128, on the CPU when its device has no float64 (Apple mps)."""
    if t.device.type == "mps":
        t = t.cpu()
    return t.detach().to(torch.complex128 if t.is_complex() else torch.float64)
