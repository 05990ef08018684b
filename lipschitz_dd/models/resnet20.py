"""He et al. (2016)'s CIFAR ResNet-20: three stages of three basic blocks with 16, 32 and 64 channels.

The study trained it with 2-D (channel) dropout before every residual block and 1-D dropout before the final
layer (one rate p for both), and with weight decay (the base module's ``weight_decay``).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from lipschitz_dd.models._checks import check_size
from lipschitz_dd.models.base import LipschitzModule

STAGE_FACTORS = (1, 2, 4)
"""Channels of the three stages as multiples of the width (16 in the standard ResNet-20)."""
SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Option A shortcut (parameter-free): subsample by ``stride`` and zero-pad the channels to ``channels``.

    A coordinate selection followed by zero padding: Lipschitz constant 1.
    """

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    """``y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, both convs 3x3 without bias.

    The shortcut is the identity, or where the shape changes: option A (``PadShortcut``) or option B (1x1 strided
    conv without bias followed by BatchNorm).
    """

    def __init__(self, in_channels: int, channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            if shortcut == "A":
                self.shortcut = PadShortcut(in_channels, channels, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(channels)
                )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def build_resnet20(
    width: int = 16,
    num_classes: int = 10,
    in_channels: int = 3,
    shortcut: Literal["A", "B"] = "A",
    dropout: float = 0.0,
    blocks_per_stage: int = 3,
) -> nn.Sequential:
    """``Conv3x3(w) -> BN -> ReLU -> 3 stages of blocks_per_stage BasicBlocks (w, 2w, 4w channels; strides 1,
    2, 2) -> global average pool -> Flatten -> Linear(4w, num_classes, bias)``; ResNet-(6n+2) for n blocks per
    stage. ``width`` w = 16 and n = 3 is He et al.'s ResNet-20.

    With ``dropout`` p > 0: ``Dropout2d(p)`` before every residual block and ``Dropout(p)`` before the final
    Linear (both the identity in eval mode, constant 1 in the product bound). Option A shortcuts (He et al.'s
    CIFAR choice) give 269,722 parameters for 10 classes and 3 input channels.
    """
    check_size("width", width)
    check_size("num_classes", num_classes)
    check_size("in_channels", in_channels)
    check_size("blocks_per_stage", blocks_per_stage)
    if shortcut not in SHORTCUTS:
        raise ValueError(f"unknown shortcut {shortcut!r}; choose one of {', '.join(SHORTCUTS)}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    stage_channels = [width * factor for factor in STAGE_FACTORS]
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    channels_in = width
    for stage, channels in enumerate(stage_channels):
        for block in range(blocks_per_stage):
            if dropout > 0:
                layers.append(nn.Dropout2d(dropout))
            layers.append(BasicBlock(channels_in, channels, 2 if stage > 0 and block == 0 else 1, shortcut))
            channels_in = channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(channels_in, num_classes))
    return nn.Sequential(*layers)


class ResNet20(LipschitzModule):
    """He et al.'s CIFAR ResNet-20 (width 16: 16-32-64 channels, 3 blocks per stage, BatchNorm; option A shortcuts by
    default) with the study's dropout option; see :func:`build_resnet20`."""

    def __init__(
        self,
        width: int = 16,
        in_channels: int = 3,
        shortcut: Literal["A", "B"] = "A",
        dropout: float = 0.0,
        blocks_per_stage: int = 3,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.net = build_resnet20(
            width,
            self.num_classes,
            in_channels=in_channels,
            shortcut=shortcut,
            dropout=dropout,
            blocks_per_stage=blocks_per_stage,
        )
