"""MNIST-1D, generated offline with the `mnist1d` package and cached as .npz (generated once per setting)."""

import os
import random
from pathlib import Path
from typing import Literal

import numpy as np

from lipschitz_dd.data.base import ArrayDataModule, Arrays


def mnist1d_cache_path(data_dir: str, num_samples: int, train_split: float, seed: int) -> Path:
    """Where the generated set lives: data_dir/mnist1d/mnist1d_n{num_samples}_split{train_split}_seed{seed}.npz."""
    return Path(data_dir) / "mnist1d" / f"mnist1d_n{num_samples}_split{train_split:g}_seed{seed}.npz"


def generate_mnist1d(num_samples: int = 5000, train_split: float = 0.8, seed: int = 42) -> dict[str, np.ndarray]:
    """Generate MNIST-1D with mnist1d.make_dataset (never downloads); returns float32 x, x_test, int64 y, y_test.

    All other generation arguments are mnist1d's defaults (40 features, 10 classes). make_dataset draws
    num_samples // 10 signals per class from the global numpy RNG seeded with `seed`, shuffles them, and puts the
    first int(n * train_split) in the training set. The caller's global `random`/numpy RNG states are restored.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, train_split, seed
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {
        "x": data["x"].astype(np.float32),
        "y": data["y"].astype(np.int64),
        "x_test": data["x_test"].astype(np.float32),
        "y_test": data["y_test"].astype(np.int64),
    }


ORDERS = ("stored", "study")


def study_order(n: int, seed: int = 42) -> np.ndarray:
    """The permutation of n points the study's MNIST-1D loader applies to each set: ``np.random.seed(seed)`` then
    ``np.random.choice(n, n, replace=False)`` (here from a private RandomState, with the same draws)."""
    return np.random.RandomState(seed).choice(n, size=n, replace=False)


class MNIST1DDataModule(ArrayDataModule):
    """MNIST-1D: 40-feature 1-D signals of 10 digit classes, inputs of shape (40,).

    mnist1d's defaults (num_samples=5000, train_split=0.8, seed=42) give 4,000 train / 1,000 test; the cheap
    double-descent setting (docs/study.md) is num_samples=16000, train_split=0.25 (4,000 train / 12,000 test).
    The generated arrays are cached under data_dir/mnist1d/ (see mnist1d_cache_path) and reused.

    `order`: "stored" (make_dataset's order) or "study" (the order the study's loader gives: each set permuted by
    ``np.random.seed(42); np.random.choice(n, n, replace=False)``, its "subset" of all n points, then trained on
    in that fixed order; a private RandomState, the global RNG is untouched). The generated set itself equals the
    study's downloaded mnist1d_data.pkl in float32 (mnist1d's defaults, checked once against the file).
    """

    def __init__(
        self,
        num_samples: int = 5000,
        train_split: float = 0.8,
        seed: int = 42,
        order: Literal["stored", "study"] = "stored",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if order not in ORDERS:
            raise ValueError(f"order={order!r} is invalid: one of {', '.join(ORDERS)}")
        self.order = order
        if num_samples < 10:
            raise ValueError(f"num_samples={num_samples} is invalid: MNIST-1D needs at least one sample per class")
        if not 0.0 < train_split < 1.0:
            raise ValueError(f"train_split={train_split} is invalid: it must lie strictly between 0 and 1")
        self.num_samples, self.train_split, self.seed = num_samples, train_split, seed
        self.num_classes = 10
        self.input_shape = (40,)

    @property
    def cache_path(self) -> Path:
        """The .npz file holding this setting's generated arrays."""
        return mnist1d_cache_path(self.data_dir, self.num_samples, self.train_split, self.seed)

    def prepare_data(self) -> None:
        """Generate and cache the set unless the cache file already exists (written atomically)."""
        path = self.cache_path
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = generate_mnist1d(self.num_samples, self.train_split, self.seed)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(partial, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(partial, path)

    def load_arrays(self) -> Arrays:
        self.prepare_data()
        with np.load(self.cache_path) as cached:
            x, y, x_test, y_test = cached["x"], cached["y"], cached["x_test"], cached["y_test"]
        if self.order == "study":
            train, test = study_order(len(x)), study_order(len(x_test))
            x, y, x_test, y_test = x[train], y[train], x_test[test], y_test[test]
        return x, y, x_test, y_test
