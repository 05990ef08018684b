"""How `LipschitzCallback` hands its metrics to the loggers, on the epoch axis of `lipschitz_dd.epoch_axis`."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer

from lipschitz_dd.epoch_axis import STEP_METRIC


def log_epoch_row(pl_module: LightningModule, metrics: dict[str, float], epoch: int | None) -> None:
    """`pl_module.log` of every metric (allowed in epoch-end hooks; the values are already identical on every
    rank: sync_dist with max keeps them and avoids Lightning's "use sync_dist=True" warning under DDP), plus
    `step` = `epoch` when given: the row's logger step is then the epoch for any module. The step is logged
    with `self.log`'s defaults, as a module's own `self.log("step", ...)` in the same hook would be, so both
    may log it."""
    for name, value in metrics.items():
        pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")
    if epoch is not None:
        pl_module.log(STEP_METRIC, float(epoch), on_step=False, on_epoch=True)


def write_row(trainer: Trainer, metrics: dict[str, float], epoch: int) -> None:
    """Metrics straight to every logger at step `epoch` (outside the hooks where `self.log` is allowed)."""
    for logger in trainer.loggers if metrics else ():
        logger.log_metrics(metrics, step=epoch)
