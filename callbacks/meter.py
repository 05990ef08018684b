"""`LipschitzMeter`: the measurement engine of `LipschitzCallback`, usable without Lightning.

    meter = LipschitzMeter(point_sets=[TrainPoints(), TestPoints()])
    for epoch in range(epochs):
        train_one_epoch(model)
        m = meter.measure(model, {"train": x_train, "test": x_test}, epoch)
        print(epoch, m.metrics["lipschitz/lower"], m.metrics["lipschitz/upper"])

One measurement (`measure`), in order:
  1. isolate the model (eval mode, parameters frozen, autograd on, global RNG restored afterwards; float32);
  2. per source ("train", "test"): one pass over its batches, each point set's accumulator fed every batch,
     the training points' norms by the warm-started estimator (`TrainNorms`, see _warm.py);
  3. the optimised lower bound from the top training points (when due);
  4. the upper bound (`UpperBoundTracker`) and the MLP bounds (`MLPBoundsTracker`, when due);
  5. one reduction across ranks of the statistics and scalars (`Ranks`; a plain loop has one rank);
  6. the metrics (each set's, the upper and MLP bounds', the parameter distances) -> `Measurement`.
Norms are Euclidean on the flattened input and output; the metrics are documented in callbacks/lipschitz.py.
This module does not import Lightning: `LipschitzCallback` adapts it to the hooks.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

import numpy as np
import torch
from torch import Tensor, nn

from lipschitz_dd.bounds import LowerBoundStats, jacobian_spectral_norms, optimised_lower_bound
from lipschitz_dd.bounds.jacobian import float32_measurement
from lipschitz_dd.bounds.lower import model_device
from lipschitz_dd.bounds.optimised import TopPoints
from lipschitz_dd.bounds.warm_lower import MethodChoice, free_memory_bytes
from lipschitz_dd.callbacks._isolation import measurement_mode, preserved_rng_state
from lipschitz_dd.callbacks._mlp_bounds import REDUCTIONS as MLP_REDUCTIONS
from lipschitz_dd.callbacks._mlp_bounds import MLPBounds, MLPBoundsTracker
from lipschitz_dd.callbacks._points import PointSource
from lipschitz_dd.callbacks._trajectory import ParameterTrajectory, flat_parameters
from lipschitz_dd.callbacks._upper import UpperBoundTracker
from lipschitz_dd.callbacks._warm import TrainNorms
from lipschitz_dd.callbacks.options import OptimisedBound, UpperBound
from lipschitz_dd.callbacks.point_sets import Batch, PointSet, TrainPoints
from lipschitz_dd.metric_names import DIST_INIT, LOWER_OPT, PATH_LENGTH, SECONDS, UPPER, UPPER_AVAILABLE, UPPER_SOFTMAX

__all__ = ["LipschitzMeter", "Measurement", "Ranks", "SingleProcess"]

OPTIMISED = "opt"
"""Name of the optimised lower bound's statistics (lipschitz/lower_opt); no point set may take it."""

UNKNOWN = 2.0
"""lower/exact of a rank that measured no training points (above 1.0: the min over ranks ignores it)."""

Warn = Callable[[str, str], None]
PointsLike = Union[Tensor, PointSource, Mapping[str, Any], Callable[[str], Any]]  # noqa: UP007
Progress = Callable[[int | None], AbstractContextManager[Callable[[int], object]]]


class Ranks(Protocol):
    """The processes measuring together (DDP): each measures its share of the points; every method is a
    collective that every rank must call."""

    rank: int
    world_size: int
    device: torch.device

    def reduce_scalars(self, values: dict[str, float], ops: dict[str, str]) -> dict[str, float]: ...

    def reduce_stats(self, stats: dict[str, LowerBoundStats]) -> dict[str, LowerBoundStats]: ...


@dataclass
class SingleProcess:
    """One process (a plain PyTorch loop): reductions return their input."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1

    def reduce_scalars(self, values: dict[str, float], ops: dict[str, str]) -> dict[str, float]:
        return dict(values)

    def reduce_stats(self, stats: dict[str, LowerBoundStats]) -> dict[str, LowerBoundStats]:
        return dict(stats)


@dataclass
class Measurement:
    """One measurement: `metrics` as logged (empty when the model cannot be measured), `stats` the reduced
    statistics per point set (and "opt"), `method` how the training points' norms were computed, `lower_exact`
    whether lipschitz/lower is an exactly computed ||J(x)||_2 (the exact method; or the warm method with its top
    candidate recomputed exactly, K <= 128: then it is the exact method's max whenever the maximiser was among
    the refined candidates) rather than a warm estimate erring low (warm with K > 128); None without one."""

    epoch: int
    metrics: dict[str, float]
    stats: dict[str, LowerBoundStats] = field(default_factory=dict)
    method: MethodChoice | None = None
    lower_exact: bool | None = None


class JacobianNorms:
    """x -> ||J(x_i)||_2 per point (`jacobian_spectral_norms` with `method`); NaN for the batch (warned once) if
    the SVD fails on non-finite values."""

    def __init__(self, model: nn.Module, method: str, warn: Warn) -> None:
        self.model, self.method, self.warn = model, method, warn

    def __call__(self, x: Tensor) -> Tensor:
        try:
            return jacobian_spectral_norms(self.model, x, method=self.method)
        except torch.linalg.LinAlgError as error:
            self.warn("linalg", f"LipschitzCallback: Jacobian norms failed ({error}); logging NaN")
            return torch.full((len(x),), float("nan"), device=x.device)


JACOBIAN_METHODS = {"auto": "auto", "exact": "exact", "warm": "auto"}
"""`method` -> the estimator of the points that keep no vectors between measurements (every set but the
training points, and the optimised bound): "exact" K VJPs per point; otherwise `jacobian_spectral_norms`'
"auto", exact up to 64 outputs and power iteration (erring low) above."""


class LipschitzMeter:
    """Measures the bounds of a model at given points; keeps what spans measurements (warm-start vectors, the
    upper bound's state, theta_0 and the path length, the history). Options as in `LipschitzCallback`;
    `point_sets` is the full list (default: the training points). `warn(key, message)` reports a problem once
    per key (default: `warnings.warn`)."""

    def __init__(
        self,
        point_sets: Sequence[PointSet] | None = None,
        *,
        method: str = "auto",
        exact_max_outputs: int = 16,
        jacobian_method: str | None = None,
        batch_size: int = 1024,
        seed: int = 0,
        max_samples: int | None = None,
        upper: UpperBound | None = None,
        optimised: OptimisedBound | None = None,
        mlp_bounds: MLPBounds | None = None,
        track_params: bool = True,
        softmax_upper: bool = False,
        warn: Warn | None = None,
    ) -> None:
        self.point_sets = list(point_sets) if point_sets is not None else [TrainPoints()]
        self.method, self.exact_max_outputs = method, exact_max_outputs
        self.jacobian_method = jacobian_method or JACOBIAN_METHODS[method]
        self.batch_size, self.seed, self.max_samples = batch_size, seed, max_samples
        self.upper, self.optimised = upper or UpperBound(), optimised or OptimisedBound()
        self.track_params = track_params
        self.softmax_upper = softmax_upper
        self._warned: set[str] = set()
        self.warn = warn or self._warn
        self.last_metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.trajectory = ParameterTrajectory()
        self.upper_tracker = UpperBoundTracker(certified=self.upper.certified)
        self.mlp_tracker = MLPBoundsTracker(mlp_bounds or MLPBounds())
        self.train_norms = TrainNorms(
            method, chunk_size=batch_size, seed=seed, warn=self.warn, exact_max_outputs=exact_max_outputs
        )
        self.measurements = 0
        self.last_measured_epoch: int | None = None

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    # ------------------------------------------------------------------ one measurement
    def measure(
        self,
        model: nn.Module,
        points: PointsLike,
        epoch: int,
        *,
        record: bool = True,
        last: bool = False,
        ranks: Ranks | None = None,
        parameters: Callable[[], Iterator[nn.Parameter]] | None = None,
        progress: Progress | None = None,
    ) -> Measurement:
        """Measure `model` (logits = model(x)) at `points`: a tensor of training inputs, a `PointSource`, a
        mapping {"train": ..., "test": ...} of those, or a function kind -> source (resolved when needed).
        `record` adds the parameters to the path and the measurement to the history; `last`: the final
        measurement (the scheduled MLP bounds run); `parameters`: those whose distances are tracked (default the
        model's). Every rank must call it."""
        ranks = ranks or SingleProcess(model_device(model, torch.device("cpu")))
        parameters = parameters or model.parameters
        sources = _Sources(points, self.max_samples, self.seed, self.batch_size, ranks)
        start = time.perf_counter()
        with preserved_rng_state(), measurement_mode(model), float32_measurement():  # autocast off
            finite = all(bool(torch.isfinite(p).all()) for p in parameters())
            try:
                stats = self._measure_points(model, sources, epoch, finite, ranks, progress)
                scalars = self._measure_upper(model, sources, finite) if self.upper.enabled else {}
                if finite and self.mlp_tracker.enabled:
                    examples = lambda: sources.example(64)  # noqa: E731
                    scalars.update(self.mlp_tracker.compute(model, examples, self.measurements, last, self.warn))
            except RuntimeError as error:
                if "inference" in str(error).lower():
                    raise RuntimeError(
                        "LipschitzCallback needs autograd for input Jacobians but got inference tensors: create "
                        "the Trainer with inference_mode=False for trainer.validate/test"
                    ) from error
                raise
            except ValueError as error:  # the same on every rank: the model or its inputs, not this batch
                self.warn(
                    "unmeasurable",
                    f"LipschitzCallback: cannot measure this model ({error}); no "
                    "lipschitz/* metrics are logged, training goes on",
                )
                return Measurement(epoch, {})
        stats = ranks.reduce_stats(stats)
        exact = self._lower_exact(stats)
        scalars = ranks.reduce_scalars(
            {**scalars, **exact, SECONDS: time.perf_counter() - start},
            {
                "upper/value": "max",
                "upper/available": "min",
                "lower/exact": "min",
                SECONDS: "max",
                **MLP_REDUCTIONS,
            },
        )
        metrics = self._metrics(stats, scalars)
        metrics.update(self.mlp_tracker.metrics(scalars))
        if self.track_params:
            theta = flat_parameters(parameters())
            if record:
                metrics[DIST_INIT], metrics[PATH_LENGTH] = self.trajectory.step(theta)
            elif self.trajectory.theta_0 is not None:
                metrics[DIST_INIT] = self.trajectory.distance(theta)
        if record:
            self.last_measured_epoch = epoch
            self.measurements += 1
        self._warn_non_finite(epoch, metrics)
        self.last_metrics = metrics
        self.history.append({"epoch": float(epoch), **metrics})
        lower_exact = None if scalars["lower/exact"] == UNKNOWN else bool(scalars["lower/exact"])
        return Measurement(epoch, metrics, stats, self.train_norms.choice, lower_exact)

    def mlp_bounds(self, model: nn.Module, points: PointsLike, ranks: Ranks | None = None) -> dict[str, float]:
        """The MLP bounds scheduled at the last measurement, for final weights measured before the run knew it
        would stop there; added to the latest measurement."""
        ranks = ranks or SingleProcess(model_device(model, torch.device("cpu")))
        sources = _Sources(points, self.max_samples, self.seed, self.batch_size, ranks)
        with preserved_rng_state(), measurement_mode(model):
            local = {}
            if all(bool(torch.isfinite(p).all()) for p in model.parameters()) and self.mlp_tracker.enabled:
                examples = lambda: sources.example(64)  # noqa: E731
                local = self.mlp_tracker.compute(model, examples, self.measurements, True, self.warn)
        metrics = self.mlp_tracker.metrics(ranks.reduce_scalars(local, MLP_REDUCTIONS))
        self.last_metrics.update(metrics)
        if self.history:
            self.history[-1].update(metrics)
        return metrics

    def _measure_points(
        self, model: nn.Module, sources: _Sources, epoch: int, finite: bool, ranks: Ranks, progress: Progress | None
    ) -> dict[str, LowerBoundStats]:
        """This rank's statistics of every point set (and of the optimised bound, "opt", when due). Non-finite
        parameters are not measured: NaN statistics, counted as the source's points."""
        point_sets = self.point_sets
        opt = self.optimised
        run_opt = opt.every > 0 and self.measurements % opt.every == 0
        kinds = {s.source for s in point_sets} | ({"train"} if run_opt else set())
        found = {kind: sources.get(kind) for kind in ("train", "test") if kind in kinds}
        if not finite:
            nan = float("nan")
            counts = {kind: (s.num_points or 1) if s is not None else 0 for kind, s in found.items()}
            stats = {s.name: LowerBoundStats(counts[s.source], nan, nan, nan) for s in point_sets}
            if run_opt:
                stats[OPTIMISED] = LowerBoundStats()
            return stats
        seed = int(np.random.SeedSequence([self.seed, epoch, ranks.rank]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)  # CPU: the bounds engine draws on it
        norms = JacobianNorms(model, self.jacobian_method, self.warn)
        top = TopPoints(opt.top_m) if run_opt else None
        budget = None  # every rank must choose the same method: the smallest free memory of all ranks
        if ranks.world_size > 1:
            free = free_memory_bytes(ranks.device) // 4
            budget = int(ranks.reduce_scalars({"budget": free}, {"budget": "min"})["budget"])
        self.train_norms.memory_budget_bytes = budget
        total = sum(s.num_points or 0 for s in found.values() if s is not None)
        with progress(total or None) if progress is not None else nullcontext(lambda n: None) as update:
            stats = self._pass(model, point_sets, found, ranks.device, generator, norms, top, update)
        if top is not None:  # no top points on this rank: count 0, left out of the reduced max
            stats[OPTIMISED] = LowerBoundStats()
            if top.points is not None:
                result = optimised_lower_bound(
                    model,
                    top.points,
                    top_m=opt.top_m,
                    steps=opt.steps,
                    data_box=opt.data_box,
                    method=self.jacobian_method,
                    generator=generator,
                )
                stats[OPTIMISED] = LowerBoundStats(count=len(top.points), max=result.value, argmax_index=0)
        return stats

    def _pass(self, model, point_sets, sources, device, generator, norms, top, progress) -> dict[str, LowerBoundStats]:
        """One pass over each source ("train", then "test"): every set's accumulator gets every batch (the
        sets in list order, so the random points depend only on the generator's seed); on the training points
        the shared norms come from the warm-started estimator and `top` collects the largest."""
        stats: dict[str, LowerBoundStats] = {}
        for kind in ("train", "test"):
            sets = [s for s in point_sets if s.source == kind]
            source = sources.get(kind)
            collect_top = top is not None and kind == "train"
            if source is None or not (sets or collect_top):
                stats.update({s.name: LowerBoundStats() for s in sets})
                continue
            for point_set in sets:
                point_set.start(source.num_points)
            accumulators = [s.accumulator() for s in sets]
            warm = self.train_norms if kind == "train" else None
            if warm is not None:
                warm.begin()
                data_norms = lambda x, indices, warm=warm: warm(model, x, indices)  # noqa: E731
            else:
                data_norms = lambda x, indices: norms(x)  # noqa: E731
            for x, y, indices in source.indexed_batches(device):
                batch = Batch(x, y, indices, model, generator, norms, data_norms)
                if collect_top:
                    top.add(x, batch.norms())
                for accumulator in accumulators:
                    accumulator.add(batch)
                progress(len(x))
            data_stats = warm.finish(model) if warm is not None else None
            for point_set, accumulator in zip(sets, accumulators, strict=True):
                stats[point_set.name] = accumulator.finish(data_stats)
        return {s.name: stats[s.name] for s in point_sets}

    def _measure_upper(self, model: nn.Module, sources: _Sources, finite: bool) -> dict[str, float]:
        """The upper bound (identical on every rank); not available when the model cannot be bounded (warned
        once with the reason) or its parameters are not finite (warned as non-finite)."""
        value, available = float("nan"), False
        if finite:
            value, available, reason = self.upper_tracker.compute(model, lambda: sources.example(1))
            if not available:
                self.warn(
                    "upper",
                    f"LipschitzCallback: no upper bound for this model ({reason}); "
                    "logging lipschitz/upper_available=0 and the lower bounds only",
                )
        return {"upper/value": value, "upper/available": float(available)}

    def _lower_exact(self, stats: dict[str, LowerBoundStats]) -> dict[str, float]:
        """{"lower/exact": 1.0 / 0.0} when the training points were measured (see `Measurement.lower_exact`)."""
        result, choice = self.train_norms.result, self.train_norms.choice
        if choice is None or result is None or not any(isinstance(s, TrainPoints) for s in self.point_sets):
            return {"lower/exact": UNKNOWN}  # every rank sends the key; UNKNOWN is neutral for the min
        return {"lower/exact": float(choice.method == "exact" or result.refined_exactly > 0)}

    def _metrics(self, stats: dict[str, LowerBoundStats], scalars: dict[str, float]) -> dict[str, float]:
        """Statistics and scalars of all ranks -> the logged metrics. A set without points on every rank gives
        no metric rather than NaN."""
        metrics: dict[str, float] = {}
        for point_set in self.point_sets:
            if stats[point_set.name].count > 0:
                metrics.update(point_set.metrics(stats[point_set.name]))
        if self.upper.enabled:
            if scalars["upper/available"] > 0:
                metrics[UPPER] = scalars["upper/value"]
                if self.softmax_upper:  # ||diag(p) - p p^T||_2 <= 1/2
                    metrics[UPPER_SOFTMAX] = 0.5 * scalars["upper/value"]
            metrics[UPPER_AVAILABLE] = scalars["upper/available"]
        if OPTIMISED in stats and stats[OPTIMISED].count > 0:
            metrics[LOWER_OPT] = stats[OPTIMISED].max
        metrics[SECONDS] = scalars[SECONDS]
        return metrics

    def _warn_non_finite(self, epoch: int, metrics: dict[str, float]) -> None:
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        if bad:
            self.warn(
                "non-finite",
                f"LipschitzCallback: non-finite values at epoch {epoch} (the run has "
                f"probably diverged); logging them as they are: {bad}",
            )

    # ------------------------------------------------------------------ state
    def state_dict(self, rank: int = 0) -> dict[str, Any]:
        """theta_0, previous theta and path length; the upper bound's warm-start state; counters and history;
        the state of the point sets that have one; this rank's warm-start vectors of the training points."""
        return {
            "trajectory": self.trajectory.state_dict(),
            "upper_estimator": self.upper_tracker.state_dict(),
            "measurements": self.measurements,
            "last_measured_epoch": self.last_measured_epoch,
            "history": list(self.history),
            "point_sets": {s.name: s.state_dict() for s in self.point_sets if s.state_dict()},
            "train_norms": {"rank": rank, "state": self.train_norms.state_dict()},
        }

    def load_state_dict(self, state: dict[str, Any], rank: int = 0) -> None:
        self.trajectory.load_state_dict(state["trajectory"])
        self.measurements = int(state["measurements"])
        self.last_measured_epoch = state["last_measured_epoch"]
        self.history = list(state["history"])
        self.last_metrics = dict(self.history[-1]) if self.history else {}
        self.last_metrics.pop("epoch", None)
        self.upper_tracker.load_state_dict(state["upper_estimator"])
        saved = state.get("point_sets", {})  # absent in checkpoints of earlier versions
        for point_set in self.point_sets:
            if point_set.name in saved:
                point_set.load_state_dict(saved[point_set.name])
        warm = state.get("train_norms")  # absent in checkpoints of earlier versions
        if warm is not None and warm["rank"] == rank:  # another rank's vectors belong to other points
            self.train_norms.load_state_dict(warm["state"])


class _Sources:
    """The "train" / "test" sources of one measurement, resolved once each when first needed."""

    def __init__(self, points: PointsLike, max_samples, seed, batch_size, ranks: Ranks) -> None:
        if isinstance(points, (Tensor, PointSource)):
            points = {"train": points}
        self._get = points.get if isinstance(points, Mapping) else points
        self._options = dict(
            max_samples=max_samples, seed=seed, batch_size=batch_size, rank=ranks.rank, world_size=ranks.world_size
        )
        self._device = ranks.device
        self._found: dict[str, PointSource | None] = {}

    def get(self, kind: str) -> PointSource | None:
        if kind not in self._found:
            source = self._get(kind)
            if isinstance(source, Tensor):
                source = PointSource.from_tensors(source, None, **self._options)
            self._found[kind] = source
        return self._found[kind]

    def example(self, n: int) -> Tensor | None:
        """The first `n` input samples (to trace the model with): training points, else test points."""
        for kind in ("train", "test"):
            source = self.get(kind)
            if source is not None:
                for x, _ in source.batches(self._device):
                    return x[:n]
        return None
