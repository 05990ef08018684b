"""LightningDataModules: in-memory ones with fixed training subsets and nested label noise (see base.ArrayDataModule), and ImageFolderDataModule, read from disk by workers."""

from lipschitz_dd.data.base import ArrayDataModule
from lipschitz_dd.data.digits import DigitsDataModule
from lipschitz_dd.data.imagefolder import ImageFolderDataModule
from lipschitz_dd.data.loader import TensorBatchLoader
from lipschitz_dd.data.mnist1d import MNIST1DDataModule
from lipschitz_dd.data.selection import NOISE_MODES, corrupt_labels, nested_subset_indices
from lipschitz_dd.data.synthetic import StudyToy2DDataModule, SyntheticDataModule, Toy2DDataModule
from lipschitz_dd.data.vision import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
)

__all__ = [
    "ArrayDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "MNIST1DDataModule",
    "MNISTDataModule",
    "NOISE_MODES",
    "StudyToy2DDataModule",
    "SyntheticDataModule",
    "TensorBatchLoader",
    "Toy2DDataModule",
    "corrupt_labels",
    "nested_subset_indices",
]
