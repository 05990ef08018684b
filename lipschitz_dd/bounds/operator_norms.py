"""Spectral norms (L2 operator norms) of Linear and convolution weights: the entry points the upper bound calls.

``||A||_2 = max_{||v||_2 = 1} ||A v||_2`` of a layer's linear map A (the bias does not change it), in one of
two modes:

* ``certified=False``: Lanczos-accelerated power iteration (norm_estimates.py), an *estimate from below*
  that errs low and converges to ||A|| from below; warm-started from the vector of a previous call.
* ``certified=True``: a *guaranteed upper bound* computed in float64 with Gram iteration (gram.py): of the
  dense weight for Linear; for a convolution, of its Fourier representation or explicit matrix on the input
  shape (conv_operator.py).

The building blocks are re-exported here: ``from lipschitz_dd.bounds.operator_norms import power_iteration``
keeps working.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lipschitz_dd.bounds.conv_operator import (
    conv_certified_bound,
    conv_explicit_bound,
    conv_fourier_bound,
    conv_geometry,
    conv_maps,
)
from lipschitz_dd.bounds.gram import gram_max_spectral_bound, gram_spectral_bound
from lipschitz_dd.bounds.norm_estimates import (
    NormEstimate,
    estimate_norm,
    lanczos_norm,
    power_iteration,
    random_unit,
    scaled_estimate,
    working_precision,
)

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
    "conv_geometry",
]


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
    w = working_precision(w)
    if certified:
        return NormEstimate(float(gram_spectral_bound(w, gram_iters)), True, gram_iters, None)
    warm = init is not None and init.shape == (w.shape[1],)
    init = init.to(w) if warm else random_unit((w.shape[1],), w, generator)
    return scaled_estimate(
        w, lambda a: estimate_norm(lambda v: a @ v, lambda u: a.T @ u, init, warm=warm, max_iters=max_iters, tol=tol)
    )


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
    if not isinstance(weight, Tensor) or weight.ndim - 2 not in (1, 2, 3):
        raise ValueError("conv_operator_norm needs a conv weight (C_out, C_in/groups, *kernel) or a conv module")
    weight = working_precision(weight)
    geo = conv_geometry(weight, input_shape, stride, padding, dilation, groups, padding_mode)
    if certified:
        return NormEstimate(conv_certified_bound(weight, geo, gram_iters), True, gram_iters, None)
    shape = (1, geo.in_channels, *geo.spatial)
    warm = init is not None and tuple(init.shape) == shape
    init = init.to(weight) if warm else random_unit(shape, weight, generator)
    return scaled_estimate(
        weight, lambda a: estimate_norm(*conv_maps(a, geo), init, warm=warm, max_iters=max_iters, tol=tol)
    )
