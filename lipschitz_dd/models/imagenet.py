"""The study's ImageNet-scale networks: torchvision's ResNet-50 and a SimpleViT (Beyer et al. 2022).

SimpleViT: a ``patch x patch`` stride-``patch`` conv embedding, fixed 2-D sine-cosine position embeddings
(computed for the input's patch grid, so any image size divisible by the patch works), ``depth`` pre-norm
transformer blocks, a final LayerNorm, global average pooling over the tokens (no class token) and a linear
head. The study's: patch 16, dim 384, depth 12, heads 6, MLP 1,536. Attention is not globally Lipschitz: only
lower bounds exist for it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lipschitz_dd.models._checks import check_size
from lipschitz_dd.models.base import LipschitzModule
from lipschitz_dd.models.vit import TransformerBlock


def build_resnet50(num_classes: int = 1000, width: int = 64) -> nn.Module:
    """torchvision's ResNet-50 (random init). ``width``: the bottleneck base width (torchvision's
    ``width_per_group``); 64 is the standard ResNet-50 (25,557,032 parameters for 1000 classes)."""
    from torchvision.models import resnet50

    check_size("num_classes", num_classes)
    check_size("width", width)
    return resnet50(weights=None, num_classes=num_classes, width_per_group=width)


class ResNet50(LipschitzModule):
    """torchvision's ResNet-50 with BatchNorm (see :func:`build_resnet50`)."""

    def __init__(self, width: int = 64, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net = build_resnet50(self.num_classes, width)


def sincos_position_embedding(rows: int, cols: int, dim: int, temperature: float = 10_000.0) -> Tensor:
    """Fixed 2-D sine-cosine embeddings, ``[rows * cols, dim]`` (row-major patch order); ``dim % 4 == 0``.

    A quarter of the channels each: sin and cos of the column index times ``temperature^(-k / (dim/4 - 1))``,
    then sin and cos of the row index with the same frequencies.
    """
    if dim % 4:
        raise ValueError(f"the sine-cosine embedding needs a width divisible by 4, got {dim}")
    y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4) / max(dim // 4 - 1, 1))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)


class SimpleVisionTransformer(nn.Module):
    """See the module docstring."""

    def __init__(
        self, width: int, num_classes: int, patch_size: int, depth: int, heads: int, mlp_ratio: int, in_channels: int
    ):
        super().__init__()
        self.width = width
        self.patch_embed = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)
        self.blocks = nn.Sequential(*(TransformerBlock(width, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        patches = self.patch_embed(x)  # [B, width, rows, cols]
        rows, cols = patches.shape[-2:]
        position = sincos_position_embedding(rows, cols, self.width).to(patches)
        tokens = patches.flatten(2).transpose(1, 2) + position
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


def build_simple_vit(
    width: int = 384,
    num_classes: int = 1000,
    patch_size: int = 16,
    depth: int = 12,
    heads: int = 6,
    mlp_ratio: int = 4,
    in_channels: int = 3,
) -> SimpleVisionTransformer:
    """SimpleViT of embedding width ``width`` (MLP hidden ``mlp_ratio * width``; the study's: 384, 1,536)."""
    for name, value in dict(
        width=width, num_classes=num_classes, patch_size=patch_size, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
        in_channels=in_channels,
    ).items():  # fmt: skip
        check_size(name, value)
    if width % heads:
        raise ValueError(f"SimpleViT width must be a multiple of heads, got width={width}, heads={heads}")
    if width % 4:
        raise ValueError(f"SimpleViT width must be a multiple of 4 (sine-cosine embedding), got {width}")
    return SimpleVisionTransformer(width, num_classes, patch_size, depth, heads, mlp_ratio, in_channels)


class SimpleViT(LipschitzModule):
    """The study's SimpleViT (patch 16, width 384, depth 12, heads 6, MLP 1,536); lower bounds only."""

    def __init__(
        self,
        width: int = 384,
        patch_size: int = 16,
        depth: int = 12,
        heads: int = 6,
        mlp_ratio: int = 4,
        in_channels: int = 3,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.net = build_simple_vit(width, self.num_classes, patch_size, depth, heads, mlp_ratio, in_channels)
