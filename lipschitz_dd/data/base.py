"""ArrayDataModule: the shared LightningDataModule for data sets that fit in memory as tensors."""

import torch
from lightning.pytorch import LightningDataModule

from lipschitz_dd.data.loader import TensorBatchLoader
from lipschitz_dd.data.selection import (
    NoiseMode,
    check_label_noise,
    corrupt_labels,
    nested_subset_indices,
    seeded_generator,
)

Arrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def seeded_generator_subset(n: int, size: int, seed: int) -> torch.Tensor:
    """Sorted indices of a fixed random `size`-subset of range(n) from `seed` (the "test" stream of the data
    seed, unrelated to the training subset's), nested in `size`."""
    return torch.randperm(n, generator=seeded_generator(seed, "test_subset"))[:size].sort().values


class ArrayDataModule(LightningDataModule):
    """A data set held in memory: subset, label noise and batching shared by every source.

    Subclasses take their own arguments plus `**kwargs` passed on here (jsonargparse follows them, so every
    source offers the common options on the command line), set `num_classes` (and `input_shape` where the
    arguments fix it) in `__init__`, and implement
    `load_arrays()`, which returns the full (train_x, train_y, test_x, test_y). `setup()` then
      1. keeps a fixed training subset of `train_subset` samples chosen by `data_seed` (nested in the size),
      2. corrupts a fraction `label_noise` of the training labels (`noise_mode`, see `corrupt_labels`),
      3. keeps a fixed test subset of `test_subset` samples (None: the whole test set), chosen by `data_seed`
         (cheaper per-epoch test evaluation at CPU scale),
    and exposes train_x (float32, exactly what the model receives), train_y (the labels trained on),
    train_y_clean, test_x, test_y (always clean), noisy_mask (bool per training sample: chosen for corruption;
    `train_y != train_y_clean` gives the labels that actually changed), num_classes and input_shape (per sample).
    Both the subset and the noise depend only on `data_seed`, never on the training seed.

    Loaders: train_dataloader() yields (x, y) batches of `batch_size` in stored order (or reshuffled each epoch
    from `data_seed + epoch` when `shuffle`); val_dataloader() returns [test, full training set] in batches of
    `eval_batch_size`; test_dataloader() returns the test loader. Batches stay on the CPU; Lightning moves them.
    Under DDP the loaders give each process its own share of the samples (every world_size-th one).
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 100,
        eval_batch_size: int = 4096,
        train_subset: int | None = None,
        test_subset: int | None = None,
        data_seed: int = 0,
        label_noise: float = 0.0,
        noise_mode: NoiseMode = "shuffle",
        shuffle: bool = False,
    ):
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"{name}={value} is invalid: it must be a positive integer")
        for name, value in (("train_subset", train_subset), ("test_subset", test_subset)):
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} is invalid: give a positive number of samples or None")
        check_label_noise(label_noise, noise_mode)
        self.save_hyperparameters()
        self.data_dir = str(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.train_subset = train_subset
        self.test_subset = test_subset
        self.data_seed = data_seed
        self.label_noise = float(label_noise)
        self.noise_mode = noise_mode
        self.shuffle = shuffle
        self.num_classes: int | None = None
        self.input_shape: tuple[int, ...] | None = None
        self.train_x: torch.Tensor | None = None
        self.train_y: torch.Tensor | None = None
        self.train_y_clean: torch.Tensor | None = None
        self.test_x: torch.Tensor | None = None
        self.test_y: torch.Tensor | None = None
        self.noisy_mask: torch.Tensor | None = None

    def load_arrays(self) -> Arrays:
        """Return the full (train_x, train_y, test_x, test_y) of this source, before subset and noise."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_arrays()")

    def setup(self, stage: str | None = None) -> None:
        """Load the arrays once, then apply the training subset and the label noise (idempotent)."""
        if self.train_x is not None:
            return
        train_x, train_y, test_x, test_y = (torch.as_tensor(a) for a in self.load_arrays())
        train_x, test_x = train_x.float(), test_x.float()
        train_y, test_y = train_y.long(), test_y.long()
        if self.num_classes is None:
            self.num_classes = int(max(train_y.max(), test_y.max())) + 1
        for name, labels in (("training", train_y), ("test", test_y)):
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"{type(self).__name__}: {name} labels fall outside 0..{self.num_classes - 1}")
        if self.train_subset is not None:
            keep = nested_subset_indices(len(train_x), self.train_subset, self.data_seed)
            train_x, train_y = train_x[keep], train_y[keep]
        self.train_x, self.train_y_clean = train_x, train_y
        self.train_y, self.noisy_mask = corrupt_labels(
            train_y, self.label_noise, self.num_classes, self.noise_mode, seed=self.data_seed
        )
        if self.test_subset is not None:
            if self.test_subset > len(test_x):
                raise ValueError(
                    f"test_subset={self.test_subset} is invalid: only {len(test_x)} test samples are available"
                )
            keep = seeded_generator_subset(len(test_x), self.test_subset, self.data_seed)
            test_x, test_y = test_x[keep], test_y[keep]
        self.test_x, self.test_y = test_x, test_y
        self.input_shape = tuple(train_x.shape[1:])

    def _require_setup(self) -> None:
        if self.train_x is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a dataloader")

    def train_dataloader(self) -> TensorBatchLoader:
        """Training batches of `batch_size` with the (possibly noisy) labels trained on."""
        self._require_setup()
        x, y = self._rank_shard(self.train_x, self.train_y, pad=True)
        return TensorBatchLoader(x, y, self.batch_size, self.shuffle, self.data_seed)

    def train_eval_dataloader(self) -> TensorBatchLoader:
        """The whole training set with the noisy labels trained on (under DDP this rank's unpadded share, so
        each sample counts once), in stored order, batches of `eval_batch_size`: for evaluations such as the
        training loss and the stopping rule's full-batch gradient."""
        self._require_setup()
        x, y = self._rank_shard(self.train_x, self.train_y)
        return TensorBatchLoader(x, y, self.eval_batch_size)

    def val_dataloader(self) -> list[TensorBatchLoader]:
        """[test loader, `train_eval_dataloader()`], batches of `eval_batch_size`."""
        return [self.test_dataloader(), self.train_eval_dataloader()]

    def test_dataloader(self) -> TensorBatchLoader:
        """Test-set batches of `eval_batch_size` (clean labels)."""
        self._require_setup()
        x, y = self._rank_shard(self.test_x, self.test_y)
        return TensorBatchLoader(x, y, self.eval_batch_size)

    def _rank_shard(self, x: torch.Tensor, y: torch.Tensor, pad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Under DDP (a trainer with world_size > 1), this rank's share: every world_size-th sample from its
        rank, as `DistributedSampler` deals them; the whole set otherwise. With `pad` (training), the set is
        first padded by wrapping around to a multiple of world_size, as `DistributedSampler(drop_last=False)`
        does, so every rank runs the same number of updates (DDP's gradient all-reduce needs that: unequal
        shards would hang the run); evaluation shards are not padded, so metrics count each sample once."""
        trainer = getattr(self, "trainer", None)
        world_size = getattr(trainer, "world_size", 1) if trainer is not None else 1
        if world_size <= 1:
            return x, y
        rank = trainer.global_rank
        index = torch.arange(len(x))
        if pad and len(x) % world_size:
            index = torch.cat([index, index[: world_size - len(x) % world_size]])
        index = index[rank::world_size]
        return x[index], y[index]
