"""A convolution as a linear operator on one input shape, and guaranteed bounds on its spectral norm.

The Lipschitz constant of ``x -> conv(x, K)`` is the L2 operator norm of the convolution as a matrix acting
on inputs of the recorded shape (C, *spatial), with its stride, padding, dilation and groups: not the norm
of the reshaped kernel, which can be 30-45 % lower. This module holds

* ``ConvGeometry`` / ``conv_geometry``: the convolution's arguments normalised for one input shape;
* ``conv_maps``: the products ``v -> A v`` and ``u -> A^T u`` (for power iteration, see norm_estimates.py);
* ``conv_fourier_bound``: a guaranteed upper bound from the Fourier representation. The zero-padded, strided
  convolution on the input shape is a submatrix of a circular convolution on the padded grid (rounded up to
  a multiple of the stride), whose norm is the max over frequencies of the norm of a small
  ``c_out x (c_in * stride^d)`` matrix (the polyphase decomposition handles the stride); a submatrix never
  has a larger norm, so the result is >= the true norm (it errs high);
* ``conv_explicit_bound``: the Gram bound of the explicit matrix, tight but only affordable on small inputs;
* ``conv_certified_bound``: the smaller of the two where the explicit matrix is affordable.
Every bound here is computed in float64 with Gram iteration (gram.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lipschitz_dd.bounds.gram import gram_max_spectral_bound, gram_spectral_bound, to_float64

__all__ = [
    "ConvGeometry",
    "conv_geometry",
    "conv_maps",
    "conv_fourier_bound",
    "conv_explicit_bound",
    "conv_certified_bound",
    "EXPLICIT_MAX_ENTRIES",
]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


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
        """The spatial size after explicit padding."""
        return tuple(n + left + right for n, (left, right) in zip(self.spatial, self.pads, strict=False))

    def output_spatial(self, kernel: Sequence[int]) -> tuple[int, ...]:
        """The output's spatial size for a kernel of this spatial size."""
        return tuple(
            (m - d * (k - 1) - 1) // s + 1
            for m, d, k, s in zip(self.padded, self.dilation, kernel, self.stride, strict=False)
        )

    def flat_pad(self) -> list[int]:
        """The pad list F.pad expects (last dim first)."""
        return [p for left_right in reversed(self.pads) for p in left_right]


def _tuple(value: int | Sequence[int], nd: int, name: str) -> tuple[int, ...]:
    """One int per spatial dim, from an int or a sequence of nd ints."""
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


def conv_maps(weight: Tensor, geo: ConvGeometry) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
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
    w = to_float64(weight)
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
    w = to_float64(weight)
    device = w.device
    n_in = geo.in_channels * math.prod(geo.spatial)
    basis = torch.eye(n_in, dtype=torch.float64, device=device).reshape(n_in, geo.in_channels, *geo.spatial)
    apply, _ = conv_maps(w, geo)
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
