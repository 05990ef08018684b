"""Find and load run folders (results.json + metrics.csv) without importing any training code.

A run folder is ``<save_dir>/<experiment>/<run name>/`` holding ``metrics.csv`` (Lightning's CSVLogger),
``config.yaml`` and ``results.json`` (the contract is :mod:`lipschitz_dd.run_folder`). A sweep folder holds
such run folders somewhere below it, so the report simply searches recursively. Runs that failed, diverged or
never wrote ``results.json`` are still loaded: their status says what happened and ``problems`` says what is
missing. W&B run directories found outside run folders (``offline-run-*``, ``run-*``, e.g. gathered from
other machines) are read too (:mod:`lipschitz_dd.report.wandb_runs`).

Rules that keep every grid point counted once and only trusted numbers in figures:

- Attempts of a sweep run moved aside by the sweep runner (``<sweep>/attempts/<run id>-<k>/...``) are
  earlier tries of the same run: only the latest attempt of each run id is loaded (the one outside
  ``attempts/`` if there is one, else the highest ``k``). The rule holds for every kind of record: a run folder,
  and a W&B run directory with no run folder around it (a run killed during start-up leaves only ``wandb/``);
  anything below ``attempts/<run id>-<k>/`` is attempt ``k`` of that run id. A ``wandb/`` folder holding several
  W&B runs (start-up retried in the same folder) counts as one run: its latest (by the timestamp in the name).
- A run whose metrics.csv cannot be read as numbers (a non-numeric cell, no ``step`` column) is ``damaged``: listed
  in runs.csv with the reason, left out of figures and means; the report goes on with the other runs.
- A run that recorded no config (killed during start-up) gets the parameters the sweep runner gave it
  (``<sweep>/params/<run id>.json``), so it is counted at its grid point.
- Runs the sweep runner marked ``outside_grid`` (their parameters are no longer in the sweep file) are left
  out unless asked for.
- A run recorded as completed whose train/loss ended more than ``DIVERGENCE_FACTOR`` times above its first
  logged value, or not finite, is counted as ``diverged`` (left out of figures and means, listed in runs.csv).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from lipschitz_dd.run_folder import (
    CHECKPOINTS_DIR,
    COMPLETED_STATUSES,
    CONFIG_FILE,
    DIVERGED,
    DIVERGENCE_FACTOR,
    DIVERGENCE_METRIC,
    METRICS_FILE,
    RESULTS_FILE,
    WANDB_DIR,
    ResultsFileError,
    RunResults,
    loss_diverged,
    read_results,
)

__all__ = [
    "COMPLETED_STATUSES",
    "CONFIG_FILE",
    "DAMAGED_STATUS",
    "INCOMPLETE_STATUS",
    "METRICS_FILE",
    "RESULTS_FILE",
    "UNREADABLE_STATUS",
    "ConfigList",
    "LoadedRun",
    "ReportInputError",
    "attempt_of",
    "find_run_folders",
    "flatten_config",
    "hashable_config_value",
    "latest_attempts",
    "load_run",
    "load_runs",
    "read_config_yaml",
    "read_metrics_csv",
]

#: Status given to a folder that has metrics but no results.json (still running, or killed hard).
INCOMPLETE_STATUS = "incomplete"
#: Status given to a folder whose results.json cannot be parsed.
UNREADABLE_STATUS = "unreadable"
#: Status given to a run whose metrics.csv cannot be read as numbers (its results.json did not say it failed).
DAMAGED_STATUS = "damaged"
#: The sweep runner's folder of earlier attempts: ``<sweep>/attempts/<run id>-<k>/<run id>/``.
ATTEMPTS_DIR = "attempts"
#: The sweep runner's folder of each run's parameters: ``<sweep>/params/<run id>.json``.
SWEEP_PARAMS_DIR = "params"

_SKIPPED_DIRS = {WANDB_DIR, CHECKPOINTS_DIR, "__pycache__"}
_ATTEMPT_NAME = re.compile(r"^(?P<run>.+)-(?P<k>\d+)$")


class ReportInputError(ValueError):
    """The folder given to the report is missing or holds no run (a one-line message for the user)."""


@dataclass
class LoadedRun:
    """Everything the report knows about one run (a run folder, or a W&B run).

    ``config`` uses dotted keys (``model.width``); ``final``/``max`` map metric names to numbers;
    ``metrics`` has one row per epoch (index ``step``), one column per metric, NaN where not logged.
    ``attempt``: the sweep runner's attempt number for a folder read from ``attempts/`` (None otherwise);
    ``outside_grid``: the sweep runner marked the run's parameters as no longer in the sweep file;
    ``source``: "folder" or "wandb".
    """

    path: Path
    name: str
    experiment: str
    status: str
    config: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    max: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    seconds: float | None = None
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    problems: list[str] = field(default_factory=list)
    attempt: int | None = None
    outside_grid: bool = False
    source: str = "folder"

    @property
    def completed(self) -> bool:
        """True when the run ended normally (its numbers can be plotted)."""
        return self.status in COMPLETED_STATUSES

    def final_value(self, metric: str) -> float:
        """The run's final value of ``metric``: results.json ``final`` first, else the last logged value
        in metrics.csv, else NaN."""
        value = self.final.get(metric)
        if _is_number(value):
            return float(value)
        if metric in self.metrics.columns:
            logged = self.metrics[metric].dropna()
            if len(logged):
                return float(logged.iloc[-1])
        return math.nan


def find_run_folders(root: str | Path) -> list[Path]:
    """All folders below ``root`` (``root`` included) holding results.json or metrics.csv, sorted (earlier
    attempts under ``attempts/`` included; :func:`load_runs` keeps the latest of each run).

    Raises ReportInputError (a ValueError) with a one-line message if ``root`` does not exist or holds
    no run folder.
    """
    found = _run_folders(_checked_root(root))
    if not found:
        raise ReportInputError(f"no run folders (with {RESULTS_FILE} or {METRICS_FILE}) found under {str(root)!r}")
    return found


def _checked_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise ReportInputError(f"folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise ReportInputError(f"{str(root)!r} is not a folder (expected a runs or sweep folder)")
    return root


def _run_folders(root: Path) -> list[Path]:
    """Folders below root holding RESULTS_FILE or METRICS_FILE, outside _SKIPPED_DIRS. Symlinked folders are
    followed (a folder of links to chosen runs is a valid --runs), each real folder once (no link cycles)."""
    found, seen = set(), set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        if RESULTS_FILE in files or METRICS_FILE in files:
            found.add(Path(folder))
    return sorted(found)


def load_runs(root: str | Path, include_outside_grid: bool = False) -> list[LoadedRun]:
    """Load every run below ``root``: run folders (see :func:`find_run_folders`, :func:`load_run`), each run id
    of a sweep once (:func:`latest_attempts`), plus W&B run directories that lie outside run folders.
    Runs marked ``outside_grid`` are left out unless ``include_outside_grid``.

    Raises ReportInputError (one line) when ``root`` is missing or holds no run at all."""
    from lipschitz_dd.report.wandb_runs import find_wandb_run_dirs, load_wandb_run_dir

    root = _checked_root(root)
    folders = _run_folders(root)
    wandb_dirs = find_wandb_run_dirs(root, outside=folders)
    if not folders and not wandb_dirs:
        raise ReportInputError(
            f"no run folders (with {RESULTS_FILE} or {METRICS_FILE}) or W&B runs found under {str(root)!r}"
        )
    runs = [load_run(folder) for folder in folders]
    for path in _latest_per_wandb_folder(wandb_dirs):
        run = load_wandb_run_dir(path)
        attempt = attempt_of(path)
        if attempt is not None:
            run.name, run.attempt = attempt
        runs.append(run)
    runs = latest_attempts(runs)
    for run in runs:
        if not run.config:  # e.g. killed during start-up: the sweep runner's record of its parameters
            run.config = _sweep_params(root, run)
    return [run for run in runs if include_outside_grid or not run.outside_grid]


def _sweep_params(root: Path, run: LoadedRun) -> dict[str, Any]:
    """The parameters the sweep runner gave run ``run.name`` (``<sweep>/params/<run id>.json``, {key: value}), for
    a run that recorded no config of its own; the sweep folder is searched from the run up to ``root``. {} when
    there is none or it is unreadable."""
    root = root.resolve()
    for parent in Path(run.path).resolve().parents:
        candidate = parent / SWEEP_PARAMS_DIR / f"{run.name}.json"
        if (parent / "runs").is_dir() and candidate.is_file():
            try:
                values = json.loads(candidate.read_text())
            except (OSError, ValueError):
                return {}
            return flatten_config(values) if isinstance(values, dict) else {}
        if parent == root:
            break
    return {}


def _latest_per_wandb_folder(wandb_dirs: Iterable[Path]) -> list[Path]:
    """Of the W&B run directories in one ``wandb/`` folder, the latest only (names ``offline-run-<time>-<id>`` sort
    by time): several of them are start-ups of the same run in the same run folder. Directories gathered in any
    other folder are all kept."""
    kept: dict[Path, Path] = {}
    others = []
    for path in sorted(wandb_dirs):
        if path.parent.name == WANDB_DIR:
            kept[path.parent] = path  # sorted: the last one wins
        else:
            others.append(path)
    return sorted(others + list(kept.values()))


def latest_attempts(runs: Iterable[LoadedRun]) -> list[LoadedRun]:
    """Drop earlier attempts: of the runs read from the sweep runner's ``attempts/`` folder, only those whose
    run id has no run outside ``attempts/`` are kept, and of those only the highest attempt number (one per run
    id, whatever kind of record: run folder or W&B run)."""
    runs = list(runs)
    current = {run.name for run in runs if run.attempt is None}
    latest: dict[str, LoadedRun] = {}
    for run in runs:
        if run.attempt is not None and run.name not in current:
            if run.name not in latest or run.attempt > (latest[run.name].attempt or 0):
                latest[run.name] = run
    return [run for run in runs if run.attempt is None or latest.get(run.name) is run]


def attempt_of(path: str | Path) -> tuple[str, int] | None:
    """(run id, k) when ``path`` lies below the sweep runner's ``attempts/<run id>-<k>/`` folder (at any depth:
    a run folder, a W&B run directory, a log), else None."""
    parts = Path(path).parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == ATTEMPTS_DIR:
            match = _ATTEMPT_NAME.match(parts[i + 1])
            if match:
                return match["run"], int(match["k"])
    return None


def load_run(folder: str | Path) -> LoadedRun:
    """Load one run folder; never raises for a damaged run, records the damage in ``problems`` instead."""
    folder = Path(folder)
    record = LoadedRun(path=folder, name=folder.name, experiment=folder.parent.name, status=INCOMPLETE_STATUS)
    attempt = attempt_of(folder)
    if attempt is not None:
        record.name, record.attempt = attempt
    metrics_path = folder / METRICS_FILE
    metrics_damaged = False
    if metrics_path.exists():
        try:
            record.metrics = read_metrics_csv(metrics_path)
        except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            metrics_damaged = True
            reason = _one_line(error).removeprefix(f"{metrics_path}: ")
            record.problems.append(f"{METRICS_FILE} damaged: {reason}")
    else:
        record.problems.append(f"no {METRICS_FILE}")

    try:
        results = read_results(folder)
    except ResultsFileError as error:
        record.status = UNREADABLE_STATUS
        record.problems.append(str(error))
    else:
        if results is None:
            record.problems.append(f"no {RESULTS_FILE} (run still running or killed)")
        else:
            fill_from_results(record, results)
    if not record.config and (folder / CONFIG_FILE).exists():
        record.config = read_config_yaml(folder / CONFIG_FILE)
    if record.epochs is None and len(record.metrics):
        record.epochs = int(record.metrics.index.max())
    if metrics_damaged and (record.completed or record.status == INCOMPLETE_STATUS):
        record.status = DAMAGED_STATUS  # its history cannot be trusted; a failed or diverged run keeps its status
    apply_divergence_rule(record)
    return record


def apply_divergence_rule(record: LoadedRun) -> None:
    """Count a completed run as ``diverged`` when its logged train/loss history ends above ``DIVERGENCE_FACTOR``
    times its first value or not finite (:func:`lipschitz_dd.run_folder.loss_diverged`; applied again here so
    records written before the rule existed follow it too); a note in ``problems`` says so."""
    if record.status not in COMPLETED_STATUSES or DIVERGENCE_METRIC not in record.metrics.columns:
        return
    losses = [float(v) for v in pd.to_numeric(record.metrics[DIVERGENCE_METRIC], errors="coerce").dropna()]
    if loss_diverged(losses):
        record.status = DIVERGED
        record.problems.append(
            f"{DIVERGENCE_METRIC} went from {losses[0]:.4g} to {losses[-1]:.4g} "
            f"(> {DIVERGENCE_FACTOR:g} x its first value): counted as diverged"
        )


def read_metrics_csv(path: str | Path) -> pd.DataFrame:
    """Read a CSVLogger metrics.csv into one row per step (= epoch), sorted by step; every column is float.

    CSVLogger may write several rows for the same step (e.g. one from the model's validation, one from a
    callback); they are merged by taking, per column, the first non-null value of that step. Empty cells are NaN
    (``nan``/``inf`` are read as numbers). Raises ValueError (one line: file, row, column, value) for a cell that
    is not a number, or a missing ``step`` column.
    """
    frame = pd.read_csv(path)
    if "step" not in frame.columns:
        raise ValueError(f"{path} has no 'step' column")
    for column in frame.columns:
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = numbers.isna() & frame[column].notna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise ValueError(f"{path}: line {row + 2}, column {column!r}: {frame[column].iloc[row]!r} is not a number")
        frame[column] = numbers.astype(float)
    frame = frame.dropna(subset=["step"])
    frame["step"] = frame["step"].astype(int)
    return frame.groupby("step", sort=True).first()


def read_config_yaml(path: str | Path) -> dict[str, Any]:
    """A LightningCLI config.yaml as a flat dict of dotted keys (see :func:`flatten_config`)."""
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    return flatten_config(loaded) if isinstance(loaded, dict) else {}


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys; LightningCLI's ``init_args`` level is dropped and ``class_path`` kept as
    ``<key>.class_path``, so ``{"model": {"init_args": {"width": 8}}}`` gives ``{"model.width": 8}``.

    Every value is hashable (see :func:`hashable_config_value`): list values such as ``model.widths`` or
    ``data.input_shape`` become :class:`ConfigList` tuples, so tables can sort and group runs on them."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = prefix if key == "init_args" else (f"{prefix}.{key}" if prefix else str(key))
        if isinstance(value, dict):
            flat.update(flatten_config(value, dotted))
        else:
            flat[_drop_init_args(dotted)] = hashable_config_value(value)
    return flat


class ConfigList(tuple):
    """A list value of a config (``[8, 8]``) as a tuple: hashable and sortable like a tuple (so pandas can
    sort and group runs on it), but shown as the list it was written as (``[8, 8]``) in tables and CSVs."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(list(self))

    __str__ = __repr__


def hashable_config_value(value: Any) -> Any:
    """``value`` if hashable; lists and tuples (nested ones too) as :class:`ConfigList`; anything else that
    cannot be hashed (e.g. a list of dicts) as its string form."""
    if isinstance(value, (list, tuple)):
        value = ConfigList(hashable_config_value(item) for item in value)
    try:
        hash(value)
    except TypeError:
        return str(value)
    return value


def fill_from_results(record: LoadedRun, results: RunResults) -> None:
    """Copy a results.json's status, config, final/max values, epochs, seconds, error and marks into
    ``record``."""
    record.status = results.status
    record.config = flatten_config(results.config)
    record.final = dict(results.final)
    record.max = dict(results.max)
    if results.epochs is not None:
        record.epochs = int(results.epochs)
    if results.seconds is not None:
        record.seconds = float(results.seconds)
    record.outside_grid = results.outside_grid
    if results.error is not None:
        error_lines = results.error.strip().splitlines() or [""]
        record.problems.append(f"error: {error_lines[-1]}")


def _drop_init_args(key: str) -> str:
    return ".".join(part for part in key.split(".") if part != "init_args")


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[-1]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def __getattr__(name: str):
    """Deprecated names (see lipschitz_dd/compat.py)."""
    from lipschitz_dd.compat import deprecated_name

    return deprecated_name(__name__, name)
