"""Find and load run folders (results.json + metrics.csv) without importing any training code.

A run folder is ``<save_dir>/<experiment>/<run name>/`` holding ``metrics.csv`` (Lightning's CSVLogger),
``config.yaml`` and ``results.json`` (see ``shared/design.md``). A sweep folder holds such run folders
somewhere below it, so the report simply searches recursively. Runs that failed, diverged or never wrote
``results.json`` are still loaded: their status says what happened and ``problems`` says what is missing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.csv"
CONFIG_FILE = "config.yaml"

#: Statuses of runs whose numbers are trusted for figures (the table lists every run).
COMPLETED_STATUSES = ("finished", "stopped_converged")
#: Status given to a folder that has metrics but no results.json (still running, or killed hard).
INCOMPLETE_STATUS = "incomplete"
#: Status given to a folder whose results.json cannot be parsed.
UNREADABLE_STATUS = "unreadable"

_SKIPPED_DIRS = {"wandb", "checkpoints", "__pycache__"}


class ReportInputError(ValueError):
    """The folder given to the report is missing or holds no run (a one-line message for the user)."""


@dataclass
class RunRecord:
    """Everything the report knows about one run folder.

    ``config`` uses dotted keys (``model.width``); ``final``/``max`` map metric names to numbers;
    ``metrics`` has one row per epoch (index ``step``), one column per metric, NaN where not logged.
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
    """All folders below ``root`` (``root`` included) holding results.json or metrics.csv, sorted.

    Raises ReportInputError (a ValueError) with a one-line message if ``root`` does not exist or holds
    no run folder.
    """
    root = Path(root)
    if not root.exists():
        raise ReportInputError(f"folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise ReportInputError(f"{str(root)!r} is not a folder (expected a runs or sweep folder)")
    found = set()
    for name in (RESULTS_FILE, METRICS_FILE):
        for file in root.rglob(name):
            relative_parts = file.relative_to(root).parts[:-1]
            if not _SKIPPED_DIRS.intersection(relative_parts):
                found.add(file.parent)
    if not found:
        raise ReportInputError(f"no run folders (with {RESULTS_FILE} or {METRICS_FILE}) found under {str(root)!r}")
    return sorted(found)


def load_runs(root: str | Path) -> list[RunRecord]:
    """Load every run folder below ``root`` (see :func:`find_run_folders`, :func:`load_run`)."""
    return [load_run(folder) for folder in find_run_folders(root)]


def load_run(folder: str | Path) -> RunRecord:
    """Load one run folder; never raises for a damaged run, records the damage in ``problems`` instead."""
    folder = Path(folder)
    record = RunRecord(path=folder, name=folder.name, experiment=folder.parent.name, status=INCOMPLETE_STATUS)
    metrics_path = folder / METRICS_FILE
    if metrics_path.exists():
        try:
            record.metrics = read_metrics_csv(metrics_path)
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            record.problems.append(f"{METRICS_FILE} unreadable: {error}")
    else:
        record.problems.append(f"no {METRICS_FILE}")

    results_path = folder / RESULTS_FILE
    if results_path.exists():
        try:
            _fill_from_results(record, json.loads(results_path.read_text()))
        except (ValueError, TypeError, AttributeError) as error:
            record.status = UNREADABLE_STATUS
            record.problems.append(f"{RESULTS_FILE} unreadable: {error}")
    else:
        record.problems.append(f"no {RESULTS_FILE} (run still running or killed)")
    if not record.config and (folder / CONFIG_FILE).exists():
        record.config = read_config_yaml(folder / CONFIG_FILE)
    if record.epochs is None and len(record.metrics):
        record.epochs = int(record.metrics.index.max())
    return record


def read_metrics_csv(path: str | Path) -> pd.DataFrame:
    """Read a CSVLogger metrics.csv into one row per step (= epoch), sorted by step.

    CSVLogger may write several rows for the same step (e.g. one from the model's validation, one from a
    callback); they are merged by taking, per column, the first non-null value of that step.
    """
    frame = pd.read_csv(path)
    if "step" not in frame.columns:
        raise ValueError(f"{path} has no 'step' column")
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


def _fill_from_results(record: RunRecord, results: dict[str, Any]) -> None:
    if not isinstance(results, dict):
        raise ValueError("top level is not a JSON object")
    record.status = str(results.get("status", INCOMPLETE_STATUS))
    config = results.get("config") or {}
    record.config = flatten_config(config) if isinstance(config, dict) else {}
    record.final = dict(results.get("final") or {})
    record.max = dict(results.get("max") or {})
    if _is_number(results.get("epochs")):
        record.epochs = int(results["epochs"])
    if _is_number(results.get("seconds")):
        record.seconds = float(results["seconds"])
    if "error" in results:
        error_lines = str(results["error"]).strip().splitlines() or [""]
        record.problems.append(f"error: {error_lines[-1]}")


def _drop_init_args(key: str) -> str:
    return ".".join(part for part in key.split(".") if part != "init_args")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
