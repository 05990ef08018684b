"""An in-memory batch loader: slices whole tensors into (x, y) batches, no per-sample Dataset or collate."""

import torch


class TensorBatchLoader:
    """Re-iterable, sized iterable of (x[i:j], y[i:j]) batches over tensors already in memory.

    Batches follow the stored order by default (contiguous slices, no copy), or, with `shuffle=True`, a
    permutation drawn from a torch.Generator seeded with `seed + epoch`. The last partial batch is kept, so
    len(loader) = ceil(n / batch_size). Lightning calls `loader.sampler.set_epoch(epoch)` before each epoch
    (the loader is its own sampler), which makes the order of epoch e the same after a resume; without
    Lightning, each new iteration advances the epoch by one.
    """

    batch_sampler = None  # Lightning reads `loader.batch_sampler` whenever `loader.sampler` exists

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False, seed: int = 0):
        if len(x) != len(y):
            raise ValueError(f"x and y have different lengths ({len(x)} and {len(y)})")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} is invalid: it must be a positive integer")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0

    @property
    def sampler(self) -> "TensorBatchLoader":
        """The object on which Lightning calls `set_epoch` (Lightning looks for `loader.sampler.set_epoch`)."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose order the next iteration uses (only matters with shuffle=True)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return (len(self.x) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        n = len(self.x)
        order = None
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator).to(self.x.device)
        self.epoch += 1
        for start in range(0, n, self.batch_size):
            if order is None:
                yield self.x[start : start + self.batch_size], self.y[start : start + self.batch_size]
            else:
                index = order[start : start + self.batch_size]
                yield self.x[index], self.y[index]
