"""Lipschitz constants (L2 -> L2) of single layers, and the rule that tells the upper bound how to get one.

Each rule says how a layer's constant is obtained:
* ``Fixed``      a number known once the shapes are known (activations, pooling): exact, so certified.
* ``FromParams`` a closed form read from the parameters at compute time (BatchNorm, PReLU, x * parameter):
                 exact, so certified.
* ``OperatorNorm`` a Linear / Conv / ConvTranspose weight whose spectral norm the estimator computes
                 (power iteration or a certified bound, see operator_norms).
* ``Unavailable`` no finite global constant (attention, LayerNorm, discontinuities) or no rule known.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipschitz_dd.bounds.norm_estimates import power_iteration

__all__ = [
    "Fixed",
    "FromParams",
    "OperatorNorm",
    "Unavailable",
    "module_rule",
    "max_derivative",
    "batchnorm_constant",
    "max_pool_constant",
    "nonnegative_linear_norm",
]


@dataclass(frozen=True)
class Fixed:
    """value: the constant (exact unless certified_value is given); certified_value: a guaranteed upper
    bound where the value itself is an estimate from below."""

    value: float
    certified_value: float | None = None

    def get(self, certified: bool) -> float:
        return self.certified_value if certified and self.certified_value is not None else self.value


@dataclass(frozen=True)
class FromParams:
    compute: Callable[[], float]


@dataclass(frozen=True)
class OperatorNorm:
    kind: str  # "linear", "conv" (module applied to input_shape) or "conv_transpose"
    module: nn.Module
    input_shape: tuple[int, ...]  # one sample, no batch dim; for conv_transpose: its *output* shape


@dataclass(frozen=True)
class Unavailable:
    reason: str


Rule = Fixed | FromParams | OperatorNorm | Unavailable


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


@functools.cache
def _smooth_constant(name: str) -> float:
    fns = {
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "silu": F.silu,
        "mish": F.mish,
    }
    return max_derivative(fns[name])


# GELU: d/dx x Phi(x) = Phi(x) + x phi(x), maximal where its derivative phi(x) (2 - x^2) vanishes: x = sqrt(2).
GELU_CONSTANT = 0.5 * (1 + math.erf(1.0)) + math.sqrt(2) * math.exp(-1.0) / math.sqrt(2 * math.pi)  # 1.1289
SELU_SCALE, SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717


def activation_constant(name: str, **kw) -> float | None:
    """sup |f'| of an elementwise activation (its exact L2 Lipschitz constant); None if unknown.

    Softmax / Softmin: 1/2. Its Jacobian diag(p) - p p^T is the covariance of a one-hot draw, so
    u^T J u = Var(u_X) <= (max u - min u)^2 / 4 <= 2/4 for ||u|| = 1 (Popoviciu), attained at p = (1/2, 1/2).
    """
    constants: dict[str, Callable[[], float]] = {
        "relu": lambda: 1.0,
        "relu6": lambda: 1.0,
        "hardtanh": lambda: 1.0,
        "tanh": lambda: 1.0,
        "softsign": lambda: 1.0,
        "tanhshrink": lambda: 1.0,
        "softshrink": lambda: 1.0,
        "logsigmoid": lambda: 1.0,
        "softplus": lambda: 1.0,
        "celu": lambda: 1.0,
        "identity": lambda: 1.0,
        "dropout": lambda: 1.0,
        "sigmoid": lambda: 0.25,
        "hardsigmoid": lambda: 1.0 / 6.0,
        "hardswish": lambda: 1.5,
        "softmax": lambda: 0.5,
        "softmin": lambda: 0.5,
        "leaky_relu": lambda: max(1.0, abs(kw.get("negative_slope", 0.01))),
        "elu": lambda: max(1.0, abs(kw.get("alpha", 1.0))),
        "selu": lambda: SELU_SCALE * SELU_ALPHA,
        "rrelu": lambda: max(1.0, abs(kw.get("lower", 1 / 8)), abs(kw.get("upper", 1 / 3))),
        "gelu": lambda: GELU_CONSTANT if kw.get("approximate", "none") == "none" else _smooth_constant("gelu_tanh"),
        "silu": lambda: _smooth_constant("silu"),
        "mish": lambda: _smooth_constant("mish"),
    }
    return constants[name]() if name in constants else None


_ACTIVATION_MODULES: dict[type, Callable[[nn.Module], dict]] = {
    nn.ReLU: lambda m: {},
    nn.ReLU6: lambda m: {},
    nn.Hardtanh: lambda m: {},
    nn.Tanh: lambda m: {},
    nn.Softsign: lambda m: {},
    nn.Tanhshrink: lambda m: {},
    nn.Softshrink: lambda m: {},
    nn.LogSigmoid: lambda m: {},
    nn.Softplus: lambda m: {},
    nn.CELU: lambda m: {},
    nn.Sigmoid: lambda m: {},
    nn.Hardsigmoid: lambda m: {},
    nn.Hardswish: lambda m: {},
    nn.Softmax: lambda m: {},
    nn.Softmin: lambda m: {},
    nn.Softmax2d: lambda m: {},
    nn.SELU: lambda m: {},
    nn.SiLU: lambda m: {},
    nn.Mish: lambda m: {},
    nn.LeakyReLU: lambda m: {"negative_slope": m.negative_slope},
    nn.ELU: lambda m: {"alpha": m.alpha},
    nn.RReLU: lambda m: {"lower": m.lower, "upper": m.upper},
    nn.GELU: lambda m: {"approximate": m.approximate},
}
_ACTIVATION_NAMES = {
    nn.Softmax2d: "softmax",
    nn.ReLU6: "relu6",
    nn.LeakyReLU: "leaky_relu",
    nn.SiLU: "silu",
    nn.LogSigmoid: "logsigmoid",
}
_IDENTITY_MODULES = (
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


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


_POOL_DIMS = {
    nn.AvgPool1d: 1,
    nn.AdaptiveAvgPool1d: 1,
    nn.MaxPool1d: 1,
    nn.AdaptiveMaxPool1d: 1,
    nn.AvgPool2d: 2,
    nn.AdaptiveAvgPool2d: 2,
    nn.MaxPool2d: 2,
    nn.AdaptiveMaxPool2d: 2,
    nn.AvgPool3d: 3,
    nn.AdaptiveAvgPool3d: 3,
    nn.MaxPool3d: 3,
    nn.AdaptiveMaxPool3d: 3,
}


def _pool_rule(module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Rule:
    """Average and max pooling on the recorded shapes of one sample. A k-d pool acts on the last k dims, each
    leading (channel) slice alike; torch also accepts a sample without a channel dim (e.g. MaxPool1d on (B, L)
    pools each row), so the pooled dims are counted from the module type, not from the shape."""
    nd = next(d for cls, d in _POOL_DIMS.items() if isinstance(module, cls))
    if len(in_shape) < nd or len(out_shape) < nd:
        raise ValueError(f"{type(module).__name__} got a sample of shape {in_shape}, fewer than {nd} pooled dims")
    in_spatial, out_spatial = in_shape[len(in_shape) - nd :], out_shape[len(out_shape) - nd :]

    def per_dim(value) -> tuple[int, ...]:
        return (value,) * nd if isinstance(value, int) else tuple(value)

    if isinstance(
        module,
        (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
    ):
        channel = (1, 1, *in_spatial)  # pooling acts on each channel alike
        return Fixed(nonnegative_linear_norm(module, channel, False), nonnegative_linear_norm(module, channel, True))
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        stride = module.stride if module.stride is not None else module.kernel_size
        return Fixed(
            max_pool_constant(
                in_spatial,
                out_spatial,
                per_dim(module.kernel_size),
                per_dim(stride),
                per_dim(module.padding),
                per_dim(module.dilation),
            )
        )
    return Fixed(adaptive_max_pool_constant(in_spatial, out_spatial))


# ------------------------------------------------------------------------------------------- dispatcher
_NOT_LIPSCHITZ = {
    nn.MultiheadAttention: "attention is not globally Lipschitz (softmax(Q K^T) V multiplies input-dependent tensors)",
    nn.TransformerEncoderLayer: "it contains attention, which is not globally Lipschitz",
    nn.TransformerDecoderLayer: "it contains attention, which is not globally Lipschitz",
    nn.TransformerEncoder: "it contains attention, which is not globally Lipschitz",
    nn.TransformerDecoder: "it contains attention, which is not globally Lipschitz",
    nn.Transformer: "it contains attention, which is not globally Lipschitz",
    nn.LayerNorm: "normalising by the input's own std is not globally Lipschitz (unbounded near constant inputs)",
    nn.GroupNorm: "normalising by the input's own std is not globally Lipschitz (unbounded near constant inputs)",
    nn.LocalResponseNorm: "dividing by a function of the input is not globally Lipschitz",
    nn.Bilinear: "it multiplies two input-dependent tensors",
    nn.GLU: "it multiplies two halves of its input",
    nn.Hardshrink: "it is discontinuous",
    nn.Threshold: "it is discontinuous unless value == threshold",
}


def module_rule(module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Rule:
    """The Lipschitz rule for a leaf module, given its recorded input and output shapes (one sample).

    The rules are those of torch's own layers: a subclass that overrides ``forward`` computes something else,
    so it gets no rule (the fx tracer traces into such classes instead of calling this).
    """
    kind = type(module)
    base = next((c for c in kind.__mro__ if c.__module__.startswith("torch.nn.")), nn.Module)
    if base is not nn.Module and base is not kind and kind.forward is not base.forward:
        return Unavailable(
            f"{kind.__name__} overrides the forward of {base.__name__}, whose rule therefore does not apply"
        )
    for cls, why in _NOT_LIPSCHITZ.items():
        if isinstance(module, cls):
            return Unavailable(why)
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return Unavailable("normalising by the input's own std is not globally Lipschitz")
    if isinstance(module, nn.Linear):
        return OperatorNorm("linear", module, in_shape)
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:
            return OperatorNorm("conv_transpose", module, out_shape)
        return OperatorNorm("conv", module, in_shape)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.running_var is None:
            return Unavailable(f"{kind.__name__} without running statistics uses batch statistics: not a fixed map")
        return FromParams(lambda: batchnorm_constant(module))
    if isinstance(module, nn.PReLU):
        return FromParams(lambda: max(1.0, float(module.weight.detach().abs().max())))
    if kind in _ACTIVATION_MODULES:
        name = _ACTIVATION_NAMES.get(kind, kind.__name__.lower())
        return Fixed(activation_constant(name, **_ACTIVATION_MODULES[kind](module)))
    if isinstance(module, _IDENTITY_MODULES):
        return Fixed(1.0)
    if isinstance(module, tuple(_POOL_DIMS)):
        return _pool_rule(module, in_shape, out_shape)
    if isinstance(module, nn.Upsample) and module.mode == "nearest":
        factors = [o / i for i, o in zip(in_shape[1:], out_shape[1:], strict=False)]
        if all(f == int(f) for f in factors):  # each entry copied prod(f) times: J^T J = prod(f) I
            return Fixed(math.sqrt(math.prod(factors)))
    return Unavailable(f"no Lipschitz rule for module type {kind.__name__}")
