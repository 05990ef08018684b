"""Pre-activation ResNet-18 of width k (Nakkiran et al.'s ResNet18k; k = 64 is the standard network)."""

from __future__ import annotations

from torch import Tensor, nn

from lipschitz_dd.models._checks import check_size
from lipschitz_dd.models.base import LipschitzModule

BLOCKS_PER_STAGE = (2, 2, 2, 2)


class PreActBlock(nn.Module):
    """``y = conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut``, both convs 3x3 without bias.

    The shortcut is the identity, or a 1x1 strided conv (no bias) applied to ``relu(bn1(x))`` when the
    stride or the channel count changes.
    """

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


def build_preact_resnet18(width: int = 64, num_classes: int = 10, in_channels: int = 3) -> nn.Sequential:
    """``Conv3x3(k) -> 4 stages of 2 PreActBlocks (k, 2k, 4k, 8k channels; strides 1, 2, 2, 2) ->
    global average pool -> Flatten -> Linear(8k, num_classes, bias)``.

    The standard pre-activation ResNet-18 (k = 64): on 32x32 inputs the final feature map is 4x4 and the
    global average pool equals its usual 4x4 average pool; 11,171,146 parameters for 10 classes.
    """
    check_size("width", width)
    check_size("num_classes", num_classes)
    check_size("in_channels", in_channels)
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)]
    channels_in = width
    for stage, num_blocks in enumerate(BLOCKS_PER_STAGE):
        channels = width * 2**stage
        for block in range(num_blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(PreActBlock(channels_in, channels, stride))
            channels_in = channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels_in, num_classes)]
    return nn.Sequential(*layers)


class PreActResNet18(LipschitzModule):
    """Pre-activation ResNet-18 with widths k, 2k, 4k, 8k (``width`` = k) and BatchNorm."""

    def __init__(self, width: int = 64, in_channels: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net = build_preact_resnet18(width, self.num_classes, in_channels=in_channels)
