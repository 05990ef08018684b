"""The function `LipschitzCallback` measures: `pl_module`, a submodule of it, or one part of its output (the
measurement itself is `LipschitzMeter`, callbacks/meter.py)."""

from __future__ import annotations

from collections.abc import Callable

from lightning.pytorch import LightningModule
from torch import Tensor, nn

from lipschitz_dd.callbacks.options import Key

Warn = Callable[[str, str], None]
"""warn(key, message): a warning shown once per key and run."""


class SelectedOutput(nn.Module):
    """x -> module(x)[output]: the logits of a module that returns a tuple/list (output = an index) or a dict
    (output = a key). A selection of one part of the output, so bounds of this function are bounds of the logits."""

    def __init__(self, module: nn.Module, output: Key) -> None:
        super().__init__()
        self.module, self.output = module, output

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)[self.output]


def measured_network(
    pl_module: LightningModule, network: str | None, output: Key | None, warn: Warn
) -> nn.Module | None:
    """The function whose bounds are measured: `pl_module` or its submodule `network`, with the logits picked by
    `output`; None (warned once) if the module has no forward and no `network` is named."""
    module: nn.Module = pl_module
    if network is not None:
        try:
            module = pl_module.get_submodule(network)
        except AttributeError as error:
            raise ValueError(
                f"LipschitzCallback: network={network!r} is not a submodule of {type(pl_module).__name__} ({error})"
            ) from error
    elif type(pl_module).forward in (LightningModule.forward, nn.Module.forward):  # nn.Module's raises
        warn(
            "forward",
            f"LipschitzCallback: {type(pl_module).__name__} defines no forward(); set "
            "network='<attribute>' to the submodule that maps inputs to logits",
        )
        return None
    return module if output is None else SelectedOutput(module, output)
