"""Lipschitz-constrained training: keep every weight layer's operator norm at most C^(1/depth).

For a feed-forward chain of weight layers (Linear, Conv1d/2d/3d) and 1-Lipschitz layers between them (ReLU,
LeakyReLU, non-overlapping max pooling, flatten, dropout), the Lipschitz constant of the network in the L2
norm is at most the product of the weight layers' operator norms. If each of the ``depth`` weight layers has
``||W_l||_2 <= C^(1/depth)``, the product bound is at most C. Biases do not change a layer's constant.

After every optimiser update, :class:`SpectralNormConstraint` rescales each weight layer whose operator norm
exceeds its budget ``C^(1/depth)`` back onto it (``W <- W * budget / ||W||``, the smallest change of scale that
satisfies the budget). Norms are Lanczos-accelerated power iteration (``lipschitz_dd.bounds``), warm-started
from the previous update's vector: one or two matrix products per layer and update once converged. Power
iteration errs low (it never exceeds the true norm), so the layer is rescaled to ``budget / (1 + margin)`` and
is rescaled whenever its estimate exceeds that: with ``margin`` above the estimate's relative error the true
norm stays at most the budget. For convolutions the norm is the convolution's operator norm on the input shape
the layer last saw (recorded by a forward pre-hook), not the norm of the reshaped kernel.

The guarantee is about the chain: BatchNorm and LayerNorm (whose constants depend on statistics) and residual
additions (constant ``C_g + 1``) are not covered, so such networks are refused.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lipschitz_dd.bounds import conv_operator_norm, linear_operator_norm

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
UNSUPPORTED = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.MultiheadAttention)


def weight_layers(net: nn.Module) -> list[nn.Module]:
    """The Linear and Conv modules of ``net`` in registration order (the forward order of a Sequential)."""
    return [module for module in net.modules() if isinstance(module, WEIGHT_LAYERS)]


class SpectralNormConstraint:
    """Rescale the weight layers of ``net`` so each operator norm is at most ``bound^(1/depth)``.

    Args:
        net: a feed-forward network of weight layers and 1-Lipschitz layers (see the module docstring).
        bound: C, the target bound on the product of the layers' operator norms (> 0).
        margin: relative safety margin against the low error of power iteration: layers are rescaled to
            ``budget / (1 + margin)``.
        max_iters, tol: power-iteration settings per layer and call (warm-started, so usually 1-2 steps).
    """

    def __init__(self, net: nn.Module, bound: float, margin: float = 1e-2, max_iters: int = 100, tol: float = 1e-7):
        if not bound > 0:
            raise ValueError(f"lipschitz_bound must be > 0, got {bound}")
        if not margin >= 0:
            raise ValueError(f"constraint_margin must be >= 0, got {margin}")
        unsupported = sorted({type(m).__name__ for m in net.modules() if isinstance(m, UNSUPPORTED)})
        if unsupported:
            raise ValueError(
                "lipschitz_bound constrains chains of Linear/Conv layers only; this network has "
                f"{', '.join(unsupported)}, whose constants the per-layer budget does not cover"
            )
        self.layers = weight_layers(net)
        if not self.layers:
            raise ValueError("lipschitz_bound needs a network with at least one Linear or Conv layer")
        self.bound = float(bound)
        self.margin = float(margin)
        self.budget = self.bound ** (1.0 / len(self.layers))
        self.max_iters, self.tol = max_iters, tol
        self.input_shapes: dict[nn.Module, tuple[int, ...]] = {}
        self.vectors: dict[nn.Module, Tensor] = {}
        self._hooks = [
            layer.register_forward_pre_hook(self._record_shape)
            for layer in self.layers
            if not isinstance(layer, nn.Linear)
        ]

    def _record_shape(self, module: nn.Module, args: tuple) -> None:
        self.input_shapes[module] = tuple(args[0].shape[1:])

    @property
    def depth(self) -> int:
        """Number of weight layers the bound is shared among."""
        return len(self.layers)

    def ready(self) -> bool:
        """Whether every convolution's input shape is known (after one forward pass)."""
        return all(isinstance(layer, nn.Linear) or layer in self.input_shapes for layer in self.layers)

    def layer_norm(self, layer: nn.Module) -> float:
        """Power-iteration estimate (from below) of the layer's operator norm, warm-started; keeps the vector."""
        options = {
            "max_iters": self.max_iters,
            "tol": self.tol,
            "init": self.vectors.get(layer),
            "generator": torch.Generator().manual_seed(0),
        }
        if isinstance(layer, nn.Linear):
            estimate = linear_operator_norm(layer.weight.detach(), **options)
        else:
            estimate = conv_operator_norm(layer, self.input_shapes[layer], **options)
        if estimate.vector is not None:
            self.vectors[layer] = estimate.vector.detach()
        return estimate.value

    @torch.no_grad()
    def project(self) -> list[float]:
        """Rescale every layer whose estimated norm exceeds ``budget / (1 + margin)`` onto that value.

        Returns the layers' norm estimates before rescaling. Raises RuntimeError if a convolution has not seen
        an input yet (run one forward pass first).
        """
        if not self.ready():
            raise RuntimeError("SpectralNormConstraint: run a forward pass first (convolutions need their input shape)")
        target = self.budget / (1.0 + self.margin)
        norms = []
        for layer in self.layers:
            norm = self.layer_norm(layer)
            norms.append(norm)
            if math.isfinite(norm) and norm > target:
                layer.weight.mul_(target / norm)
        return norms

    def remove(self) -> None:
        """Remove the forward pre-hooks."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
