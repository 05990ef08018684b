"""Upper bound on a network's global L2 Lipschitz constant by composing layer constants along its graph.

The bound is ``sup_x ||J(x)||_2 <= L(output)``, where J is the Jacobian of the logits with respect to the
(flattened) input and L is propagated through the graph captured once by capture.py: a product of layer
constants along a chain, a weighted sum at an addition, a root sum of squares at a concatenation. Each layer
constant comes from the rules of rules.py; those of Linear / Conv layers are spectral norms of their weights
on the recorded input shape (operator_norms.py).

Two modes, and which way each errs:
* "power" (default): the Linear / Conv norms come from warm-started power iteration (Lanczos), which
  approaches each norm from below, so the product can be (slightly) below a true upper bound. The start
  vectors are kept between calls, so recomputing the bound every epoch costs a few matrix products per layer.
* "certified": every layer constant is exact or a guaranteed upper bound (Gram iteration in float64), so the
  value is >= the true global Lipschitz constant, up to float64 rounding.
Operations that are not globally Lipschitz (attention, products of two input-dependent tensors, LayerNorm)
or have no rule make the result "not available" with a reason naming the node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lipschitz_dd.bounds.capture import Step, capture_graph
from lipschitz_dd.bounds.operator_norms import conv_operator_norm, linear_operator_norm
from lipschitz_dd.bounds.rules import Fixed, FromParams, OperatorNorm

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
    by power iteration: an estimate that can be slightly low) or "certified" (guaranteed >= the truth). As a
    bound (`BoundResult`): kind "upper", errs "high", `certified` as the mode says."""

    value: float | None
    available: bool
    reason: str | None
    mode: str
    layers: list[LayerConstant] = field(default_factory=list)

    # the common result protocol (lipschitz_dd.bounds.result)
    kind = "upper"
    errs = "high"

    @property
    def certified(self) -> bool:
        """Whether value >= the Lipschitz constant is guaranteed: mode "certified" and available (the power mode
        errs high in practice but its layer norms may be slightly low)."""
        return self.available and self.mode == "certified"


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
        self._vectors: dict[str, Tensor] = {}  # warm-start vector per Linear / Conv layer (by display name)
        graph = capture_graph(model, example_input)
        self.steps: list[Step] = graph.steps
        self.output: str | None = graph.output
        self.reasons: list[tuple[str, str, str]] = graph.reasons  # (node, op, why) of every unsupported node

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

    def _layer_constant(self, step: Step, certified: bool) -> tuple[float, bool]:
        """(constant, whether it is exact or a guaranteed bound) of one layer step for the current parameters."""
        rule = step.rule
        if isinstance(rule, Fixed):
            return rule.get(certified), certified or rule.certified_value is None
        if isinstance(rule, FromParams):
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
            self._vectors[key] = result.vector.detach()
        return result.value, result.certified

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The warm-start state: per Linear / Conv layer the last power-iteration vector (CPU tensors)."""
        return {"vectors": {k: v.cpu().clone() for k, v in self._vectors.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore warm-start vectors saved by state_dict() (e.g. when a run resumes); the "values" entry that
        older versions saved next to the vectors is ignored."""
        if not isinstance(state, dict) or "vectors" not in state:
            raise ValueError("load_state_dict expects the dict returned by UpperBoundEstimator.state_dict()")
        layers = {s.display: s for s in self.steps if s.kind == "layer" and isinstance(s.rule, OperatorNorm)}
        for name, vector in state["vectors"].items():
            if name not in layers:
                raise ValueError(f"state has a vector for '{name}', which is not a Linear/Conv layer of this model")
            rule = layers[name].rule
            expected = (rule.module.weight.shape[1],) if rule.kind == "linear" else (1, *rule.input_shape)
            if tuple(vector.shape) != tuple(expected):
                raise ValueError(f"state vector for '{name}' has shape {tuple(vector.shape)}, expected {expected}")
        self._vectors = {k: v.clone() for k, v in state["vectors"].items()}


def upper_bound(model: nn.Module, example_input: Tensor, certified: bool = False, **options: Any) -> UpperBoundResult:
    """One-shot UpperBoundEstimator(model, example_input, **options).compute(certified)."""
    return UpperBoundEstimator(model, example_input, **options).compute(certified=certified)
