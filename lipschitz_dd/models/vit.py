"""A small vision transformer of width w (the paper's ViT family: patch 8, depth 6, heads 6, MLP 4w).

Attention is not globally Lipschitz: the upper-bound code reports no value for it, lower bounds work.
The head dimension is ``width // heads``, so ``width`` must be a multiple of ``heads``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lipschitz_dd.models._checks import check_size
from lipschitz_dd.models.base import LipschitzModule


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention: ``softmax(Q K^T / sqrt(d_head)) V`` per head, then a
    linear output projection. Written out explicitly (no fused kernels) so Jacobians work everywhere."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // self.heads), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(out)


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` with ``MLP = Linear -> GELU -> Linear``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch embedding (a ``patch x patch`` conv with stride ``patch``), a class token, learned position
    embeddings, ``depth`` transformer blocks, a final LayerNorm and a linear head on the class token."""

    def __init__(
        self,
        width: int,
        num_classes: int,
        image_size: int,
        patch_size: int,
        depth: int,
        heads: int,
        mlp_ratio: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.empty(1, num_patches + 1, width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(width, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, patches, width]
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def build_vit(
    width: int,
    num_classes: int = 10,
    image_size: int = 32,
    patch_size: int = 8,
    depth: int = 6,
    heads: int = 6,
    mlp_ratio: int = 4,
    in_channels: int = 3,
) -> VisionTransformer:
    """A ViT with embedding dimension ``width`` (head dimension ``width // heads``, MLP hidden ``mlp_ratio * width``)
    on ``in_channels x image_size x image_size`` images cut into non-overlapping ``patch_size`` patches."""
    for name, value in dict(
        width=width,
        num_classes=num_classes,
        image_size=image_size,
        patch_size=patch_size,
        depth=depth,
        heads=heads,
        mlp_ratio=mlp_ratio,
        in_channels=in_channels,
    ).items():
        check_size(name, value)
    if width % heads:
        raise ValueError(
            f"ViT width must be a multiple of heads (head dim = width // heads), got width={width}, heads={heads}"
        )
    if image_size % patch_size:
        raise ValueError(f"image_size must be a multiple of patch_size, got {image_size} and {patch_size}")
    return VisionTransformer(width, num_classes, image_size, patch_size, depth, heads, mlp_ratio, in_channels)


class ViT(LipschitzModule):
    """Small vision transformer of width ``width`` (see :func:`build_vit`); lower bounds only."""

    def __init__(
        self,
        width: int,
        patch_size: int = 8,
        depth: int = 6,
        heads: int = 6,
        mlp_ratio: int = 4,
        image_size: int = 32,
        in_channels: int = 3,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.net = build_vit(
            width,
            self.num_classes,
            image_size=image_size,
            patch_size=patch_size,
            depth=depth,
            heads=heads,
            mlp_ratio=mlp_ratio,
            in_channels=in_channels,
        )
