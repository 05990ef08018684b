"""The rules of the upper bound: how each operation of a traced network gets its Lipschitz constant.

Every node of the graph (a leaf module, a function such as ``F.relu`` or ``torch.flatten``, a tensor method
such as ``x.view``) gets a rule, all constants being L2 -> L2 Lipschitz constants on one sample:

* ``Fixed``        a number known once the shapes are known (activations, pooling, reshapes, x * 2): exact,
                   or an estimate from below with a guaranteed ``certified_value`` (average pooling);
* ``FromParams``   a closed form read from the parameters at compute time (BatchNorm, PReLU, x * parameter):
                   exact, so certified;
* ``OperatorNorm`` a Linear / Conv / ConvTranspose weight whose spectral norm the estimator computes (power
                   iteration from below, or a guaranteed Gram bound: see operator_norms.py);
* ``Unavailable``  no finite global constant (attention, LayerNorm, discontinuities) or no rule known.

Where to add things (one place each):
* an elementwise activation: one ``Activation`` in ACTIVATIONS (its functional and module forms and its
  constant as a function of its parameters), in rule_tables.py;
* an operation of constant 1 (reshape, selection, identity): ONE_LIPSCHITZ, in rule_tables.py;
* an operation that is not globally Lipschitz: NOT_LIPSCHITZ, in rule_tables.py;
* any other layer: a branch in ``module_rule`` (modules) or ``function_rule`` (functions and methods), here.
This module holds the rule types, the names of traced nodes, and the functions that give a node its rule;
the tables live in rule_tables.py (their names stay importable from here).
Adding and concatenating nodes are not rules but steps of the graph (see capture.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.fx as fx
from torch import Tensor, nn

from lipschitz_dd.bounds.layer_constants import (
    adaptive_max_pool_constant,
    batchnorm_constant,
    max_pool_constant,
    nonnegative_linear_norm,
)
from lipschitz_dd.bounds.rule_tables import (
    _ACTIVATION_BY_MODULE,
    _ACTIVATION_BY_NAME,
    _COPIES,
    _NOT_LIPSCHITZ_FUNCTIONS,
    _NOT_LIPSCHITZ_MODULES,
    _ONE_LIPSCHITZ_MODULES,
    _POOL_BY_FUNCTION,
    _PRODUCTS,
    ACTIVATIONS,
    NOT_LIPSCHITZ,
    ONE_LIPSCHITZ,
    POOLS,
    Activation,
)

__all__ = [
    "Fixed",
    "FromParams",
    "OperatorNorm",
    "Unavailable",
    "Rule",
    "Activation",
    "ACTIVATIONS",
    "ONE_LIPSCHITZ",
    "NOT_LIPSCHITZ",
    "POOLS",
    "module_rule",
    "function_rule",
    "not_lipschitz_rule",
    "op_name",
    "is_inplace",
]


# -------------------------------------------------------------------------------------------- rule types
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
    """compute(): the exact constant for the current parameters."""

    compute: Callable[[], float]


@dataclass(frozen=True)
class OperatorNorm:
    """The spectral norm of a Linear / Conv / ConvTranspose weight as a map on one sample of input_shape."""

    kind: str  # "linear", "conv" (module applied to input_shape) or "conv_transpose"
    module: nn.Module
    input_shape: tuple[int, ...]  # one sample, no batch dim; for conv_transpose: its *output* shape


@dataclass(frozen=True)
class Unavailable:
    reason: str


Rule = Fixed | FromParams | OperatorNorm | Unavailable


# --------------------------------------------------------------------------------------- node naming
_ALIASES = {
    "iadd": "add",
    "isub": "sub",
    "imul": "mul",
    "itruediv": "truediv",
    "div": "truediv",
    "concat": "cat",
    "concatenate": "cat",
    "true_divide": "truediv",
}
# queries of the input's shape, not its values: their results are constants
SHAPE_QUERIES = {"size", "dim", "numel", "shape", "ndim", "dtype", "device", "len", "getattr"}
_INPLACE_OPERATORS = {"iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "imatmul"}


def raw_name(node: fx.Node) -> str:
    """The name of a node's function, method or module path, as written."""
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


def op_name(node: fx.Node) -> str:
    """The name the tables use: operators and in-place forms map to the plain name (``__iadd__`` -> add,
    ``relu_`` -> relu, ``div`` -> truediv)."""
    raw = raw_name(node)
    name = raw.strip("_") if raw.startswith("__") else raw.rstrip("_")  # __iadd__ -> iadd, relu_ -> relu
    return _ALIASES.get(name, name)


def is_inplace(node: fx.Node, module: nn.Module | None = None) -> bool:
    """Whether the node overwrites its first argument: x.add_(y), x += y, F.relu(x, inplace=True),
    nn.ReLU(inplace=True)."""
    if node.op == "call_module":
        return bool(getattr(module, "inplace", False))
    raw = raw_name(node)
    if raw.startswith("__"):
        return raw.strip("_") in _INPLACE_OPERATORS
    if raw in _INPLACE_OPERATORS or (raw.endswith("_") and raw != "_"):
        return True
    arguments = _ACTIVATION_BY_NAME[raw].arguments if raw in _ACTIVATION_BY_NAME else ()
    position = arguments.index("inplace") + 1 if "inplace" in arguments else None  # + 1: the input
    positional = position is not None and len(node.args) > position and node.args[position] is True
    return positional or node.kwargs.get("inplace") is True


# ------------------------------------------------------------------------------------------ shapes
def numel(shape: tuple[int, ...] | None) -> int:
    return math.prod(shape) if shape is not None else 0


def sample_shape(value: Any) -> tuple[int, ...] | None:
    """The shape of one sample of a batch tensor (None for anything else)."""
    return tuple(value.shape[1:]) if isinstance(value, Tensor) and value.ndim >= 1 else None


def broadcast_factor(operand: tuple[int, ...] | None, out: tuple[int, ...] | None) -> float:
    """sqrt(r) when broadcasting copies each entry of the operand (one sample's shape) to r = numel(out) /
    numel(operand) outputs (the map x -> (x, ..., x) has norm sqrt(r)); 1 otherwise."""
    n_in, n_out = numel(operand), numel(out)
    return math.sqrt(n_out / n_in) if n_in and n_out > n_in else 1.0


def _is_simple_index(index: Any) -> bool:
    """int / slice / None / Ellipsis (or a tuple of them), or a dict key: picks distinct entries, a norm-1
    selection."""
    if isinstance(index, tuple):
        return all(_is_simple_index(i) for i in index)
    return index is None or index is Ellipsis or isinstance(index, (int, slice, str))


# -------------------------------------------------------------------------------------------- modules
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
    for classes, why in _NOT_LIPSCHITZ_MODULES:
        if isinstance(module, classes):
            return Unavailable(why)
    if isinstance(module, nn.Linear):
        return OperatorNorm("linear", module, in_shape)
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:  # the adjoint of the convolution on its output shape: the same norm
            return OperatorNorm("conv_transpose", module, out_shape)
        return OperatorNorm("conv", module, in_shape)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.running_var is None:
            return Unavailable(f"{kind.__name__} without running statistics uses batch statistics: not a fixed map")
        return FromParams(lambda: batchnorm_constant(module))
    if isinstance(module, nn.PReLU):  # slope 1 for x > 0, a_c for x < 0
        return FromParams(lambda: max(1.0, float(module.weight.detach().abs().max())))
    if kind in _ACTIVATION_BY_MODULE:
        activation = _ACTIVATION_BY_MODULE[kind]
        return Fixed(activation.constant(**{p: getattr(module, p) for p in activation.params}))
    if isinstance(module, _ONE_LIPSCHITZ_MODULES):
        return Fixed(1.0)
    if isinstance(module, tuple(POOLS)):
        return _pool_rule(module, in_shape, out_shape)
    if isinstance(module, nn.Upsample) and module.mode == "nearest":
        factors = [o / i for i, o in zip(in_shape[1:], out_shape[1:], strict=False)]
        if all(f == int(f) for f in factors):  # each entry copied prod(f) times: J^T J = prod(f) I
            return Fixed(math.sqrt(math.prod(factors)))
    return Unavailable(f"no Lipschitz rule for module type {kind.__name__}")


def _pool_rule(module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Rule:
    """Average and max pooling on the recorded shapes of one sample. A k-d pool acts on the last k dims, each
    leading (channel) slice alike; torch also accepts a sample without a channel dim (e.g. MaxPool1d on (B, L)
    pools each row), so the pooled dims are counted from the module type, not from the shape."""
    function, nd = next(entry for cls, entry in POOLS.items() if isinstance(module, cls))
    if len(in_shape) < nd or len(out_shape) < nd:
        raise ValueError(f"{type(module).__name__} got a sample of shape {in_shape}, fewer than {nd} pooled dims")
    in_spatial, out_spatial = in_shape[len(in_shape) - nd :], out_shape[len(out_shape) - nd :]

    def per_dim(value) -> tuple[int, ...]:
        return (value,) * nd if isinstance(value, int) else tuple(value)

    if "avg" in function:  # a linear map with nonnegative entries, the same on each channel
        channel = (1, 1, *in_spatial)
        return Fixed(nonnegative_linear_norm(module, channel, False), nonnegative_linear_norm(module, channel, True))
    if function.startswith("max"):
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


# ------------------------------------------------------------------------------------------ functions
def not_lipschitz_rule(name: str, n_inputs: int) -> Unavailable | None:
    """Functions that are not globally Lipschitz (attention, normalisation by the input, discontinuities,
    and products of ``n_inputs`` > 1 input-dependent tensors); None for any other function."""
    if name in _NOT_LIPSCHITZ_FUNCTIONS:
        return Unavailable(_NOT_LIPSCHITZ_FUNCTIONS[name])
    if name in _PRODUCTS and n_inputs > 1:
        return Unavailable(_PRODUCTS[name])
    return None


def function_rule(
    node: fx.Node,
    name: str,
    inputs: list[str],
    values: dict[str, Any],
    in_shape: tuple[int, ...] | None,
    out_shape: tuple[int, ...] | None,
    model: nn.Module,
) -> Rule:
    """The rule of a call_function / call_method node with one input-dependent argument (the node named
    inputs[0]); values: the recorded value of every node on one sample; in_shape: the first argument's
    sample shape; model: the traced module (a scale read from a parameter is read from it at compute time)."""
    args = [values.get(a.name, a) if isinstance(a, fx.Node) else a for a in node.args]
    data_first = isinstance(node.args[0], fx.Node) and node.args[0].name in inputs if node.args else False
    data_shape = sample_shape(values.get(inputs[0]))
    try:
        rule = _unary_rule(node, name, args, data_first, in_shape, out_shape, data_shape, model)
    except Exception as error:  # noqa: BLE001 - unexpected arguments: say so instead of failing
        rule = Unavailable(f"its constant could not be computed ({type(error).__name__}: {error})")
    return rule if rule is not None else Unavailable(f"no Lipschitz rule for {node.op} {name}")


def _unary_rule(
    node: fx.Node,
    name: str,
    args: list[Any],
    data_first: bool,
    in_shape: tuple[int, ...] | None,
    out_shape: tuple[int, ...] | None,
    data_shape: tuple[int, ...] | None,
    model: nn.Module,
) -> Rule | None:
    """in_shape: the first argument's shape; data_shape: the input-dependent argument's shape."""
    broadcast = broadcast_factor(data_shape, out_shape)
    if name in ("add", "sub"):  # adding a constant: x + c, c + alpha x (torch.add's alpha scales the second)
        alpha = 1.0 if data_first else abs(float(node.kwargs.get("alpha", 1.0)))
        return Fixed(alpha * broadcast)
    if name in ONE_LIPSCHITZ:
        return Fixed(1.0)
    if name == "getitem":
        return Fixed(1.0) if _is_simple_index(node.args[1]) else None
    if name in _COPIES and in_shape and out_shape:
        return Fixed(math.sqrt(numel(out_shape) / numel(in_shape)))
    if name in ("mean", "sum") and in_shape and out_shape is not None:
        group = numel(in_shape) / max(numel(out_shape), 1)  # each output averages / sums `group` entries
        return Fixed(group**-0.5 if name == "mean" else group**0.5)
    if name in ("mul", "truediv"):
        if node.kwargs.get("rounding_mode") is not None:
            return Unavailable(f"division with rounding_mode={node.kwargs['rounding_mode']!r} is discontinuous")
        return _scale_rule(node, name, data_first, args, broadcast, model)
    if name in _POOL_BY_FUNCTION and in_shape and out_shape:
        positional = node.args[1:5] if name.startswith("max") else node.args[1:]
        kwargs = {k: v for k, v in node.kwargs.items() if k != "return_indices"}
        return module_rule(_POOL_BY_FUNCTION[name](*positional, **kwargs), in_shape, out_shape)
    if name == "pad":
        mode = node.kwargs.get("mode", args[2] if len(args) > 2 else "constant")
        return Fixed(1.0) if mode == "constant" else None
    if name in _ACTIVATION_BY_NAME:
        activation = _ACTIVATION_BY_NAME[name]
        given = {**dict(zip(activation.arguments, node.args[1:], strict=False)), **node.kwargs}
        params = {k: v for k, v in given.items() if k in activation.params}
        return Fixed(activation.constant(**params))
    return None


def _scale_rule(
    node: fx.Node, name: str, data_first: bool, args: list[Any], broadcast: float, model: nn.Module
) -> Rule:
    """x * c, c * x, x / c with c a number (also one computed from shapes, e.g. dim ** -0.5) or a
    parameter/buffer of the model (read at compute time): max|c| (or 1 / min|c|), times the broadcast
    factor sqrt(r) when x's entries are each copied to r outputs."""
    other, other_value = (node.args[1], args[1]) if data_first else (node.args[0], args[0])
    if name == "truediv" and not data_first:
        return Unavailable("dividing by an input-dependent tensor is not globally Lipschitz")
    if isinstance(other_value, (int, float)):
        c = abs(float(other_value))
        return Fixed(broadcast * (c if name == "mul" else (1.0 / c if c else math.inf)))
    if isinstance(other, fx.Node) and other.op == "get_attr":
        attr = other.target

        def constant() -> float:
            c = functools.reduce(getattr, attr.split("."), model).detach().abs()
            return broadcast * (float(c.max()) if name == "mul" else float(1.0 / c.min()))

        return FromParams(constant)
    return Unavailable(f"{name} by a value computed inside the model is not supported")
