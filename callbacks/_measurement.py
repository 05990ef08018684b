"""One pass of `LipschitzCallback` over its points: ||J(x)||_2 at the points of every point set, accumulated
into one `LowerBoundStats` per set, plus the top training points for the optimised bound. The training points
themselves go through the warm-started `TrainNorms` when one is given (see _warm.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from lipschitz_dd.bounds import LowerBoundStats, TopPoints, jacobian_spectral_norms
from lipschitz_dd.callbacks._points import Key, PointSource
from lipschitz_dd.callbacks._warm import TrainNorms
from lipschitz_dd.callbacks.point_sets import PointSet

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


class JacobianNorms:
    """x -> ||J(x_i)||_2 per point (`jacobian_spectral_norms` with `method`); NaN for the batch (warned once) if
    the SVD fails on non-finite values."""

    def __init__(self, model: nn.Module, method: str, warn: Warn) -> None:
        self.model, self.method, self.warn = model, method, warn

    def __call__(self, x: Tensor) -> Tensor:
        try:
            return jacobian_spectral_norms(self.model, x, method=self.method)
        except torch.linalg.LinAlgError as error:
            self.warn("linalg", f"LipschitzCallback: Jacobian norms failed ({error}); logging NaN")
            return torch.full((len(x),), float("nan"), device=x.device)


def measure_point_sets(
    norms: JacobianNorms,
    point_sets: Sequence[PointSet],
    sources: dict[str, PointSource | None],
    device: torch.device,
    generator: torch.Generator,
    top: TopPoints | None = None,
    progress: Callable[[int], object] = lambda n: None,
    train_norms: TrainNorms | None = None,
) -> dict[str, LowerBoundStats]:
    """This rank's statistics of ||J|| over the points of every set ({name: stats}), in one pass over each
    source ("train", then "test"); `top` (if given) collects the training points with the largest norms.
    Within a batch the sets run in list order, so the random points depend only on the generator's seed.
    With `train_norms`, the norms of the training points themselves (and of the top points) come from it,
    and the sets that use them get its statistics (`WarmStats`: the refined max, avg_tol)."""
    stats = {s.name: LowerBoundStats() for s in point_sets}
    model = norms.model
    for kind in ("train", "test"):
        sets = [s for s in point_sets if s.source == kind]
        source = sources.get(kind)
        collect_top = top is not None and kind == "train"
        if source is None or not (sets or collect_top):
            continue
        for point_set in sets:
            point_set.start(source.num_points)
        warm = train_norms if kind == "train" else None
        if warm is not None:
            warm.begin()
        of_data: set[str] = set()  # the sets whose points are the data themselves (statistics from `warm`)
        for x, y, indices in source.indexed_batches(device):
            x_norms = None
            if collect_top:
                x_norms = norms(x) if warm is None else warm(model, x, indices)
                top.add(x, x_norms)
            predicted = None
            for point_set in sets:
                labels = y
                if point_set.labels and labels is None:
                    if predicted is None:
                        with torch.no_grad():
                            predicted = model(x).argmax(dim=-1)
                    labels = predicted
                made = point_set.points(x, labels, model, generator)
                if made is x and type(point_set).norms is PointSet.norms:  # the data: their norms once per batch
                    if x_norms is None:
                        x_norms = norms(x) if warm is None else warm(model, x, indices)
                    if warm is None:
                        stats[point_set.name].update(x_norms)
                    of_data.add(point_set.name)
                    continue
                for chunk in [made] if isinstance(made, Tensor) else made:
                    if len(chunk):
                        stats[point_set.name].update(point_set.norms(model, chunk, norms))
            progress(len(x))
        if warm is not None:
            warm_stats = warm.finish(model)
            for name in of_data:
                stats[name] = copy.copy(warm_stats)
    return stats
