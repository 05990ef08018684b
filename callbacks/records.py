"""`ResultsWriter`: writes the run's `results.json` at the end of fit, and also on failure or interruption.

The schema, the file names and the statuses are those of :mod:`lipschitz_dd.run_folder`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lipschitz_dd.run_folder import (
    COMPLETED_STATUSES,
    DIVERGED,
    DIVERGENCE_FACTOR,
    DIVERGENCE_METRIC,
    FAILED,
    FINISHED,
    INTERRUPTED,
    STATUSES,
    STOPPED_CONVERGED,
    ResultsFileError,
    RunResults,
    loss_diverged,
    read_results,
    write_json_atomic,
    write_results,
)

log = logging.getLogger(__name__)

__all__ = [
    "ENDED_STATUSES",
    "STATUSES",
    "RecordWriteError",
    "ResultsWriter",
    "cpu_model",
    "machine_info",
    "package_versions",
    "read_metric_rows",
    "summarise",
    "write_json_atomic",
]

_VERSIONED_PACKAGES = ("torch", "lightning", "torchmetrics", "numpy", "wandb", "lipschitz_dd")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def read_metric_rows(metrics_csv: str) -> list[dict[str, float]]:
    """Rows of a Lightning metrics.csv as {metric: float}, rows with the same `step` merged, sorted by step."""
    if not os.path.exists(metrics_csv):
        return []
    by_step: dict[int, dict[str, float]] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if k and v not in ("", None)}
            step = int(values.get("step", len(by_step)))
            by_step.setdefault(step, {}).update(values)
    return [by_step[s] for s in sorted(by_step)]


def summarise(rows: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """(last value, maximum over finite values) of every metric over the rows."""
    final: dict[str, float] = {}
    maximum: dict[str, float] = {}
    for row in rows:
        for key, value in row.items():
            if key in ("step", "epoch"):
                continue
            final[key] = value
            if math.isfinite(value) and (key not in maximum or value > maximum[key]):
                maximum[key] = value
    return final, maximum


#: Statuses of a run that ended (trained to its end, stopped by a rule or diverged): such a record is only
#: replaced by a newer state of the same run.
ENDED_STATUSES = (*COMPLETED_STATUSES, DIVERGED)
_UNREAD = "unread"


class RecordWriteError(OSError):
    """results.json (or the run folder) cannot be written; the message names the path (one line)."""


def _os_reason(error: OSError) -> str:
    return error.strerror or str(error)


def cpu_model() -> str:
    """The CPU model: /proc/cpuinfo's "model name" (Linux), else platform.processor(), else platform.machine()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")) and ":" in line:
                    name = " ".join(line.split(":", 1)[1].split())
                    if name:
                        return name
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """{"threads": torch's intra-op thread count (the given one, else the current one), "cpu": cpu_model(),
    "cpus": os.cpu_count()}: CPU results depend on the thread count (the order of floating-point sums), so two
    runs' numbers are comparable when these agree."""
    return {
        "threads": int(threads if threads is not None else torch.get_num_threads()),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
    }


def _fit_end_keys(logger: Any) -> set[str]:
    """The keys a run folder's CSV logger saw logged after the last epoch (none for other loggers; Lightning's
    DummyLogger answers every attribute with a function)."""
    keys = getattr(logger, "fit_end_keys", None)
    return set(keys) if isinstance(keys, (set, frozenset, list, tuple)) else set()


def interruption_signal(exception: BaseException) -> str | None:
    """ "SIGINT" for Ctrl-C (KeyboardInterrupt), "SIGTERM" for Lightning's SIGTERMException, else None."""
    if isinstance(exception, KeyboardInterrupt):
        return "SIGINT"
    if isinstance(exception, SIGTERMException):
        return "SIGTERM"
    return None


class ResultsWriter(Callback):
    """Writes `<run dir>/results.json` (:class:`lipschitz_dd.run_folder.RunResults`) when fit ends, fails or is
    interrupted.

    The run directory is `trainer.log_dir` unless `run_dir` is given. The metric history is read back from the
    run's `metrics.csv` (written by a CSVLogger), so it holds whatever every module and callback logged.
    Status: "diverged" if the module or a callback set `diverged = True`, or if the final train/loss exceeds
    DIVERGENCE_FACTOR times its first logged value (the run blew up but stayed finite); "stopped_converged" if a
    callback set `converged = True`; "interrupted" on Ctrl-C (SIGINT) or SIGTERM (`signal` says which);
    "failed" on any other exception; else "finished". A callback with a `results_extra()` method adds the
    top-level entries it returns (LipschitzCallback: "measurement", the method its lower bounds used).

    A record that ended (:data:`ENDED_STATUSES`: finished, stopped_converged, diverged) already in the run folder is
    only replaced by a newer state of the same run: never by a ``failed`` one (a resume whose checkpoint is missing
    or corrupt, whose data cannot be read, ...), and on a resume (``resumed``, else auto-detected from
    ``trainer.ckpt_path``) only by a state that got further (more epochs, or more optimiser steps at the same
    epoch). Otherwise the earlier results.json is left as it was and ``kept_earlier`` holds its status.
    A resumed run's ``seconds`` is the sum over its attempts (the earlier record's seconds plus this fit's wall
    time; ``attempts`` counts them). ``machine`` records the torch thread count the fit ran with and the CPU model
    (:func:`machine_info`). ``before_write`` (if given) is called right before results.json is written (the CLI
    writes the resumed run's config.yaml there, so both change together or neither does).
    """

    def __init__(
        self,
        run_dir: str | None = None,
        config: dict[str, Any] | None = None,
        resumed: bool | None = None,
        before_write: Callable[[], None] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.config = dict(config or {})
        self.resumed = resumed
        self.before_write = before_write
        self._start = time.time()
        self._written = False
        self._earlier: RunResults | None | str = _UNREAD
        self.error: str | None = None
        #: "SIGINT" or "SIGTERM" when fit was interrupted by one, else None
        self.signal: str | None = None
        #: the status of the last results.json written, None before
        self.status: str | None = None
        #: the status of an earlier record left in place instead of this fit's state (see the class doc), else None
        self.kept_earlier: str | None = None
        self._threads: int | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._threads = torch.get_num_threads()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.time()
        self._written = False
        self._threads = torch.get_num_threads()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, pl_module, self._status(trainer, pl_module))

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.signal = interruption_signal(exception)
        if self.signal is not None:
            self.error = f"interrupted by {self.signal} ({type(exception).__name__})"
            status = INTERRUPTED
        else:
            self.error = f"{type(exception).__name__}: {exception}"
            status = FAILED
        if isinstance(exception, RecordWriteError):  # writing the record is what failed: no second try
            return
        try:
            self.write(trainer, pl_module, status)
        except OSError as error:  # the exception that ended fit is the one raised; this one is said in a line,
            if not isinstance(exception, OSError):  # unless that one is an OSError too (a read-only folder...)
                log.warning(f"{error}")

    @staticmethod
    def _status(trainer: Trainer, pl_module: LightningModule) -> str:
        objects = [pl_module, *trainer.callbacks]
        if any(getattr(o, "diverged", False) for o in objects):
            return DIVERGED
        if any(getattr(o, "converged", False) for o in objects):
            return STOPPED_CONVERGED
        if trainer.interrupted:
            return INTERRUPTED
        return FINISHED

    def _metrics_csv(self, trainer: Trainer) -> str | None:
        for lg in trainer.loggers:
            if hasattr(lg, "flush"):
                lg.flush()
            elif hasattr(lg, "save"):
                lg.save()
            path = getattr(getattr(lg, "experiment", None), "metrics_file_path", None)
            if isinstance(path, str):
                return path
        return None

    @rank_zero_only
    def write(self, trainer: Trainer, pl_module: LightningModule, status: str) -> None:
        run_dir = self.run_dir or trainer.log_dir
        if run_dir is None:
            rank_zero_warn("ResultsWriter: no run directory (no logger and no run_dir); results.json not written")
            return
        try:
            os.makedirs(run_dir, exist_ok=True)
        except OSError as error:
            raise RecordWriteError(f"{run_dir}: cannot create the run folder: {_os_reason(error)}") from error
        metrics_csv = self._metrics_csv(trainer)
        rows = read_metric_rows(metrics_csv) if metrics_csv else []
        final, maximum = summarise(rows)
        losses = [r[DIVERGENCE_METRIC] for r in rows if DIVERGENCE_METRIC in r]
        if status in (FINISHED, STOPPED_CONVERGED) and loss_diverged(losses):
            status = DIVERGED
            self.error = (
                f"{DIVERGENCE_METRIC} went from {losses[0]:.4g} to {losses[-1]:.4g} "
                f"(> {DIVERGENCE_FACTOR:g} x its first value): counted as diverged"
            )
        epochs, global_step = int(trainer.current_epoch), int(trainer.global_step)
        earlier = self._earlier_record(run_dir)
        resumed = self.resumed if self.resumed is not None else trainer.ckpt_path is not None
        if not self._may_replace(earlier, status, epochs, global_step, resumed):
            assert isinstance(earlier, RunResults)
            self.kept_earlier = earlier.status
            self.status = earlier.status
            return
        seconds = time.time() - self._start
        attempts = 1
        if resumed and isinstance(earlier, RunResults) and earlier.seconds is not None:
            seconds += earlier.seconds
            attempts = int(earlier.extra.get("attempts", 1) or 1) + 1
        results = RunResults(
            status=status,
            config=self.config,
            final=final,
            max=maximum,
            epochs=epochs,
            global_step=global_step,
            seconds=round(seconds, 3),
            versions=package_versions(),
            error=self.error,
        )
        results.extra["machine"] = machine_info(self._threads)
        if attempts > 1:
            results.extra["attempts"] = attempts
        fit_end = sorted({key for lg in trainer.loggers for key in _fit_end_keys(lg)})
        if not fit_end and resumed and isinstance(earlier, RunResults) and earlier.epochs == epochs:
            # an attempt stopped before training went past the earlier fit's end: that fit's end values may still
            # sit in this epoch's row, so the next resume must know them to drop them
            fit_end = list(earlier.extra.get("fit_end_metrics") or [])
        if fit_end:  # logged after the last epoch (the model's f(0)): a resume drops them from this epoch's row
            results.extra["fit_end_metrics"] = fit_end
        if self.signal is not None:
            results.extra["signal"] = self.signal
        for callback in trainer.callbacks:  # entries other callbacks add, e.g. LipschitzCallback's "measurement"
            extra = getattr(callback, "results_extra", None)
            if callable(extra) and callback is not self:
                results.extra.update(extra())
        if self.before_write is not None:
            self.before_write()
        path = os.path.join(run_dir, "results.json")
        try:
            write_results(run_dir, results)
        except OSError as error:
            raise RecordWriteError(f"{path}: cannot write the run's record: {_os_reason(error)}") from error
        self.status = status
        self.kept_earlier = None
        self._written = True

    def _earlier_record(self, run_dir: str) -> RunResults | None:
        """The record in the folder before this fit wrote one (read once per fit; None: none, or unreadable)."""
        if self._written:
            return None if isinstance(self._earlier, str) else self._earlier
        try:
            self._earlier = read_results(run_dir)
        except ResultsFileError:
            self._earlier = None
        return self._earlier

    @staticmethod
    def _may_replace(earlier: Any, status: str, epochs: int, global_step: int, resumed: bool) -> bool:
        """Whether this fit's state may replace the earlier record (see the class doc)."""
        if not isinstance(earlier, RunResults) or earlier.status not in ENDED_STATUSES:
            return True
        if status == FAILED:
            return False
        if not resumed:
            return True
        before = (earlier.epochs or 0, earlier.global_step or 0)
        return (epochs, global_step) > before


def __getattr__(name: str):
    """Deprecated names (see lipschitz_dd/compat.py)."""
    from lipschitz_dd.compat import deprecated_name

    return deprecated_name(__name__, name)
