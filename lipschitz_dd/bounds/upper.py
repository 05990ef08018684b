"""Upper bound on a network's global L2 Lipschitz constant by composing layer constants along its graph.

The module is traced once with torch.fx (or, if fx fails, its leaf modules are recorded with forward hooks
and must form a plain chain). A forward pass on one example sample records every node's input shape. The
bound propagates "the Lipschitz constant from the input to this node", L, through the graph:

* a layer f applied to node a:      L = L_f * L_a                (composition)
* a + b (or a - b, torch.add alpha): L = L_a + |alpha| L_b       (triangle inequality)
* cat / stack of a, b:              L = sqrt(L_a^2 + L_b^2)     (||(da, db)||^2 = ||da||^2 + ||db||^2;
                                                                 tighter than L_a + L_b and still valid)
* a * c, a / c (c constant):        L = max|c| L_a, L_a / min|c|
* mean / sum over g entries:        L = L_a / sqrt(g), sqrt(g) L_a
* broadcasting (a + b, a * c, ...): an operand whose entries are each copied r = numel(out) / numel(operand)
                                    times contributes sqrt(r) times its L
An in-place operation (``h.add_(x)``, ``h *= 10``, ``inplace=True``) whose target tensor is read again later
(directly or through a view) is refused unless it is a pointwise map with constant <= 1 (ReLU & co.), since
the later readers see the change and the traced graph does not.
The output's L is an upper bound on sup_x ||J(x)||_2 whenever every layer constant is: in the "certified"
mode that is guaranteed; in the "power" mode the Linear / Conv norms come from warm-started power
iteration, which approaches each norm from below, so the product can be (slightly) low.
Operations that are not globally Lipschitz (attention, products of two input-dependent tensors,
LayerNorm) or have no rule make the result "not available" with a reason naming the node.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from lipschitz_dd.bounds import layer_constants as lc
from lipschitz_dd.bounds.operator_norms import conv_operator_norm, linear_operator_norm

__all__ = ["LayerConstant", "UpperBoundResult", "UpperBoundEstimator", "upper_bound"]


@dataclass(frozen=True)
class LayerConstant:
    """One layer's Lipschitz constant. certified: the constant is exact or a guaranteed upper bound.
    cumulative: the bound from the network input up to this layer's output (where the bound blows up)."""

    name: str
    op: str
    constant: float
    certified: bool
    cumulative: float = math.nan


@dataclass(frozen=True)
class UpperBoundResult:
    """value: the upper bound on sup_x ||J(x)||_2 (None when not available); mode: "power" (layer norms
    by power iteration: an estimate that can be slightly low) or "certified" (guaranteed >= the truth)."""

    value: float | None
    available: bool
    reason: str | None
    mode: str
    layers: list[LayerConstant] = field(default_factory=list)


@dataclass
class _Step:
    """One node of the Lipschitz graph. kind: "layer" (one input, rule), "add" (coefficients) or "cat"."""

    name: str
    op: str
    kind: str
    inputs: list[str]
    rule: Any = None
    coefficients: list[float] | None = None
    display: str = ""  # the name shown to users and used for warm-start vectors (module path if any)


# ------------------------------------------------------------------------------------ function rules
_RESHAPES = {
    "flatten",
    "reshape",
    "view",
    "view_as",
    "permute",
    "transpose",
    "t",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "clone",
    "chunk",
    "split",
    "unbind",
    "narrow",
    "movedim",
    "swapaxes",
    "unflatten",
    "flip",
    "roll",
    "float",
    "double",
    "half",
    "to",
    "type_as",
    "detach",
    "identity",
    "neg",
    "pos",
    "abs",
    "clamp",
    "clip",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
}
_COPIES = {"expand", "expand_as", "repeat", "tile", "repeat_interleave"}  # each entry copied r times: sqrt(r)
_PRODUCTS = {
    "matmul",
    "bmm",
    "mm",
    "einsum",
    "baddbmm",
    "addmm",
    "bilinear",
    "mul",
    "truediv",
    "div",
    "pow",
    "scaled_dot_product_attention",
    "multi_head_attention_forward",
}
_NOT_LIPSCHITZ = {
    "floordiv": "it is discontinuous",
    "floor_divide": "it is discontinuous",
    "remainder": "it is discontinuous",
    "fmod": "it is discontinuous",
    "mod": "it is discontinuous",
    "scaled_dot_product_attention": "attention is not globally Lipschitz",
    "multi_head_attention_forward": "attention is not globally Lipschitz",
    "layer_norm": "normalising by the input's own std is not globally Lipschitz",
    "group_norm": "normalising by the input's own std is not globally Lipschitz",
    "instance_norm": "normalising by the input's own std is not globally Lipschitz",
    "normalize": "x / ||x|| is not globally Lipschitz",
    "exp": "it grows faster than linearly",
    "log": "unbounded slope near 0",
    "sqrt": "unbounded slope near 0",
    "rsqrt": "unbounded slope near 0",
    "reciprocal": "unbounded slope near 0",
    "glu": "it multiplies two halves",
    "hardshrink": "it is discontinuous",
    "threshold": "it is discontinuous",
    "sign": "it is discontinuous",
    "round": "it is discontinuous",
    "floor": "it is discontinuous",
    "ceil": "it is discontinuous",
}
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
_SHAPE_QUERIES = {"size", "dim", "numel", "shape", "ndim", "dtype", "device", "len", "getattr"}
_POOLS = {
    "avg_pool1d": nn.AvgPool1d,
    "avg_pool2d": nn.AvgPool2d,
    "avg_pool3d": nn.AvgPool3d,
    "adaptive_avg_pool1d": nn.AdaptiveAvgPool1d,
    "adaptive_avg_pool2d": nn.AdaptiveAvgPool2d,
    "adaptive_avg_pool3d": nn.AdaptiveAvgPool3d,
    "max_pool1d": nn.MaxPool1d,
    "max_pool2d": nn.MaxPool2d,
    "max_pool3d": nn.MaxPool3d,
    "adaptive_max_pool1d": nn.AdaptiveMaxPool1d,
    "adaptive_max_pool2d": nn.AdaptiveMaxPool2d,
    "adaptive_max_pool3d": nn.AdaptiveMaxPool3d,
}


def _raw_name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


def _op_name(node: fx.Node) -> str:
    raw = _raw_name(node)
    name = raw.strip("_") if raw.startswith("__") else raw.rstrip("_")  # __iadd__ -> iadd, relu_ -> relu
    return _ALIASES.get(name, name)


_INPLACE_OPERATORS = {"iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "imatmul"}
# functions whose positional argument at this index is `inplace`
_INPLACE_POSITION = {
    "relu": 1,
    "relu6": 1,
    "selu": 1,
    "silu": 1,
    "mish": 1,
    "hardswish": 1,
    "hardsigmoid": 1,
    "leaky_relu": 2,
    "elu": 2,
    "celu": 2,
    "threshold": 3,
    "hardtanh": 3,
    "dropout": 3,
    "alpha_dropout": 3,
    "feature_alpha_dropout": 3,
    "dropout1d": 3,
    "dropout2d": 3,
    "dropout3d": 3,
    "rrelu": 4,
}


def _is_inplace(node: fx.Node, module: nn.Module | None = None) -> bool:
    """Whether the node overwrites its first argument: x.add_(y), x += y, F.relu(x, inplace=True),
    nn.ReLU(inplace=True)."""
    if node.op == "call_module":
        return bool(getattr(module, "inplace", False))
    raw = _raw_name(node)
    if raw.startswith("__"):
        return raw.strip("_") in _INPLACE_OPERATORS
    if raw in _INPLACE_OPERATORS or (raw.endswith("_") and raw != "_"):
        return True
    position = _INPLACE_POSITION.get(raw)
    positional = position is not None and len(node.args) > position and node.args[position] is True
    return positional or node.kwargs.get("inplace") is True


def _broadcast_factor(operand: tuple[int, ...] | None, out: tuple[int, ...] | None) -> float:
    """sqrt(r) when broadcasting copies each entry of the operand (one sample's shape) to r = numel(out) /
    numel(operand) outputs (the map x -> (x, ..., x) has norm sqrt(r)); 1 otherwise."""
    n_in, n_out = _numel(operand), _numel(out)
    return math.sqrt(n_out / n_in) if n_in and n_out > n_in else 1.0


def _is_simple_index(index: Any) -> bool:
    """int / slice / None / Ellipsis (or a tuple of them), or a dict key: picks distinct entries, a norm-1
    selection."""
    if isinstance(index, tuple):
        return all(_is_simple_index(i) for i in index)
    return index is None or index is Ellipsis or isinstance(index, (int, slice, str))


def _not_lipschitz_rule(name: str, n_inputs: int) -> lc.Unavailable | None:
    """Functions that are not globally Lipschitz: attention, normalisation by the input, products."""
    if name in _NOT_LIPSCHITZ:
        return lc.Unavailable(_NOT_LIPSCHITZ[name])
    if name in _PRODUCTS and n_inputs > 1:
        if name in ("matmul", "bmm", "einsum", "baddbmm", "mm"):
            return lc.Unavailable("attention-style product of two input-dependent tensors is not globally Lipschitz")
        return lc.Unavailable("product or quotient of two input-dependent tensors is not globally Lipschitz")
    return None


def _is_float_value(value: Any) -> bool:
    """A float tensor, or a non-empty tuple/list of them (chunk, split)."""
    if isinstance(value, (tuple, list)):
        return bool(value) and all(_is_float_value(v) for v in value)
    return isinstance(value, Tensor) and value.is_floating_point()


def _numel(shape: tuple[int, ...] | None) -> int:
    return math.prod(shape) if shape is not None else 0


# --------------------------------------------------------------------------------------- the estimator
class UpperBoundEstimator:
    """Upper bound on the global L2 Lipschitz constant of ``model`` (logits w.r.t. flattened input),
    traced once, with warm-started power iteration so that calling ``compute()`` every epoch is cheap.

    model: any nn.Module; its parameters are read at every compute() (train between calls freely).
    example_input: a batch of inputs of the shape the model sees, ``(B, *sample_shape)``; only the first
        sample is used to record each layer's input shape (convolution norms depend on it).
    iters: power-iteration (Lanczos) steps for a layer seen for the first time; warm_iters: steps for later
        calls, started from the previous vectors; both stop early once converged to ``tol`` (see lanczos_norm).
    gram_iters: Gram-iteration steps of the certified mode (looseness <= rank^(1/2^(gram_iters+1))).
    seed: seeds the estimator's own torch.Generator for the initial power-iteration vectors.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: Tensor,
        *,
        iters: int = 500,
        warm_iters: int = 20,
        tol: float = 1e-6,
        gram_iters: int = 12,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(example_input, Tensor) or example_input.ndim < 1 or len(example_input) == 0:
            raise ValueError("example_input must be a non-empty batch tensor (B, *sample_shape)")
        if iters < 1 or warm_iters < 1 or gram_iters < 1 or tol < 0:
            raise ValueError("iters, warm_iters and gram_iters must be >= 1 and tol >= 0")
        self.model, self.iters, self.warm_iters, self.tol, self.gram_iters = model, iters, warm_iters, tol, gram_iters
        self._generator = torch.Generator().manual_seed(seed)
        self._vectors: dict[str, Tensor] = {}
        self._values: dict[str, float] = {}
        self.steps: list[_Step] = []
        self.output: str | None = None
        self.reasons: list[tuple[str, str, str]] = []  # (node, op, why) of every unsupported node
        self._poisoned: set[str] = set()
        example = example_input[:1].detach()
        param = next(model.parameters(), None)
        if param is not None:
            example = example.to(param.device)
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            with torch.no_grad():
                self._capture(example)
        finally:
            for m, training in modes.items():
                m.training = training

    # ------------------------------------------------------------------------------------- capture
    def _capture(self, example: Tensor) -> None:
        """Trace with fx, record every node's value on one sample, and build the steps."""
        if not list(self.model.children()) and type(self.model).__module__.startswith("torch.nn."):
            # a single torch layer: fx would trace into its functional form
            self._capture_with_hooks(example, None)
            return
        try:
            graph_module = fx.symbolic_trace(self.model)
        except Exception as error:  # noqa: BLE001 - any tracing failure means: try the hook fallback
            self._capture_with_hooks(example, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
            return
        shapes: dict[str, Any] = {}

        class Recorder(fx.Interpreter):
            def run_node(self, n: fx.Node) -> Any:
                result = super().run_node(n)
                shapes[n.name] = result
                return result

        try:
            Recorder(graph_module).run(example)
        except Exception as error:  # noqa: BLE001 - report the user's forward failure in one line
            raise ValueError(
                f"model(example_input) failed on an input of shape {tuple(example.shape)}: "
                f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            ) from error
        data: set[str] = set()
        placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
        self._order = {n: i for i, n in enumerate(graph_module.graph.nodes)}
        for node in graph_module.graph.nodes:
            self._add_node(node, data, shapes, is_input=node is placeholders[0])

    def _mutation_read_later(self, node: fx.Node, values: dict[str, Any]) -> bool:
        """For an in-place node: does a node after it read the overwritten tensor through a node from before
        it (the target itself or any view / alias of its storage)? Such readers see the new values, while the
        graph says they read the old ones."""
        target = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        tensor = values.get(target.name) if target is not None else None
        if not isinstance(tensor, Tensor):
            return False
        storage, position = tensor.untyped_storage().data_ptr(), self._order[node]
        for other, index in self._order.items():
            value = values.get(other.name)
            if index >= position or not isinstance(value, Tensor) or value.untyped_storage().data_ptr() != storage:
                continue
            if any(self._order[user] > position for user in other.users):
                return True
        return False

    def _add_node(self, node: fx.Node, data: set[str], values: dict[str, Any], is_input: bool) -> None:
        """Turn one fx node into a _Step; nodes that do not depend on the input's values are constants."""
        if is_input:
            data.add(node.name)
            self.steps.append(_Step(node.name, "input", "input", []))
            return
        flat: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), flat.append)
        inputs = [a.name for a in flat if a.name in data]
        if node.op == "output":
            if len(inputs) == 1:
                self.output = inputs[0]
            elif inputs:  # several outputs: their concatenation
                self.steps.append(_Step("output", "output", "cat", inputs))
                self.output = "output"
            else:
                self.reasons.append(("output", "output", "the model output does not depend on its input"))
            return
        if not inputs or node.op in ("placeholder", "get_attr"):
            return
        name = _op_name(node)
        value = values.get(node.name)
        if name in _SHAPE_QUERIES and not isinstance(value, Tensor):
            return  # x.shape, x.size(), x.dim(): fixed by the input shape, not its values
        data.add(node.name)
        poisoned = any(i in self._poisoned for i in inputs)  # downstream of a reported failure
        in_shape = _shape_of(values.get(node.args[0].name)) if node.args and isinstance(node.args[0], fx.Node) else None
        out_shape = _shape_of(value)
        module = self.model.get_submodule(node.target) if node.op == "call_module" else None
        if node.op == "call_module":
            try:
                rule = lc.module_rule(module, _shape_of(values.get(inputs[0])), out_shape)
            except Exception as error:  # noqa: BLE001 - e.g. a pooling module on an unexpected shape
                rule = lc.Unavailable(f"its constant could not be computed ({type(error).__name__}: {error})")
            if not isinstance(rule, lc.Unavailable) and len(inputs) > 1:
                rule = lc.Unavailable(f"{type(module).__name__} takes several input-dependent arguments")
            display, op = node.target, type(module).__name__
        else:
            rule, display, op = _not_lipschitz_rule(name, len(inputs)), node.name, name
        if (
            _is_inplace(node, module)
            and not isinstance(rule, lc.Unavailable)
            and self._mutation_read_later(node, values)
        ):
            if node.op != "call_module" and len(inputs) == 1:
                rule = self._function_rule(node, name, inputs, values, in_shape, out_shape)
            if not (isinstance(rule, lc.Fixed) and rule.get(True) <= 1.0 and len(inputs) == 1):
                rule = lc.Unavailable(
                    f"in-place {_raw_name(node) if module is None else op} overwrites a tensor "
                    "that later operations read again (they see the new values, the traced graph "
                    "does not); use the out-of-place form"
                )
        if not isinstance(rule, lc.Unavailable) and not _is_float_value(value):
            if poisoned:  # e.g. the None attention weights of MultiheadAttention: already reported
                self._poisoned.add(node.name)
                return
            rule = lc.Unavailable(f"it turns the input into a non-float value ({type(value).__name__})")
        if node.op == "call_module" or isinstance(rule, lc.Unavailable):
            return self._add_layer(node.name, op, inputs, rule, display)
        self._add_function(node, name, inputs, values, in_shape, out_shape)

    def _add_layer(self, name: str, op: str, inputs: list[str], rule: Any, display: str | None = None) -> None:
        """A one-input layer step; display: the name users see (module path), made unique for reused modules."""
        display = display or name
        taken = {s.display for s in self.steps}
        if display in taken:
            display = next(f"{display}#{k}" for k in range(2, len(taken) + 3) if f"{display}#{k}" not in taken)
        if isinstance(rule, lc.Unavailable):
            self.reasons.append((display, op, rule.reason))
            self._poisoned.add(name)
        self.steps.append(_Step(name, op, "layer", inputs[:1], rule, display=display))

    def _add_function(
        self,
        node: fx.Node,
        name: str,
        inputs: list[str],
        values: dict[str, Any],
        in_shape: tuple[int, ...] | None,
        out_shape: tuple[int, ...] | None,
    ) -> None:
        """Rules for call_function / call_method nodes (see the module docstring)."""
        label = f"{name} (node '{node.name}')"
        if name in ("add", "sub") and len(inputs) == 2:  # a + alpha b, each operand scaled by its broadcast
            alpha = abs(float(node.kwargs.get("alpha", 1.0)))
            factors = [_broadcast_factor(_shape_of(values.get(i)), out_shape) for i in inputs]
            return self.steps.append(
                _Step(node.name, name, "add", inputs, coefficients=[factors[0], alpha * factors[1]])
            )
        if name in ("cat", "stack"):
            return self.steps.append(_Step(node.name, name, "cat", inputs))
        if len(inputs) > 1:
            return self._add_layer(
                node.name, name, inputs, lc.Unavailable(f"{label} takes several input-dependent arguments")
            )
        self._add_layer(node.name, name, inputs, self._function_rule(node, name, inputs, values, in_shape, out_shape))

    def _function_rule(
        self,
        node: fx.Node,
        name: str,
        inputs: list[str],
        values: dict[str, Any],
        in_shape: tuple[int, ...] | None,
        out_shape: tuple[int, ...] | None,
    ) -> Any:
        """The rule of a call_function / call_method node with one input-dependent argument."""
        args = [values.get(a.name, a) if isinstance(a, fx.Node) else a for a in node.args]
        data_first = isinstance(node.args[0], fx.Node) and node.args[0].name in inputs if node.args else False
        try:
            rule = self._unary_rule(node, name, args, data_first, in_shape, out_shape, _shape_of(values.get(inputs[0])))
        except Exception as error:  # noqa: BLE001 - unexpected arguments: say so instead of failing
            rule = lc.Unavailable(f"its constant could not be computed ({type(error).__name__}: {error})")
        return rule if rule is not None else lc.Unavailable(f"no Lipschitz rule for {node.op} {name}")

    def _unary_rule(
        self,
        node: fx.Node,
        name: str,
        args: list[Any],
        data_first: bool,
        in_shape: tuple[int, ...] | None,
        out_shape: tuple[int, ...] | None,
        data_shape: tuple[int, ...] | None,
    ) -> Any:
        """in_shape: the first argument's shape; data_shape: the input-dependent argument's shape."""
        broadcast = _broadcast_factor(data_shape, out_shape)
        if name in ("add", "sub"):  # adding a constant: x + c, c + alpha x (torch.add's alpha scales the second)
            alpha = 1.0 if data_first else abs(float(node.kwargs.get("alpha", 1.0)))
            return lc.Fixed(alpha * broadcast)
        if name in _RESHAPES:
            return lc.Fixed(1.0)
        if name == "getitem":
            return lc.Fixed(1.0) if _is_simple_index(node.args[1]) else None
        if name in _COPIES and in_shape and out_shape:
            return lc.Fixed(math.sqrt(_numel(out_shape) / _numel(in_shape)))
        if name in ("mean", "sum") and in_shape and out_shape is not None:
            group = _numel(in_shape) / max(_numel(out_shape), 1)  # each output averages / sums `group` entries
            return lc.Fixed(group**-0.5 if name == "mean" else group**0.5)
        if name in ("mul", "truediv"):
            if node.kwargs.get("rounding_mode") is not None:
                return lc.Unavailable(f"division with rounding_mode={node.kwargs['rounding_mode']!r} is discontinuous")
            return self._scale_rule(node, name, data_first, args, broadcast)
        if name in _POOLS and in_shape and out_shape:
            positional = node.args[1:5] if name.startswith("max") else node.args[1:]
            kwargs = {k: v for k, v in node.kwargs.items() if k != "return_indices"}
            return lc.module_rule(_POOLS[name](*positional, **kwargs), in_shape, out_shape)
        if name == "pad":
            mode = node.kwargs.get("mode", args[2] if len(args) > 2 else "constant")
            return lc.Fixed(1.0) if mode == "constant" else None
        kwargs = dict(node.kwargs)
        positional_kw = {"leaky_relu": "negative_slope", "elu": "alpha"}
        if name in positional_kw and len(node.args) > 1:
            kwargs[positional_kw[name]] = node.args[1]
        constant = lc.activation_constant(name, **kwargs)
        return lc.Fixed(constant) if constant is not None else None

    def _scale_rule(self, node: fx.Node, name: str, data_first: bool, args: list[Any], broadcast: float) -> Any:
        """x * c, c * x, x / c with c a number (also one computed from shapes, e.g. dim ** -0.5) or a
        parameter/buffer of the model (read at compute time): max|c| (or 1 / min|c|), times the broadcast
        factor sqrt(r) when x's entries are each copied to r outputs."""
        other, other_value = (node.args[1], args[1]) if data_first else (node.args[0], args[0])
        if name == "truediv" and not data_first:
            return lc.Unavailable("dividing by an input-dependent tensor is not globally Lipschitz")
        if isinstance(other_value, (int, float)):
            c = abs(float(other_value))
            return lc.Fixed(broadcast * (c if name == "mul" else (1.0 / c if c else math.inf)))
        if isinstance(other, fx.Node) and other.op == "get_attr":
            attr = other.target

            def constant() -> float:
                c = functools.reduce(getattr, attr.split("."), self.model).detach().abs()
                return broadcast * (float(c.max()) if name == "mul" else float(1.0 / c.min()))

            return lc.FromParams(constant)
        return lc.Unavailable(f"{name} by a value computed inside the model is not supported")

    def _capture_with_hooks(self, example: Tensor, trace_error: str | None) -> None:
        """Fallback for models fx cannot trace (and single layers): leaf modules in execution order, which
        must form a chain: each module's input is the previous module's output, unchanged in between (values
        are copied when a module is called and when it returns, so an in-place change outside the modules,
        e.g. ``h += x``, breaks the chain instead of going unseen)."""
        Snapshot = tuple[Any, Any]  # (the tensor itself, a copy of its values at that moment)
        calls: list[tuple[str, nn.Module, list[Snapshot], Snapshot]] = []
        pending: list[list[Snapshot]] = []

        def snapshot(value: Any) -> Snapshot:
            return value, value.detach().clone() if isinstance(value, Tensor) else None

        def before(module: nn.Module, args: tuple) -> None:
            pending.append([snapshot(a) for a in args if isinstance(a, Tensor)])

        def after(module: nn.Module, args: tuple, out: Any, name: str) -> None:
            calls.append((name, module, pending.pop(), snapshot(out)))

        leaves = [(n, m) for n, m in self.model.named_modules() if not list(m.children())]
        handles = [m.register_forward_pre_hook(before) for _, m in leaves]
        handles += [m.register_forward_hook(lambda mod, a, out, n=n: after(mod, a, out, n)) for n, m in leaves]
        start = snapshot(example)
        try:
            output = self.model(example)
        except Exception as error:  # noqa: BLE001 - report the user's forward failure in one line
            raise ValueError(
                f"model(example_input) failed on an input of shape {tuple(example.shape)}: "
                f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            ) from error
        finally:
            for h in handles:
                h.remove()
        prefix = f"torch.fx could not trace the model ({trace_error}) and " if trace_error else ""
        self.steps.append(_Step("input", "input", "input", []))
        current, current_name = start, "input"
        for index, (name, module, inputs, out) in enumerate(calls):
            if len(inputs) != 1 or not _same_values(inputs[0], current):
                self.reasons.append(
                    (
                        name,
                        type(module).__name__,
                        prefix + "its input is not the output of the "
                        "module before it (an operation outside modules, e.g. a residual add or an "
                        "in-place change, cannot be seen)",
                    )
                )
                return
            if not isinstance(out[0], Tensor):
                self.reasons.append((name, type(module).__name__, prefix + "it does not return a tensor"))
                return
            step_name = f"call_{index}"
            self._add_layer(
                step_name,
                type(module).__name__,
                [current_name],
                lc.module_rule(module, tuple(inputs[0][1].shape[1:]), tuple(out[1].shape[1:])),
                name or type(module).__name__,
            )
            current, current_name = out, step_name
        if not isinstance(output, Tensor) or not _same_values(snapshot(output), current):
            self.reasons.append(("output", "output", prefix + "the output is not the output of the last module"))
            return
        self.output = current_name

    # ------------------------------------------------------------------------------------- compute
    @property
    def available(self) -> bool:
        return not self.reasons

    @property
    def reason(self) -> str | None:
        """Why the bound is not available: each distinct (op, why) once, with its first node and a count."""
        if not self.reasons:
            return None
        groups: dict[tuple[str, str], list[str]] = {}
        for node, op, why in self.reasons:
            groups.setdefault((op, why), []).append(node)
        return "; ".join(
            f"{op} at '{nodes[0]}'" + (f" (+{len(nodes) - 1} more)" if len(nodes) > 1 else "") + f": {why}"
            for (op, why), nodes in groups.items()
        )

    def compute(self, certified: bool = False) -> UpperBoundResult:
        """The upper bound for the model's current parameters (BatchNorm: running statistics).

        certified=False ("power"): Linear / Conv norms by warm-started power iteration (can err slightly low).
        certified=True ("certified"): every layer constant is exact or a guaranteed upper bound, so the value
        is >= the true global Lipschitz constant (up to float64 rounding).
        """
        mode = "certified" if certified else "power"
        if self.reasons:
            return UpperBoundResult(None, False, self.reason, mode, [])
        bound: dict[str, float] = {}
        layers: list[LayerConstant] = []
        with torch.no_grad():
            for step in self.steps:
                if step.kind == "input":
                    bound[step.name] = 1.0
                elif step.kind == "add":
                    bound[step.name] = sum(c * bound[i] for c, i in zip(step.coefficients, step.inputs, strict=False))
                elif step.kind == "cat":
                    bound[step.name] = math.sqrt(sum(bound[i] ** 2 for i in step.inputs))
                else:
                    constant, is_certified = self._layer_constant(step, certified)
                    bound[step.name] = constant * bound[step.inputs[0]]
                    layers.append(LayerConstant(step.display, step.op, constant, is_certified, bound[step.name]))
        return UpperBoundResult(bound[self.output], True, None, mode, layers)

    def _layer_constant(self, step: _Step, certified: bool) -> tuple[float, bool]:
        rule = step.rule
        if isinstance(rule, lc.Fixed):
            return rule.get(certified), certified or rule.certified_value is None
        if isinstance(rule, lc.FromParams):
            return rule.compute(), True
        module = rule.module
        key = step.display
        warm = key in self._vectors
        options = dict(
            certified=certified,
            tol=self.tol,
            generator=self._generator,
            gram_iters=self.gram_iters,
            max_iters=self.warm_iters if warm else self.iters,
            init=self._vectors[key].to(module.weight.device) if warm else None,
        )
        if rule.kind == "linear":
            result = linear_operator_norm(module.weight, **options)
        else:  # a transposed convolution is the adjoint of the convolution on its output shape: same norm
            result = conv_operator_norm(
                module.weight,
                rule.input_shape,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                groups=module.groups,
                padding_mode=module.padding_mode,
                **options,
            )
        if not certified and result.vector is not None:  # None: a zero or non-finite weight, nothing to keep
            self._vectors[key], self._values[key] = result.vector.detach(), result.value
        return result.value, result.certified

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The warm-start state: per layer the last power-iteration vector (CPU tensors) and value."""
        return {"vectors": {k: v.cpu().clone() for k, v in self._vectors.items()}, "values": dict(self._values)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore warm-start vectors saved by state_dict() (e.g. when a run resumes)."""
        if not isinstance(state, dict) or "vectors" not in state:
            raise ValueError("load_state_dict expects the dict returned by UpperBoundEstimator.state_dict()")
        layers = {s.display: s for s in self.steps if s.kind == "layer" and isinstance(s.rule, lc.OperatorNorm)}
        for name, vector in state["vectors"].items():
            if name not in layers:
                raise ValueError(f"state has a vector for '{name}', which is not a Linear/Conv layer of this model")
            rule = layers[name].rule
            expected = (rule.module.weight.shape[1],) if rule.kind == "linear" else (1, *rule.input_shape)
            if tuple(vector.shape) != tuple(expected):
                raise ValueError(f"state vector for '{name}' has shape {tuple(vector.shape)}, expected {expected}")
        self._vectors = {k: v.clone() for k, v in state["vectors"].items()}
        self._values = dict(state.get("values", {}))


def _shape_of(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape[1:]) if isinstance(value, Tensor) and value.ndim >= 1 else None


def _same_values(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> bool:
    """For (tensor, copy of its values) snapshots: a's tensor is b's tensor or a reshaped view of it, and it
    held the same values at both moments (nothing changed it in place in between)."""
    (a_tensor, a_values), (b_tensor, b_values) = a, b
    same = a_tensor is b_tensor or (
        a_tensor.data_ptr() == b_tensor.data_ptr()
        and a_tensor.numel() == b_tensor.numel()
        and a_tensor.dtype == b_tensor.dtype
    )
    return same and torch.equal(a_values.reshape(-1), b_values.reshape(-1))


def upper_bound(model: nn.Module, example_input: Tensor, certified: bool = False, **options: Any) -> UpperBoundResult:
    """One-shot UpperBoundEstimator(model, example_input, **options).compute(certified)."""
    return UpperBoundEstimator(model, example_input, **options).compute(certified=certified)
