"""Scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), bundled with scikit-learn (no download)."""

import torch

from lipschitz_dd.data.base import ArrayDataModule, Arrays
from lipschitz_dd.data.selection import seeded_generator

NUM_DIGITS = 1797


class DigitsDataModule(ArrayDataModule):
    """sklearn.datasets.load_digits, pixel values 0..16 scaled to [0, 1].

    Inputs are flat vectors of 64 (default) or 1x8x8 images (`as_images=True`). The train/test split is a fixed
    random split drawn from `data_seed` (default 1,297 train / 500 test); the test set is the first `num_test`
    samples of that permutation.
    """

    def __init__(
        self,
        num_test: int = 500,
        as_images: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 1 <= num_test < NUM_DIGITS:
            raise ValueError(f"num_test={num_test} is invalid: it must be between 1 and {NUM_DIGITS - 1}")
        self.num_test, self.as_images = num_test, as_images
        self.num_classes = 10
        self.input_shape = (1, 8, 8) if as_images else (64,)

    def load_arrays(self) -> Arrays:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.as_tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.as_tensor(digits.target, dtype=torch.int64)
        x = x.reshape(-1, *self.input_shape)
        order = torch.randperm(len(y), generator=seeded_generator(self.data_seed, "split"))
        test, train = order[: self.num_test].sort().values, order[self.num_test :].sort().values
        return x[train], y[train], x[test], y[test]
