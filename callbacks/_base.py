"""`PackageCallback`: what lipschitz_dd's four callbacks (Lipschitz, FunctionSnapshot, EvolutionBound,
GradNormStopping) share, so each finds its points, isolates the model, schedules itself and keeps its state in
one way:

* point access: `indexed_inputs` (all training / test inputs by row: the datamodule's `train_x` / `test_x`, else
  a map-style dataset), `point_source` (this rank's seeded subset as (x, y, index) batches, from explicit
  tensors, the datamodule or any loader) and `training_loader` (the loader of a full pass over the training
  set), all from callbacks/_points.py;
* isolation: `isolated(pl_module)`: eval mode, autograd on, inference mode off, parameters frozen (or, for
  gradients with respect to them, not frozen but `.grad` untouched), the global RNG streams and the given
  loaders' generators restored afterwards; each submodule's mode restored exactly;
* schedule: `schedule` (a `Schedule` or None) and `is_due(trainer, epoch)`;
* declared state: `state_attributes` {checkpoint key: attribute}; `state_dict` / `load_state_dict` save and
  restore them (tensors detached and moved to the CPU), `on_state_loaded` runs after a load.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from lightning.pytorch import Callback, Trainer
from torch import Tensor, nn

from lipschitz_dd.callbacks._isolation import measurement_mode, preserved_rng_state
from lipschitz_dd.callbacks._points import IndexedInputs, PointSource, indexed_inputs, resolve_source
from lipschitz_dd.callbacks._schedule import Schedule
from lipschitz_dd.callbacks.options import Key, PointOptions

__all__ = ["PackageCallback"]


class PackageCallback(Callback):
    """Base of the package's callbacks (see the module doc). Subclasses set `schedule` (None: not scheduled by
    epochs) and `state_attributes`, and use the helpers below instead of their own."""

    state_attributes: ClassVar[dict[str, str]] = {}
    """Checkpoint key -> attribute name of the state kept across a checkpoint and resume."""

    schedule: Schedule | None = None

    # -- point access
    @staticmethod
    def indexed_inputs(trainer: Trainer, kind: str, key: Key | None = None, explicit: Tensor | None = None):
        """All "train" / "test" inputs addressable by row: `explicit` if given, else see `indexed_inputs` in
        callbacks/_points.py (a ValueError when there are none)."""
        return IndexedInputs.from_tensor(explicit) if explicit is not None else indexed_inputs(trainer, kind, key)

    @staticmethod
    def point_source(
        trainer: Trainer, kind: str, options: PointOptions, warn: Callable[[str, str], None]
    ) -> PointSource | None:
        """This rank's "train" / "test" points as the options say (explicit tensors, else the datamodule's
        measurement set or tensors, else the loader's samples); None when there are none."""
        explicit = (
            (options.train_points, options.train_labels)
            if kind == "train"
            else (options.test_points, options.test_labels)
        )
        return resolve_source(
            trainer,
            kind,
            *explicit,
            max_samples=options.max_samples,
            seed=options.seed,
            batch_size=options.batch_size,
            warn=warn,
            input_key=options.input_key,
            label_key=options.label_key,
            get_input=options.get_input,
            get_label=options.get_label,
        )

    @staticmethod
    def training_loader(trainer: Trainer) -> Iterable[Any]:
        """A full pass over the training set: the datamodule's `train_eval_dataloader()` if it has one (each
        sample once per process), else `trainer.train_dataloader`."""
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "train_eval_dataloader"):
            return datamodule.train_eval_dataloader()
        return trainer.train_dataloader

    # -- isolation
    @staticmethod
    @contextmanager
    def isolated(
        pl_module: nn.Module, *, freeze_parameters: bool = True, loaders: Iterable[Any] = ()
    ) -> Iterator[None]:
        """Run a measurement without a trace on training: see `measurement_mode` and `preserved_rng_state`
        (callbacks/_isolation.py). freeze_parameters=False keeps requires_grad for gradients with respect to
        the parameters (take them with `torch.autograd.grad`); `.grad` is restored either way. `loaders`: whose
        own generators are restored too (a shuffled loader iterated inside)."""
        with preserved_rng_state(loaders), measurement_mode(pl_module, freeze_parameters):
            yield

    # -- schedule
    def is_due(self, trainer: Trainer, epoch: int) -> bool:
        """Whether the schedule measures after `epoch` finished epochs of this fit (the fit's last epoch counts
        as last: stopped, max_epochs or max_steps reached). Always True without a schedule."""
        if self.schedule is None:
            return True
        return self.schedule.is_scheduled(epoch, last=Schedule.is_last_epoch(trainer, epoch))

    # -- declared state
    def state_dict(self) -> dict[str, Any]:
        """The declared state (`state_attributes`), tensors detached and on the CPU."""
        return {key: _portable(getattr(self, name)) for key, name in self.state_attributes.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the declared state; keys absent from the checkpoint (an earlier version) keep their values."""
        for key, name in self.state_attributes.items():
            if key in state_dict:
                setattr(self, name, state_dict[key])
        self.on_state_loaded(state_dict)

    def on_state_loaded(self, state_dict: dict[str, Any]) -> None:
        """Called after `load_state_dict` restored the declared state. Default: nothing."""


def _portable(value: Any) -> Any:
    """value with every tensor (also inside dicts, lists and tuples) detached, cloned and moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_portable(v) for v in value)
    return value
