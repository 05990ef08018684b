"""Option groups of `LipschitzCallback` / `LipschitzMeter`: small frozen dataclasses, like `MLPBounds`.

In a LightningCLI config each group is one nested key (`lipschitz: {points: {max_samples: 2000}, upper:
{certified: true}}`), on the command line a dotted flag (`--lipschitz.points.max_samples 2000`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from torch import Tensor

Key = Union[int, str]  # noqa: UP007 (a runtime alias for jsonargparse); int first: a YAML `input_key: 0` stays an index

__all__ = ["Key", "OptimisedBound", "PointOptions", "UpperBound"]


def _positive(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class PointOptions:
    """Which points are measured and how they are read.

    max_samples: at most this many points of each source (a seeded random subset, the same at every
        measurement); None = all of them.
    seed: seed of the subset and of the random points (interp/noise); the random points of a measurement
        depend only on (seed, epoch, rank), so a resumed run draws the same ones.
    batch_size: points per Jacobian batch (memory ~ batch_size x K x d numbers for K logits, d inputs).
    input_key, label_key, get_input, get_label: how to read inputs/labels from the user's batches (defaults:
        element 0/1 of a tuple, "x"/"input"/"image" and "y"/"label"/"target" of a dict).
    train_points, train_labels, test_points, test_labels: explicit point tensors. Without them the points are
        the datamodule's in-memory `train_x`/`train_y` (`test_x`/`test_y`) tensors if it has them, else the
        samples of its loaders (training points from `datamodule.train_dataloader()`, else
        `trainer.train_dataloader`; test points from the first validation loader, else the test loader).
    """

    max_samples: int | None = None
    seed: int = 0
    batch_size: int = 1024
    input_key: Key | None = None
    label_key: Key | None = None
    get_input: Callable[[Any], Tensor] | None = None
    get_label: Callable[[Any], Tensor] | None = None
    train_points: Tensor | None = None
    train_labels: Tensor | None = None
    test_points: Tensor | None = None
    test_labels: Tensor | None = None

    def __post_init__(self) -> None:
        _positive("LipschitzCallback", "batch_size", self.batch_size)
        if self.max_samples is not None:
            _positive("LipschitzCallback", "max_samples", self.max_samples)


@dataclass(frozen=True)
class UpperBound:
    """lipschitz/upper (product of per-layer constants) and lipschitz/upper_available.

    enabled: measure it. certified: every layer constant a guaranteed upper bound (slower); otherwise per-layer
    norms by warm-started power iteration, which may err slightly low."""

    enabled: bool = True
    certified: bool = False


@dataclass(frozen=True)
class OptimisedBound:
    """lipschitz/lower_opt: gradient ascent on ||J(x)||_2 from the top_m training points (steps steps), every
    `every`-th measurement (0 = never); points are clipped to data_box = (low, high) when given. A lower bound."""

    every: int = 0
    top_m: int = 8
    steps: int = 50
    data_box: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 0:
            raise ValueError(f"LipschitzCallback: optimised_every must be a non-negative integer, got {self.every!r}")
        _positive("LipschitzCallback", "optimised_top_m", self.top_m)
        _positive("LipschitzCallback", "optimised_steps", self.steps)
