"""`LipschitzCallback`: lower and upper bounds of the Lipschitz constant of any LightningModule while it trains.

The network is f = `pl_module(x)` (the logits; `network=` names a submodule to use instead, `output=` picks the
logits out of a tuple or dict output), norms are Euclidean on the flattened input and output, and the
local Lipschitz constant at x is ||J(x)||_2, the largest singular value of the input Jacobian. Every measurement
runs with the model in eval mode, autograd on, parameters frozen, the global RNG streams saved and restored, so
training is bit-identical with and without the callback. The measurement itself is `LipschitzMeter`
(callbacks/meter.py, no Lightning); this file adapts it to Lightning's hooks. Logged metrics:

    lipschitz/lower         max_{x in train} ||J(x)||_2                a guaranteed lower bound of Lip(f); with
                            method "warm" each value errs low: the max is exactly computed at the top candidate
                            for K <= 128 outputs, a warm estimate above (results.json "measurement".lower_exact)
    lipschitz/avg, /rms     mean and root-mean-square of ||J(x)||_2    over train; not bounds (warm: err low)
    lipschitz/avg_tol       mean relative change of the warm estimates' last iteration (0 = exact values)
    lipschitz/lower_<name>  max over a point set's points (test, interp, noise, pgd, a user's)   a lower bound
    lipschitz/lower_opt     the optimised lower bound (gradient ascent on ||J(x)||_2)       a lower bound
    lipschitz/upper         product of per-layer constants             an upper bound (absent if unavailable);
                            power iteration may err slightly low unless upper.certified
    lipschitz/upper_available  1.0 / 0.0
    lipschitz/upper_eclipse, /upper_sdp, /exact   certified bounds of MLPs (see `MLPBounds`, _mlp_bounds.py)
    lipschitz/lower_softmax, /avg_softmax, /upper_softmax   with output_transform="softmax" (the softmax is
                            1/2-Lipschitz in L2, so upper_softmax = 1/2 x lipschitz/upper)
    lipschitz/seconds       wall time of the measurement (max over ranks)
    params/dist_init, /path_length   ||theta - theta_0||_2, sum of ||theta_{t+1} - theta_t||_2 over measurements

When and at which step: epoch 0 (before the first update) at `on_train_start`, written straight to the loggers;
then the end of every epoch e <= dense_epochs, every every_n_epochs-th epoch and the last epoch, logged with
`pl_module.log` in `on_validation_epoch_end` (the row of the test loss) or in `on_train_epoch_end` without
validation; a stop decided after those hooks gets the final weights at `on_train_end`. The callback logs only its
own keys into Lightning's rows (a user's steps and columns stay as they are); on the project's epoch axis
(`epoch_axis.on_epoch_axis`) it also logs `step` = the epoch. Under `trainer.validate` / `test` it measures once.
An unmeasurable model gets one warning and no lipschitz/* metrics. Under DDP each rank measures its share of the
points. `last_metrics` holds the latest values, `history` all of them; resuming restores them.

    trainer = Trainer(callbacks=[LipschitzCallback(every_n_epochs=5, point_sets=[TestPoints()])])
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from tqdm.auto import tqdm

from lipschitz_dd import _lightning_internals as internals
from lipschitz_dd.bounds.warm_lower import WARM_METHODS, MethodChoice
from lipschitz_dd.callbacks._aliases import deprecated_options
from lipschitz_dd.callbacks._base import PackageCallback
from lipschitz_dd.callbacks._distributed import TrainerRanks
from lipschitz_dd.callbacks._logging import define_epoch_axis, log_epoch_row, write_row
from lipschitz_dd.callbacks._measurement import measured_network
from lipschitz_dd.callbacks._mlp_bounds import MLPBounds
from lipschitz_dd.callbacks._points import PointSource
from lipschitz_dd.callbacks._schedule import Schedule
from lipschitz_dd.callbacks.meter import JACOBIAN_METHODS, OPTIMISED, LipschitzMeter
from lipschitz_dd.callbacks.options import Key, OptimisedBound, PointOptions, UpperBound
from lipschitz_dd.callbacks.point_sets import PointSet, SoftmaxTrainPoints, TrainPoints
from lipschitz_dd.epoch_axis import on_epoch_axis

__all__ = ["LipschitzCallback", "MLPBounds", "OptimisedBound", "PointOptions", "UpperBound"]


class LipschitzCallback(PackageCallback):
    """Measures lower/upper bounds of the Lipschitz constant of `pl_module` during `fit` (see the module doc).

    Args:
        every_n_epochs: measure at the end of every n-th epoch (besides epoch 0, the first `dense_epochs`
            epochs and the last epoch). dense_epochs: measure after each of the first `dense_epochs` epochs.
        points: `PointOptions`: subset size and seed, batch size, how to read the user's batches, explicit tensors.
        point_sets: the `PointSet`s measured besides the training points (`TrainPoints`, always first unless
            the list holds one): `TestPoints()`, `InterpolatedPoints()`, `NoisePoints()`, `PGDPoints()`, a user's
            (class_path/init_args in a config); each logs lipschitz/lower_<name>, names unique.
        method: how ||J(x)||_2 is computed: "exact" (K VJPs per point for K logits), "warm" (the training points
            by warm-started block iteration from vectors kept per point, erring low, the candidates for the max
            refined), or "auto": exact for K <= exact_max_outputs, warm above. Points that keep no vectors (the
            other sets, the optimised bound) are exact with "exact", else exact up to 64 outputs and power
            iteration (erring low) above. The training points' choice is in `last_method`.
        upper: `UpperBound` (enabled, certified). optimised: `OptimisedBound` (every, top_m, steps, data_box).
        mlp_bounds: `MLPBounds`, the certified bounds for MLPs (None = ECLipsE-Fast where the network qualifies).
        track_params: params/dist_init and params/path_length.
        network: dotted path of the submodule that maps inputs to logits (default: `pl_module` itself).
        output: which element of a tuple/list output (an index) or dict output (a key) are the logits.
        output_transform: "softmax" measures softmax(f) as well; "logits" (default): f only.
        progress_bar: a tqdm bar for measurements longer than 2 s (never when the Trainer shows no bar).
        **deprecated: the earlier flat names (max_samples, seed, batch_size, test, interp, noise, pgd, their
            options, upper_certified, optimised_*, jacobian_method, ...), mapped onto the groups with a
            DeprecationWarning (see callbacks/_aliases.py).
    """

    state_attributes: ClassVar[dict[str, str]] = {"seed": "subset_seed"}  # and the meter's state (state_dict)

    def __init__(
        self,
        every_n_epochs: int = 10,
        dense_epochs: int = 10,
        points: PointOptions | None = None,
        point_sets: list[PointSet] | None = None,
        method: Literal["auto", "exact", "warm"] = "auto",
        exact_max_outputs: int = 16,
        upper: UpperBound | None = None,
        optimised: OptimisedBound | None = None,
        mlp_bounds: MLPBounds | None = None,
        track_params: bool = True,
        network: str | None = None,
        output: Key | None = None,
        output_transform: Literal["logits", "softmax"] = "logits",
        progress_bar: bool = True,
        **deprecated: Any,
    ) -> None:
        for name, value, low in (("every_n_epochs", every_n_epochs, 1), ("dense_epochs", dense_epochs, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                kind = "positive" if low else "non-negative"
                raise ValueError(f"LipschitzCallback: {name} must be a {kind} integer, got {value!r}")
        if output_transform not in ("logits", "softmax"):
            raise ValueError(
                f"LipschitzCallback: output_transform must be 'logits' or 'softmax', got {output_transform!r}"
            )
        if mlp_bounds is not None and not isinstance(mlp_bounds, MLPBounds):
            raise ValueError(f"LipschitzCallback: mlp_bounds must be an MLPBounds or None, got {mlp_bounds!r}")
        if method not in WARM_METHODS:
            raise ValueError(f"LipschitzCallback: method must be one of {WARM_METHODS}, got {method!r}")
        old = deprecated_options(deprecated, points, upper, optimised)
        self.every_n_epochs, self.dense_epochs = every_n_epochs, dense_epochs
        self.schedule = Schedule(every_n_epochs, dense_epochs)
        self.points, self.upper, self.optimised = old.points, old.upper, old.optimised
        self.point_sets = list(point_sets or [])
        self.method, self.exact_max_outputs, self.jacobian_method = method, exact_max_outputs, old.jacobian_method
        self.mlp_bounds = MLPBounds() if mlp_bounds is None else mlp_bounds
        self.track_params, self.network, self.output = track_params, network, output
        self.output_transform, self.progress_bar = output_transform, progress_bar
        self._builtin_sets, self._train = old.point_sets, old.train
        self._check_point_sets(self.measured_point_sets())
        self._module: weakref.ref | None = None  # the LightningModule of the current run
        self._reset_run_state()

    def measured_point_sets(self) -> list[PointSet]:
        """The point sets of a measurement: the training points (unless `point_sets` holds a `TrainPoints`),
        the built-ins of the deprecated flags, `point_sets`, and the softmax set with output_transform="softmax"."""
        sets = [*self._builtin_sets, *self.point_sets]
        if self._train is not None and not any(isinstance(s, TrainPoints) for s in sets):
            sets.insert(0, self._train)
        if self.output_transform == "softmax":
            sets.append(SoftmaxTrainPoints(self.jacobian_method or JACOBIAN_METHODS[self.method]))
        return sets

    @staticmethod
    def _check_point_sets(sets: list[PointSet]) -> None:
        for point_set in sets:
            if not isinstance(point_set, PointSet):
                raise ValueError(f"LipschitzCallback: point_sets must hold PointSet objects, got {point_set!r}")
        names = [s.name for s in sets]
        duplicated = sorted({n for n in names if names.count(n) > 1} | ({OPTIMISED} & set(names)))
        if duplicated:
            raise ValueError(
                f"LipschitzCallback: point set names must be unique and not {OPTIMISED!r} (the optimised bound); "
                f"repeated or reserved: {duplicated}"
            )

    def _reset_run_state(self) -> None:
        """Forget everything measured: a new fit (or another model) starts from scratch."""
        self.meter = LipschitzMeter(
            self.measured_point_sets(),
            method=self.method,
            exact_max_outputs=self.exact_max_outputs,
            jacobian_method=self.jacobian_method,
            batch_size=self.points.batch_size,
            seed=self.points.seed,
            max_samples=self.points.max_samples,
            upper=self.upper,
            optimised=self.optimised,
            mlp_bounds=self.mlp_bounds,
            track_params=self.track_params,
            softmax_upper=self.output_transform == "softmax",
            warn=self._warn_once,
        )
        self._mlp_bounds_last_epoch: int | None = None  # the epoch whose measurement ran them as the last one
        self._rank = 0  # this process's global rank (set in setup): whose per-point vectors it holds
        self._row_epoch: int | None = None  # the epoch whose row got its step from this callback
        self._sources: dict[str, PointSource | None] = {}
        self._warned: set[str] = set()

    last_metrics = property(lambda self: self.meter.last_metrics, doc="The latest measurement, as logged.")
    history = property(lambda self: self.meter.history, doc="Every measurement of the run: {'epoch': e, ...}.")
    _train_norms = property(lambda self: self.meter.train_norms)
    _last_measured_epoch = property(lambda self: self.meter.last_measured_epoch)

    @property
    def state_key(self) -> str:
        """Checkpoint key; differs between callbacks with different schedules, subsets or point sets."""
        return self._generate_state_key(
            every_n_epochs=self.every_n_epochs,
            dense_epochs=self.dense_epochs,
            max_samples=self.points.max_samples,
            seed=self.points.seed,
            explicit_points=(self.points.train_points is not None, self.points.test_points is not None),
        )

    def is_scheduled(self, epoch: int, last: bool = False) -> bool:
        """Whether the parameters after `epoch` finished epochs are measured (0, 1..dense_epochs, multiples of
        every_n_epochs, the last)."""
        return self.schedule.is_scheduled(epoch, last)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # A fit is a new run (a resumed one gets its state back from the checkpoint after this hook), and so is
        # any stage on another model; validate/test of the model just fitted keep the run's state.
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
        elif internals.is_last_batch(trainer):  # not a mid-epoch validation (val_check_interval < 1)
            self._epoch_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_end(trainer, pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_epoch_row(pl_module, self.measure(trainer, pl_module, trainer.current_epoch, last=True))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        finished, measured = trainer.current_epoch, self._last_measured_epoch
        if finished > 0 and measured is not None and measured != finished:
            # stopped after the epoch-end hooks ran (a callback set should_stop late): the final weights
            metrics = self.measure(trainer, pl_module, epoch=finished, record_trajectory=True, last=True)
            write_row(trainer, metrics, finished)
        elif self.mlp_bounds.scheduled and finished > 0 and measured == finished != self._mlp_bounds_last_epoch:
            model = measured_network(pl_module, self.network, self.output, self._warn_once)
            if model is not None and self.history:  # measured without knowing it was the last
                self._mlp_bounds_last_epoch = finished
                write_row(trainer, self.meter.mlp_bounds(model, self._points(trainer), TrainerRanks(trainer)), finished)

    def _epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """At the end of an epoch of fit (the validation row, then the training epoch's end): the measurement if
        scheduled and not yet made (the training epoch's end catches a stop decided after validation), logged
        into the row Lightning writes for that hook. On the project's epoch axis the first of these hooks of
        every epoch, measured or not, also logs `step` = the epoch (a checkpoint callback sees the epoch)."""
        finished = trainer.current_epoch + 1
        log_step = on_epoch_axis(trainer) and self._row_epoch != finished
        self._row_epoch = finished
        metrics: dict[str, float] = {}
        last = Schedule.is_last_epoch(trainer, finished)
        if self._last_measured_epoch != finished and self.is_scheduled(finished, last=last):
            metrics = self.measure(trainer, pl_module, epoch=finished, record_trajectory=True, last=last)
        if metrics or log_step:
            log_epoch_row(pl_module, metrics, epoch=finished if on_epoch_axis(trainer) else None)

    def measure(
        self, trainer: Trainer, pl_module: LightningModule, epoch: int, record_trajectory: bool = False, last=False
    ) -> dict[str, float]:
        """One measurement of the current parameters (all ranks must call it): the reduced metrics, also in
        `last_metrics` and `history`. `record_trajectory` adds the parameters to the path; `last`: the final
        measurement of the run (the scheduled MLP bounds run)."""
        model = measured_network(pl_module, self.network, self.output, self._warn_once)
        if model is None:
            return {}
        with self.isolated(pl_module):
            measurement = self.meter.measure(
                model,
                self._points(trainer),
                epoch,
                record=record_trajectory,
                last=last,
                ranks=TrainerRanks(trainer),
                parameters=pl_module.parameters,
                progress=self._progress(trainer),
            )
        if record_trajectory and last and measurement.metrics:
            self._mlp_bounds_last_epoch = epoch
        self._lower_exact = measurement.lower_exact
        return measurement.metrics

    def _progress(self, trainer: Trainer):
        @contextmanager
        def bar(total: int | None) -> Iterator[Any]:
            with tqdm(total=total, desc="Lipschitz", unit="pt", leave=False, delay=2.0) as progress:
                yield progress.update

        return bar if self.progress_bar and trainer.is_global_zero and trainer.progress_bar_callback else None

    def _points(self, trainer: Trainer):
        """kind -> this rank's training ("train") or test ("test") points, resolved once per fit/validate/test."""

        def source(kind: str) -> PointSource | None:
            if kind not in self._sources:
                self._sources[kind] = self.point_source(trainer, kind, self.points, self._warn_once)
                if self._sources[kind] is None:
                    message = f"no {kind} points found (no datamodule or loader, no {kind}_points); skipping them"
                    self._warn_once(f"no-{kind}", f"LipschitzCallback: {message}")
            return self._sources[kind]

        return source

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message, category=RuntimeWarning)

    @property
    def last_method(self) -> MethodChoice | None:
        """How the training points' norms were computed at the last measurement: `.method` ("exact" / "warm")
        and `.reason` (why "auto" chose it), `.n_outputs` K; None before the first."""
        return self._train_norms.choice

    def results_extra(self) -> dict[str, Any]:
        """Entries for the run's results.json (read by `ResultsWriter`): {"measurement": {"method", "reason",
        "requested", "n_outputs", "lower_exact"}} once a measurement chose its method, else {}. lower_exact:
        whether the last lipschitz/lower is an exactly computed ||J(x)||_2 (see `Measurement.lower_exact`)."""
        choice = self.last_method
        if choice is None:
            return {}
        entry = dict(method=choice.method, reason=choice.reason, requested=self.method, n_outputs=choice.n_outputs)
        return {"measurement": {**entry, "lower_exact": getattr(self, "_lower_exact", None)}}

    @property
    def subset_seed(self) -> int:
        """The seed of the measured subset (`points.seed`); setting another one starts the run state afresh."""
        return self.points.seed

    @subset_seed.setter
    def subset_seed(self, seed: int) -> None:
        if int(seed) != self.points.seed:
            self.points = PointOptions(**{**vars(self.points), "seed": int(seed)})
            self._reset_run_state()

    def state_dict(self) -> dict[str, Any]:
        """The declared state (the subset seed) and the meter's (`LipschitzMeter.state_dict`: path, upper bound,
        counters, history, point sets' state, this rank's warm-start vectors; a checkpoint holds rank 0's)."""
        return {**super().state_dict(), **self.meter.state_dict(self._rank)}

    def on_state_loaded(self, state_dict: dict[str, Any]) -> None:
        self.meter.load_state_dict(state_dict, self._rank)
