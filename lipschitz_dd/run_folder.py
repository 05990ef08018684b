"""The run-folder contract: what one training run leaves on disk, in one place.

One run = one folder ``<save_dir>/<experiment>/<run name>/`` holding

    metrics.csv      every logged metric, one row per epoch (Lightning's CSVLogger)
    config.yaml      the resolved LightningCLI config
    hparams.yaml     the hyperparameters Lightning's CSVLogger saves
    results.json     the run's outcome (:class:`RunResults`), written last, also on failure or interruption
    snapshot.npz     logits and input Jacobians at fixed points at the end of fit (optional)
    wandb/           the offline W&B run (upload later with ``wandb sync``)
    checkpoints/     model checkpoints (when enabled)

The training side writes ``results.json`` (the ``ResultsWriter`` callback; the sweep runner writes a minimal one
for a run that died before it could); the sweep runner and the report read it. Every file lipschitz_dd writes into
the folder is written atomically (:func:`write_atomic`: to a temporary file beside it, then renamed over it), so a
reader never sees half a file; metrics.csv is never removed (between its atomic rewrites, rows are appended in one
write each). wandb/ and checkpoints/ are written by W&B and Lightning.

This module is plain Python (json, os, dataclasses): the report and the sweep runner import it without torch or
Lightning.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lipschitz_dd.metric_names import TRAIN_LOSS

METRICS_FILE = "metrics.csv"
CONFIG_FILE = "config.yaml"
HPARAMS_FILE = "hparams.yaml"
RESULTS_FILE = "results.json"
SNAPSHOT_FILE = "snapshot.npz"
WANDB_DIR = "wandb"
CHECKPOINTS_DIR = "checkpoints"
#: The files that mark a folder as holding a run: a second run into it would replace them.
RUN_RECORD_FILES = (RESULTS_FILE, METRICS_FILE)

#: results.json's ``schema_version``; files written before the field existed read as version 0 (same fields).
SCHEMA_VERSION = 1

FINISHED = "finished"
STOPPED_CONVERGED = "stopped_converged"
DIVERGED = "diverged"
FAILED = "failed"
INTERRUPTED = "interrupted"
#: Every status a results.json may hold.
STATUSES = (FINISHED, STOPPED_CONVERGED, DIVERGED, FAILED, INTERRUPTED)
#: Statuses of runs whose numbers are trusted for figures and means.
COMPLETED_STATUSES = (FINISHED, STOPPED_CONVERGED)

#: A completed run whose final train/loss is more than this many times its first logged value (or not finite) is
#: counted as ``diverged``: training made the fit worse than the untrained network by an order of magnitude, so
#: its numbers must not be averaged into a figure (see :func:`loss_diverged`).
DIVERGENCE_FACTOR = 10.0
DIVERGENCE_METRIC = TRAIN_LOSS


class ResultsFileError(ValueError):
    """A results.json that exists but cannot be read as a run's results (one-line message)."""


@dataclass
class RunResults:
    """The content of ``results.json``.

    status: one of :data:`STATUSES`; config: the run's configuration as dotted keys (``model.width``);
    final / max: each metric's last value and its maximum over finite values; epochs and global_step: where
    training stopped (None: not recorded); seconds: wall-clock time of fit; versions: package versions; error: the reason of a failed
    or interrupted run. Keys this class does not know (written by other tools, e.g. the sweep runner's
    ``written_by``, or LipschitzCallback's ``measurement``: {"method", "reason", "requested", "n_outputs"} of
    its training-point norms) are kept in ``extra`` and written back unchanged.
    """

    status: str
    config: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    max: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    seconds: float | None = None
    versions: dict[str, str] = field(default_factory=dict)
    global_step: int | None = None
    error: str | None = None
    #: set by the sweep runner when the run's parameters are no longer in the sweep file's grid
    outside_grid: bool = False
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        """True when the run ended normally (its numbers can be plotted)."""
        return self.status in COMPLETED_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of results.json; optional fields that are unset are left out."""
        payload = dict(self.extra)
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in ("epochs", "seconds", "global_step", "error") and value is None:
                continue
            if f.name == "outside_grid" and not value:
                continue
            payload[f.name] = value
        return payload

    @classmethod
    def from_dict(cls, payload: Any) -> RunResults:
        """Parse a results.json object (any schema version, those without ``schema_version`` included).
        Raises ResultsFileError when it is not an object or its fields have the wrong types."""
        if not isinstance(payload, Mapping):
            raise ResultsFileError("top level is not a JSON object")
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: v for k, v in payload.items() if k not in known}
        values = {k: payload[k] for k in known if k in payload}
        values.setdefault("status", "incomplete")
        values.setdefault("schema_version", 0)
        for name in ("config", "final", "max", "versions"):
            if values.get(name) is None:
                values[name] = {}
            elif not isinstance(values[name], Mapping):
                raise ResultsFileError(f"{name!r} is not a JSON object")
            values[name] = dict(values[name])
        for name, kind in (("epochs", int), ("global_step", int), ("seconds", float)):
            value = values.get(name)
            if value is None or (isinstance(value, bool) or not isinstance(value, (int, float))):
                values.pop(name, None)
            else:
                values[name] = kind(value)
        values["status"] = str(values["status"])
        if values.get("error") is not None:
            values["error"] = str(values["error"])
        values["outside_grid"] = bool(values.get("outside_grid", False))
        return cls(**values, extra=extra)


def results_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RESULTS_FILE


def write_atomic(path: str | Path, write: Callable[[str], None], suffix: str = "") -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it over ``path`` (atomic on POSIX): a
    reader sees the old file or the new one, never half of one. ``suffix`` ends the temporary name (np.savez
    appends ".npz" to names without it). The temporary file is removed if ``write`` raises. An OSError (read-only
    folder, disk full) names ``path``, not the temporary file: ``[Errno 28] No space left on device: '<path>'``."""
    path = Path(path)
    tmp = f"{path}.tmp{os.getpid()}{suffix}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        try:
            if os.path.exists(tmp):
                os.remove(tmp)
        except OSError:
            pass
        about_tmp = isinstance(error, OSError) and (
            error.filename is None or os.path.abspath(os.fsdecode(error.filename)) == os.path.abspath(tmp)
        )
        if about_tmp and error.errno is not None:
            raise OSError(error.errno, error.strerror, str(path)) from error  # OSError(13, ...) is a PermissionError
        raise
    return path


def write_json_atomic(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """JSON (indented, sorted keys, NaN/inf allowed, unknown objects as strings) written with :func:`write_atomic`."""

    def dump(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True, default=str, allow_nan=True)

    return write_atomic(path, dump)


def write_results(run_dir: str | Path, results: RunResults) -> Path:
    """Write ``<run_dir>/results.json`` atomically."""
    return write_json_atomic(results_path(run_dir), results.to_dict())


def read_results(run_dir: str | Path) -> RunResults | None:
    """``<run_dir>/results.json`` as RunResults; None when there is none. Raises ResultsFileError (one line) when
    it exists but cannot be parsed."""
    path = results_path(run_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ResultsFileError(f"{path}: {error}") from None
    try:
        return RunResults.from_dict(json.loads(text))
    except ValueError as error:  # json's errors and ResultsFileError
        raise ResultsFileError(f"{RESULTS_FILE} unreadable: {error}") from None


def update_results(run_dir: str | Path, **changes: Any) -> RunResults | None:
    """Read results.json, set the given fields, write it back atomically; None (nothing written) when absent."""
    results = read_results(run_dir)
    if results is None:
        return None
    for name, value in changes.items():
        setattr(results, name, value)
    write_results(run_dir, results)
    return results


def loss_diverged(values: list[float], factor: float = DIVERGENCE_FACTOR) -> bool:
    """The divergence rule on one run's train/loss history (first logged value first): True when the last value
    is not finite, or exceeds ``factor`` times the first finite value (an untrained network's loss; a positive
    loss is assumed, as cross-entropy and squared error are). Fewer than two values: False."""
    if len(values) < 2:
        return False
    first = next((v for v in values if math.isfinite(v)), None)
    last = values[-1]
    if first is None or not math.isfinite(last):
        return True
    return last > factor * max(first, 0.0) and last > 0.0
