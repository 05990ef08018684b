"""Nakkiran et al.'s 5-layer CNN of width w (the paper's CNN family)."""

from __future__ import annotations

from torch import nn

from lipschitz_dd.models._checks import check_size
from lipschitz_dd.models.base import LipschitzModule

POOL_KERNELS: dict[int, tuple[int, int, int, int]] = {32: (1, 2, 2, 8), 28: (1, 2, 2, 7)}
"""Max-pool kernel (= stride) after each of the four conv blocks, by input side length."""


def build_cnn(
    width: int, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, batch_norm: bool = False
) -> nn.Sequential:
    """Four blocks ``Conv3x3(stride 1, pad 1, no bias) -> [BatchNorm] -> ReLU -> MaxPool(k)`` with channels
    w, 2w, 4w, 8w and pool kernels 1, 2, 2, 8 (32x32 inputs) or 1, 2, 2, 7 (28x28), then
    ``Flatten -> Linear(8w, num_classes, no bias)``. Without BatchNorm on CIFAR-10 (3 channels, 10 classes)
    the parameter count is 27w + 18w^2 + 72w^2 + 288w^2 + 80w (CNN 5 = 9,985).
    """
    check_size("width", width)
    check_size("num_classes", num_classes)
    check_size("in_channels", in_channels)
    if input_size not in POOL_KERNELS:
        raise ValueError(f"input_size must be one of {sorted(POOL_KERNELS)} (square images), got {input_size!r}")
    channels = [in_channels, width, 2 * width, 4 * width, 8 * width]
    layers: list[nn.Module] = []
    for c_in, c_out, pool in zip(channels[:-1], channels[1:], POOL_KERNELS[input_size], strict=False):
        layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1, bias=False))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers += [nn.ReLU(), nn.MaxPool2d(pool)]
    layers += [nn.Flatten(), nn.Linear(8 * width, num_classes, bias=False)]
    return nn.Sequential(*layers)


class CNN(LipschitzModule):
    """The 5-layer CNN of width ``width`` on ``in_channels x input_size x input_size`` images."""

    def __init__(
        self, width: int, in_channels: int = 3, input_size: int = 32, batch_norm: bool = False, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.net = build_cnn(
            width, self.num_classes, in_channels=in_channels, input_size=input_size, batch_norm=batch_norm
        )
