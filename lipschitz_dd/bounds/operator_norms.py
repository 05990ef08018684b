"""Spectral norms (L2 operator norms) of linear layers: estimates from below and guaranteed bounds.

Two ways to get ``||A||_2 = max_{||v||_2 = 1} ||A v||_2`` of a linear map A:

* **Power iteration** (``certified=False``): ``v <- A^T A v / ||A^T A v||``, accelerated by restarted
  Lanczos (the Krylov subspace of the same products). The value ``||A v||`` for a unit v is an *estimate
  from below*; it converges to ||A|| from below and can be warm-started from the vector of a previous call.
* **Gram iteration** (``certified=True``, Delattre et al., ICML 2023): ``G <- G^H G`` squares every
  singular value, so after t steps ``||A||_2 <= ||G_t||_F^(1 / 2^t)``, a *guaranteed upper bound* whose
  looseness is at most ``rank^(1 / 2^(t+1))`` and shrinks fast with the spectral gap. Computed in float64
  with the rescaling of the paper, so the only slack beyond the inequality is float64 rounding (~1e-15).

For convolutions the certified bound works on the Fourier representation of the convolution: the
zero-padded, strided convolution on the recorded input shape is a submatrix of a circular convolution
on the padded grid (rounded up to a multiple of the stride), whose norm is the max over frequencies of
the norm of a small ``c_out x (c_in * stride^d)`` matrix (polyphase decomposition handles the stride).
A submatrix never has a larger norm, so the bound is >= the true operator norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "NormEstimate",
    "power_iteration",
    "lanczos_norm",
    "estimate_norm",
    "gram_spectral_bound",
    "gram_max_spectral_bound",
    "linear_operator_norm",
    "conv_operator_norm",
    "conv_fourier_bound",
    "conv_explicit_bound",
]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


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


def gram_spectral_bound(matrices: Tensor, iters: int = 12, rtol: float = 1e-7) -> Tensor:
    """Guaranteed upper bound on the largest singular value of each matrix in a batch ``(..., m, n)``.

    Gram iteration with rescaling: ``G_0 = A``, ``G_{t+1} = (G_t / f_t)^H (G_t / f_t)`` with
    ``f_t = ||G_t||_F``. Every step gives a valid bound ``b_t = (||G_t||_F * exp(r_t))^(1 / 2^t) >= sigma_1(A)``
    with ``r_{t+1} = 2 (r_t + log f_t)``, and ``b_t / sigma_1 <= rank^(1 / 2^(t+1))``. Runs at most ``iters``
    steps, stopping once b_t improves by less than ``rtol`` (relative); returns the smallest b_t.
    Real or complex input; computed in float64 / complex128. Returns a float64 tensor of shape ``(...)``.
    """
    if matrices.ndim < 2:
        raise ValueError(f"gram_spectral_bound needs matrices (..., m, n), got shape {tuple(matrices.shape)}")
    g = _float64(matrices)
    if g.shape[-2] < g.shape[-1]:  # same nonzero singular values, smaller Gram matrix
        g = g.mH
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
        if converged:
            break
    return best


def gram_max_spectral_bound(matrices: Tensor, iters: int = 12, rtol: float = 1e-7) -> float:
    """Guaranteed upper bound on max_i sigma_1(A_i) over a batch ``(B, m, n)``: Gram iteration as in
    gram_spectral_bound, dropping after each step every matrix whose bound b_i is below the largest valid
    lower bound ``max_j b_j / rank^(1 / 2^(t+1))`` (it cannot hold the max). The max of the remaining bounds is
    still >= max_i sigma_1(A_i), at a fraction of the cost when few matrices compete for the max."""
    g = _float64(matrices).reshape(-1, *matrices.shape[-2:])
    if g.shape[-2] < g.shape[-1]:
        g = g.mH
    rank = min(g.shape[-2:])
    g, log_scale = _prescale(g)
    fro = torch.linalg.matrix_norm(g)
    best = fro * log_scale.exp()
    for step in range(1, iters + 1):
        fro = fro.clamp_min(1e-300)
        g = g / fro[:, None, None].to(g.dtype)
        log_scale = 2.0 * (log_scale + fro.log())
        g = g.mH @ g
        fro = torch.linalg.matrix_norm(g)
        bound = torch.exp((fro.log() + log_scale) / 2.0**step)
        converged = bool((bound >= best * (1 - rtol)).all())
        best = torch.minimum(best, bound)
        keep = best >= (best / rank ** (1 / 2 ** (step + 1))).max()  # lower bound: ||G||_F / sqrt(rank)
        g, fro, log_scale, best = g[keep], fro[keep], log_scale[keep], best[keep]
        if converged:
            break
    return float(best.max())


def _prescale(g: Tensor) -> tuple[Tensor, Tensor]:
    """(g / m, log m) with m = max |g_ij| per matrix (1 for zero matrices): the Gram iteration's first
    Frobenius norm then neither under- nor overflows (entries of 1e-200 or 1e160 square to 0 or inf)."""
    m = g.abs().amax(dim=(-2, -1))
    m = torch.where(m > 0, m, torch.ones_like(m))
    return g / m[..., None, None].to(g.dtype), m.log()


def _float64(t: Tensor) -> Tensor:
    """t in float64 / complex128, on the CPU when its device has no float64 (Apple mps)."""
    if t.device.type == "mps":
        t = t.cpu()
    return t.detach().to(torch.complex128 if t.is_complex() else torch.float64)


def _scaled_estimate(w: Tensor, estimate: Callable[[Tensor], NormEstimate]) -> NormEstimate:
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


def _working_precision(w: Tensor) -> Tensor:
    """Power iteration in at least float32 (half precision is too coarse for a norm estimate)."""
    return w.detach().float() if w.dtype in (torch.float16, torch.bfloat16) else w.detach()


def _random_unit(shape: Sequence[int], like: Tensor, generator: torch.Generator | None) -> Tensor:
    v = torch.randn(tuple(shape), generator=generator, dtype=like.dtype)  # CPU generator, any device
    return (v / v.norm()).to(like.device)


# ----------------------------------------------------------------------------------------------- linear
def linear_operator_norm(
    weight: Tensor | nn.Linear,
    *,
    certified: bool = False,
    max_iters: int = 500,
    tol: float = 1e-6,
    init: Tensor | None = None,
    generator: torch.Generator | None = None,
    gram_iters: int = 12,
) -> NormEstimate:
    """``||W||_2`` of a dense weight ``W`` (out x in), i.e. the Lipschitz constant of ``x -> W x + b``.

    certified=False: Lanczos-accelerated power iteration (an estimate from below), warm-started from ``init``.
    certified=True: Gram iteration in float64, a guaranteed upper bound (see gram_spectral_bound).
    """
    w = weight.weight if isinstance(weight, nn.Linear) else weight
    if not isinstance(w, Tensor) or w.ndim != 2:
        raise ValueError(f"linear_operator_norm needs a 2-D weight or nn.Linear, got {type(weight).__name__}")
    w = _working_precision(w)
    if certified:
        return NormEstimate(float(gram_spectral_bound(w, gram_iters)), True, gram_iters, None)
    warm = init is not None and init.shape == (w.shape[1],)
    init = init.to(w) if warm else _random_unit((w.shape[1],), w, generator)
    return _scaled_estimate(
        w, lambda a: estimate_norm(lambda v: a @ v, lambda u: a.T @ u, init, warm=warm, max_iters=max_iters, tol=tol)
    )


# ------------------------------------------------------------------------------------------ convolution
@dataclass(frozen=True)
class ConvGeometry:
    """A convolution's geometry on one input: per spatial dim the input size, explicit (left, right) padding."""

    in_channels: int
    spatial: tuple[int, ...]
    stride: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int
    padding_mode: str  # "zeros", "reflect", "replicate" or "circular"

    @property
    def padded(self) -> tuple[int, ...]:
        return tuple(n + left + right for n, (left, right) in zip(self.spatial, self.pads, strict=False))

    def output_spatial(self, kernel: Sequence[int]) -> tuple[int, ...]:
        return tuple(
            (m - d * (k - 1) - 1) // s + 1
            for m, d, k, s in zip(self.padded, self.dilation, kernel, self.stride, strict=False)
        )

    def flat_pad(self) -> list[int]:
        """The pad list F.pad expects (last dim first)."""
        return [p for left_right in reversed(self.pads) for p in left_right]


def _tuple(value: int | Sequence[int], nd: int, name: str) -> tuple[int, ...]:
    out = (value,) * nd if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != nd:
        raise ValueError(f"{name} must be an int or {nd} ints, got {value!r}")
    return out


def conv_geometry(
    weight: Tensor,
    input_shape: Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> ConvGeometry:
    """Normalise a convolution's arguments; input_shape is one sample (C, *spatial), a leading 1 is dropped."""
    nd = weight.ndim - 2
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == nd + 2 and shape[0] == 1:
        shape = shape[1:]
    if nd not in _CONV or len(shape) != nd + 1:
        raise ValueError(
            f"input_shape {tuple(input_shape)} does not fit a {nd}-d convolution weight "
            f"{tuple(weight.shape)}: expected (C, *spatial) of one sample"
        )
    if shape[0] != weight.shape[1] * groups:
        raise ValueError(
            f"input has {shape[0]} channels but the weight {tuple(weight.shape)} with "
            f"groups={groups} expects {weight.shape[1] * groups}"
        )
    kernel, dil = weight.shape[2:], _tuple(dilation, nd, "dilation")
    if padding == "valid":
        pads = ((0, 0),) * nd
    elif padding == "same":
        pads = tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for d, k in zip(dil, kernel, strict=False))
    else:
        pads = tuple((p, p) for p in _tuple(padding, nd, "padding"))
    if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
        raise ValueError(f"unknown padding_mode {padding_mode!r}")
    geometry = ConvGeometry(shape[0], shape[1:], _tuple(stride, nd, "stride"), pads, dil, groups, padding_mode)
    if min(geometry.output_spatial(kernel)) < 1:
        raise ValueError(f"kernel {tuple(kernel)} does not fit the padded input {geometry.padded}")
    return geometry


def _conv_maps(weight: Tensor, geo: ConvGeometry) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """A v (explicit padding, then an unpadded convolution) and its adjoint A^T u."""
    nd = weight.ndim - 2
    conv, conv_t = _CONV[nd], _CONV_T[nd]
    pad = geo.flat_pad()
    mode = "constant" if geo.padding_mode == "zeros" else geo.padding_mode

    def apply(v: Tensor) -> Tensor:
        return conv(F.pad(v, pad, mode=mode) if any(pad) else v, weight, None, geo.stride, 0, geo.dilation, geo.groups)

    if geo.padding_mode != "zeros":  # the adjoint of reflect/replicate/circular padding: autograd

        def adjoint(u: Tensor) -> Tensor:
            with torch.inference_mode(False), torch.enable_grad():
                v = torch.zeros((1, geo.in_channels, *geo.spatial), dtype=u.dtype, device=u.device, requires_grad=True)
                (grad,) = torch.autograd.grad(apply(v), v, u.clone())
            return grad

        return apply, adjoint

    out = geo.output_spatial(weight.shape[2:])
    output_padding = tuple(
        m - ((o - 1) * s + d * (k - 1) + 1)
        for m, o, s, d, k in zip(geo.padded, out, geo.stride, geo.dilation, weight.shape[2:], strict=False)
    )
    if all(left == right for left, right in geo.pads):  # symmetric: let the conv pad, transpose crops
        padding = tuple(left for left, _ in geo.pads)

        def apply_symmetric(v: Tensor) -> Tensor:
            return conv(v, weight, None, geo.stride, padding, geo.dilation, geo.groups)

        def adjoint_symmetric(u: Tensor) -> Tensor:
            return conv_t(u, weight, None, geo.stride, padding, output_padding, geo.groups, geo.dilation)

        return apply_symmetric, adjoint_symmetric
    crop = (slice(None), slice(None)) + tuple(
        slice(left, left + n) for n, (left, _) in zip(geo.spatial, geo.pads, strict=False)
    )

    def adjoint(u: Tensor) -> Tensor:  # the adjoint of zero padding is cropping
        return conv_t(u, weight, None, geo.stride, 0, output_padding, geo.groups, geo.dilation)[crop]

    return apply, adjoint


def _padding_selection_norm(geo: ConvGeometry) -> float:
    """||P||_2 of the padding map. Zero padding is an isometric embedding (1); reflect/replicate/circular
    padding copies entries, a selection matrix with ||P|| = sqrt(max number of copies of one entry)."""
    if geo.padding_mode == "zeros":
        return 1.0
    copies = 1
    for n, (left, right) in zip(geo.spatial, geo.pads, strict=False):
        index = torch.arange(n, dtype=torch.float64).view(1, 1, n)
        padded = F.pad(index, [left, right], mode=geo.padding_mode).flatten().long()
        copies *= int(torch.bincount(padded, minlength=n).max())
    return math.sqrt(copies)


def conv_fourier_bound(weight: Tensor, geo: ConvGeometry, gram_iters: int = 12) -> float:
    """Guaranteed upper bound on the operator norm of the convolution ``weight`` with geometry ``geo``.

    The map is A = S C P: P embeds the input in a circular grid of size G (per dim, a multiple of the
    stride), C is the circular strided convolution on it, S keeps the valid output rows (norm 1).
    Zero padding (left l, right r): G >= n + max(l, r) suffices, because a tap that reads beyond G reads a
    right-padding zero in the linear map and wraps onto a left-padding zero (position < min(l, r)) in the
    circular one; P is then an isometric embedding. Circular padding with n divisible by the stride: G = n
    itself (a cyclic shift of the circular convolution, exact for stride 1). Other padding modes:
    G >= n + l + r (no wrap) and ||P|| = sqrt(max copies of one entry). With the polyphase split x_r[j] = x[s j + r], C becomes a
    stride-1 circular convolution with c_in * prod(s) input channels on a grid of size G / s (kernel taps
    folded modulo that size), whose norm is max over frequencies w of ||K_hat(w)||_2 (block-diagonal over
    groups). Each frequency's matrix is bounded with Gram iteration, so the result is >= ||A||_2.
    """
    nd = weight.ndim - 2
    w = _float64(weight)
    device = w.device
    c_out, c_in_g, kernel = w.shape[0], w.shape[1], w.shape[2:]
    span = [d * (k - 1) + 1 for d, k in zip(geo.dilation, kernel, strict=False)]
    taps = [math.ceil(sp / s) for sp, s in zip(span, geo.stride, strict=False)]
    dilated = torch.zeros(
        (c_out, c_in_g, *[t * s for t, s in zip(taps, geo.stride, strict=False)]), dtype=w.dtype, device=device
    )
    dilated[(slice(None), slice(None)) + tuple(slice(0, sp, d) for sp, d in zip(span, geo.dilation, strict=False))] = w
    split = [c_out, c_in_g] + [x for t, s in zip(taps, geo.stride, strict=False) for x in (t, s)]
    order = [0, 1] + [3 + 2 * j for j in range(nd)] + [2 + 2 * j for j in range(nd)]
    phases = math.prod(geo.stride)
    poly = dilated.reshape(split).permute(order).reshape(c_out, c_in_g * phases, *taps)
    out = geo.output_spatial(kernel)
    widest = [math.ceil(m / s) for m, s in zip(geo.padded, geo.stride, strict=False)]
    if geo.padding_mode == "circular" and all(
        n % s == 0 and o <= n // s for n, s, o in zip(geo.spatial, geo.stride, out, strict=False)
    ):
        # circular padding: output i reads x[(s i + d a - l) mod n], distinct rows of the circular
        # convolution on the input grid itself, composed with a cyclic shift (orthogonal): exact for stride 1
        return _circular_bound(
            poly, [n // s for n, s in zip(geo.spatial, geo.stride, strict=False)], geo.groups, gram_iters
        )
    if geo.padding_mode != "zeros":
        return _circular_bound(poly, widest, geo.groups, gram_iters) * _padding_selection_norm(geo)
    smallest = [
        max(math.ceil((n + max(pad)) / s), o)
        for n, pad, s, o in zip(geo.spatial, geo.pads, geo.stride, out, strict=False)
    ]
    # every grid size between the smallest and the widest is valid; they sample the symbol differently
    return min(
        _circular_bound(poly, [max(a, b - k) for a, b in zip(smallest, widest, strict=False)], geo.groups, gram_iters)
        for k in range(max(b - a for a, b in zip(smallest, widest, strict=False)) + 1)
    )


def _circular_bound(poly: Tensor, grid: list[int], groups: int, gram_iters: int) -> float:
    """max_w ||K_hat(w)||_2 (Gram-iteration bound) of the stride-1 circular convolution with kernel ``poly``
    (c_out, c_in_g, *taps) on ``grid``, taps folded modulo the grid."""
    nd = len(grid)
    for dim, size in enumerate(grid):
        taps = poly.shape[2 + dim]
        reps = math.ceil(taps / size)
        poly = F.pad(poly.movedim(2 + dim, -1), [0, reps * size - taps]).unflatten(-1, (reps, size)).sum(-2)
        poly = poly.movedim(-1, 2 + dim)
    k_hat = torch.fft.rfftn(poly, dim=tuple(range(2, 2 + nd)))  # (c_out, c_in_g, *freqs)
    c_out, c_in = poly.shape[:2]
    k_hat = k_hat.reshape(groups, c_out // groups, c_in, -1).permute(0, 3, 1, 2)
    return gram_max_spectral_bound(k_hat.reshape(-1, c_out // groups, c_in), gram_iters)


EXPLICIT_MAX_ENTRIES = 2**20  # explicit matrices up to 8 MiB in float64


def conv_explicit_bound(weight: Tensor, geo: ConvGeometry, gram_iters: int = 12) -> float:
    """Guaranteed upper bound from the explicit matrix of the convolution (built by applying it to the
    standard basis in float64), bounded with Gram iteration. Tight on small inputs, where the circular
    embedding of conv_fourier_bound is loose (e.g. a 3x3 conv on a 1x1 input only uses its centre tap)."""
    w = _float64(weight)
    device = w.device
    n_in = geo.in_channels * math.prod(geo.spatial)
    basis = torch.eye(n_in, dtype=torch.float64, device=device).reshape(n_in, geo.in_channels, *geo.spatial)
    apply, _ = _conv_maps(w, geo)
    return float(gram_spectral_bound(apply(basis).reshape(n_in, -1), gram_iters))


def conv_certified_bound(weight: Tensor, geo: ConvGeometry, gram_iters: int = 12) -> float:
    """A guaranteed upper bound on the convolution's operator norm: conv_fourier_bound, or the smaller of it
    and conv_explicit_bound when the explicit matrix is small (<= EXPLICIT_MAX_ENTRIES entries)."""
    n_in = geo.in_channels * math.prod(geo.spatial)
    n_out = weight.shape[0] * math.prod(geo.output_spatial(weight.shape[2:]))
    fourier = conv_fourier_bound(weight, geo, gram_iters)
    if n_in * n_out <= EXPLICIT_MAX_ENTRIES:
        return min(fourier, conv_explicit_bound(weight, geo, gram_iters))
    return fourier


def conv_operator_norm(
    weight: Tensor | nn.modules.conv._ConvNd,
    input_shape: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    certified: bool = False,
    max_iters: int = 500,
    tol: float = 1e-6,
    init: Tensor | None = None,
    generator: torch.Generator | None = None,
    gram_iters: int = 12,
) -> NormEstimate:
    """Operator norm ``||A||_2`` of the convolution ``x -> conv(x, weight)`` (1-d, 2-d or 3-d) as a linear map
    on inputs of shape ``input_shape = (C, *spatial)`` with the given stride, padding, dilation and groups
    (not the norm of the reshaped kernel, which can be 30-45 % lower). Pass an ``nn.Conv1d/2d/3d`` to take
    its arguments from the module. The bias does not change the Lipschitz constant.

    certified=False: Lanczos-accelerated power iteration with conv / conv_transpose (an estimate from below,
    warm-startable from ``init``).
    certified=True: conv_certified_bound, a guaranteed upper bound (the explicit matrix for small inputs,
    else the Fourier representation; both bounded with Gram iteration).
    """
    if isinstance(weight, nn.modules.conv._ConvNd):
        if weight.transposed:
            raise ValueError("conv_operator_norm takes a convolution; for ConvTranspose use its output shape")
        module = weight
        weight, stride, padding = module.weight, module.stride, module.padding
        dilation, groups, padding_mode = module.dilation, module.groups, module.padding_mode
    if not isinstance(weight, Tensor) or weight.ndim - 2 not in _CONV:
        raise ValueError("conv_operator_norm needs a conv weight (C_out, C_in/groups, *kernel) or a conv module")
    weight = _working_precision(weight)
    geo = conv_geometry(weight, input_shape, stride, padding, dilation, groups, padding_mode)
    if certified:
        return NormEstimate(conv_certified_bound(weight, geo, gram_iters), True, gram_iters, None)
    shape = (1, geo.in_channels, *geo.spatial)
    warm = init is not None and tuple(init.shape) == shape
    init = init.to(weight) if warm else _random_unit(shape, weight, generator)
    return _scaled_estimate(
        weight, lambda a: estimate_norm(*_conv_maps(a, geo), init, warm=warm, max_iters=max_iters, tol=tol)
    )
