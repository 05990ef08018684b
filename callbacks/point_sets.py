"""Point sets of `LipschitzCallback`: where the local Lipschitz constant ||J(x)||_2 is measured.

The max of ||J(x)||_2 over any set of real inputs is a guaranteed lower bound of the Lipschitz constant (L2
norms on the flattened input and output), so every point set gives one: `lipschitz/lower_<name>`. A point
set makes its points from the batches of a data source ("train": the training points, "test": the test
points), one batch at a time. Each measurement asks every set for a fresh accumulator (`accumulator()`), feeds
it the source's batches (`Batch`: the inputs, labels, stable indices, and ||J|| at the inputs themselves,
computed once per batch and shared) and takes its `LowerBoundStats` at the end (reduced across DDP ranks); the
set then says which metrics to log. The built-in sets of the data themselves (`TrainPoints`, `TestPoints`)
accumulate the shared norms: on the training points those of the warm-started estimator, whose refined
statistics they return.

A new point set is one class (and one test):

    class ShiftedPoints(PointSet):
        '''x + delta along the all-ones direction: lipschitz/lower_shift.'''

        def __init__(self, delta: float = 0.5) -> None:
            super().__init__(name="shift")
            self.delta = delta

        def points(self, x, y, model, generator):
            return x + self.delta

    LipschitzCallback(point_sets=[ShiftedPoints(0.5)])

or in a LightningCLI config (`--lipschitz.point_sets`), by class path:

    lipschitz:
      point_sets:
        - class_path: mypackage.ShiftedPoints
          init_args: {delta: 0.5}

Randomness must come from `generator` (a CPU torch.Generator seeded from (seed, epoch, rank) by the callback),
never from the global RNG: then a resumed run draws the same points and training is not disturbed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lipschitz_dd.bounds import (
    LowerBoundStats,
    SoftmaxOutput,
    convex_combinations,
    gaussian_perturbations,
    jacobian_spectral_norms,
    pgd_perturbations,
)
from lipschitz_dd.metric_names import AVG, AVG_SOFTMAX, AVG_TOL, LOWER, LOWER_SOFTMAX, RMS

__all__ = [
    "Accumulator",
    "Batch",
    "DataAccumulator",
    "InterpolatedPoints",
    "NoisePoints",
    "PGDPoints",
    "PointSet",
    "SoftmaxTrainPoints",
    "TestPoints",
    "TrainPoints",
]

Source = Literal["train", "test"]


class Batch:
    """One batch of a source during a measurement: inputs x [b, ...], labels y [b] or None, stable point
    indices [b], the measured model, the measurement's generator and `jacobian_norms` (the estimator for new
    points). `labels()`: y, else the model's predicted classes (computed once); `norms()`: ||J(x_i)||_2 at the
    inputs themselves (computed once per batch, by `data_norms(x, indices)`, and shared by every set)."""

    def __init__(self, x, y, indices, model, generator, jacobian_norms, data_norms) -> None:
        self.x, self.y, self.indices, self.model, self.generator = x, y, indices, model, generator
        self.jacobian_norms = jacobian_norms
        self._data_norms = data_norms
        self._predicted: Tensor | None = None
        self._norms: Tensor | None = None

    def labels(self) -> Tensor:
        if self.y is not None:
            return self.y
        if self._predicted is None:
            with torch.no_grad():
                self._predicted = self.model(self.x).argmax(dim=-1)
        return self._predicted

    def norms(self) -> Tensor:
        if self._norms is None:
            self._norms = self._data_norms(self.x, self.indices)
        return self._norms


class Accumulator:
    """Statistics of one point set over one measurement: `add` each batch, then `finish`. `finish(data_stats)`
    gets the source's own statistics of the data points (the warm estimator's refined ones on the training
    points, None elsewhere). Default: ||J|| at the points the set makes from each batch."""

    def __init__(self, point_set: PointSet) -> None:
        self.point_set = point_set
        self.stats = LowerBoundStats()
        self._data: DataAccumulator | None = None

    def add(self, batch: Batch) -> None:
        point_set = self.point_set
        labels = batch.labels() if point_set.labels else batch.y
        made = point_set.points(batch.x, labels, batch.model, batch.generator)
        if made is batch.x and type(point_set).norms is PointSet.norms:  # a user's set of the data themselves
            self._data = self._data or DataAccumulator()
            self._data.add(batch)
            return
        for chunk in [made] if isinstance(made, Tensor) else made:
            if len(chunk):
                self.stats.update(point_set.norms(batch.model, chunk, batch.jacobian_norms))

    def finish(self, data_stats: LowerBoundStats | None) -> LowerBoundStats:
        return self._data.finish(data_stats) if self._data is not None else self.stats


class DataAccumulator(Accumulator):
    """The data points themselves: the shared per-batch norms; on a source with its own statistics (the
    training points' warm estimator) those statistics."""

    def __init__(self) -> None:
        self.stats = LowerBoundStats()

    def add(self, batch: Batch) -> None:
        self.stats.update(batch.norms())

    def finish(self, data_stats: LowerBoundStats | None) -> LowerBoundStats:
        return copy.copy(data_stats) if data_stats is not None else self.stats


class PointSet:
    """Base class of a point set (subclass it and override `points`; see the module doc).

    Args:
        name: the metric is `lipschitz/lower_<name>`; unique among the callback's point sets.
        source: the data its points are made from: "train" (the training points) or "test" (the test points).
        labels: whether `points` needs labels: it then gets the batch's labels, or the model's predicted
            classes (argmax of the logits) where the batch has none; otherwise y may be None.
    """

    def __init__(self, name: str, source: Source = "train", labels: bool = False) -> None:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"LipschitzCallback: a point set needs a non-empty name without '/', got {name!r}")
        if source not in ("train", "test"):
            raise ValueError(f"LipschitzCallback: point set {name!r}: source must be 'train' or 'test', got {source!r}")
        self.name, self.source, self.labels = name, source, labels

    def start(self, num_points: int | None) -> None:
        """Called before each pass over the source with this rank's number of source points (None if the
        source is a stream of unknown length). Default: nothing."""

    def accumulator(self) -> Accumulator:
        """A fresh accumulator for one measurement (see `Accumulator`). Default: ||J|| at `points`."""
        return Accumulator(self)

    def points(
        self, x: Tensor, y: Tensor | None, model: nn.Module, generator: torch.Generator
    ) -> Tensor | Iterable[Tensor]:
        """The points made from one batch x [b, ...] (labels y [b] or None; see `labels`): a tensor of inputs
        [n, ...] or an iterable of such chunks (to bound memory). Returning `x` itself reuses the batch's shared
        norms and statistics, as `TrainPoints` / `TestPoints` do (unless the set overrides `norms`)."""
        raise NotImplementedError(f"{type(self).__name__} must define points(x, y, model, generator)")

    def norms(self, model: nn.Module, points: Tensor, jacobian_norms: Callable[[Tensor], Tensor]) -> Tensor:
        """||J(z)||_2 at each of `points` [n, ...] -> [n]. Default: `jacobian_norms(points)`, the callback's
        estimator (exact, or power iteration erring low). Override to use another one, e.g. a warm-started
        per-sample estimator keeping its state in the point set (see `state_dict`): it must err low (or be
        exact) for the max to stay a guaranteed lower bound."""
        return jacobian_norms(points)

    def metrics(self, stats: LowerBoundStats) -> dict[str, float]:
        """The logged values from the statistics of ||J|| over all its points (all ranks): by default the max,
        `lipschitz/lower_<name>`, a guaranteed lower bound."""
        return {f"lipschitz/lower_{self.name}": stats.max}

    def state_dict(self) -> dict[str, Any]:
        """State to keep across a checkpoint and resume (saved in the callback's state under its name).
        Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned. Default: nothing."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, source={self.source!r})"


class TrainPoints(PointSet):
    """The training points themselves: lipschitz/lower (max, a lower bound), lipschitz/avg and lipschitz/rms
    (mean and root-mean-square of ||J(x)||_2 over them; descriptions of the distribution, not bounds), and
    lipschitz/avg_tol when the norms come from the callback's warm-started estimator (mean relative change of
    its last iteration per point, 0 for exact values: how far avg and rms may still be too low)."""

    def __init__(self, lower: bool = True, average: bool = True) -> None:
        super().__init__(name="train", source="train")
        self.lower, self.average = lower, average

    def points(self, x, y, model, generator):
        return x

    def accumulator(self) -> Accumulator:
        return DataAccumulator()

    def metrics(self, stats: LowerBoundStats) -> dict[str, float]:
        metrics = {LOWER: stats.max} if self.lower else {}
        if self.average:
            metrics[AVG], metrics[RMS] = stats.mean, stats.rms
        if stats.has_tol and metrics:
            metrics[AVG_TOL] = stats.avg_tol
        return metrics


class TestPoints(PointSet):
    """The test points (the first validation loader, else the test loader): lipschitz/lower_test."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        super().__init__(name="test", source="test")

    def points(self, x, y, model, generator):
        return x

    def accumulator(self) -> Accumulator:
        return DataAccumulator()


class InterpolatedPoints(PointSet):
    """About `num_points` convex combinations lam*x_i + (1-lam)*x_j of pairs of training points drawn within
    each batch (in proportion to the batch's share of the points), lam from `lambdas`: lipschitz/lower_interp."""

    def __init__(self, num_points: int = 10_000, lambdas: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5)) -> None:
        super().__init__(name="interp", source="train")
        if not isinstance(num_points, int) or num_points < 1:
            raise ValueError(f"LipschitzCallback: interp_points must be a positive integer, got {num_points!r}")
        if not lambdas or not all(0.0 <= lam <= 1.0 for lam in lambdas):
            raise ValueError(f"LipschitzCallback: interp_lambdas must be non-empty, in [0, 1], got {lambdas}")
        self.num_points, self.lambdas = num_points, tuple(float(lam) for lam in lambdas)
        self._source_points: int | None = None

    def start(self, num_points: int | None) -> None:
        self._source_points = num_points

    def points(self, x, y, model, generator):
        if len(x) < 2:
            return ()
        share = math.ceil(self.num_points * len(x) / (self._source_points or len(x)))
        return convex_combinations(x, share, lambdas=self.lambdas, generator=generator)


class NoisePoints(PointSet):
    """x + N(0, sigma^2 I) for every training point, clipped to `data_box`: lipschitz/lower_noise (or
    lipschitz/lower_<name>: give each of several sigmas its own name)."""

    def __init__(self, sigma: float = 0.1, data_box: tuple[float, float] | None = None, name: str = "noise") -> None:
        super().__init__(name=name, source="train")
        if not sigma > 0:
            raise ValueError(f"LipschitzCallback: noise_sigma must be > 0, got {sigma}")
        self.sigma, self.data_box = sigma, data_box

    def points(self, x, y, model, generator):
        return gaussian_perturbations(x, self.sigma, generator=generator, data_box=self.data_box)


class PGDPoints(PointSet):
    """PGD points maximising the cross-entropy loss in the L2 ball of radius `eps` around each training point
    (labels: the batch's, else the predicted classes), inside `data_box` when given (the exact projection onto the
    ball and the box): lipschitz/lower_pgd (or lipschitz/lower_<name>: give each of several eps its own name).

    The schedule (`bounds.pgd_perturbations`): `steps` ascent steps along the normalised gradient, the t-th of size
    step_size * decay**t (step_size None: 2.5 * eps / steps), from x + start_noise * N(0, I) (the callback's
    generator). Default: 10 steps of 0.25 eps from x, cheap enough for every measurement. The study's schedule is
    steps=1000, step_size=10, decay=0.95, start_noise=1e-4 (`bounds.STUDY_PGD`), with the data box, e.g.
    data_box=[0, 1] for images scaled to [0, 1]: about 100x the cost of the default at every measurement."""

    def __init__(
        self,
        eps: float = 0.5,
        steps: int = 10,
        data_box: tuple[float, float] | None = None,
        name: str = "pgd",
        step_size: float | None = None,
        decay: float = 1.0,
        start_noise: float = 0.0,
    ) -> None:
        super().__init__(name=name, source="train", labels=True)
        if not eps > 0:
            raise ValueError(f"LipschitzCallback: pgd_eps must be > 0, got {eps}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"LipschitzCallback: pgd_steps must be a positive integer, got {steps!r}")
        if (step_size is not None and not step_size > 0) or not 0 < decay <= 1 or not start_noise >= 0:
            raise ValueError(
                f"LipschitzCallback: PGDPoints needs step_size > 0 (or None), 0 < decay <= 1 and start_noise >= 0, "
                f"got step_size={step_size!r}, decay={decay!r}, start_noise={start_noise!r}"
            )
        if data_box is not None and (len(data_box) != 2 or not data_box[0] <= data_box[1]):
            raise ValueError(
                f"LipschitzCallback: PGDPoints data_box must be [low, high] with low <= high, got {data_box}"
            )
        self.eps, self.steps, self.data_box = eps, steps, None if data_box is None else tuple(data_box)
        self.step_size, self.decay, self.start_noise = step_size, decay, start_noise

    def points(self, x, y, model, generator):
        return pgd_perturbations(
            model,
            x,
            y,
            eps=self.eps,
            steps=self.steps,
            step_size=self.step_size,
            data_box=self.data_box,
            decay=self.decay,
            start_noise=self.start_noise,
            generator=generator,
        )


class SoftmaxTrainPoints(PointSet):
    """The training points, measured on softmax(f) instead of the logits f: lipschitz/lower_softmax (max of
    ||J_softmax(f)(x)||_2 over them, a guaranteed lower bound of Lip(softmax o f)) and lipschitz/avg_softmax (their
    mean, not a bound). J = (diag(p) - p p^T) J_f(x) with p = softmax(f(x)); the norms are exact (K VJPs) or power
    iteration erring low, as `jacobian_method` says. Switched on by LipschitzCallback(output_transform="softmax")."""

    def __init__(self, jacobian_method: str = "auto") -> None:
        super().__init__(name="softmax", source="train")
        self.jacobian_method = jacobian_method

    def points(self, x, y, model, generator):
        return x

    def norms(self, model: nn.Module, points: Tensor, jacobian_norms: Callable[[Tensor], Tensor]) -> Tensor:
        return jacobian_spectral_norms(SoftmaxOutput(model), points, method=self.jacobian_method)

    def metrics(self, stats: LowerBoundStats) -> dict[str, float]:
        return {LOWER_SOFTMAX: stats.max, AVG_SOFTMAX: stats.mean}
