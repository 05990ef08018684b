"""ImageFolderDataModule: image classification from `train/` and `val/` folders (ImageNet scale), read from disk.

Layout (torchvision's ImageFolder): `data_dir/train/<class>/<image>` and `data_dir/val/<class>/<image>`, the
same class folders in both. Unlike the in-memory ArrayDataModules, images are decoded by DataLoader workers
batch by batch; nothing is held in memory.

Transforms (the standard ImageNet recipe, He et al. 2016):
    train: RandomResizedCrop(crop_size) -> random horizontal flip -> tensor in [0, 1] -> normalise
    eval:  Resize(resize_size) (shorter side) -> CenterCrop(crop_size) -> tensor -> normalise
with the ImageNet channel means and standard deviations. The model sees `(3, crop_size, crop_size)` inputs.

Measurement set: the Lipschitz bounds of the study are measured on a fixed random subset of the *training*
images (200,000 on ImageNet) with the eval transform. `measure_dataloader()` streams that subset (chosen by
`data_seed`, the same every epoch and for every training seed) through `num_workers` workers, in a fixed
order, under DDP only this rank's share.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lipschitz_dd.data.selection import seeded_generator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(crop_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """RandomResizedCrop(crop_size) -> RandomHorizontalFlip -> ToTensor -> Normalize(mean, std)."""
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(crop_size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def eval_transform(crop_size: int, resize_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Resize(resize_size) -> CenterCrop(crop_size) -> ToTensor -> Normalize(mean, std) (deterministic)."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(resize_size), T.CenterCrop(crop_size), T.ToTensor(), T.Normalize(mean, std)])


class MeasurementImages(IterableDataset):
    """The images at `samples` (a list of (path, label)) with `transform`, in that order, as (x, y) pairs.

    Each DataLoader worker reads every num_workers-th sample from its worker id; with batch size b the
    DataLoader returns whole batches of worker 0, 1, ... in turn, so the order of the points is fixed by
    (samples, num_workers, b).
    """

    def __init__(self, samples: list[tuple[str, int]], transform, loader) -> None:
        super().__init__()
        self.samples, self.transform, self.loader = samples, transform, loader

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        for path, label in self.samples[start::step]:
            yield self.transform(self.loader(path)), label


class ImageFolderDataModule(LightningDataModule):
    """Train/val image folders read by workers (see the module docstring).

    Args:
        data_dir: folder holding `train/` and `val/`.
        batch_size: training batch per process (under DDP the global batch is batch_size x devices).
        eval_batch_size: validation and measurement batch per process.
        num_workers: DataLoader worker processes per loader.
        crop_size: side of the square crops the model sees (224 for ImageNet).
        resize_size: shorter side after resizing, before the centre crop (eval and measurement; 256).
        measure_subset: size of the fixed random subset of training images the Lipschitz bounds are measured
            on (None: all of them).
        data_seed: seed of that subset.
        num_classes: the number of classes; None = the number of class folders in `train/`.
    """

    def __init__(
        self,
        data_dir: str = "data/imagenet",
        batch_size: int = 256,
        eval_batch_size: int = 256,
        num_workers: int = 8,
        crop_size: int = 224,
        resize_size: int = 256,
        measure_subset: int | None = 200_000,
        data_seed: int = 0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("crop_size", crop_size),
            ("resize_size", resize_size),
        ):
            if value < 1:
                raise ValueError(f"{name}={value} is invalid: it must be a positive integer")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} is invalid: it must be >= 0")
        if measure_subset is not None and measure_subset < 1:
            raise ValueError(f"measure_subset={measure_subset} is invalid: give a positive number of images or None")
        if resize_size < crop_size:
            raise ValueError(f"resize_size={resize_size} must be >= crop_size={crop_size}")
        self.save_hyperparameters()
        self.data_dir = str(data_dir)
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.crop_size, self.resize_size = crop_size, resize_size
        self.measure_subset, self.data_seed = measure_subset, data_seed
        self.num_classes = num_classes
        self.input_shape = (3, crop_size, crop_size)
        self.train_set = None
        self.val_set = None

    def _folder(self, split: str) -> Path:
        folder = Path(self.data_dir) / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"image folder {folder} not found; put the images in {Path(self.data_dir)}/train/<class>/ and "
                f"{Path(self.data_dir)}/val/<class>/ (torchvision ImageFolder layout)"
            )
        return folder

    def setup(self, stage: str | None = None) -> None:
        """Index both folders (file names only; idempotent) and check that they have the same classes."""
        if self.train_set is not None:
            return
        from torchvision.datasets import ImageFolder

        train = ImageFolder(str(self._folder("train")), transform=train_transform(self.crop_size))
        val = ImageFolder(str(self._folder("val")), transform=eval_transform(self.crop_size, self.resize_size))
        if train.classes != val.classes:
            raise ValueError(f"{self.data_dir}: train/ and val/ have different class folders")
        if self.num_classes is None:
            self.num_classes = len(train.classes)
        elif self.num_classes != len(train.classes):
            raise ValueError(
                f"num_classes={self.num_classes} but {self.data_dir}/train has {len(train.classes)} classes"
            )
        self.train_set, self.val_set = train, val

    def _require_setup(self) -> None:
        if self.train_set is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a dataloader")

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches with the training transform (Lightning adds a DistributedSampler under DDP)."""
        self._require_setup()
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """The validation images with the eval transform: the test set of the logs (`test/loss`, `test/acc`)."""
        self._require_setup()
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The same as `val_dataloader()`."""
        return self.val_dataloader()

    def measure_indices(self) -> torch.Tensor:
        """Sorted indices (into the training images) of the fixed measurement subset, from `data_seed`."""
        self._require_setup()
        n = len(self.train_set)
        size = n if self.measure_subset is None else min(self.measure_subset, n)
        order = torch.randperm(n, generator=seeded_generator(self.data_seed, "measure"))
        return order[:size].sort().values

    def measure_dataloader(self) -> DataLoader:
        """The measurement subset of training images with the eval transform, streamed by the workers in a fixed
        order; under DDP (a trainer with world_size > 1) this rank's share, every world_size-th image."""
        indices = self.measure_indices().tolist()
        trainer = getattr(self, "trainer", None)
        world_size = getattr(trainer, "world_size", 1) if trainer is not None else 1
        if world_size > 1:
            indices = indices[trainer.global_rank :: world_size]
        samples = [self.train_set.samples[i] for i in indices]
        dataset = MeasurementImages(samples, eval_transform(self.crop_size, self.resize_size), self.train_set.loader)
        return DataLoader(dataset, batch_size=self.eval_batch_size, num_workers=self.num_workers)
