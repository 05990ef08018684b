"""`ResultsWriter`: writes the run's `results.json` at the end of fit, and also on failure or interruption.

The schema, the file names and the statuses are those of :mod:`lipschitz_dd.run_folder`.
"""

from __future__ import annotations

import csv
import math
import os
import platform
import time
import warnings
from importlib import metadata
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lipschitz_dd.run_folder import (
    DIVERGED,
    DIVERGENCE_FACTOR,
    DIVERGENCE_METRIC,
    FAILED,
    FINISHED,
    INTERRUPTED,
    STATUSES,
    STOPPED_CONVERGED,
    RunResults,
    loss_diverged,
    write_json_atomic,
    write_results,
)

__all__ = [
    "STATUSES",
    "ResultsWriter",
    "RunRecord",
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
    """

    def __init__(self, run_dir: str | None = None, config: dict[str, Any] | None = None) -> None:
        self.run_dir = run_dir
        self.config = dict(config or {})
        self._start = time.time()
        self._written = False
        self.error: str | None = None
        #: "SIGINT" or "SIGTERM" when fit was interrupted by one, else None
        self.signal: str | None = None
        #: the status of the last results.json written, None before
        self.status: str | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.time()
        self._written = False

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
        self.write(trainer, pl_module, status)

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
        os.makedirs(run_dir, exist_ok=True)
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
        results = RunResults(
            status=status,
            config=self.config,
            final=final,
            max=maximum,
            epochs=int(trainer.current_epoch),
            global_step=int(trainer.global_step),
            seconds=round(time.time() - self._start, 3),
            versions=package_versions(),
            error=self.error,
        )
        if self.signal is not None:
            results.extra["signal"] = self.signal
        for callback in trainer.callbacks:  # entries other callbacks add, e.g. LipschitzCallback's "measurement"
            extra = getattr(callback, "results_extra", None)
            if callable(extra) and callback is not self:
                results.extra.update(extra())
        write_results(run_dir, results)
        self.status = status
        self._written = True


class RunRecord(ResultsWriter):
    """Deprecated name of :class:`ResultsWriter` (kept so existing configs and imports keep working)."""

    def __init__(self, run_dir: str | None = None, config: dict[str, Any] | None = None) -> None:
        warnings.warn(
            "lipschitz_dd.callbacks.RunRecord is deprecated; use lipschitz_dd.callbacks.ResultsWriter",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(run_dir=run_dir, config=config)
