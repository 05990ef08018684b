"""Fully connected networks: the paper's FCN family on MNIST-1D (and the cheap double-descent variant)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn

from lipschitz_dd.models._checks import check_size
from lipschitz_dd.models.base import LipschitzModule

OUTPUT_ACTIVATIONS = ("relu", "leaky_relu", "none")
LEAKY_SLOPE = 0.01


def build_fcn(
    input_dim: int,
    widths: Sequence[int],
    num_classes: int,
    bias: bool = False,
    output_activation: Literal["relu", "leaky_relu", "none"] = "relu",
    dropout: float = 0.0,
) -> nn.Sequential:
    """``Flatten -> [Linear(w_i) -> ReLU]* -> Linear(num_classes) -> output activation``.

    ``widths`` are the hidden widths in order (empty: a linear classifier). ``output_activation`` is applied to
    the logits: ``"relu"`` (paper default for CE, logits >= 0), ``"leaky_relu"`` (slope 0.01, paper default
    for MSE) or ``"none"``. Without bias, one hidden layer of width w on 40 inputs and 10 classes has
    40w + 10w = 50w parameters. With ``dropout`` p > 0, ``Dropout(p)`` follows every hidden ReLU (between the
    layers; the identity in eval mode).
    """
    check_size("input_dim", input_dim)
    check_size("num_classes", num_classes)
    for i, width in enumerate(widths):
        check_size(f"widths[{i}]", width)
    if output_activation not in OUTPUT_ACTIVATIONS:
        raise ValueError(
            f"unknown output_activation {output_activation!r}; choose one of {', '.join(OUTPUT_ACTIVATIONS)}"
        )
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    sizes = [input_dim, *widths]
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=False):
        layers += [nn.Linear(fan_in, fan_out, bias=bias), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(sizes[-1], num_classes, bias=bias))
    if output_activation == "relu":
        layers.append(nn.ReLU())
    elif output_activation == "leaky_relu":
        layers.append(nn.LeakyReLU(LEAKY_SLOPE))
    return nn.Sequential(*layers)


class FCN(LipschitzModule):
    """FCN with hidden widths ``widths`` (or ``depth`` hidden layers of ``width``) on flattened inputs.

    Paper default: no bias, ReLU on the output for CE, LeakyReLU(0.01) for MSE (``output_activation="auto"``).
    The cheap double-descent setting (docs/study.md) is ``depth=2, bias=True, output_activation="none"`` with
    ``momentum=0.9``. ``dropout``: 1-D dropout rate between the layers. Other keyword arguments go to :class:`LipschitzModule`.
    """

    def __init__(
        self,
        input_dim: int = 40,
        width: int = 256,
        depth: int = 1,
        widths: list[int] | None = None,
        bias: bool = False,
        output_activation: Literal["auto", "relu", "leaky_relu", "none"] = "auto",
        dropout: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if widths is None:
            check_size("width", width)
            if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
                raise ValueError(f"depth (number of hidden layers) must be an integer >= 0, got {depth!r}")
            widths = [width] * depth
        if output_activation == "auto":
            output_activation = "relu" if self.loss_name == "ce" else "leaky_relu"
        self.net = build_fcn(
            input_dim, list(widths), self.num_classes, bias=bias, output_activation=output_activation, dropout=dropout
        )
