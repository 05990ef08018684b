"""`LipschitzCallback`: lower and upper bounds of the Lipschitz constant of any LightningModule while it trains.

The network is f = `pl_module(x)` (the logits; `network=` names a submodule to use instead, `output=` picks the
logits out of a tuple or dict output), norms are Euclidean on the flattened input and output, and the
local Lipschitz constant at x is ||J(x)||_2, the largest singular value of the input Jacobian. Every measurement
runs with the model in eval mode, autograd on, parameters frozen, the global RNG streams saved and restored, so
training is bit-identical with and without the callback. Logged metrics:

    lipschitz/lower         max_{x in train} ||J(x)||_2                a guaranteed lower bound of Lip(f);
                            the exact max also with method="warm" (its candidates are computed exactly)
    lipschitz/avg, /rms     mean and root-mean-square of ||J(x)||_2    over train; not bounds (warm: err low)
    lipschitz/avg_tol       mean relative change of the warm estimates' last iteration (0 = exact values):
                            about how much avg and rms may still be too low
    lipschitz/lower_test    max over the test points                   a lower bound
    lipschitz/lower_interp  max over random convex combinations of pairs of train points   a lower bound
    lipschitz/lower_noise   max over Gaussian-perturbed train points   a lower bound
    lipschitz/lower_pgd     max over PGD-perturbed train points        a lower bound
    lipschitz/lower_<name>  max over the points of a user's point set  a lower bound
    lipschitz/lower_opt     the optimised lower bound (gradient ascent on ||J(x)||_2)       a lower bound
    lipschitz/upper         product of per-layer constants             an upper bound (absent if unavailable);
                            per-layer norms by warm-started power iteration, which may err slightly low,
                            unless upper_certified=True (every layer constant a guaranteed upper bound)
    lipschitz/upper_available  1.0 / 0.0
    lipschitz/upper_eclipse ECLipsE-Fast, MLPs only (every measurement)      a certified upper bound
    lipschitz/upper_sdp     LipSDP-Neuron, small MLPs (mlp_bounds.sdp_every)  a certified upper bound
    lipschitz/exact         the exact constant of small ReLU MLPs (mlp_bounds.exact_every), or when the time
                            limit cut the search lipschitz/exact_lower and lipschitz/exact_upper (_mlp_bounds.py)
    lipschitz/lower_softmax, /avg_softmax, /upper_softmax   with output_transform="softmax", in addition: the
                            max and mean of ||J|| of softmax(f) over train, and 1/2 x lipschitz/upper (the
                            softmax is 1/2-Lipschitz in L2: ||diag(p) - p p^T||_2 <= 1/2)
    lipschitz/seconds       wall time of the measurement (max over ranks)
    params/dist_init        ||theta - theta_0||_2
    params/path_length      sum of ||theta_{t+1} - theta_t||_2 over consecutive measurements

Training points (`method`, see _warm.py): one estimator per process, kept for the whole run, computes ||J(x)||_2
at the training points. "exact" forms the K x d Jacobian (K backward passes per point, K logits); "warm" starts
each point from the top singular vectors it kept for that point (found again by the point's stable index) and
runs 1-3 block iterations, then refines the candidates for the max and computes the largest exactly: every value
errs low, the max is the exact method's. "auto" (default) takes exact for K <= 16, where it is as fast, and
warm above; `last_method` and results.json's "measurement" entry say which ran and why. The other point sets
and the optimised bound use `jacobian_method`. Every measurement runs in float32 with autocast off, so a model
trained with precision="16-mixed" / "bf16-mixed" gets the values of its float32 weights.

Point sets (`callbacks/point_sets.py`): each lower bound over points is a `PointSet` object (name, source data,
how it makes points from a batch); the keyword flags `test`, `interp`, `noise`, `pgd` switch the built-in ones
on, `point_sets=[...]` adds any others (class_path/init_args in a LightningCLI config).

When and at which step (the epoch axis of `lipschitz_dd.epoch_axis`; epoch = finished epochs, 0 = before the
first update): epoch 0 is measured at `on_train_start` and written straight to every logger at step 0; then the
end of every epoch e <= dense_epochs, every every_n_epochs-th epoch and the last epoch, logged with
`pl_module.log` in `on_validation_epoch_end` (same row as the test loss), or in `on_train_epoch_end` when no
validation ran. Every epoch of fit, measured or not, the callback logs `step` = the epoch in that row
(Lightning's rule: a logged metric named "step" is the row's logger step, and a ModelCheckpoint's `{step}`):
any module, lipschitz_dd's (which log the same `step` themselves) or a user's plain one, gets its epoch rows at
step = epoch, with no need for the callback to know the module's own convention. If training stops after those hooks
(a stopping callback listed after this one), the final weights are written straight to the loggers at
`on_train_end`, at step = the finished epochs, the step of the last epoch's row. Metrics appear only on measured
epochs, so a monitor such as EarlyStopping sees the latest measured value in between. Under `trainer.validate` /
`trainer.test` it measures once (it leaves inference mode itself) and logs beside their metrics at Lightning's
step.

A model the bounds cannot handle (a non-tensor output without `output=`, integer inputs such as token ids,
no `forward` without `network=`) gets one warning saying why and no lipschitz/* metrics; training goes on.

Points: explicit tensors, else the datamodule's in-memory `train_x`/`test_x`, else the samples of the loaders
(any batch format: tensors, tuples, dicts, or `get_input`), always the same seeded subset (`max_samples`),
one batch in memory at a time. Under DDP each rank measures its share of the points and the `LowerBoundStats`
of every set are reduced across ranks (maxima max-reduced, means and avg_tol from summed sums and counts); each
rank keeps the warm-start vectors of its own points, all ranks choose the method with the smallest free memory
of any rank. A checkpoint holds rank 0's vectors: on resume rank 0 continues warm, the other ranks start their
points afresh (one exact or longer measurement; the max is unaffected).
`callback.last_metrics` holds the latest values, `callback.history` all of them (`{"epoch": e, metric: value}`),
e.g. for notebooks (a callback reused for another fit starts afresh; resuming from a checkpoint restores its
state):

    trainer = Trainer(callbacks=[LipschitzCallback(every_n_epochs=5, test=True)])

Modules: point_sets.py (what is measured), _points.py (where points come from), _measurement.py (one pass over
the points), _warm.py (the training points' estimator), _upper.py (the upper bound), _mlp_bounds.py (ECLipsE-Fast,
LipSDP, exact constant of MLPs), _schedule.py (when), _logging.py (the rows), _distributed.py (DDP), _trajectory.py
(parameter distances), _isolation.py (no trace on training); this file wires them to the hooks.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from tqdm.auto import tqdm

from lipschitz_dd import _lightning_internals as internals
from lipschitz_dd.bounds import LowerBoundStats, TopPoints, optimised_lower_bound
from lipschitz_dd.bounds.jacobian import float32_measurement
from lipschitz_dd.bounds.warm_lower import WARM_METHODS, MethodChoice, free_memory_bytes
from lipschitz_dd.callbacks._distributed import reduce_across_ranks, reduce_stats
from lipschitz_dd.callbacks._isolation import measurement_mode, preserved_rng_state
from lipschitz_dd.callbacks._logging import define_epoch_axis, log_epoch_row, write_row
from lipschitz_dd.callbacks._measurement import JacobianNorms, measure_point_sets, measured_network
from lipschitz_dd.callbacks._mlp_bounds import REDUCTIONS as MLP_REDUCTIONS
from lipschitz_dd.callbacks._mlp_bounds import MLPBounds, MLPBoundsTracker
from lipschitz_dd.callbacks._points import Key, PointSource, resolve_source
from lipschitz_dd.callbacks._schedule import Schedule
from lipschitz_dd.callbacks._trajectory import ParameterTrajectory, flat_parameters
from lipschitz_dd.callbacks._upper import UpperBoundTracker
from lipschitz_dd.callbacks._warm import TrainNorms
from lipschitz_dd.callbacks.point_sets import (
    InterpolatedPoints,
    NoisePoints,
    PGDPoints,
    PointSet,
    SoftmaxTrainPoints,
    TestPoints,
    TrainPoints,
)
from lipschitz_dd.epoch_axis import on_epoch_axis

__all__ = ["LipschitzCallback", "MLPBounds"]

OPTIMISED = "opt"
"""Name of the optimised lower bound's statistics (lipschitz/lower_opt); no point set may take it."""


class LipschitzCallback(Callback):
    """Measures lower/upper bounds of the Lipschitz constant of `pl_module` during `fit` (see the module doc).

    Args:
        every_n_epochs: measure at the end of every n-th epoch (besides epoch 0, the first `dense_epochs`
            epochs and the last epoch).
        dense_epochs: measure after each of the first `dense_epochs` epochs.
        max_samples: measure at most this many points of each set (a seeded random subset, the same at every
            measurement); None = all of them.
        seed: seed of the subset and of the random points (interp/noise); the random points of a measurement
            depend only on (seed, epoch, rank), so a resumed run draws the same ones.
        batch_size: points per Jacobian batch (memory ~ batch_size x K x d numbers for K logits, d inputs).
        lower: lipschitz/lower (max over training points). average: lipschitz/avg and lipschitz/rms.
        test: lipschitz/lower_test over the first validation loader (else the test loader).
        interp, interp_points, interp_lambdas: lipschitz/lower_interp over about `interp_points` convex
            combinations lam*x_i + (1-lam)*x_j of pairs of training points (pairs drawn within each batch).
        noise, noise_sigma: lipschitz/lower_noise over x + N(0, sigma^2 I) for every training point.
        pgd, pgd_eps, pgd_steps: lipschitz/lower_pgd over PGD points maximising the CE loss in the L2 ball
            of radius eps (labels: the batch's, else the model's predicted classes).
        data_box: (low, high) bounds of valid inputs; noise, PGD and optimised points are clipped to it.
        upper, upper_certified: lipschitz/upper (warm-started power iteration; certified mode is slower and a
            guaranteed upper bound) and lipschitz/upper_available.
        optimised_every, optimised_top_m, optimised_steps: lipschitz/lower_opt every k-th measurement
            (0 = never) by gradient ascent from the top-m training points.
        mlp_bounds: the certified bounds for MLPs, when the measured network is one (itself, or its `net`
            Sequential with output logit_temperature * net(x)): an `MLPBounds` with the fields upper_eclipse,
            eclipse_max_neurons (lipschitz/upper_eclipse, ECLipsE-Fast, every measurement), sdp_every,
            sdp_max_neurons (lipschitz/upper_sdp, LipSDP-Neuron), exact_every, exact_time_limit, exact_max_neurons
            (lipschitz/exact); see its docstring. None = MLPBounds(): ECLipsE-Fast wherever the network qualifies
            (silently skipped for CNNs, ResNets), LipSDP and the exact constant off. In a config:
            `lipschitz: {mlp_bounds: {exact_every: 1, sdp_every: 1}}`.
        track_params: params/dist_init and params/path_length.
        input_key, label_key, get_input, get_label: how to read inputs/labels from the user's batches
            (defaults: element 0/1 of a tuple, "x"/"input"/"image" and "y"/"label"/"target" of a dict).
        train_points, train_labels, test_points, test_labels: explicit point tensors. Without them the points
            are the datamodule's in-memory `train_x`/`train_y` (`test_x`/`test_y`) tensors if it has them
            (lipschitz_dd's datamodules do), else the samples of its loaders: training points from
            `datamodule.train_dataloader()` (else `trainer.train_dataloader`), test points from the first
            validation loader (else the test loader).
        jacobian_method: passed to `jacobian_spectral_norms` (all points except the training points themselves,
            and the optimised bound).
        method: how ||J(x)||_2 is computed at the training points (lipschitz/lower, /avg, /rms, /avg_tol): "exact"
            (K VJPs per point for K logits), "warm" (warm-started block iteration from vectors kept per point
            across measurements, the candidates for the max refined and the largest computed exactly, so
            lipschitz/lower is the exact method's; avg and rms err low by about avg_tol), or "auto": exact for
            K <= 16 (as fast there), warm above. The choice is in `last_method` and results.json.
        progress_bar: show a tqdm bar for measurements that take longer than 2 seconds (never when the Trainer
            has no progress bar, e.g. `--trainer.enable_progress_bar false`).
        network: dotted attribute path of the submodule that maps inputs to logits, for modules that call e.g.
            `self.model(x)` in `training_step` (default: `pl_module` itself).
        output: which element of a tuple/list output (an index) or dict output (a key) are the logits.
        point_sets: more point sets (`PointSet` objects, see point_sets.py), measured after the built-in ones;
            each logs lipschitz/lower_<name> (names must differ from each other and from the built-ins on).
        output_transform: "softmax" measures softmax(f) as well (lipschitz/lower_softmax, avg_softmax and
            upper_softmax, beside the logits' metrics, which keep their names); "logits" (default): f only.
    """

    def __init__(
        self,
        every_n_epochs: int = 10,
        dense_epochs: int = 10,
        max_samples: int | None = None,
        seed: int = 0,
        batch_size: int = 1024,
        lower: bool = True,
        average: bool = True,
        test: bool = False,
        interp: bool = False,
        interp_points: int = 10_000,
        interp_lambdas: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
        noise: bool = False,
        noise_sigma: float = 0.1,
        pgd: bool = False,
        pgd_eps: float = 0.5,
        pgd_steps: int = 10,
        data_box: tuple[float, float] | None = None,
        upper: bool = True,
        upper_certified: bool = False,
        optimised_every: int = 0,
        optimised_top_m: int = 8,
        optimised_steps: int = 50,
        mlp_bounds: MLPBounds | None = None,
        track_params: bool = True,
        input_key: Key | None = None,
        label_key: Key | None = None,
        get_input: Callable[[Any], Tensor] | None = None,
        get_label: Callable[[Any], Tensor] | None = None,
        train_points: Tensor | None = None,
        train_labels: Tensor | None = None,
        test_points: Tensor | None = None,
        test_labels: Tensor | None = None,
        jacobian_method: Literal["auto", "exact", "iterative"] = "auto",
        method: Literal["auto", "exact", "warm"] = "auto",
        progress_bar: bool = True,
        network: str | None = None,
        output: Key | None = None,
        point_sets: list[PointSet] | None = None,
        output_transform: Literal["logits", "softmax"] = "logits",
    ) -> None:
        for name, value in (
            ("every_n_epochs", every_n_epochs),
            ("batch_size", batch_size),
            ("optimised_top_m", optimised_top_m),
            ("optimised_steps", optimised_steps),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LipschitzCallback: {name} must be a positive integer, got {value!r}")
        for name, value in (
            ("dense_epochs", dense_epochs),
            ("optimised_every", optimised_every),
        ):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"LipschitzCallback: {name} must be a non-negative integer, got {value!r}")
        if output_transform not in ("logits", "softmax"):
            raise ValueError(
                f"LipschitzCallback: output_transform must be 'logits' or 'softmax', got {output_transform!r}"
            )
        if mlp_bounds is not None and not isinstance(mlp_bounds, MLPBounds):
            raise ValueError(f"LipschitzCallback: mlp_bounds must be an MLPBounds or None, got {mlp_bounds!r}")
        if method not in WARM_METHODS:
            raise ValueError(f"LipschitzCallback: method must be one of {WARM_METHODS}, got {method!r}")
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise ValueError(f"LipschitzCallback: max_samples must be a positive integer or None, got {max_samples!r}")
        # the built-in point sets check their own arguments, also when switched off
        _ = InterpolatedPoints(interp_points, interp_lambdas), NoisePoints(noise_sigma), PGDPoints(pgd_eps, pgd_steps)
        self.every_n_epochs, self.dense_epochs = every_n_epochs, dense_epochs
        self.max_samples, self.seed, self.batch_size = max_samples, seed, batch_size
        self.lower, self.average, self.test = lower, average, test
        self.interp, self.interp_points, self.interp_lambdas = interp, interp_points, tuple(interp_lambdas)
        self.noise, self.noise_sigma = noise, noise_sigma
        self.pgd, self.pgd_eps, self.pgd_steps, self.data_box = pgd, pgd_eps, pgd_steps, data_box
        self.upper, self.upper_certified = upper, upper_certified
        self.optimised_every, self.optimised_top_m, self.optimised_steps = (
            optimised_every,
            optimised_top_m,
            optimised_steps,
        )
        self.mlp_bounds = MLPBounds() if mlp_bounds is None else mlp_bounds
        self.track_params = track_params
        self.input_key, self.label_key, self.get_input, self.get_label = input_key, label_key, get_input, get_label
        self.train_points, self.train_labels = train_points, train_labels
        self.test_points, self.test_labels = test_points, test_labels
        self.jacobian_method, self.method = jacobian_method, method
        self.progress_bar = progress_bar
        self.network, self.output = network, output
        self.point_sets = list(point_sets or [])
        self.output_transform = output_transform
        self._check_point_sets(self.measured_point_sets())

        self._module: weakref.ref | None = None  # the LightningModule of the current run
        self._reset_run_state()

    # ------------------------------------------------------------------ what is measured
    def measured_point_sets(self) -> list[PointSet]:
        """The point sets of a measurement: the built-ins switched on by the flags (train, test, interp,
        noise, pgd, in this order), then `point_sets`. Built from the current attributes at each measurement."""
        sets: list[PointSet] = []
        if self.lower or self.average:
            sets.append(TrainPoints(lower=self.lower, average=self.average))
        if self.test:
            sets.append(TestPoints())
        if self.interp:
            sets.append(InterpolatedPoints(self.interp_points, self.interp_lambdas))
        if self.noise:
            sets.append(NoisePoints(self.noise_sigma, self.data_box))
        if self.pgd:
            sets.append(PGDPoints(self.pgd_eps, self.pgd_steps, self.data_box))
        if self.output_transform == "softmax":
            sets.append(SoftmaxTrainPoints(self.jacobian_method))
        return sets + self.point_sets

    @staticmethod
    def _check_point_sets(sets: list[PointSet]) -> None:
        names = [s.name for s in sets]
        for point_set in sets:
            if not isinstance(point_set, PointSet):
                raise ValueError(f"LipschitzCallback: point_sets must hold PointSet objects, got {point_set!r}")
        duplicated = sorted({n for n in names if names.count(n) > 1} | ({OPTIMISED} & set(names)))
        if duplicated:
            raise ValueError(
                f"LipschitzCallback: point set names must be unique and not {OPTIMISED!r} (the optimised bound); "
                f"repeated or reserved: {duplicated} (switch the built-in flag off to replace a built-in set)"
            )

    def _reset_run_state(self) -> None:
        """Forget everything measured: a new fit (or another model) starts from scratch."""
        self.last_metrics: dict[str, float] = {}  # the latest measurement, as logged
        self.history: list[dict[str, float]] = []  # every measurement of this run: {"epoch": e, metric: value}
        self._trajectory = ParameterTrajectory()
        self._upper = UpperBoundTracker(certified=self.upper_certified)
        self._mlp_bounds = MLPBoundsTracker(self.mlp_bounds)
        self._mlp_bounds_last_epoch: int | None = None  # the epoch whose measurement ran them as the last one
        # one warm-started estimator of the training points' norms per process, kept across measurements
        self._train_norms = TrainNorms(self.method, chunk_size=self.batch_size, seed=self.seed, warn=self._warn_once)
        self._rank = 0  # this process's global rank (set in setup): whose per-point vectors it holds
        self._measurements = 0
        self._last_measured_epoch: int | None = None
        self._row_epoch: int | None = None  # the epoch whose row got its step from this callback
        self._sources: dict[str, PointSource | None] = {}
        self._warned: set[str] = set()

    @property
    def state_key(self) -> str:
        """Checkpoint key; differs between callbacks with different schedules, subsets or point sets."""
        return self._generate_state_key(
            every_n_epochs=self.every_n_epochs,
            dense_epochs=self.dense_epochs,
            max_samples=self.max_samples,
            seed=self.seed,
            explicit_points=(self.train_points is not None, self.test_points is not None),
        )

    # ------------------------------------------------------------------ schedule
    def is_scheduled(self, epoch: int, last: bool = False) -> bool:
        """Whether the parameters after `epoch` finished epochs are measured: epoch 0, epochs 1..dense_epochs,
        multiples of every_n_epochs, and the last epoch."""
        return Schedule(self.every_n_epochs, self.dense_epochs).is_scheduled(epoch, last)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # A fit is a new run (a resumed one gets its state back from the checkpoint after this hook), and so is
        # any stage on another model: nothing of an earlier run may leak into it (theta_0, the traced graph).
        # validate/test of the model just fitted keep the run's state.
        if stage == TrainerFn.FITTING or self._module is None or self._module() is not pl_module:
            self._reset_run_state()
        self._module = weakref.ref(pl_module)
        self._rank = trainer.global_rank
        self._sources = {}  # each fit/validate/test resolves its own data

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch > 0 or trainer.global_step > 0 or self._last_measured_epoch == 0:
            return  # resumed: epoch 0 was measured by the original run
        define_epoch_axis(trainer)
        write_row(trainer, self.measure(trainer, pl_module, epoch=0, record_trajectory=True), epoch=0)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn != TrainerFn.FITTING:  # trainer.validate(): one measurement of the current weights
            log_epoch_row(pl_module, self.measure(trainer, pl_module, trainer.current_epoch, last=True))
            return
        if not internals.is_last_batch(trainer):
            return  # a mid-epoch validation (val_check_interval < 1): measure at the epoch's end only
        self._epoch_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        finished = trainer.current_epoch
        if finished > 0 and self._last_measured_epoch != finished and self._last_measured_epoch is not None:
            # stopped after the epoch-end hooks ran (e.g. a callback set should_stop late): the final weights,
            # at the step of the last epoch's row
            metrics = self.measure(trainer, pl_module, epoch=finished, record_trajectory=True, last=True)
            write_row(trainer, metrics, finished)
        elif (
            self.mlp_bounds.scheduled
            and finished > 0
            and self._last_measured_epoch == finished
            and self._mlp_bounds_last_epoch != finished
        ):
            self._last_mlp_bounds(trainer, pl_module, finished)  # measured without knowing it was the last

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_epoch_row(pl_module, self.measure(trainer, pl_module, trainer.current_epoch, last=True))

    def _epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """At the end of an epoch of fit (the validation row, then the training epoch's end): the measurement if
        scheduled and not yet made (the training epoch's end catches a stop decided after validation), logged
        into the row Lightning writes for that hook (its step, its `epoch` column). On the project's epoch axis
        (`on_epoch_axis`) the first of these hooks of every epoch, measured or not, also logs `step` = the epoch,
        so the row of any module is on that axis and a checkpoint callback sees the current epoch."""
        finished = trainer.current_epoch + 1
        log_step = on_epoch_axis(trainer) and self._row_epoch != finished
        self._row_epoch = finished
        metrics: dict[str, float] = {}
        last = Schedule.is_last_epoch(trainer, finished)
        if self._last_measured_epoch != finished and self.is_scheduled(finished, last=last):
            metrics = self.measure(trainer, pl_module, epoch=finished, record_trajectory=True, last=last)
        if metrics or log_step:
            log_epoch_row(pl_module, metrics, epoch=finished if on_epoch_axis(trainer) else None)

    # ------------------------------------------------------------------ measurement
    def measure(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        epoch: int,
        record_trajectory: bool = False,
        last: bool = False,
    ) -> dict[str, float]:
        """One measurement of the current parameters (all ranks must call it): returns the reduced metrics,
        stores them in `last_metrics` and `history`. `record_trajectory` adds the parameters to the path;
        `last`: the final measurement of the run (the scheduled MLP bounds, mlp_bounds.sdp_every / exact_every, run)."""
        start = time.perf_counter()
        model = measured_network(pl_module, self.network, self.output, self._warn_once)
        if model is None:
            return {}
        point_sets = self.measured_point_sets()
        with preserved_rng_state(), measurement_mode(pl_module), float32_measurement():  # autocast off
            finite_params = all(bool(torch.isfinite(p).all()) for p in pl_module.parameters())
            try:
                stats = self._measure_points(trainer, model, point_sets, epoch, finite_params)
                upper = self._measure_upper(trainer, model, finite_params) if self.upper else {}
                mlp_bounds = self._measure_mlp_bounds(trainer, model, finite_params, last)
            except RuntimeError as error:
                if "inference" in str(error).lower():
                    raise RuntimeError(
                        "LipschitzCallback needs autograd for input Jacobians but got inference tensors: create "
                        "the Trainer with inference_mode=False for trainer.validate/test"
                    ) from error
                raise
            except ValueError as error:  # the same on every rank: the model or its inputs, not this batch
                self._warn_once(
                    "unmeasurable",
                    f"LipschitzCallback: cannot measure this model ({error}); no "
                    "lipschitz/* metrics are logged, training goes on",
                )
                return {}
        stats = reduce_stats(trainer, stats)
        scalars = reduce_across_ranks(
            trainer,
            {**upper, **mlp_bounds, "lipschitz/seconds": time.perf_counter() - start},
            {"upper/value": "max", "upper/available": "min", "lipschitz/seconds": "max", **MLP_REDUCTIONS},
        )
        metrics = self._finalise(point_sets, stats, scalars)
        metrics.update(self._mlp_bounds.metrics(scalars))
        if self.track_params:
            theta = flat_parameters(pl_module.parameters())
            if record_trajectory:
                metrics["params/dist_init"], metrics["params/path_length"] = self._trajectory.step(theta)
            elif self._trajectory.theta_0 is not None:
                metrics["params/dist_init"] = self._trajectory.distance(theta)
        if record_trajectory:
            self._last_measured_epoch = epoch
            self._measurements += 1
            if last:
                self._mlp_bounds_last_epoch = epoch
        self._warn_non_finite(epoch, metrics)
        self.last_metrics = metrics
        self.history.append({"epoch": float(epoch), **metrics})
        return metrics

    def _measure_points(
        self, trainer: Trainer, model: nn.Module, point_sets: list[PointSet], epoch: int, finite_params: bool
    ) -> dict[str, LowerBoundStats]:
        """This rank's `LowerBoundStats` of every point set (and of the optimised bound, "opt", when it runs
        this time). Non-finite parameters are not measured: NaN statistics, counted as the source's points."""
        run_opt = self.optimised_every > 0 and self._measurements % self.optimised_every == 0
        kinds = {s.source for s in point_sets} | ({"train"} if run_opt else set())
        sources = {kind: self._source(trainer, kind) for kind in ("train", "test") if kind in kinds}
        if not finite_params:
            nan = float("nan")
            counts = {kind: (s.num_points or 1) if s is not None else 0 for kind, s in sources.items()}
            stats = {s.name: LowerBoundStats(counts[s.source], nan, nan, nan) for s in point_sets}
            if run_opt:
                stats[OPTIMISED] = LowerBoundStats()
            return stats
        seed = int(np.random.SeedSequence([self.seed, epoch, trainer.global_rank]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)  # CPU: the bounds engine draws on it
        norms = JacobianNorms(model, self.jacobian_method, self._warn_once)
        top = TopPoints(self.optimised_top_m) if run_opt else None
        budget = None  # every rank must choose the same method: the smallest free memory of all ranks
        if trainer.world_size > 1:
            free = free_memory_bytes(trainer.strategy.root_device) // 4
            budget = int(reduce_across_ranks(trainer, {"budget": free}, {"budget": "min"})["budget"])
        self._train_norms.memory_budget_bytes = budget
        total = sum(s.num_points or 0 for s in sources.values() if s is not None)
        disable = not (self.progress_bar and trainer.is_global_zero and trainer.progress_bar_callback)
        with tqdm(total=total or None, desc="Lipschitz", unit="pt", leave=False, delay=2.0, disable=disable) as bar:
            device = trainer.strategy.root_device
            stats = measure_point_sets(
                norms, point_sets, sources, device, generator, top, progress=bar.update, train_norms=self._train_norms
            )
        if top is not None:  # no top points on this rank: count 0, left out of the reduced max
            stats[OPTIMISED] = LowerBoundStats()
            if top.points is not None:
                result = optimised_lower_bound(
                    model,
                    top.points,
                    top_m=self.optimised_top_m,
                    steps=self.optimised_steps,
                    data_box=self.data_box,
                    method=self.jacobian_method,
                    generator=generator,
                )
                stats[OPTIMISED] = LowerBoundStats(count=len(top.points), max=result.value, argmax_index=0)
        return stats

    def _measure_upper(self, trainer: Trainer, model: nn.Module, finite_params: bool) -> dict[str, float]:
        """The upper bound of the estimator (identical on every rank); not available when the model cannot be
        bounded (warned once with the reason) or its parameters are not finite (warned as non-finite)."""
        value, available = float("nan"), False
        if finite_params:
            value, available, reason = self._upper.compute(model, lambda: self._example_input(trainer))
            if not available:
                self._warn_once(
                    "upper",
                    f"LipschitzCallback: no upper bound for this model ({reason}); "
                    "logging lipschitz/upper_available=0 and the lower bounds only",
                )
        return {"upper/value": value, "upper/available": float(available)}

    def _measure_mlp_bounds(
        self, trainer: Trainer, model: nn.Module, finite_params: bool, last: bool
    ) -> dict[str, float]:
        """This rank's ECLipsE / LipSDP / exact scalars due at this measurement (see _mlp_bounds.py); none for
        non-finite parameters (warned as non-finite by the other bounds)."""
        if not finite_params or not self._mlp_bounds.enabled:
            return {}
        return self._mlp_bounds.compute(
            model, lambda: self._example_input(trainer, 64), self._measurements, last, self._warn_once
        )

    def _last_mlp_bounds(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        """The MLP bounds scheduled at the last measurement, for final weights that were measured before the
        run knew it would stop there (a stopping callback after this one): written to the loggers at the row of
        `epoch` and added to the latest measurement."""
        model = measured_network(pl_module, self.network, self.output, self._warn_once)
        if model is None or not self.history:
            return
        with preserved_rng_state(), measurement_mode(pl_module):
            finite_params = all(bool(torch.isfinite(p).all()) for p in pl_module.parameters())
            local = self._measure_mlp_bounds(trainer, model, finite_params, last=True)
        metrics = self._mlp_bounds.metrics(reduce_across_ranks(trainer, local, MLP_REDUCTIONS))
        self._mlp_bounds_last_epoch = epoch
        self.last_metrics.update(metrics)
        self.history[-1].update(metrics)
        write_row(trainer, metrics, epoch)

    def _example_input(self, trainer: Trainer, n: int = 1) -> Tensor | None:
        """The first `n` input samples (to trace the model with): training points, else test points."""
        for kind in ("train", "test"):
            source = self._source(trainer, kind)
            if source is not None:
                for x, _ in source.batches(trainer.strategy.root_device):
                    return x[:n]
        return None

    def _finalise(
        self, point_sets: list[PointSet], stats: dict[str, LowerBoundStats], scalars: dict[str, float]
    ) -> dict[str, float]:
        """Statistics and scalars of all ranks -> the logged metrics. A set without points on every rank (none
        found: warned once) gives no metric rather than NaN."""
        metrics: dict[str, float] = {}
        for point_set in point_sets:
            if stats[point_set.name].count > 0:
                metrics.update(point_set.metrics(stats[point_set.name]))
        if self.upper:
            if scalars["upper/available"] > 0:
                metrics["lipschitz/upper"] = scalars["upper/value"]
                if self.output_transform == "softmax":  # ||diag(p) - p p^T||_2 <= 1/2
                    metrics["lipschitz/upper_softmax"] = 0.5 * scalars["upper/value"]
            metrics["lipschitz/upper_available"] = scalars["upper/available"]
        if OPTIMISED in stats and stats[OPTIMISED].count > 0:
            metrics["lipschitz/lower_opt"] = stats[OPTIMISED].max
        metrics["lipschitz/seconds"] = scalars["lipschitz/seconds"]
        return metrics

    # ------------------------------------------------------------------ points
    def _source(self, trainer: Trainer, kind: str) -> PointSource | None:
        """This rank's training ("train") or test ("test") points, resolved once per fit/validate/test."""
        if kind not in self._sources:
            explicit = (
                (self.train_points, self.train_labels) if kind == "train" else (self.test_points, self.test_labels)
            )
            self._sources[kind] = resolve_source(
                trainer,
                kind,
                *explicit,
                max_samples=self.max_samples,
                seed=self.seed,
                batch_size=self.batch_size,
                warn=self._warn_once,
                input_key=self.input_key,
                label_key=self.label_key,
                get_input=self.get_input,
                get_label=self.get_label,
            )
            if self._sources[kind] is None:
                self._warn_once(
                    f"no-{kind}",
                    f"LipschitzCallback: no {kind} points found (no datamodule or "
                    f"loader, no {kind}_points); skipping the {kind}-set bounds",
                )
        return self._sources[kind]

    # ------------------------------------------------------------------ warnings, state
    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message, category=RuntimeWarning)

    def _warn_non_finite(self, epoch: int, metrics: dict[str, float]) -> None:
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        if bad:
            self._warn_once(
                "non-finite",
                f"LipschitzCallback: non-finite values at epoch {epoch} (the run has "
                f"probably diverged); logging them as they are: {bad}",
            )

    @property
    def last_method(self) -> MethodChoice | None:
        """How the training points' norms were computed at the last measurement: `.method` ("exact" / "warm")
        and `.reason` (why "auto" chose it), `.n_outputs` K; None before the first."""
        return self._train_norms.choice

    def results_extra(self) -> dict[str, Any]:
        """Entries for the run's results.json (read by `ResultsWriter`): {"measurement": {"method", "reason",
        "requested", "n_outputs"}} once a measurement chose its method, else {}."""
        choice = self.last_method
        if choice is None:
            return {}
        return {
            "measurement": {
                "method": choice.method,
                "reason": choice.reason,
                "requested": self.method,
                "n_outputs": choice.n_outputs,
            }
        }

    def state_dict(self) -> dict[str, Any]:
        """theta_0, previous theta and path length; the upper-bound warm-start state; the subset seed; counters
        and the history of measurements; the state of the user's point sets that have one; the training points'
        warm-start vectors of this rank (a checkpoint holds rank 0's: on resume rank 0 gets them back, other
        ranks start their points cold, which costs one slower measurement and changes no max)."""
        return {
            "seed": self.seed,
            "trajectory": self._trajectory.state_dict(),
            "upper_estimator": self._upper.state_dict(),
            "measurements": self._measurements,
            "last_measured_epoch": self._last_measured_epoch,
            "history": list(self.history),
            "point_sets": {s.name: s.state_dict() for s in self.point_sets if s.state_dict()},
            "train_norms": {"rank": self._rank, "state": self._train_norms.state_dict()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = int(state_dict["seed"])
        self._trajectory.load_state_dict(state_dict["trajectory"])
        self._measurements = int(state_dict["measurements"])
        self._last_measured_epoch = state_dict["last_measured_epoch"]
        self.history = list(state_dict["history"])
        self.last_metrics = dict(self.history[-1]) if self.history else {}
        self.last_metrics.pop("epoch", None)
        self._upper.load_state_dict(state_dict["upper_estimator"])
        saved = state_dict.get("point_sets", {})  # absent in checkpoints of earlier versions
        for point_set in self.point_sets:
            if point_set.name in saved:
                point_set.load_state_dict(saved[point_set.name])
        warm = state_dict.get("train_norms")  # absent in checkpoints of earlier versions
        if warm is not None and warm["rank"] == self._rank:  # another rank's vectors belong to other points
            self._train_norms.load_state_dict(warm["state"])
