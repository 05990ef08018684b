"""EvolutionBound: logs the study's evolution bounds (Bounds 1 and 2) during training.

    evolution/path_length  sum over every update s of ||theta_{s+1} - theta_s||_2 (measured in
                           on_train_batch_end, so it is the full per-update path, not the polygon through
                           checkpoints that params/path_length is)
    evolution/c_theta      max over measured epochs and training points of ||d f / d theta (x)||_2
    evolution/c_x0         C_lower at initialisation (max over the training points of ||J(x)||_2)
    evolution/radius       r = max ||x - x'||_2 over the training points
    evolution/bound1       (2 / r) c_theta path_length + c_x0
    evolution/bound2       (2 / r) c_theta B eta t + c_x0 (B = clip_norm, eta = the largest lr seen, t updates)
The formulas are in lipschitz_dd.bounds.evolution. Points: the `points` argument, else the datamodule's
in-memory `train_x`, else the map-style dataset of the training loader; a seeded subset of `max_samples` of them.
Measurements run with the model isolated (eval mode, parameters frozen, the global RNG restored: see
`PackageCallback.isolated`), so training is the same with and without the callback.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from lipschitz_dd.bounds.evolution import (
    data_radius,
    evolution_bounds,
    parameter_jacobian_norms,
    path_length_step,
)
from lipschitz_dd.bounds.jacobian import jacobian_spectral_norms
from lipschitz_dd.callbacks._base import PackageCallback
from lipschitz_dd.callbacks._points import seeded_subset
from lipschitz_dd.callbacks._schedule import Schedule
from lipschitz_dd.metric_names import (
    EVOLUTION_BOUND1,
    EVOLUTION_BOUND2,
    EVOLUTION_C_THETA,
    EVOLUTION_C_X0,
    EVOLUTION_PATH_LENGTH,
    EVOLUTION_RADIUS,
)


class EvolutionBound(PackageCallback):
    """Logs evolution/* (see the module doc) every `every_n_epochs` epochs, in `on_validation_epoch_end`
    (the row of the test loss) or, without validation, in `on_train_epoch_end`.

    Args:
        every_n_epochs: measure C_theta and log the bounds at the end of every n-th epoch (and the last one).
        clip_norm: the global gradient-norm clipping B of the run (None: Bound 2 is not logged).
        max_samples: training points used for C_theta, C_x0 (a seeded subset); None = all.
        batch_size: points per parameter-Jacobian batch (memory ~ batch_size x K x P numbers).
        points: explicit training points (default: the datamodule's train_x).
        seed: seed of the subset.

    State across a checkpoint (`state_attributes`): the per-update path length, update count, largest lr,
    C_theta so far, C_x0, r, the parameters after the last update and the last logged epoch.
    """

    state_attributes: ClassVar[dict[str, str]] = {
        "path_length": "path_length",
        "steps": "steps",
        "max_lr": "max_lr",
        "c_theta": "c_theta",
        "c_x0": "c_x0",
        "radius": "radius",
        "previous": "previous",
        "logged_epoch": "_logged_epoch",
    }

    def __init__(
        self,
        every_n_epochs: int = 10,
        clip_norm: float | None = None,
        max_samples: int | None = 1000,
        batch_size: int = 64,
        points: Tensor | None = None,
        seed: int = 0,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs, self.clip_norm, self.max_samples = every_n_epochs, clip_norm, max_samples
        self.batch_size, self.points, self.seed = batch_size, points, seed
        self.schedule = Schedule(every_n_epochs, dense_epochs=0)
        self.path_length, self.steps, self.max_lr, self.c_theta = 0.0, 0, 0.0, 0.0
        self.previous: dict[str, Tensor] = {}
        self.c_x0 = self.radius = float("nan")
        self._logged_epoch = -1
        self._resumed = False

    def _points(self, trainer: Trainer, device: torch.device) -> Tensor:
        try:
            inputs = self.indexed_inputs(trainer, "train", explicit=self.points)
        except ValueError as error:
            raise ValueError(
                f"EvolutionBound needs training points ({error}): a datamodule with train_x, or `points`"
            ) from error
        return inputs.rows(seeded_subset(len(inputs), self.max_samples, self.seed)).to(device)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if getattr(self, "_resumed", False):  # C_x0, r and C_theta so far come from the checkpoint
            self.previous = {name: p.to(pl_module.device) for name, p in self.previous.items()}
            return
        x = self._points(trainer, pl_module.device)
        self.previous = {name: p.detach().clone() for name, p in pl_module.named_parameters()}
        self.radius = data_radius(x)
        with self.isolated(pl_module):
            self.c_x0 = max(float(jacobian_spectral_norms(pl_module, b).max()) for b in x.split(self.batch_size))
            self.c_theta = self._c_theta(pl_module, x)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self.path_length += path_length_step(self.previous, pl_module)
        self.steps += 1
        for optimizer in trainer.optimizers:
            self.max_lr = max(self.max_lr, *(float(g["lr"]) for g in optimizer.param_groups))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (
            not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING
        ):  # inside fit: the same row as the test loss
            self._measure_epoch_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._measure_epoch_end(trainer, pl_module)  # no-op when validation measured this epoch

    def _measure_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if self._logged_epoch == epoch or not self.is_due(trainer, epoch):
            return
        self._logged_epoch = epoch
        with self.isolated(pl_module):
            self.c_theta = max(self.c_theta, self._c_theta(pl_module, self._points(trainer, pl_module.device)))
        bounds = evolution_bounds(
            self.c_theta, self.path_length, self.radius, self.c_x0, self.clip_norm, self.max_lr, self.steps
        )
        metrics = {
            EVOLUTION_PATH_LENGTH: self.path_length,
            EVOLUTION_C_THETA: self.c_theta,
            EVOLUTION_C_X0: self.c_x0,
            EVOLUTION_RADIUS: self.radius,
            EVOLUTION_BOUND1: bounds.bound1.value,
        }
        if self.clip_norm is not None:
            metrics[EVOLUTION_BOUND2] = bounds.bound2.value
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")

    def on_state_loaded(self, state_dict: dict[str, Any]) -> None:
        self.previous = dict(self.previous)
        self._resumed = True

    def _c_theta(self, pl_module: LightningModule, x: Tensor) -> float:
        return max(float(parameter_jacobian_norms(pl_module, b).max()) for b in x.split(self.batch_size))
