"""The tables of the upper bound's rules: which named operation or layer type has which Lipschitz constant.

One job: the data of rules.py, by kind of operation, all constants being L2 -> L2 Lipschitz constants on
one sample (rules.py turns a traced node into a rule by looking it up here):

* ACTIVATIONS     elementwise activations (and softmax) with their closed-form constant sup |f'|, in their
                  functional and module forms;
* ONE_LIPSCHITZ   reshapes, selections, copies and 1-Lipschitz entrywise maps: constant 1 (at most 1);
* NOT_LIPSCHITZ   operations with no finite global constant (attention, normalisation by the input,
                  discontinuities), each with the reason shown to the user;
* products and quotients of two input-dependent tensors (not globally Lipschitz), copies of each entry r
  times (constant sqrt(r));
* POOLS           pooling modules and their functional forms (their constants: rules.py and
                  layer_constants.py).

Where to add things (one place each): an elementwise activation: one ``Activation`` in ACTIVATIONS; an
operation of constant 1: ONE_LIPSCHITZ; an operation that is not globally Lipschitz: NOT_LIPSCHITZ; any
other layer: a branch in rules.py.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from lipschitz_dd.bounds.layer_constants import GELU_CONSTANT, SELU_ALPHA, SELU_SCALE, cached_max_derivative

__all__ = ["Activation", "ACTIVATIONS", "ONE_LIPSCHITZ", "NOT_LIPSCHITZ", "POOLS"]


# ------------------------------------------------------------------------------------------ activations
@dataclass(frozen=True)
class Activation:
    """An elementwise activation (or softmax) with a closed-form constant, in its two forms.

    function: the functional form; its name (``F.logsigmoid.__name__`` is "log_sigmoid") is what the traced
        graph shows for ``F.x``, ``torch.x``, ``tensor.x()`` and the in-place ``x_``.
    modules: the module form(s), matched by exact type.
    constant: sup |f'| (the exact L2 Lipschitz constant of f applied entrywise), as a function of the
        arguments it depends on: keyword arguments of the function, attributes of the module of the same
        names, with the function's defaults as defaults.
    """

    function: Callable[..., Tensor]
    modules: tuple[type[nn.Module], ...]
    constant: Callable[..., float]

    @property
    def name(self) -> str:
        return self.function.__name__

    @property
    def params(self) -> tuple[str, ...]:
        """The arguments the constant depends on."""
        return _argument_names(self.constant)

    @property
    def arguments(self) -> tuple[str, ...]:
        """The function's arguments after the input, in order (empty for a C builtin without a signature:
        its arguments are then read by keyword only)."""
        return _argument_names(self.function)[1:]


@functools.cache
def _argument_names(fn: Callable) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # a C builtin such as F.gelu
        return ()


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def _gelu_constant(approximate: str = "none") -> float:
    """GELU: the closed form (see layer_constants.GELU_CONSTANT); its tanh approximation: a numerical max."""
    return GELU_CONSTANT if approximate == "none" else cached_max_derivative(_gelu_tanh)


# Softmax / Softmin: 1/2. The Jacobian diag(p) - p p^T is the covariance of a one-hot draw, so
# u^T J u = Var(u_X) <= (max u - min u)^2 / 4 <= 2/4 for ||u|| = 1 (Popoviciu), attained at p = (1/2, 1/2).
ACTIVATIONS: tuple[Activation, ...] = (
    Activation(F.relu, (nn.ReLU,), lambda: 1.0),
    Activation(F.relu6, (nn.ReLU6,), lambda: 1.0),
    Activation(F.hardtanh, (nn.Hardtanh,), lambda: 1.0),
    Activation(F.tanh, (nn.Tanh,), lambda: 1.0),
    Activation(F.softsign, (nn.Softsign,), lambda: 1.0),
    Activation(F.tanhshrink, (nn.Tanhshrink,), lambda: 1.0),
    Activation(F.softshrink, (nn.Softshrink,), lambda: 1.0),
    Activation(F.logsigmoid, (nn.LogSigmoid,), lambda: 1.0),
    Activation(F.softplus, (nn.Softplus,), lambda: 1.0),
    Activation(F.celu, (nn.CELU,), lambda: 1.0),  # slope exp(x / alpha) <= 1 for x < 0
    Activation(F.sigmoid, (nn.Sigmoid,), lambda: 0.25),
    Activation(F.hardsigmoid, (nn.Hardsigmoid,), lambda: 1.0 / 6.0),
    Activation(F.hardswish, (nn.Hardswish,), lambda: 1.5),  # slope (2x + 3) / 6 at x = 3
    Activation(F.softmax, (nn.Softmax, nn.Softmax2d), lambda: 0.5),
    Activation(F.softmin, (nn.Softmin,), lambda: 0.5),
    Activation(F.leaky_relu, (nn.LeakyReLU,), lambda negative_slope=0.01: max(1.0, abs(negative_slope))),
    Activation(F.elu, (nn.ELU,), lambda alpha=1.0: max(1.0, abs(alpha))),  # slope alpha exp(x) for x < 0
    Activation(F.selu, (nn.SELU,), lambda: SELU_SCALE * SELU_ALPHA),
    # RReLU: a slope drawn from [lower, upper] for x < 0 in training mode, their mean in eval mode
    Activation(F.rrelu, (nn.RReLU,), lambda lower=1 / 8, upper=1 / 3: max(1.0, abs(lower), abs(upper))),
    Activation(F.gelu, (nn.GELU,), _gelu_constant),
    Activation(F.silu, (nn.SiLU,), lambda: cached_max_derivative(F.silu)),
    Activation(F.mish, (nn.Mish,), lambda: cached_max_derivative(F.mish)),
)
_ACTIVATION_BY_NAME = {a.name: a for a in ACTIVATIONS}
_ACTIVATION_BY_MODULE = {cls: a for a in ACTIVATIONS for cls in a.modules}


# ------------------------------------------------------------------------------------ constant-1 maps
# Operations whose Lipschitz constant is 1 (at most 1), by function / method name, with their module forms.
# In place they are safe to apply even when the overwritten tensor is read again (see capture.py).
ONE_LIPSCHITZ: dict[str, tuple[type[nn.Module], ...]] = {
    # reshapes and permutations of the entries (isometries)
    **dict.fromkeys(("reshape", "view", "view_as", "permute", "transpose", "t", "contiguous", "squeeze"), ()),
    **dict.fromkeys(("unsqueeze", "movedim", "swapaxes", "flip", "roll"), ()),
    "flatten": (nn.Flatten,),
    "unflatten": (nn.Unflatten,),
    # selections of distinct entries (norm <= 1)
    **dict.fromkeys(("chunk", "split", "unbind", "narrow"), ()),
    # the identity: copies, dtype casts, and dropout (the bound is for the network in eval mode)
    **dict.fromkeys(("clone", "detach", "float", "double", "half", "to", "type_as"), ()),
    "identity": (nn.Identity,),
    "dropout": (nn.Dropout,),
    "dropout1d": (nn.Dropout1d,),
    "dropout2d": (nn.Dropout2d,),
    "dropout3d": (nn.Dropout3d,),
    "alpha_dropout": (nn.AlphaDropout,),
    "feature_alpha_dropout": (nn.FeatureAlphaDropout,),
    # 1-Lipschitz entrywise maps
    **dict.fromkeys(("neg", "pos", "abs", "clamp", "clip"), ()),
}
_ONE_LIPSCHITZ_MODULES = tuple(cls for classes in ONE_LIPSCHITZ.values() for cls in classes)


# ----------------------------------------------------------------------------------- not Lipschitz
# Operations with no finite global Lipschitz constant: reason -> (function / method names, module classes).
NOT_LIPSCHITZ: dict[str, tuple[tuple[str, ...], tuple[type[nn.Module], ...]]] = {
    "it is discontinuous": (
        ("floordiv", "floor_divide", "remainder", "fmod", "mod", "hardshrink", "sign", "round", "floor", "ceil"),
        (nn.Hardshrink,),
    ),
    "it is discontinuous unless value == threshold": (("threshold",), (nn.Threshold,)),
    "attention is not globally Lipschitz (softmax(Q K^T) V multiplies input-dependent tensors)": (
        ("scaled_dot_product_attention", "multi_head_attention_forward"),
        (nn.MultiheadAttention,),
    ),
    "it contains attention, which is not globally Lipschitz": (
        (),
        (
            nn.TransformerEncoderLayer,
            nn.TransformerDecoderLayer,
            nn.TransformerEncoder,
            nn.TransformerDecoder,
            nn.Transformer,
        ),
    ),
    "normalising by the input's own std is not globally Lipschitz (unbounded near constant inputs)": (
        ("layer_norm", "group_norm", "instance_norm"),
        (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm),
    ),
    "dividing by a function of the input is not globally Lipschitz": ((), (nn.LocalResponseNorm,)),
    "x / ||x|| is not globally Lipschitz": (("normalize",), ()),
    "it grows faster than linearly": (("exp",), ()),
    "unbounded slope near 0": (("log", "sqrt", "rsqrt", "reciprocal"), ()),
    "it multiplies two halves of its input": (("glu",), (nn.GLU,)),
    "it multiplies two input-dependent tensors": ((), (nn.Bilinear,)),
}
_NOT_LIPSCHITZ_FUNCTIONS = {name: why for why, (names, _) in NOT_LIPSCHITZ.items() for name in names}
_NOT_LIPSCHITZ_MODULES = [(classes, why) for why, (_, classes) in NOT_LIPSCHITZ.items() if classes]

# Products and quotients: not globally Lipschitz when both operands depend on the input (a constant operand:
# see _scale_rule). Name -> reason.
_PRODUCTS = {
    **dict.fromkeys(
        ("matmul", "bmm", "mm", "einsum", "baddbmm"),
        "attention-style product of two input-dependent tensors is not globally Lipschitz",
    ),
    **dict.fromkeys(
        ("addmm", "bilinear", "mul", "truediv", "pow"),
        "product or quotient of two input-dependent tensors is not globally Lipschitz",
    ),
}
_COPIES = {"expand", "expand_as", "repeat", "tile", "repeat_interleave"}  # each entry copied r times: sqrt(r)

# ------------------------------------------------------------------------------------------------ pooling
# Pooling modules -> (their functional form, number of pooled trailing dims).
POOLS: dict[type[nn.Module], tuple[str, int]] = {
    nn.AvgPool1d: ("avg_pool1d", 1),
    nn.AvgPool2d: ("avg_pool2d", 2),
    nn.AvgPool3d: ("avg_pool3d", 3),
    nn.AdaptiveAvgPool1d: ("adaptive_avg_pool1d", 1),
    nn.AdaptiveAvgPool2d: ("adaptive_avg_pool2d", 2),
    nn.AdaptiveAvgPool3d: ("adaptive_avg_pool3d", 3),
    nn.MaxPool1d: ("max_pool1d", 1),
    nn.MaxPool2d: ("max_pool2d", 2),
    nn.MaxPool3d: ("max_pool3d", 3),
    nn.AdaptiveMaxPool1d: ("adaptive_max_pool1d", 1),
    nn.AdaptiveMaxPool2d: ("adaptive_max_pool2d", 2),
    nn.AdaptiveMaxPool3d: ("adaptive_max_pool3d", 3),
}
_POOL_BY_FUNCTION = {function: cls for cls, (function, _) in POOLS.items()}
