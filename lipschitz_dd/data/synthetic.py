"""Generated data sets: random inputs of any shape (for tests) and the 2-D toy of three Gaussian classes."""

import math

import numpy as np
import torch

from lipschitz_dd.data.base import ArrayDataModule, Arrays
from lipschitz_dd.data.selection import seeded_generator


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name}={value} is invalid: it must be a positive integer")


class SyntheticDataModule(ArrayDataModule):
    """Standard-normal inputs of shape `input_shape` labelled by a fixed random linear teacher.

    x ~ N(0, I) of shape (n, *input_shape); y = argmax(W flatten(x)) with W ~ N(0, 1) of shape (num_classes, d),
    so the task is learnable. Everything is drawn from a torch.Generator seeded with `seed`: train and test
    come from the same distribution, and the same `seed` gives the same data. Nothing is read from disk.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (40,),
        num_classes: int = 10,
        num_train: int = 256,
        num_test: int = 128,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_sizes(num_classes=num_classes, num_train=num_train, num_test=num_test)
        if len(input_shape) == 0 or min(input_shape) < 1:
            raise ValueError(f"input_shape={tuple(input_shape)} is invalid: give one or more positive sizes")
        self.num_classes = num_classes
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_train, self.num_test, self.seed = num_train, num_test, seed

    def load_arrays(self) -> Arrays:
        generator = seeded_generator(self.seed, "synthetic")
        dim = math.prod(self.input_shape)
        teacher = torch.randn(self.num_classes, dim, generator=generator)
        x = torch.randn(self.num_train + self.num_test, *self.input_shape, generator=generator)
        y = (x.flatten(1) @ teacher.T).argmax(dim=1)
        return x[: self.num_train], y[: self.num_train], x[self.num_train :], y[self.num_train :]


class Toy2DDataModule(ArrayDataModule):
    """Three Gaussian classes in the plane, the paper's 2-D toy.

    Class k has mean radius * (cos(2 pi k / 3), sin(2 pi k / 3)) and covariance std^2 I; classes are balanced
    (sample i has class i mod 3). Drawn from a torch.Generator seeded with `seed`. The default batch size is
    the whole training set (full-batch gradient descent, as in the paper).
    """

    def __init__(
        self,
        num_train: int = 300,
        num_test: int = 300,
        std: float = 0.5,
        radius: float = 1.0,
        seed: int = 0,
        batch_size: int = 300,
        **kwargs,
    ):
        super().__init__(batch_size=batch_size, **kwargs)
        _check_sizes(num_train=num_train, num_test=num_test)
        if not std > 0:
            raise ValueError(f"std={std} is invalid: the class standard deviation must be positive")
        self.num_classes = 3
        self.input_shape = (2,)
        self.num_train, self.num_test = num_train, num_test
        self.std, self.radius, self.seed = std, radius, seed

    def class_means(self) -> torch.Tensor:
        """The three class means, shape (3, 2)."""
        angles = 2 * math.pi * torch.arange(3) / 3
        return self.radius * torch.stack([angles.cos(), angles.sin()], dim=1)

    def load_arrays(self) -> Arrays:
        generator = seeded_generator(self.seed, "toy2d")
        n = self.num_train + self.num_test
        y = torch.arange(n) % 3
        x = self.class_means()[y] + self.std * torch.randn(n, 2, generator=generator)
        return x[: self.num_train], y[: self.num_train], x[self.num_train :], y[self.num_train :]


STUDY_TOY_ANGLES = (-90.0, 30.0, 150.0)


def study_toy2d(
    train_per_class: int = 15,
    test_per_class: int = 5,
    radius: float = 1.5,
    angles_deg: tuple[float, ...] = STUDY_TOY_ANGLES,
    seed: int = 0,
) -> Arrays:
    """The study's 2-D toy data: class k is N(mu_k, I) (identity covariance) with mean
    mu_k = radius * (cos theta_k, sin theta_k), theta_k in ``angles_deg`` (-90, 30, 150 degrees), 15 training
    and 5 test points per class. Returns (x_train, y_train, x_test, y_test), float32 inputs, labels sorted by
    class.

    The draws follow the study's published notebook: the means are computed in float64 and stored as float32, and
    a torch generator seeded with ``seed`` (0 in the study, where it is the global generator after
    ``torch.manual_seed(0)``) draws standard-normal float32 pairs class by class, first the training points of
    every class, then the test points; a sample is mean + noise (the Cholesky factor of I is I, so a
    multivariate-normal sample is exactly that). A private generator is used: the global RNG is untouched."""
    _check_sizes(train_per_class=train_per_class, test_per_class=test_per_class)
    generator = torch.Generator().manual_seed(seed)
    angles = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    means = torch.from_numpy(radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)).float()
    parts = []
    for per_class in (train_per_class, test_per_class):
        x = torch.cat([mean + torch.empty(per_class, 2).normal_(generator=generator) for mean in means])
        y = torch.arange(len(means)).repeat_interleave(per_class)
        parts += [x, y]
    return parts[0], parts[1], parts[2], parts[3]


class RepeatedLoader:
    """Iterates `loader` `passes` times per epoch: ``passes * len(loader)`` batches, the same as `passes` epochs
    of `loader` (with a full-batch loader: `passes` full-batch gradient steps per epoch). Lightning's
    `set_epoch(e)` gives the inner passes the epochs ``e * passes .. e * passes + passes - 1`` (only a shuffled
    inner loader reads them)."""

    batch_sampler = None  # Lightning reads `loader.batch_sampler` whenever `loader.sampler` exists

    def __init__(self, loader, passes: int):
        _check_sizes(passes=passes)
        self.loader, self.passes = loader, int(passes)
        self.epoch = 0

    @property
    def sampler(self) -> "RepeatedLoader":
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.passes * len(self.loader)

    def __iter__(self):
        for k in range(self.passes):
            self.loader.set_epoch(self.epoch * self.passes + k)
            yield from self.loader
        self.epoch += 1


class StudyToy2DDataModule(ArrayDataModule):
    """The study's 2-D toy exactly (:func:`study_toy2d`): three N(mu_k, I) classes, means at distance 1.5 from the
    origin at -90 / 30 / 150 degrees, 15 training and 5 test points per class, drawn with a torch generator
    seeded `seed` (0: the study's draws). The default batch is the whole training set (45 points: full-batch
    gradient descent, as in the study).

    `passes_per_epoch` R: each training epoch runs R passes over the training set (R full-batch steps with the
    default batch), so the study's 100,000 steps take 100,000 / R epochs: Lightning's per-epoch cost
    (validation, logging, callbacks) is paid once per R steps. The updates are the same as R epochs of one pass
    each (the passes are in stored order; only the epoch axis differs: epoch e ends after e * R updates)."""

    def __init__(
        self,
        train_per_class: int = 15,
        test_per_class: int = 5,
        seed: int = 0,
        passes_per_epoch: int = 1,
        batch_size: int = 45,
        **kwargs,
    ):
        super().__init__(batch_size=batch_size, **kwargs)
        _check_sizes(train_per_class=train_per_class, test_per_class=test_per_class, passes_per_epoch=passes_per_epoch)
        self.num_classes = 3
        self.input_shape = (2,)
        self.train_per_class, self.test_per_class, self.seed = train_per_class, test_per_class, seed
        self.passes_per_epoch = int(passes_per_epoch)

    def load_arrays(self) -> Arrays:
        return study_toy2d(self.train_per_class, self.test_per_class, seed=self.seed)

    def train_dataloader(self):
        """The training batches of one pass (`ArrayDataModule.train_dataloader`), `passes_per_epoch` times."""
        loader = super().train_dataloader()
        return loader if self.passes_per_epoch == 1 else RepeatedLoader(loader, self.passes_per_epoch)
