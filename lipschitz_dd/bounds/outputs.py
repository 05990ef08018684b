"""Output transforms measured instead of the logits: a wrapper module, so every estimator works unchanged."""

from __future__ import annotations

from torch import Tensor, nn


class SoftmaxOutput(nn.Module):
    """x -> softmax(f(x)) over the last dimension, for the Lipschitz bounds of a classifier's probabilities.

    The Jacobian is (diag(p) - p p^T) J_f(x); its spectral norm is at most 1/2 ||J_f(x)||_2 (the softmax is
    1/2-Lipschitz in L2), so bounds of the wrapper are far below those of the logits. Mode (train/eval) and
    parameters are the wrapped model's. The upper bound tracer sees the softmax as a node of its own.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).softmax(dim=-1)
