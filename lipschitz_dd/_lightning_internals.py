"""Every private Lightning internal lipschitz_dd relies on, in one place (checked on Lightning 2.6).

Each accessor has a test in tests/test_lightning_internals.py that fails when Lightning changes or removes what
it reads, so an upgrade shows here rather than as a wrong row somewhere else. Users of each:

    is_last_batch             callbacks/lipschitz.py      a mid-epoch validation is not the epoch's end
    logger_step               callbacks/_logging.py       the step Lightning gives a row it logs now
    epochs_started            lipschitz_dd/epoch_axis.py  the running epoch of the run folder's rows
    setup_val_data            lipschitz_dd/models/base.py loads the validation loaders before the first epoch
    CURRENT_FX_ATTRIBUTE      lipschitz_dd/models/base.py the attribute Lightning sets around every hook call
    logger_experiment         lipschitz_dd/loggers.py     a logger's experiment if created, without creating it
    CSV_WRITER_ATTRIBUTES     lipschitz_dd/loggers.py     what `_RowMergingWriter` uses of Lightning's CSV writer

Plain Python apart from Lightning itself; imports nothing of lipschitz_dd.
"""

from __future__ import annotations

from typing import Any

CURRENT_FX_ATTRIBUTE = "_current_fx_name"
"""The LightningModule attribute Lightning sets (a str or None) around every hook call."""

CSV_WRITER_ATTRIBUTES = (
    "metrics",
    "metrics_keys",
    "metrics_file_path",
    "log_dir",
    "NAME_HPARAMS_FILE",
    "_check_log_dir_exists",
    "_record_new_keys",
)
"""What a subclass of `lightning.pytorch.loggers.csv_logs.ExperimentWriter` (`_RowMergingWriter`) relies on."""


def is_last_batch(trainer: Any) -> bool:
    """Whether the training epoch has reached its last batch (False during a mid-epoch validation)."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def logger_step(trainer: Any) -> int:
    """The step Lightning passes to the loggers for metrics logged now without a `step` metric
    (`_batches_that_stepped`: the optimiser steps taken, less one while a validation / epoch-end row is logged)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def epochs_started(trainer: Any) -> int:
    """How many training epochs of the fit have started (0 before the first; a resumed run continues the count)."""
    return int(trainer.fit_loop.epoch_progress.current.ready)


def setup_val_data(trainer: Any) -> None:
    """Load the fit's validation loaders now (a no-op if the sanity check already did)."""
    trainer.fit_loop.epoch_loop.val_loop.setup_data()


def logger_experiment(logger: Any) -> Any:
    """A logger's experiment object if it was created, else None (reading `.experiment` would create it)."""
    return getattr(logger, "_experiment", None)


def is_wandb_logger(logger: Any) -> bool:
    """Whether `logger` is a Lightning WandbLogger (or a subclass), without importing wandb."""
    from lightning.pytorch.loggers import WandbLogger

    return isinstance(logger, WandbLogger)


def wandb_init_kwargs(logger: Any) -> dict[str, Any]:
    """The keyword arguments a Lightning WandbLogger will pass to `wandb.init` (its private `_wandb_init`); the
    dict itself, so a key removed here is not passed. Lightning 2.6 always passes `anonymous` (None unless asked),
    which wandb >= 0.19 answers with a deprecation warning on every run."""
    return logger._wandb_init
