"""Capture a network's computation as a graph of Lipschitz steps, the input of the upper bound (upper.py).

The module is traced once with torch.fx; one forward pass of ``fx.Interpreter`` on one sample records every
node's value, hence its shape (convolution norms, pooling and broadcasting factors depend on shapes). Each
node that depends on the input's values becomes a ``Step``; nodes computed from constants and shape queries
(``x.shape``, ``x.size(1)``) are constants. A step's "L" is the Lipschitz constant from the network input to
that node, and the estimator propagates it in the order of ``steps``:

* "input":  L = 1
* "layer":  a map f of one input-dependent node a, with the rule of rules.py: L = L_f * L_a (composition)
* "add":    a + alpha b (also a - b, torch.add(alpha=)): L = c_a L_a + c_b L_b with c_a = 1, c_b = |alpha|
            (triangle inequality), each times sqrt(r) when broadcasting copies the operand's entries r times
* "cat":    cat / stack of a, b (and a tuple output): L = sqrt(L_a^2 + L_b^2), since
            ||(da, db)||^2 = ||da||^2 + ||db||^2 (tighter than L_a + L_b and still valid)

An in-place operation (``h.add_(x)``, ``h *= 10``, ``inplace=True``) whose target tensor is read again later
(directly or through a view) is refused unless it is a map of constant <= 1 of one input (ReLU & co.), since
the later readers see the change while the traced graph says they read the old value.

Models fx cannot trace (data-dependent control flow) and single torch layers are captured with forward hooks
instead: their leaf modules, in execution order, must form a plain chain (each one's input is the previous
one's output, unchanged), otherwise the bound is not available.

Every operation without a rule, or without a finite global constant, is recorded in ``reasons`` as
(node, operation, why); the bound is then not available.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from lipschitz_dd.bounds.rules import (
    SHAPE_QUERIES,
    Fixed,
    Rule,
    Unavailable,
    broadcast_factor,
    function_rule,
    is_inplace,
    module_rule,
    not_lipschitz_rule,
    op_name,
    raw_name,
    sample_shape,
)

__all__ = ["Step", "LipschitzGraph", "capture_graph"]


@dataclass
class Step:
    """One node of the Lipschitz graph. kind: "input", "layer" (one input, rule), "add" (coefficients) or
    "cat"; inputs: the names of the steps it reads."""

    name: str
    op: str
    kind: str
    inputs: list[str]
    rule: Rule | None = None
    coefficients: list[float] | None = None
    display: str = ""  # the name shown to users and used for warm-start vectors (module path if any)


@dataclass
class LipschitzGraph:
    """steps in evaluation order; output: the name of the step holding the network output (None if there
    is none); reasons: (node, operation, why) of every operation that makes the bound unavailable."""

    steps: list[Step] = field(default_factory=list)
    output: str | None = None
    reasons: list[tuple[str, str, str]] = field(default_factory=list)


def capture_graph(model: nn.Module, example_input: Tensor) -> LipschitzGraph:
    """The Lipschitz graph of ``model`` in eval mode, recorded on the first sample of ``example_input``
    (moved to the model's device). The model's train/eval flags are restored afterwards; a forward pass that
    fails raises a one-line ValueError."""
    example = example_input[:1].detach()
    param = next(model.parameters(), None)
    if param is not None:
        example = example.to(param.device)
    builder = _GraphBuilder(model)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            builder.capture(example)
    finally:
        for m, training in modes.items():
            m.training = training
    return builder.graph


class _GraphBuilder:
    """Builds the steps of one model: fx tracing first, forward hooks as the fallback."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.graph = LipschitzGraph()
        self.steps, self.reasons = self.graph.steps, self.graph.reasons
        self._poisoned: set[str] = set()  # steps downstream of a reported failure
        self._order: dict[fx.Node, int] = {}

    def capture(self, example: Tensor) -> None:
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
        values: dict[str, Any] = {}  # every node's value on the example sample

        class Recorder(fx.Interpreter):
            def run_node(self, n: fx.Node) -> Any:
                result = super().run_node(n)
                values[n.name] = result
                return result

        try:
            Recorder(graph_module).run(example)
        except Exception as error:  # noqa: BLE001 - report the user's forward failure in one line
            raise ValueError(
                f"model(example_input) failed on an input of shape {tuple(example.shape)}: "
                f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            ) from error
        data: set[str] = set()  # the nodes whose value depends on the input's values
        placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
        self._order = {n: i for i, n in enumerate(graph_module.graph.nodes)}
        for node in graph_module.graph.nodes:
            self._add_node(node, data, values, is_input=node is placeholders[0])

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
        """Turn one fx node into a Step; nodes that do not depend on the input's values are constants."""
        if is_input:
            data.add(node.name)
            self.steps.append(Step(node.name, "input", "input", []))
            return
        flat: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), flat.append)
        inputs = [a.name for a in flat if a.name in data]
        if node.op == "output":
            if len(inputs) == 1:
                self.graph.output = inputs[0]
            elif inputs:  # several outputs: their concatenation
                self.steps.append(Step("output", "output", "cat", inputs))
                self.graph.output = "output"
            else:
                self.reasons.append(("output", "output", "the model output does not depend on its input"))
            return
        if not inputs or node.op in ("placeholder", "get_attr"):
            return
        name = op_name(node)
        value = values.get(node.name)
        if name in SHAPE_QUERIES and not isinstance(value, Tensor):
            return  # x.shape, x.size(), x.dim(): fixed by the input shape, not its values
        data.add(node.name)
        poisoned = any(i in self._poisoned for i in inputs)  # downstream of a reported failure
        in_shape = (
            sample_shape(values.get(node.args[0].name)) if node.args and isinstance(node.args[0], fx.Node) else None
        )
        out_shape = sample_shape(value)
        module = self.model.get_submodule(node.target) if node.op == "call_module" else None
        if node.op == "call_module":
            try:
                rule = module_rule(module, sample_shape(values.get(inputs[0])), out_shape)
            except Exception as error:  # noqa: BLE001 - e.g. a pooling module on an unexpected shape
                rule = Unavailable(f"its constant could not be computed ({type(error).__name__}: {error})")
            if not isinstance(rule, Unavailable) and len(inputs) > 1:
                rule = Unavailable(f"{type(module).__name__} takes several input-dependent arguments")
            display, op = node.target, type(module).__name__
        else:
            rule, display, op = not_lipschitz_rule(name, len(inputs)), node.name, name
        if is_inplace(node, module) and not isinstance(rule, Unavailable) and self._mutation_read_later(node, values):
            if node.op != "call_module" and len(inputs) == 1:
                rule = function_rule(node, name, inputs, values, in_shape, out_shape, self.model)
            if not (isinstance(rule, Fixed) and rule.get(True) <= 1.0 and len(inputs) == 1):
                rule = Unavailable(
                    f"in-place {raw_name(node) if module is None else op} overwrites a tensor "
                    "that later operations read again (they see the new values, the traced graph "
                    "does not); use the out-of-place form"
                )
        if not isinstance(rule, Unavailable) and not _is_float_value(value):
            if poisoned:  # e.g. the None attention weights of MultiheadAttention: already reported
                self._poisoned.add(node.name)
                return
            rule = Unavailable(f"it turns the input into a non-float value ({type(value).__name__})")
        if node.op == "call_module" or isinstance(rule, Unavailable):
            return self._add_layer(node.name, op, inputs, rule, display)
        self._add_function(node, name, inputs, values, in_shape, out_shape)

    def _add_layer(self, name: str, op: str, inputs: list[str], rule: Rule, display: str | None = None) -> None:
        """A one-input layer step; display: the name users see (module path), made unique for reused modules."""
        display = display or name
        taken = {s.display for s in self.steps}
        if display in taken:
            display = next(f"{display}#{k}" for k in range(2, len(taken) + 3) if f"{display}#{k}" not in taken)
        if isinstance(rule, Unavailable):
            self.reasons.append((display, op, rule.reason))
            self._poisoned.add(name)
        self.steps.append(Step(name, op, "layer", inputs[:1], rule, display=display))

    def _add_function(
        self,
        node: fx.Node,
        name: str,
        inputs: list[str],
        values: dict[str, Any],
        in_shape: tuple[int, ...] | None,
        out_shape: tuple[int, ...] | None,
    ) -> None:
        """A call_function / call_method node: an "add" or "cat" step, else a layer step whose rule comes
        from rules.function_rule."""
        label = f"{name} (node '{node.name}')"
        if name in ("add", "sub") and len(inputs) == 2:  # a + alpha b, each operand scaled by its broadcast
            alpha = abs(float(node.kwargs.get("alpha", 1.0)))
            factors = [broadcast_factor(sample_shape(values.get(i)), out_shape) for i in inputs]
            return self.steps.append(
                Step(node.name, name, "add", inputs, coefficients=[factors[0], alpha * factors[1]])
            )
        if name in ("cat", "stack"):
            return self.steps.append(Step(node.name, name, "cat", inputs))
        if len(inputs) > 1:
            return self._add_layer(
                node.name, name, inputs, Unavailable(f"{label} takes several input-dependent arguments")
            )
        self._add_layer(
            node.name, name, inputs, function_rule(node, name, inputs, values, in_shape, out_shape, self.model)
        )

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
        self.steps.append(Step("input", "input", "input", []))
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
                module_rule(module, tuple(inputs[0][1].shape[1:]), tuple(out[1].shape[1:])),
                name or type(module).__name__,
            )
            current, current_name = out, step_name
        if not isinstance(output, Tensor) or not _same_values(snapshot(output), current):
            self.reasons.append(("output", "output", prefix + "the output is not the output of the last module"))
            return
        self.graph.output = current_name


def _is_float_value(value: Any) -> bool:
    """A float tensor, or a non-empty tuple/list of them (chunk, split)."""
    if isinstance(value, (tuple, list)):
        return bool(value) and all(_is_float_value(v) for v in value)
    return isinstance(value, Tensor) and value.is_floating_point()


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
