"""Where the callback's measurement points come from: batches of any user's loader, or explicit tensors.

A `PointSource` yields `(x, y)` batches (y may be None) on a device, one batch in memory at a time, always the
same samples in the same order (a seeded subset), and under DDP only this rank's share of them. `indexed_batches`
adds each point's stable index (the same point gets the same index at every measurement): its row in an explicit
tensor or its index in a map-style dataset, or its running position in a stream (which must yield the same
samples in the same order each time for the index to mean the same point).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, Subset, default_collate

from lipschitz_dd.callbacks.options import Key

if TYPE_CHECKING:  # Lightning is imported only by the functions that read a Trainer: PointSource works without it
    from lightning.pytorch import Trainer

BatchFn = Callable[[Any], Tensor]

INPUT_KEYS = ("x", "input", "inputs", "image", "images")
LABEL_KEYS = ("y", "label", "labels", "target", "targets")


def batch_input(batch: Any, key: Key | None = None, fn: BatchFn | None = None) -> Tensor:
    """The model input of a batch: `fn(batch)` if given; a tensor batch itself; `batch[key]` (default: element 0
    of a tuple/list, the first of "x", "input", "inputs", "image", "images" in a dict)."""
    if fn is not None:
        x = fn(batch)
    elif isinstance(batch, Tensor):
        x = batch
    elif isinstance(batch, Mapping):
        name = key if key is not None else next((k for k in INPUT_KEYS if k in batch), None)
        if name is None or name not in batch:
            raise ValueError(
                f"LipschitzCallback: cannot find the input in a dict batch with keys {sorted(batch)}; "
                f"set input_key=... or get_input=..."
            )
        x = batch[name]
    elif isinstance(batch, Sequence) and len(batch) > 0:
        x = batch[0 if key is None else key]
    else:
        raise ValueError(f"LipschitzCallback: unsupported batch type {type(batch).__name__}; set get_input=...")
    if not isinstance(x, Tensor):
        raise ValueError(f"LipschitzCallback: the batch input is a {type(x).__name__}, expected a Tensor")
    return x


def batch_label(batch: Any, key: Key | None = None, fn: BatchFn | None = None) -> Tensor | None:
    """The labels of a batch, or None if it has none: `fn(batch)`; `batch[key]` (default: element 1 of a
    tuple/list, the first of "y", "label", "labels", "target", "targets" in a dict)."""
    if fn is not None:
        return fn(batch)
    if isinstance(batch, Mapping):
        name = key if key is not None else next((k for k in LABEL_KEYS if k in batch), None)
        return batch.get(name) if name is not None else None
    if isinstance(batch, Sequence) and not isinstance(batch, Tensor):
        index = 1 if key is None else key
        return batch[index] if isinstance(index, int) and -len(batch) <= index < len(batch) else None
    return None


def datamodule_tensors(trainer: Trainer, kind: str) -> tuple[Tensor | None, Tensor | None]:
    """(x, y) tensors a datamodule holds in memory as `{kind}_x` / `{kind}_y` (lipschitz_dd's datamodules
    do, after setup); (None, None) otherwise."""
    datamodule = getattr(trainer, "datamodule", None)
    x, y = getattr(datamodule, f"{kind}_x", None), getattr(datamodule, f"{kind}_y", None)
    if not isinstance(x, Tensor):
        return None, None
    return x, (y if isinstance(y, Tensor) and len(y) == len(x) else None)


def first_loader(loaders: Any) -> Any:
    """The first loader of what Lightning holds: a loader, a list/tuple of loaders, or a dict of them (None if
    there is none)."""
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    return loaders


def train_loader(trainer: Trainer) -> Any:
    """The fit's training loader: the datamodule's `train_dataloader()`, else the trainer's."""
    from lightning.pytorch.utilities.model_helpers import is_overridden

    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None and is_overridden("train_dataloader", datamodule):
        return first_loader(datamodule.train_dataloader())
    return first_loader(trainer.train_dataloader)


def test_loader(trainer: Trainer) -> Any:
    """The first validation loader (design: index 0 = the test set), else the test loader; under
    `trainer.test` the test loader first. The datamodule's hooks first, then the loaders the trainer holds."""
    from lightning.pytorch.trainer.states import TrainerFn
    from lightning.pytorch.utilities.model_helpers import is_overridden

    hooks = ["val_dataloader", "test_dataloader"]
    if trainer.state.fn == TrainerFn.TESTING:
        hooks.reverse()
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None:
        for hook in hooks:
            if is_overridden(hook, datamodule):
                return first_loader(getattr(datamodule, hook)())
    for hook in hooks:
        loader = first_loader(getattr(trainer, hook + "s"))
        if loader is not None:
            return loader
    return None


def is_streamed(loader: Any) -> bool:
    """Whether a loader's samples can only be read by iterating it (an IterableDataset, a dataset without
    len, any other iterable of batches), not by index."""
    dataset = getattr(loader, "dataset", None)
    return dataset is None or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__")


def seeded_subset(n: int, max_samples: int | None, seed: int) -> Tensor:
    """Indices of a fixed random subset of `range(n)` of size min(n, max_samples) (all of them if None), in a
    random order drawn from `torch.Generator().manual_seed(seed)`: the same subset for the same (n, seed)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order if max_samples is None else order[:max_samples]


class PointSource:
    """Batches `(x, y)` of the points one rank measures. Build it with `from_tensors` or `from_loader`.

    `batches()` yields `(x, y)`, or `(x, y, indices)` when the source was built with `indexed=True` (the
    factories do); `indices` [b] int64 are the points' stable indices (see the module doc)."""

    def __init__(
        self, batches: Callable[[], Iterator[tuple]], num_points: int | None, *, indexed: bool = False
    ) -> None:
        self._batches = batches
        self._indexed = indexed
        self.num_points = num_points  # this rank's number of points, None if unknown (a stream)

    def batches(self, device: torch.device) -> Iterator[tuple[Tensor, Tensor | None]]:
        """This rank's points, one batch at a time, moved to `device`."""
        for x, y, _ in self.indexed_batches(device):
            yield x, y

    def indexed_batches(self, device: torch.device) -> Iterator[tuple[Tensor, Tensor | None, Tensor]]:
        """`(x, y, indices)`: `batches` with the points' stable indices [b] (int64, CPU); a source built
        without them numbers its points by their running position."""
        position = 0
        for batch in self._batches():
            x, y = batch[0], batch[1]
            indices = batch[2] if self._indexed else torch.arange(position, position + len(x))
            position += len(x)
            yield x.to(device), (y.to(device) if isinstance(y, Tensor) else None), indices

    @classmethod
    def from_tensors(
        cls,
        x: Tensor,
        y: Tensor | None,
        *,
        max_samples: int | None,
        seed: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> PointSource:
        """The seeded subset of the rows of `x` (and `y`), split across ranks (rank r takes every world_size-th)."""
        if y is not None and len(y) != len(x):
            raise ValueError(f"LipschitzCallback: {len(x)} points but {len(y)} labels")
        indices = seeded_subset(len(x), max_samples, seed)[rank::world_size]

        def batches() -> Iterator[tuple[Tensor, Tensor | None, Tensor]]:
            for chunk in indices.split(batch_size):
                yield x[chunk], (y[chunk] if y is not None else None), chunk

        return cls(batches, len(indices), indexed=True)

    @classmethod
    def from_loader(
        cls,
        loader: DataLoader,
        *,
        max_samples: int | None,
        seed: int,
        batch_size: int,
        input_key: Key | None = None,
        label_key: Key | None = None,
        get_input: BatchFn | None = None,
        get_label: BatchFn | None = None,
        rank: int = 0,
        world_size: int = 1,
        max_batches: int | None = None,
    ) -> PointSource:
        """Points of a DataLoader's dataset. A map-style dataset is re-read through a new loader (no shuffling,
        no workers, the loader's collate_fn) over the seeded subset of its indices, this rank's share of them.
        Otherwise (see `is_streamed`) the loader itself is iterated, up to max_samples samples and max_batches
        batches; under DDP each rank then measures whatever its loader yields."""

        def split(batch: Any) -> tuple[Tensor, Tensor | None]:
            return batch_input(batch, input_key, get_input), batch_label(batch, label_key, get_label)

        dataset = getattr(loader, "dataset", None)
        if not is_streamed(loader):
            indices = seeded_subset(len(dataset), max_samples, seed)[rank::world_size].tolist()
            subset_loader = DataLoader(
                Subset(dataset, indices),
                batch_size=batch_size,
                shuffle=False,
                collate_fn=getattr(loader, "collate_fn", None),
                num_workers=0,
            )

            def subset_batches() -> Iterator[tuple[Tensor, Tensor | None, Tensor]]:
                position = 0
                for batch in subset_loader:
                    x, y = split(batch)
                    yield x, y, torch.as_tensor(indices[position : position + len(x)], dtype=torch.int64)
                    position += len(x)

            return cls(subset_batches, len(indices), indexed=True)

        def stream() -> Iterator[tuple[Tensor, Tensor | None]]:
            remaining = max_samples
            for index, batch in enumerate(loader):
                if max_batches is not None and index >= max_batches:
                    return
                x, y = split(batch)
                if remaining is not None:
                    x, y = x[:remaining], (y[:remaining] if y is not None else None)
                    remaining -= len(x)
                if len(x):
                    yield x, y
                if remaining is not None and remaining <= 0:
                    return

        return cls(stream, None)


STREAM_SAMPLES = 10_000
"""Points read from a loader that can only be iterated (no length, no trainer limit) when max_samples is None."""


def resolve_source(
    trainer: Trainer,
    kind: str,
    points: Tensor | None,
    labels: Tensor | None,
    *,
    max_samples: int | None,
    seed: int,
    batch_size: int,
    warn: Callable[[str, str], None],
    input_key: Key | None = None,
    label_key: Key | None = None,
    get_input: BatchFn | None = None,
    get_label: BatchFn | None = None,
) -> PointSource | None:
    """This rank's "train" or "test" points: the explicit `points` tensor if given, else for "train" the
    datamodule's `measure_dataloader()` if it defines one (its own measurement set, e.g. a fixed subset of
    ImageNet with eval transforms, already this rank's share), else the datamodule's in-memory `{kind}_x`, else
    the samples of its loader (see `train_loader` / `test_loader`); None if there are none.
    `warn(key, message)` reports a stream read only up to STREAM_SAMPLES samples."""
    common = dict(max_samples=max_samples, seed=seed, batch_size=batch_size)
    common.update(rank=trainer.global_rank, world_size=trainer.world_size)
    readers = dict(input_key=input_key, label_key=label_key, get_input=get_input, get_label=get_label)
    measure = getattr(getattr(trainer, "datamodule", None), "measure_dataloader", None)
    if points is None and kind == "train" and callable(measure):
        common.update(rank=0, world_size=1)  # the datamodule shards its measurement set itself
        return PointSource.from_loader(measure(), **readers, **common)
    if points is None:
        points, labels = datamodule_tensors(trainer, kind)
    if points is not None:
        return PointSource.from_tensors(points, labels, **common)
    loader = train_loader(trainer) if kind == "train" else test_loader(trainer)
    if loader is None:
        return None
    max_batches = None
    if is_streamed(loader):  # read by iterating: stop where the fit does, and never run forever
        limit = trainer.num_training_batches if kind == "train" else math.inf
        max_batches = int(limit) if isinstance(limit, (int, float)) and math.isfinite(limit) else None
        if max_batches is None and max_samples is None:
            common["max_samples"] = STREAM_SAMPLES
            warn(
                f"stream-{kind}",
                f"LipschitzCallback: the {kind} loader can only be iterated and has no length; measuring its "
                f"first {STREAM_SAMPLES} samples (set max_samples to choose)",
            )
    return PointSource.from_loader(loader, max_batches=max_batches, **readers, **common)


class IndexedInputs:
    """The inputs of a data set, addressable by row index: an in-memory tensor, or a map-style dataset whose
    items are collated into a batch and reduced to its input with `batch_input`."""

    def __init__(self, size: int, rows: Callable[[Tensor], Tensor]) -> None:
        self.size = size
        self._rows = rows

    def __len__(self) -> int:
        return self.size

    def rows(self, indices: Tensor) -> Tensor:
        """Inputs at the given row indices, [len(indices), ...], floating point, on the CPU or where they are."""
        x = self._rows(indices)
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError(f"inputs must be a floating-point Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        return x.detach()

    def mean_sq_norm(self, batch_size: int) -> float:
        """E||x||^2 over every row (flattened input, Euclidean norm), accumulated in float64. Exact."""
        total = 0.0
        for chunk in torch.arange(self.size).split(batch_size):
            total += float(self.rows(chunk).flatten(1).double().pow(2).sum())
        return total / self.size

    @classmethod
    def from_tensor(cls, x: Tensor) -> IndexedInputs:
        return cls(len(x), lambda indices: x[indices.to(x.device)])

    @classmethod
    def from_dataset(cls, dataset: Any, collate_fn: Callable | None, key: Key | None) -> IndexedInputs:
        collate = collate_fn or default_collate
        return cls(len(dataset), lambda indices: batch_input(collate([dataset[i] for i in indices.tolist()]), key))


def indexed_inputs(trainer: Trainer, kind: str, key: Key | None = None) -> IndexedInputs:
    """All training ("train") or test ("test") inputs of the fit, addressable by row: the datamodule's in-memory
    `{kind}_x`, else the map-style dataset of `train_loader` / `test_loader` (batches collated with the loader's
    collate_fn, input = `batch_input(batch, key)`). A ValueError when there are none or only a stream."""
    x, _ = datamodule_tensors(trainer, kind)
    if x is not None:
        return IndexedInputs.from_tensor(x)
    loader = train_loader(trainer) if kind == "train" else test_loader(trainer)
    dataset = getattr(loader, "dataset", None)
    if is_streamed(loader):
        raise ValueError(
            f"no {kind} inputs: the datamodule has no `{kind}_x` tensor and no loader with a map-style dataset"
        )
    if len(dataset) == 0:
        raise ValueError(f"the {kind} set is empty")
    return IndexedInputs.from_dataset(dataset, getattr(loader, "collate_fn", None), key)
