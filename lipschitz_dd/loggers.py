"""Loggers for one run folder: a CSV with one row per epoch, and W&B (online if configured, else offline)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only


class _RowMergingWriter(ExperimentWriter):
    """Merges consecutive `log_metrics` calls with the same step into one CSV row.

    Lightning flushes metrics logged in different hooks separately (e.g. the module's and a callback's epoch-0
    values); the report wants one row per epoch. The row of the current step stays in memory until a row with
    another step arrives or `flush()` is called, so at most one row is ever pending.
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._pending: dict[str, Any] | None = None

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        values = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics_dict.items()}
        if step is None:
            step = len(self.metrics)
        if self._pending is not None and self._pending["step"] == step:
            self._pending.update(values)
            return
        if self._pending is not None:
            self.metrics.append(self._pending)
        self._pending = {**values, "step": step}

    def flush(self) -> None:
        """Write every row, the pending one included."""
        if self._pending is not None:
            self.metrics.append(self._pending)
            self._pending = None
        self.save()


class EpochCSVLogger(CSVLogger):
    """`CSVLogger` writing `<save_dir>/<name>/<version>/metrics.csv` with one row per logged step.

    With an `epoch_clock` (set by `lipschitz_dd.epoch_axis.use_epoch_axis`) the step of every row is the
    epoch running when it is logged, whatever step the caller passed (see lipschitz_dd/epoch_axis.py).
    """

    epoch_clock: Callable[[], int] | None = None

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, self.epoch_clock() if self.epoch_clock is not None else step)

    @property
    def experiment(self) -> _RowMergingWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _RowMergingWriter(log_dir=self.log_dir)
        return self._experiment

    def flush(self) -> None:
        self.experiment.flush()

    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self.flush()
        super().finalize(status)


class EpochWandbLogger(WandbLogger):
    """`WandbLogger` on the epoch axis: every logged key is plotted against `epoch` (`define_metric("*",
    step_metric="epoch")`), each row carries `epoch` = its step, and consecutive `log_metrics` calls with the same
    step make one W&B row (the module's and the callback's epoch-0 values, the rows of one epoch), sent when a row
    with another step arrives or at `finalize`. With an `epoch_clock` (see `EpochCSVLogger`) the step is the
    running epoch, whatever step the caller passed."""

    epoch_clock: Callable[[], int] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending_row: tuple[int, dict[str, Any]] | None = None
        self._epoch_axis_defined = False

    @property
    def experiment(self) -> Any:
        run = super().experiment
        if not self._epoch_axis_defined and callable(getattr(run, "define_metric", None)):
            run.define_metric("epoch")
            run.define_metric("*", step_metric="epoch", step_sync=True)
            self._epoch_axis_defined = True
        return run

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        step = self.epoch_clock() if self.epoch_clock is not None else step
        if step is None:
            super().log_metrics(metrics)
            return
        if self._pending_row is not None and self._pending_row[0] != step:
            self._send_row()
        if self._pending_row is None:
            self._pending_row = (step, {})
        self._pending_row[1].update(metrics)

    def _send_row(self) -> None:
        if self._pending_row is not None:
            step, metrics = self._pending_row
            self._pending_row = None
            super().log_metrics({**metrics, "epoch": step}, step=step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._send_row()
        super().finalize(status)


def wandb_is_configured() -> bool:
    """True when W&B could log online: an API key in the environment or in ~/.netrc, and not forced offline."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return False
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.expanduser("~/.netrc")
    if os.path.exists(netrc):
        with open(netrc) as f:
            return "api.wandb.ai" in f.read()
    return False


def build_wandb_logger(run_dir: str, experiment: str, run_name: str, config: dict[str, Any]):
    """A `WandbLogger` writing into `<run_dir>/wandb`, offline (no prompt, no network) unless W&B is configured.

    Inside a W&B sweep (local runner or `wandb agent`) the group and tags come from WANDB_RUN_GROUP/WANDB_TAGS.
    """
    offline = not wandb_is_configured()
    if offline:
        os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    tags = [t for t in os.environ.get("WANDB_TAGS", "").split(",") if t]
    return EpochWandbLogger(
        save_dir=run_dir,
        project=os.environ.get("WANDB_PROJECT", "lipschitz_dd"),
        name=run_name,
        id=os.environ.get("WANDB_RUN_ID") or None,
        group=os.environ.get("WANDB_RUN_GROUP", experiment),
        tags=tags or None,
        offline=offline,
        config=config,
    )
