"""Block iteration with Rayleigh-Ritz for the per-sample spectral norms sigma_i = ||J(x_i)||_2 of a batch.

One job: one batch of points, from start vectors to certified-low estimates. For a model f with K
flattened logits and a point x_i with d flattened input coordinates, J_i = J(x_i) is the K x d Jacobian.
With r orthonormal start vectors U (r x K) in output space, one iteration for the batch:

    W = U J          (r vector-Jacobian products (VJPs), [r, d]: rows J^T u_j)
    V = orth(W)      (orthonormal, and orthogonal to the blocks of earlier iterations of this call)
    Y = V J^T        (r Jacobian-vector products (JVPs), rows J v_j)
    Rayleigh-Ritz over all blocks so far (B = [V_1; ...; V_t], JB = [Y_1; ...; Y_t]):
                     G = JB JB^T = B J^T J B^T, top eigenvector q; v* = B^T q, sigma_i ~ ||J v*||
    U <- the top r Ritz left vectors (rows of Q^T JB, normalised), returned for the next measurement.

This is block Krylov (block Lanczos-like) iteration on J^T J with Rayleigh-Ritz, restarted every
KRYLOV_MAX_BLOCKS blocks. Each returned value is ||J v|| / ||v|| for an explicit vector v (computed as
such, not taken from an eigenvalue), so it is <= sigma_i up to float32 rounding of that product: a
certified lower estimate. ``rel_change`` = (s_b - s_a) / s_b, with s_a = ||J^T u*|| of the best start
vector of the last iteration and s_b the value returned, is >= 0; the error left is about rho / (1 - rho)
times it, rho = (sigma_{r+1} / sigma_1)^2 (an underestimate where the top singular values are close).

JVPs use forward-mode AD by default (``torch.func.jvp`` vmapped over the block: one batched dual forward
pass), faster on the CPU than the double-backward trick (two backward passes through a retained graph;
``jvp="double_backward"``, also the automatic fallback, with a warning, for models with an operation that
has no forward-mode rule); benchmarks/bench_warm_lower.py compares them. All passes run in float32 with
autocast off (see :func:`float32_measurement`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from lipschitz_dd.bounds.jacobian import _flat_logits, _input_leaf, check_autograd_available, float32_measurement

JVP_MODES = ("double_backward", "forward")
KRYLOV_MAX_BLOCKS = 4  # basis of at most 4 r vectors per point, then restarted from the top r Ritz vectors


@dataclass
class WarmBatchResult:
    """Result of :func:`warm_spectral_norms` for a batch of B points.

    norms [B]: ||J v_i|| / ||v_i|| (certified low, see the module docstring); left [B, r, K]: the Ritz left
    vectors, best first (start of the next measurement); rel_change [B]: relative change in the last
    iteration (>= 0); iterations: how many were run.
    """

    norms: Tensor
    left: Tensor
    rel_change: Tensor
    iterations: int


def _orthonormal_rows(block: Tensor) -> Tensor:
    """Orthonormal rows spanning the rows of block [B, r, n] (QR; r <= n)."""
    q, _ = torch.linalg.qr(block.mT)
    return q.mT


def _start_block(start: Tensor | None, batch: int, block: int, n_out: int, like: Tensor, generator) -> Tensor:
    random = torch.randn(batch, block, n_out, generator=generator, dtype=torch.float32)
    if start is None:
        start = random
    else:
        start = start.detach().to("cpu", torch.float32).reshape(batch, -1, n_out)[:, :block]
        if start.shape[1] < block:
            start = torch.cat([start, random[:, start.shape[1] :]], dim=1)
        bad = (start.norm(dim=2) == 0) | ~torch.isfinite(start).all(dim=2)
        start = torch.where(bad[:, :, None], random, start)
    return _orthonormal_rows(start.to(like.device, like.dtype))


def warm_spectral_norms(
    model,
    x: Tensor,
    start: Tensor | None = None,
    *,
    block: int = 2,
    max_iter: int = 3,
    tol: float = 1e-4,
    jvp: str = "forward",
    krylov: bool = True,
    generator: torch.Generator | None = None,
) -> WarmBatchResult:
    """Block power iteration with Rayleigh-Ritz for ||J(x_i)||_2 on a batch x [B, ...], from start vectors.

    start: [B, r', K] left vectors (e.g. :meth:`LeftVectorStore.get`); zero or missing rows are drawn from
    N(0, I) with ``generator``. Each iteration costs r VJPs and r JVPs for the whole batch (see the module
    docstring); stops when every point's ``rel_change`` <= tol or after ``max_iter`` iterations. The
    returned norms err low (certified up to float32 rounding of the final product J v).

    krylov: Rayleigh-Ritz over all right-space blocks of this call (each new block orthogonalised against
    the previous ones before its JVP, so the basis stays orthonormal and its images exact): the block
    Krylov space of J^T J of dimension t r instead of the last block only (plain subspace iteration, with
    krylov=False); same passes, memory up to 4 r d numbers per point (the basis restarts from the top r
    Ritz vectors every 4 blocks).
    """
    check_autograd_available()
    if max_iter < 1 or block < 1 or tol < 0:
        raise ValueError(f"need max_iter >= 1, block >= 1, tol >= 0; got {max_iter}, {block}, {tol}")
    if jvp not in JVP_MODES:
        raise ValueError(f"jvp must be one of {JVP_MODES}, got {jvp!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    with torch.enable_grad(), float32_measurement():
        leaf = _input_leaf(x)
        out = _flat_logits(model, leaf)
        batch, n_out = out.shape
        n_in = leaf[0].numel()
        r = min(block, n_out, n_in)
        if not out.requires_grad:
            zeros = out.new_zeros(batch)
            return WarmBatchResult(zeros, out.new_zeros(batch, r, n_out), zeros, 0)
        jvp_fn = _forward_jvp(model, leaf) if jvp == "forward" else _double_backward_jvp(out, leaf)
        u = _start_block(start, batch, r, n_out, out, generator)
        vs: list[Tensor] = []  # right-space blocks so far (krylov)
        ys: list[Tensor] = []  # their images under J
        iteration = 0
        while iteration < max_iter:
            iteration += 1
            w = torch.stack(
                [torch.autograd.grad(out, leaf, u[:, j], retain_graph=True)[0].reshape(batch, n_in) for j in range(r)],
                dim=1,
            )  # [B, r, d] rows J^T u_j
            before = _top_ritz_norm(w, u)  # ||J^T u*|| / ||u*|| for the best start vector u*
            v = _orthonormal_rows(w)
            if krylov and vs:
                v = _extend_basis(torch.cat(vs, dim=1), v)
            try:
                y = jvp_fn(v).detach()  # [B, r, K] rows J v_j
            except (RuntimeError, NotImplementedError) as error:  # an op without a forward-mode rule
                if jvp != "forward":
                    raise
                warnings.warn(f"forward-mode JVP failed ({error}); using the double-backward trick", stacklevel=2)
                jvp, jvp_fn = "double_backward", _double_backward_jvp(out, leaf)
                y = jvp_fn(v).detach()
            if krylov:
                vs.append(v)
                ys.append(y)
                v, y = torch.cat(vs, dim=1), torch.cat(ys, dim=1)  # orthonormal basis [B, t r, d], images
            values, vectors = torch.linalg.eigh(y @ y.mT)  # ascending
            q = vectors.flip(-1)[:, :, :r]  # best first
            left = q.mT @ y  # [B, r, K] rows J (V^T q_j)
            norms = left[:, 0].norm(dim=1) / (q[:, :, 0:1] * v).sum(dim=1).norm(dim=1).clamp_min(1e-30)
            if krylov and (len(vs) >= KRYLOV_MAX_BLOCKS or (len(vs) + 1) * r > n_in):  # restart: keep the Ritz block
                vs, ys = [q.mT @ v], [left]
            left_norms = left.norm(dim=2, keepdim=True)
            u = torch.where(left_norms > 0, left / left_norms.clamp_min(1e-30), u)
            rel_change = ((norms - before) / norms.clamp_min(1e-30)).clamp_min(0)
            if bool((rel_change <= tol).all()):
                break
    return WarmBatchResult(norms.detach(), u.detach(), rel_change.detach(), iteration)


def _extend_basis(previous: Tensor, new: Tensor, threshold: float = 1e-5) -> Tensor:
    """Rows of new [B, r, d] (unit) made orthonormal to the orthonormal rows of previous [B, m, d] and to
    each other by Gram-Schmidt, twice per row; a row whose remainder is below threshold (it lies in the
    span already, e.g. once converged) becomes zero instead of amplified rounding noise."""
    basis = previous
    rows = []
    for j in range(new.shape[1]):
        row = new[:, j : j + 1]
        for _ in range(2):
            row = row - (row @ basis.mT) @ basis
        norm = row.norm(dim=2, keepdim=True)
        row = torch.where(norm > threshold, row / norm.clamp_min(1e-30), torch.zeros_like(row))
        rows.append(row)
        basis = torch.cat([basis, row], dim=1)
    return torch.cat(rows, dim=1)


def _top_ritz_norm(w: Tensor, u: Tensor) -> Tensor:
    """max over the span of the rows of u (orthonormal) of ||J^T u|| (from w = U J), per point."""
    return torch.linalg.eigvalsh(w @ w.mT)[:, -1].clamp_min(0).sqrt()


def _double_backward_jvp(out: Tensor, leaf: Tensor):
    """Block JVP [B, r, d] -> [B, r, K] via two backward passes per vector: g(c) = J^T c is linear in c,
    so d/dc <g(c), v> = J v (the graph of g is built once per batch)."""
    dummy = torch.zeros_like(out, requires_grad=True)
    (vjp_of_dummy,) = torch.autograd.grad(out, leaf, dummy, create_graph=True)

    def jvp(v: Tensor) -> Tensor:
        rows = [
            torch.autograd.grad(vjp_of_dummy, dummy, v[:, j].view_as(leaf), retain_graph=True)[0]
            for j in range(v.shape[1])
        ]
        return torch.stack(rows, dim=1)

    return jvp


def _forward_jvp(model, leaf: Tensor):
    """Block JVP [B, r, d] -> [B, r, K] by forward-mode AD: ``torch.func.jvp`` vmapped over the r vectors
    (one batched dual forward pass of r x B points)."""
    point = leaf.detach()
    batch = point.shape[0]

    def logits(z: Tensor) -> Tensor:
        return model(z).reshape(batch, -1)

    def one(tangent: Tensor) -> Tensor:
        return torch.func.jvp(logits, (point,), (tangent,))[1]

    def jvp(v: Tensor) -> Tensor:
        tangents = v.transpose(0, 1).reshape(v.shape[1], *point.shape)
        with torch.no_grad():
            return torch.func.vmap(one)(tangents).transpose(0, 1)

    return jvp
