"""How the callbacks hand their metrics to the loggers, without changing the user's rows.

A drop-in callback logs only its own keys: `pl_module.log` in epoch-end hooks (the values join the row Lightning
writes for that hook, at Lightning's step, with Lightning's `epoch` column), or straight to the loggers outside
those hooks. It never logs `step` or `epoch`, so a user's logger steps and columns stay as they are with and
without it. The one-epoch-axis convention (`step` = finished epochs) is the project's opt-in: lipschitz_dd's
models log `step` themselves, and on a trainer the project's CLI put on the epoch axis (`use_epoch_axis`, see
lipschitz_dd/epoch_axis.py) the callbacks log `step` = the epoch in every epoch row too (a user's module run by
the CLI, epochs without validation) and the run folder's loggers key rows by epoch.
"""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer

from lipschitz_dd import _lightning_internals as internals
from lipschitz_dd.epoch_axis import STEP_METRIC, on_epoch_axis

EPOCH_AXIS_KEYS = ("lipschitz/*",)
"""Key patterns that W&B plots against `epoch` (define_metric) on a user's WandbLogger."""


def log_epoch_row(pl_module: LightningModule, metrics: dict[str, float], epoch: int | None = None) -> None:
    """`pl_module.log` of every metric (allowed in epoch-end hooks; the values are already identical on every
    rank: sync_dist with max keeps them and avoids Lightning's "use sync_dist=True" warning under DDP), plus
    `step` = `epoch` when given (only on the project's epoch axis). The step is logged with `self.log`'s
    defaults, as a module's own `self.log("step", ...)` in the same hook would be, so both may log it."""
    for name, value in metrics.items():
        pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")
    if epoch is not None:
        pl_module.log(STEP_METRIC, float(epoch), on_step=False, on_epoch=True)


def write_row(trainer: Trainer, metrics: dict[str, float], epoch: int) -> None:
    """Metrics straight to every logger (outside the hooks where `self.log` is allowed): at step `epoch` on the
    project's epoch axis, else at Lightning's current logger step (the user's axis)."""
    step = epoch if on_epoch_axis(trainer) else internals.logger_step(trainer)
    for logger in trainer.loggers if metrics else ():
        logger.log_metrics(metrics, step=step)


def define_epoch_axis(trainer: Trainer, patterns: tuple[str, ...] = EPOCH_AXIS_KEYS) -> None:
    """On a user's WandbLogger (rank zero), plot `patterns` against `epoch` (W&B `define_metric`); loggers with
    an `epoch_clock` (lipschitz_dd.loggers) define their own axis and are left alone."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if hasattr(logger, "epoch_clock") or not internals.is_wandb_logger(logger):
            continue
        define = getattr(logger.experiment, "define_metric", None)
        if callable(define):
            for pattern in patterns:
                define(pattern, step_metric="epoch")
