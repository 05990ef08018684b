"""Tiny data-set files in the real on-disk formats, for runs that read a data set from disk (the suite must pass
on a machine with no data set installed). The file writers are those of test_data_sources.py, which tests that
the data modules read them as the real sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from test_data_sources import write_mnist_like


def write_fashion_mnist(data_dir: Path, num_train: int = 200, num_test: int = 200, seed: int = 0) -> Path:
    """data_dir/FashionMNIST/raw/: the four gzipped idx files (torchvision layout) of random 28 x 28 images with
    random labels of 10 classes; returns data_dir (a run's data.data_dir)."""
    write_mnist_like(Path(data_dir) / "FashionMNIST" / "raw", np.random.default_rng(seed), True, num_train, num_test)
    return Path(data_dir)
