"""`LipschitzCallback`: lower and upper bounds of the Lipschitz constant of any LightningModule while it trains.

The network is f = `pl_module(x)` (the logits; `network=` names a submodule to use instead, `output=` picks the
logits out of a tuple or dict output), norms are Euclidean on the flattened input and output, and the
local Lipschitz constant at x is ||J(x)||_2, the largest singular value of the input Jacobian. Every measurement
runs with the model in eval mode, autograd on, parameters frozen, the global RNG streams saved and restored, so
training is bit-identical with and without the callback. Logged metrics (names fixed by design.md):

    lipschitz/lower         max_{x in train} ||J(x)||_2                a guaranteed lower bound of Lip(f)
    lipschitz/avg, /rms     mean and root-mean-square of ||J(x)||_2    over train; not bounds
    lipschitz/lower_test    max over the test points                   a lower bound
    lipschitz/lower_interp  max over random convex combinations of pairs of train points   a lower bound
    lipschitz/lower_noise   max over Gaussian-perturbed train points   a lower bound
    lipschitz/lower_pgd     max over PGD-perturbed train points        a lower bound
    lipschitz/lower_opt     the optimised lower bound (gradient ascent on ||J(x)||_2)       a lower bound
    lipschitz/upper         product of per-layer constants             an upper bound (absent if unavailable);
                            per-layer norms by warm-started power iteration, which may err slightly low,
                            unless upper_certified=True (every layer constant a guaranteed upper bound)
    lipschitz/upper_available  1.0 / 0.0
    lipschitz/seconds       wall time of the measurement (max over ranks)
    params/dist_init        ||theta - theta_0||_2
    params/path_length      sum of ||theta_{t+1} - theta_t||_2 over consecutive measurements

When: epoch 0 (at `on_train_start`, before the first update, written straight to every logger at step 0),
then at the end of every epoch e <= dense_epochs, every every_n_epochs-th epoch and the last epoch, logged
with `pl_module.log` in `on_validation_epoch_end` (same row as the test loss), or in `on_train_epoch_end` when
no validation ran; if training stops after those hooks (a stopping callback listed after this one), the final
weights are written straight to the loggers at `on_train_end` (at the step the module's own epoch metrics
use: finished epochs if it logs a "step" metric, as lipschitz_dd's models do, else Lightning's global step):
list stopping callbacks before this one to keep the last values in the test-loss row. Metrics appear only on
measured epochs, so a monitor such as EarlyStopping sees the latest measured value in between. Under `trainer.validate` /
`trainer.test` it measures once (it leaves inference mode itself) and logs beside their metrics.

A model the bounds cannot handle (a non-tensor output without `output=`, integer inputs such as token ids,
no `forward` without `network=`) gets one warning saying why and no lipschitz/* metrics; training goes on.

Points: explicit tensors, else the datamodule's in-memory `train_x`/`test_x`, else the samples of the loaders
(any batch format: tensors, tuples, dicts, or `get_input`), always the same seeded subset (`max_samples`),
one batch in memory at a time. Under DDP each rank measures its share of the points; maxima are max-reduced,
means come from reduced sums and counts. `callback.last_metrics` holds the latest values, `callback.history`
all of them (`{"epoch": e, metric: value}`), e.g. for notebooks (a callback reused for another fit starts
afresh; resuming from a checkpoint restores its state):

    trainer = Trainer(callbacks=[LipschitzCallback(every_n_epochs=5, test=True)])
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

from lipschitz_dd.bounds import (
    LowerBoundStats,
    UpperBoundEstimator,
    convex_combinations,
    gaussian_perturbations,
    jacobian_spectral_norms,
    optimised_lower_bound,
    pgd_perturbations,
)
from lipschitz_dd.callbacks._distributed import Reduction, reduce_across_ranks
from lipschitz_dd.callbacks._isolation import measurement_mode, preserved_rng_state
from lipschitz_dd.callbacks._points import Key, PointSource, datamodule_tensors, is_streamed, test_loader, train_loader
from lipschitz_dd.callbacks._trajectory import ParameterTrajectory, flat_parameters

__all__ = ["LipschitzCallback"]

STREAM_SAMPLES = 10_000
"""Points read from a loader that can only be iterated (no length, no trainer limit) when max_samples is None."""


class SelectedOutput(nn.Module):
    """x -> module(x)[output]: the logits of a module that returns a tuple/list (output = an index) or a dict
    (output = a key). A selection of one part of the output, so bounds of this function are bounds of the logits."""

    def __init__(self, module: nn.Module, output: Key) -> None:
        super().__init__()
        self.module, self.output = module, output

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)[self.output]


class TopPoints:
    """The m points with the largest ||J(x)||_2 seen so far (starting points of the optimised lower bound)."""

    def __init__(self, m: int) -> None:
        self.m = m
        self.points: Tensor | None = None
        self.norms: Tensor | None = None

    def add(self, x: Tensor, norms: Tensor) -> None:
        points = x.detach() if self.points is None else torch.cat([self.points, x.detach()])
        values = norms.detach() if self.norms is None else torch.cat([self.norms, norms.detach()])
        keep = torch.nan_to_num(values, nan=-math.inf).topk(min(self.m, len(values))).indices
        self.points, self.norms = points[keep], values[keep]


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
        track_params: params/dist_init and params/path_length.
        input_key, label_key, get_input, get_label: how to read inputs/labels from the user's batches
            (defaults: element 0/1 of a tuple, "x"/"input"/"image" and "y"/"label"/"target" of a dict).
        train_points, train_labels, test_points, test_labels: explicit point tensors. Without them the points
            are the datamodule's in-memory `train_x`/`train_y` (`test_x`/`test_y`) tensors if it has them
            (lipschitz_dd's datamodules do), else the samples of its loaders: training points from
            `datamodule.train_dataloader()` (else `trainer.train_dataloader`), test points from the first
            validation loader (else the test loader).
        jacobian_method: passed to `jacobian_spectral_norms`.
        progress_bar: show a tqdm bar for measurements that take longer than 2 seconds (never when the Trainer
            has no progress bar, e.g. `--trainer.enable_progress_bar false`).
        network: dotted attribute path of the submodule that maps inputs to logits, for modules that call e.g.
            `self.model(x)` in `training_step` (default: `pl_module` itself).
        output: which element of a tuple/list output (an index) or dict output (a key) are the logits.
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
        progress_bar: bool = True,
        network: str | None = None,
        output: Key | None = None,
    ) -> None:
        for name, value in (
            ("every_n_epochs", every_n_epochs),
            ("batch_size", batch_size),
            ("interp_points", interp_points),
            ("pgd_steps", pgd_steps),
            ("optimised_top_m", optimised_top_m),
            ("optimised_steps", optimised_steps),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LipschitzCallback: {name} must be a positive integer, got {value!r}")
        for name, value in (("dense_epochs", dense_epochs), ("optimised_every", optimised_every)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"LipschitzCallback: {name} must be a non-negative integer, got {value!r}")
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise ValueError(f"LipschitzCallback: max_samples must be a positive integer or None, got {max_samples!r}")
        if noise_sigma <= 0 or pgd_eps <= 0:
            raise ValueError(f"LipschitzCallback: noise_sigma and pgd_eps must be > 0, got {noise_sigma}, {pgd_eps}")
        if not all(0.0 <= lam <= 1.0 for lam in interp_lambdas) or not interp_lambdas:
            raise ValueError(f"LipschitzCallback: interp_lambdas must be non-empty, in [0, 1], got {interp_lambdas}")
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
        self.track_params = track_params
        self.input_key, self.label_key, self.get_input, self.get_label = input_key, label_key, get_input, get_label
        self.train_points, self.train_labels = train_points, train_labels
        self.test_points, self.test_labels = test_points, test_labels
        self.jacobian_method = jacobian_method
        self.progress_bar = progress_bar
        self.network, self.output = network, output

        self._module: weakref.ref | None = None  # the LightningModule of the current run
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        """Forget everything measured: a new fit (or another model) starts from scratch."""
        self.last_metrics: dict[str, float] = {}  # the latest measurement, as logged
        self.history: list[dict[str, float]] = []  # every measurement of this run: {"epoch": e, metric: value}
        self._trajectory = ParameterTrajectory()
        self._estimator: UpperBoundEstimator | None = None
        self._estimator_state: dict[str, Any] | None = None  # loaded before the estimator exists
        self._upper_failure: str | None = None
        self._measurements = 0
        self._last_measured_epoch: int | None = None
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
        return last or epoch <= self.dense_epochs or epoch % self.every_n_epochs == 0

    @staticmethod
    def _is_last_epoch(trainer: Trainer, finished_epochs: int) -> bool:
        max_epochs = trainer.max_epochs
        reached_epochs = max_epochs is not None and max_epochs >= 0 and finished_epochs >= max_epochs
        reached_steps = trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step
        return bool(trainer.should_stop or reached_epochs or reached_steps)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # A fit is a new run (a resumed one gets its state back from the checkpoint after this hook), and so is
        # any stage on another model: nothing of an earlier run may leak into it (theta_0, the traced graph).
        # validate/test of the model just fitted keep the run's state.
        if stage == TrainerFn.FITTING or self._module is None or self._module() is not pl_module:
            self._reset_run_state()
        self._module = weakref.ref(pl_module)
        self._sources = {}  # each fit/validate/test resolves its own data

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch > 0 or trainer.global_step > 0 or self._last_measured_epoch == 0:
            return  # resumed: epoch 0 was measured by the original run
        self._write_to_loggers(trainer, self.measure(trainer, pl_module, epoch=0, record_trajectory=True), step=0)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn != TrainerFn.FITTING:  # trainer.validate(): one measurement of the current weights
            self._log(pl_module, self.measure(trainer, pl_module, epoch=trainer.current_epoch))
            return
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # a mid-epoch validation (val_check_interval < 1): measure at the epoch's end only
        self._measure_epoch_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._measure_epoch_end(trainer, pl_module, in_validation=False)  # no-op if validation measured this epoch

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        finished = trainer.current_epoch
        if finished > 0 and self._last_measured_epoch != finished and self._last_measured_epoch is not None:
            # stopped after the epoch-end hooks ran (e.g. a callback set should_stop late): the final weights
            metrics = self.measure(trainer, pl_module, epoch=finished, record_trajectory=True)
            step = finished if "step" in trainer.callback_metrics else self._last_epoch_row_step(trainer)
            self._write_to_loggers(trainer, metrics, step)

    @staticmethod
    def _last_epoch_row_step(trainer: Trainer) -> int:
        """The logger step of the last epoch's rows for a module that logs no "step" metric (lipschitz_dd's
        models log step = finished epochs): Lightning writes epoch-level metrics at its count of batches that
        stepped, minus one (no public accessor; the global step, minus one, where it is missing)."""
        stepped = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
        return max(int(stepped) - 1, 0)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(pl_module, self.measure(trainer, pl_module, epoch=trainer.current_epoch))

    def _measure_epoch_end(self, trainer: Trainer, pl_module: LightningModule, in_validation: bool = True) -> None:
        finished = trainer.current_epoch + 1
        if self._last_measured_epoch == finished:
            return
        if self.is_scheduled(finished, last=self._is_last_epoch(trainer, finished)):
            metrics = self.measure(trainer, pl_module, epoch=finished, record_trajectory=True)
            # A module that logs a "step" metric (lipschitz_dd's models: step = finished epochs) has already
            # written this epoch's row if validation ran: self.log at the train-epoch end would open a row at
            # Lightning's global step, so the values go straight to the loggers at that step.
            if not in_validation and "step" in trainer.callback_metrics:
                self._write_to_loggers(trainer, metrics, finished)
            else:
                self._log(pl_module, metrics)

    @staticmethod
    def _write_to_loggers(trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        """Metrics straight to every logger at `step` (outside the hooks where `self.log` is allowed)."""
        for logger in trainer.loggers if metrics else ():
            logger.log_metrics(metrics, step=step)

    @staticmethod
    def _log(pl_module: LightningModule, metrics: dict[str, float]) -> None:
        # values are already identical on every rank; sync_dist with max keeps them and avoids Lightning's
        # "use sync_dist=True" warning under DDP
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")

    # ------------------------------------------------------------------ measurement
    def measure(
        self, trainer: Trainer, pl_module: LightningModule, epoch: int, record_trajectory: bool = False
    ) -> dict[str, float]:
        """One measurement of the current parameters (all ranks must call it): returns the reduced metrics,
        stores them in `last_metrics` and `history`. `record_trajectory` adds the parameters to the path."""
        start = time.perf_counter()
        values: dict[str, float] = {}
        ops: dict[str, Reduction] = {}
        model = self._measured_network(pl_module)
        if model is None:
            return {}
        with preserved_rng_state(), measurement_mode(pl_module):
            finite_params = all(bool(torch.isfinite(p).all()) for p in pl_module.parameters())
            try:
                self._measure_points(trainer, model, epoch, finite_params, values, ops)
                if self.upper:
                    self._measure_upper(trainer, model, finite_params, values, ops)
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
        values["lipschitz/seconds"], ops["lipschitz/seconds"] = time.perf_counter() - start, "max"
        metrics = self._finalise(reduce_across_ranks(trainer, values, ops))
        if self.track_params:
            theta = flat_parameters(pl_module.parameters())
            if record_trajectory:
                metrics["params/dist_init"], metrics["params/path_length"] = self._trajectory.step(theta)
            elif self._trajectory.theta_0 is not None:
                metrics["params/dist_init"] = self._trajectory.distance(theta)
        if record_trajectory:
            self._last_measured_epoch = epoch
            self._measurements += 1
        self._warn_non_finite(epoch, metrics)
        self.last_metrics = metrics
        self.history.append({"epoch": float(epoch), **metrics})
        return metrics

    def _measured_network(self, pl_module: LightningModule) -> nn.Module | None:
        """The function whose bounds are measured: `pl_module` or its submodule `network`, with the logits
        picked by `output`; None (warned once) if the module has no forward and no `network` is named."""
        module: nn.Module = pl_module
        if self.network is not None:
            try:
                module = pl_module.get_submodule(self.network)
            except AttributeError as error:
                raise ValueError(
                    f"LipschitzCallback: network={self.network!r} is not a submodule of "
                    f"{type(pl_module).__name__} ({error})"
                ) from error
        elif type(pl_module).forward in (LightningModule.forward, nn.Module.forward):  # nn.Module's raises
            self._warn_once(
                "forward",
                f"LipschitzCallback: {type(pl_module).__name__} defines no forward(); set "
                "network='<attribute>' to the submodule that maps inputs to logits",
            )
            return None
        return module if self.output is None else SelectedOutput(module, self.output)

    def _measure_points(
        self,
        trainer: Trainer,
        model: nn.Module,
        epoch: int,
        finite_params: bool,
        values: dict[str, float],
        ops: dict[str, Reduction],
    ) -> None:
        """Per-point norms on this rank: one pass over the training points (lower, avg, rms, interp, noise,
        pgd, top points for the optimised bound), one over the test points."""
        run_opt = self.optimised_every > 0 and self._measurements % self.optimised_every == 0
        want_train = self.lower or self.average or self.interp or self.noise or self.pgd or run_opt
        wanted = {"train": self.lower or self.average, "interp": self.interp, "noise": self.noise, "pgd": self.pgd}
        sets = {name: LowerBoundStats() for name, on in wanted.items() if on}
        test_stats = LowerBoundStats()
        top = TopPoints(self.optimised_top_m) if run_opt else None
        train = self._source(trainer, "train") if want_train else None
        testset = self._source(trainer, "test") if self.test else None
        generator = None
        if finite_params:
            generator_seed = int(np.random.SeedSequence([self.seed, epoch, trainer.global_rank]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(generator_seed)  # CPU: the bounds engine draws on it
            total = sum(s.num_points or 0 for s in (train, testset) if s is not None)
            bar = tqdm(
                total=total or None,
                desc="Lipschitz",
                unit="pt",
                leave=False,
                delay=2.0,
                disable=not (self.progress_bar and trainer.is_global_zero and trainer.progress_bar_callback),
            )
            with bar:
                if train is not None:
                    for x, y in train.batches(trainer.strategy.root_device):
                        self._train_batch(model, x, y, sets, top, generator, train.num_points)
                        bar.update(len(x))
                if testset is not None:
                    for x, _ in testset.batches(trainer.strategy.root_device):
                        test_stats.update(self._norms(model, x))
                        bar.update(len(x))
        nan = float("nan")
        if self.test:
            sets["test"] = test_stats
        for name, stats in sets.items():  # per rank: partial sums and maxima (max is 0.0 for no points)
            # non-finite parameters: not measured, NaN; the count says whether this rank has such points at all
            source = testset if name == "test" else train
            count = stats.count if finite_params else (source is not None and (source.num_points or 1))
            values[f"{name}/max"], ops[f"{name}/max"] = (stats.max if finite_params else nan), "max"
            values[f"{name}/count"], ops[f"{name}/count"] = float(count), "sum"
        if "train" in sets:
            for key, v in (("train/sum", sets["train"].sum), ("train/sum_sq", sets["train"].sum_sq)):
                values[key], ops[key] = (float(v) if finite_params else nan), "sum"
        if top is not None:  # no top points on this rank: 0.0, a trivial lower bound, with count 0
            opt, count = 0.0, 0 if top.points is None else len(top.points)
            if count:
                opt = optimised_lower_bound(
                    model,
                    top.points,
                    top_m=self.optimised_top_m,
                    steps=self.optimised_steps,
                    data_box=self.data_box,
                    method=self.jacobian_method,
                    generator=generator,
                ).value
            values["opt/max"], ops["opt/max"] = opt, "max"
            values["opt/count"], ops["opt/count"] = float(count), "sum"

    def _train_batch(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor | None,
        sets: dict[str, LowerBoundStats],
        top: TopPoints | None,
        generator: torch.Generator,
        num_points: int | None,
    ) -> None:
        if "train" in sets or top is not None:
            norms = self._norms(model, x)
            if "train" in sets:
                sets["train"].update(norms)
            if top is not None:
                top.add(x, norms)
        if "interp" in sets and len(x) > 1:
            share = math.ceil(self.interp_points * len(x) / (num_points or self.max_samples or len(x)))
            for chunk in convex_combinations(x, share, lambdas=self.interp_lambdas, generator=generator):
                sets["interp"].update(self._norms(model, chunk))
        if "noise" in sets:
            noisy = gaussian_perturbations(x, self.noise_sigma, generator=generator, data_box=self.data_box)
            sets["noise"].update(self._norms(model, noisy))
        if "pgd" in sets:
            if y is None:
                with torch.no_grad():
                    y = model(x).argmax(dim=-1)
            points = pgd_perturbations(model, x, y, eps=self.pgd_eps, steps=self.pgd_steps, data_box=self.data_box)
            sets["pgd"].update(self._norms(model, points))

    def _norms(self, model: nn.Module, x: Tensor) -> Tensor:
        """||J(x_i)||_2 per point; NaN for the batch (with a warning) if the SVD fails on non-finite values."""
        try:
            return jacobian_spectral_norms(model, x, method=self.jacobian_method)
        except torch.linalg.LinAlgError as error:
            self._warn_once("linalg", f"LipschitzCallback: Jacobian norms failed ({error}); logging NaN")
            return torch.full((len(x),), float("nan"), device=x.device)

    def _measure_upper(
        self,
        trainer: Trainer,
        model: nn.Module,
        finite_params: bool,
        values: dict[str, float],
        ops: dict[str, Reduction],
    ) -> None:
        """The upper bound of the estimator (identical on every rank); not available when the model cannot be
        bounded (warned once with the reason) or its parameters are not finite (warned as non-finite)."""
        value, available, reason = float("nan"), False, self._upper_failure
        if finite_params and self._upper_failure is None:
            estimator = self._upper_estimator(trainer, model)
            if estimator is not None:
                result = estimator.compute(certified=self.upper_certified)
                value, available, reason = (
                    result.value if result.value is not None else float("nan"),
                    bool(result.available),
                    result.reason,
                )
            else:
                reason = self._upper_failure
        if finite_params and not available:
            self._warn_once(
                "upper",
                f"LipschitzCallback: no upper bound for this model ({reason}); "
                "logging lipschitz/upper_available=0 and the lower bounds only",
            )
        values["upper/value"], ops["upper/value"] = value, "max"
        values["upper/available"], ops["upper/available"] = float(available), "min"

    def _upper_estimator(self, trainer: Trainer, model: nn.Module) -> UpperBoundEstimator | None:
        """Built once, traced on one input sample (the first training point, else the first test point)."""
        if self._estimator is None:
            example = self._example_input(trainer, model)
            if example is None:
                self._upper_failure = "no input sample to trace the model with"
                return None
            try:
                self._estimator = UpperBoundEstimator(model, example)
            except Exception as error:  # noqa: BLE001 -- an untraceable user model must not stop training
                self._upper_failure = f"{type(error).__name__}: {error}"
                return None
            if self._estimator_state is not None:
                self._estimator.load_state_dict(self._estimator_state)
                self._estimator_state = None
        return self._estimator

    def _example_input(self, trainer: Trainer, model: nn.Module) -> Tensor | None:
        for kind in ("train", "test"):
            source = self._source(trainer, kind)
            if source is not None:
                for x, _ in source.batches(trainer.strategy.root_device):
                    return x[:1]
        return None

    def _finalise(self, reduced: dict[str, float]) -> dict[str, float]:
        """Partial results of all ranks -> metrics with the names of design.md."""
        metrics: dict[str, float] = {}
        # a set without points on every rank (none found: warned once) gives no metric rather than NaN
        measured = lambda part: f"{part}/max" in reduced and reduced[f"{part}/count"] > 0  # noqa: E731
        if self.lower and measured("train"):
            metrics["lipschitz/lower"] = reduced["train/max"]
        if self.average and measured("train"):
            count = reduced["train/count"]
            metrics["lipschitz/avg"] = reduced["train/sum"] / count
            metrics["lipschitz/rms"] = math.sqrt(reduced["train/sum_sq"] / count)
        if self.upper:
            if reduced["upper/available"] > 0:
                metrics["lipschitz/upper"] = reduced["upper/value"]
            metrics["lipschitz/upper_available"] = reduced["upper/available"]
        for part, name in (
            ("test", "lower_test"),
            ("interp", "lower_interp"),
            ("noise", "lower_noise"),
            ("pgd", "lower_pgd"),
            ("opt", "lower_opt"),
        ):
            if measured(part):
                metrics[f"lipschitz/{name}"] = reduced[f"{part}/max"]
        metrics["lipschitz/seconds"] = reduced["lipschitz/seconds"]
        return metrics

    # ------------------------------------------------------------------ points
    def _source(self, trainer: Trainer, kind: str) -> PointSource | None:
        """This rank's training ("train") or test ("test") points, resolved once per fit/validate/test."""
        if kind not in self._sources:
            self._sources[kind] = self._make_source(trainer, kind)
            if self._sources[kind] is None:
                self._warn_once(
                    f"no-{kind}",
                    f"LipschitzCallback: no {kind} points found (no datamodule or "
                    f"loader, no {kind}_points); skipping the {kind}-set bounds",
                )
        return self._sources[kind]

    def _make_source(self, trainer: Trainer, kind: str) -> PointSource | None:
        common = dict(
            max_samples=self.max_samples,
            seed=self.seed,
            batch_size=self.batch_size,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
        )
        points, labels = (
            (self.train_points, self.train_labels) if kind == "train" else (self.test_points, self.test_labels)
        )
        if points is None:
            points, labels = datamodule_tensors(trainer, kind)
        if points is not None:
            return PointSource.from_tensors(points, labels, **common)
        loader = train_loader(trainer) if kind == "train" else test_loader(trainer)
        if loader is None:
            return None
        max_batches = None
        if is_streamed(loader):  # read by iterating: stop where the fit does, and never run forever
            limit = trainer.num_training_batches if kind == "train" else math.inf
            max_batches = int(limit) if isinstance(limit, (int, float)) and math.isfinite(limit) else None
            if max_batches is None and self.max_samples is None:
                common["max_samples"] = STREAM_SAMPLES
                self._warn_once(
                    f"stream-{kind}",
                    f"LipschitzCallback: the {kind} loader can only be iterated and "
                    f"has no length; measuring its first {STREAM_SAMPLES} samples "
                    "(set max_samples to choose)",
                )
        return PointSource.from_loader(
            loader,
            input_key=self.input_key,
            label_key=self.label_key,
            get_input=self.get_input,
            get_label=self.get_label,
            max_batches=max_batches,
            **common,
        )

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

    def state_dict(self) -> dict[str, Any]:
        """theta_0, previous theta and path length; the upper-bound warm-start state; the subset seed; counters
        and the history of measurements."""
        upper_state = self._estimator.state_dict() if self._estimator is not None else self._estimator_state
        return {
            "seed": self.seed,
            "trajectory": self._trajectory.state_dict(),
            "upper_estimator": upper_state,
            "measurements": self._measurements,
            "last_measured_epoch": self._last_measured_epoch,
            "history": list(self.history),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = int(state_dict["seed"])
        self._trajectory.load_state_dict(state_dict["trajectory"])
        self._measurements = int(state_dict["measurements"])
        self._last_measured_epoch = state_dict["last_measured_epoch"]
        self.history = list(state_dict["history"])
        self.last_metrics = dict(self.history[-1]) if self.history else {}
        self.last_metrics.pop("epoch", None)
        self._estimator_state = state_dict["upper_estimator"]
        if self._estimator is not None and self._estimator_state is not None:
            self._estimator.load_state_dict(self._estimator_state)
            self._estimator_state = None
