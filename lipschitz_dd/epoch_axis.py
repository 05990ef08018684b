"""The x-axis of every metric lipschitz_dd logs: the epoch (number of finished epochs; 0 = before the first update).

One mechanism, shared by LightningModules, callbacks and loggers:

1. A row of epoch-level metrics carries the metric `step` = its epoch. Code that logs with `self.log` in an
   epoch-end hook logs `step` too (Lightning's own rule: a logged metric named "step" becomes the logger step,
   and Lightning then adds no "epoch" metric); code that writes to the loggers directly passes
   `step=epoch_row(trainer)`. lipschitz_dd's models and `LipschitzCallback` both do this, so a user's plain
   LightningModule measured by the callback gets the same rows as the project's models.
2. The run folder's loggers (`lipschitz_dd.loggers`) are given `epoch_row` as a clock (`use_epoch_axis`): they
   key every row by the epoch that is running when it is logged, whatever step the caller passed, so
   optimiser-step metrics of other callbacks (e.g. Lightning's LearningRateMonitor) join their epoch's row (the
   last value of the epoch is kept) instead of interleaving with epoch rows; W&B uses `epoch` as the step
   metric of every key.
3. Checkpoints of the CLI's default ModelCheckpoint are named `epoch=<epoch>.ckpt`: the same epoch as the last
   row of metrics.csv and results.json's "epochs" (Lightning's default name puts the 0-based epoch index and,
   with a logged `step`, that step beside it). Optimiser updates are counted only as results.json's
   "global_step".

Plain Python: imports only the private-internals accessor (lipschitz_dd/_lightning_internals.py, plain Python too); a
Trainer is passed in.
"""

from __future__ import annotations

from typing import Any

from lipschitz_dd._lightning_internals import epochs_started

STEP_METRIC = "step"
"""The logged metric whose value is the row's epoch (Lightning uses it as the logger step)."""


def epoch_row(trainer: Any) -> int:
    """The epoch of the row that metrics logged now belong to.

    While fitting: 0 before the first epoch starts (`on_train_start`); e from the start of the e-th epoch
    (1-based) to its end: its batches, its validation and its epoch-end hooks (the row of the parameters after
    e epochs); after the last epoch (`on_train_end`) the number of finished epochs. A resumed run continues the
    count. Outside fit (validate/test): `trainer.current_epoch`, the finished epochs of the loaded weights.
    """
    if trainer.state.fn == "fit":  # TrainerFn is a str enum
        return epochs_started(trainer)
    return int(trainer.current_epoch)


class EpochClock:
    """`clock()` = `epoch_row(trainer)` (a class, not a lambda, so a logger holding it can be pickled)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def __call__(self) -> int:
        return epoch_row(self.trainer)


CHECKPOINT_FILENAME = "epoch={step}"
"""Name of the checkpoints of the CLI's default ModelCheckpoint: the epoch of the row (ModelCheckpoint reads a
logged `step` metric before Lightning's update count), as in metrics.csv and results.json's "epochs"."""


EPOCH_AXIS_MARK = "_lipschitz_dd_epoch_axis"
"""Attribute `use_epoch_axis` sets on a trainer it put on the epoch axis."""


def on_epoch_axis(trainer: Any) -> bool:
    """Whether the trainer's rows are on the epoch axis (every row has `step` = its epoch): `use_epoch_axis`
    was called (the project's run folder), or the module opts in itself (`epoch_axis = True`, lipschitz_dd's
    models). A user's own trainer and module are not: there a callback leaves Lightning's steps alone."""
    module = getattr(trainer, "lightning_module", None)
    return bool(getattr(trainer, EPOCH_AXIS_MARK, False) or getattr(module, "epoch_axis", False) is True)


def use_epoch_axis(trainer: Any) -> None:
    """Put a trainer's run folder on the epoch axis: every logger of `trainer` with an `epoch_clock` attribute
    (the loggers of `lipschitz_dd.loggers`) gets the clock `epoch_row(trainer)` and keys every row by the running
    epoch; checkpoint callbacks with Lightning's default name ("epoch={epoch}-step={step}", whose epoch is the
    0-based index of the running epoch) name their files `epoch=<finished epochs>.ckpt` instead. Marks the trainer
    (`on_epoch_axis`), so callbacks that work on any user's trainer log `step` only on the project's axis."""
    setattr(trainer, EPOCH_AXIS_MARK, True)
    for logger in trainer.loggers:
        if hasattr(logger, "epoch_clock"):
            logger.epoch_clock = EpochClock(trainer)
    for checkpoint in trainer.checkpoint_callbacks:
        if getattr(checkpoint, "filename", "") is None:  # not named by the user
            checkpoint.filename, checkpoint.auto_insert_metric_name = CHECKPOINT_FILENAME, False
