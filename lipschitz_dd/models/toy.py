"""The paper's 2-D toy classifier (three Gaussian classes in the plane)."""

from __future__ import annotations

from lipschitz_dd.models.base import LipschitzModule
from lipschitz_dd.models.fcn import build_fcn


class Toy2DFCN(LipschitzModule):
    """``2 -> width -> width -> num_classes`` with bias, ReLU between layers, no output activation."""

    def __init__(self, width: int = 100, num_classes: int = 3, **kwargs) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        self.net = build_fcn(2, [width, width], num_classes, bias=True, output_activation="none")
