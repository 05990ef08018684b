"""Read a multilayer perceptron out of an nn.Module as float64 matrices, for the MLP-only bounds.

The MLP bounds (exact constant, ECLipsE-Fast, LipSDP) work on the normal form

    f(x) = W_L s_{L-1}(W_{L-1} ... s_1(W_1 x + b_1) ... + b_{L-1}) + b_L,

with elementwise activations s_k whose slopes lie in [alpha_k, beta_k]. :func:`mlp_from_module` produces it
from an ``nn.Sequential`` of Linear / activation / Flatten / Identity / Dropout layers (nested Sequentials are
read in order), e.g. ``lipschitz_dd.models.FCN(...).net``: consecutive Linear layers are multiplied together,
an activation at the end gets an identity output layer (so FCN's output ReLU / LeakyReLU is a hidden layer of
the normal form), and two activations in a row get an identity layer between them. Dropout is read as the
identity (the eval-mode function).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from lipschitz_dd.bounds.result import Bound

PASS_THROUGH = (nn.Flatten, nn.Identity, nn.Dropout)


@dataclass(frozen=True)
class Activation:
    """An elementwise activation: its slope range [alpha, beta] (every difference quotient lies in it) and,
    when it is piecewise linear with one kink at 0, its slopes (below 0, above 0)."""

    name: str
    slope_range: tuple[float, float]
    pieces: tuple[float, float] | None = None


@dataclass
class MLP:
    """weights[k]: W_{k+1} (fan_out x fan_in), biases[k]: b_{k+1}, float64; activations[k] between
    weights[k] and weights[k + 1] (len(activations) == len(weights) - 1)."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    activations: list[Activation]

    @property
    def input_dim(self) -> int:
        return self.weights[0].shape[1]

    @property
    def hidden_widths(self) -> list[int]:
        return [w.shape[0] for w in self.weights[:-1]]

    @property
    def piecewise_linear(self) -> bool:
        return all(a.pieces is not None for a in self.activations)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """f(x) for a batch [B, input_dim] in float64 (a reference forward pass, for checks)."""
        h = np.asarray(x, dtype=np.float64)
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w.T + b
            if k < len(self.activations):
                h = _apply(self.activations[k], h)
        return h


def _apply(act: Activation, z: np.ndarray) -> np.ndarray:
    if act.pieces is not None:
        return np.where(z > 0, act.pieces[1] * z, act.pieces[0] * z)
    if act.name == "tanh":
        return np.tanh(z)
    return 1.0 / (1.0 + np.exp(-z))  # sigmoid


def activation_of(module: nn.Module) -> Activation | None:
    """The :class:`Activation` of a supported activation module (ReLU, LeakyReLU, Tanh, Sigmoid), else None."""
    if isinstance(module, nn.ReLU):
        return Activation("relu", (0.0, 1.0), (0.0, 1.0))
    if isinstance(module, nn.LeakyReLU):
        a = float(module.negative_slope)
        return Activation("leaky_relu", (min(a, 1.0), max(a, 1.0)), (a, 1.0))
    if isinstance(module, nn.Tanh):
        return Activation("tanh", (0.0, 1.0))
    if isinstance(module, nn.Sigmoid):
        return Activation("sigmoid", (0.0, 0.25))
    return None


def _leaves(module: nn.Module):
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _leaves(child)
    else:
        yield module


def mlp_from_module(module: nn.Module) -> MLP:
    """The normal form of an MLP given as nn.Sequential (or a single nn.Linear); ValueError naming the first
    layer that is not Linear / ReLU / LeakyReLU / Tanh / Sigmoid / Flatten / Identity / Dropout."""
    if not isinstance(module, nn.Sequential | nn.Linear):
        raise ValueError(
            f"not an MLP: expected nn.Sequential of Linear and activation layers, got {type(module).__name__}"
        )
    weights: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    activations: list[Activation] = []
    pending: list[Activation] = []  # activations met before the first Linear
    last_was_linear = False
    for i, layer in enumerate(_leaves(module)):
        if isinstance(layer, PASS_THROUGH):
            continue
        if isinstance(layer, nn.Linear):
            w = layer.weight.detach().cpu().double().numpy()
            b = np.zeros(w.shape[0]) if layer.bias is None else layer.bias.detach().cpu().double().numpy()
            if not weights:
                for act in pending:  # activation(s) on the raw input: identity layers in front
                    weights.append(np.eye(w.shape[1]))
                    biases.append(np.zeros(w.shape[1]))
                    activations.append(act)
            if last_was_linear:  # Linear after Linear: multiply them together
                weights[-1], biases[-1] = w @ weights[-1], w @ biases[-1] + b
            else:
                weights.append(w)
                biases.append(b)
            last_was_linear = True
            continue
        act = activation_of(layer)
        if act is None:
            raise ValueError(
                f"not an MLP: layer {i} is {type(layer).__name__} (supported: Linear, ReLU, "
                "LeakyReLU, Tanh, Sigmoid, Flatten, Identity, Dropout)"
            )
        if not weights:
            pending.append(act)
            continue
        if not last_was_linear:  # two activations in a row: identity layer between them
            n = weights[-1].shape[0]
            weights.append(np.eye(n))
            biases.append(np.zeros(n))
        activations.append(act)
        last_was_linear = False
    if not weights:
        raise ValueError("not an MLP: no nn.Linear layer found")
    if not last_was_linear:  # ends with an activation: identity output layer
        n = weights[-1].shape[0]
        weights.append(np.eye(n))
        biases.append(np.zeros(n))
    return MLP(weights, biases, activations)


def is_mlp(module: nn.Module) -> bool:
    """Whether :func:`mlp_from_module` accepts ``module``."""
    try:
        mlp_from_module(module)
    except ValueError:
        return False
    return True


def product_bound(model_or_mlp: nn.Module | MLP) -> Bound:
    """prod_k ||W_k||_2 * prod_k max(|alpha_k|, |beta_k|): the naive certified upper bound (L2) of an MLP (an
    nn.Sequential of Linear and activations, see `mlp_from_module`, or an :class:`MLP`). A `Bound` (a float):
    kind "upper", errs "high", certified."""
    mlp = model_or_mlp if isinstance(model_or_mlp, MLP) else mlp_from_module(model_or_mlp)
    value = 1.0
    for w in mlp.weights:
        value *= float(np.linalg.norm(w, 2))
    for act in mlp.activations:
        value *= max(abs(act.slope_range[0]), abs(act.slope_range[1]))
    return Bound(value, "upper", certified=True, method="product of layer norms")
