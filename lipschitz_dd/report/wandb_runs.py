"""W&B runs as the report's run records: offline run directories on disk, or a project/sweep through the W&B API.

Both paths end in :func:`run_from_wandb`, which turns a W&B run's config, history rows and summary into the same
:class:`~lipschitz_dd.report.records.LoadedRun` a run folder gives:

- config: W&B's config flattened to dotted keys (``model.width``); W&B's own ``_wandb`` entry is dropped.
- metrics: one row per step; the step is the first of ``step``, ``trainer/global_step`` (Lightning's
  WandbLogger writes the logger step there, which is the epoch for lipschitz_dd's models), ``epoch``, ``_step``
  that the history holds. Rows of the same step are merged (first non-null value per metric, as for metrics.csv);
  W&B's bookkeeping keys (``_runtime``, ``_timestamp``, ...) are dropped.
- final / max: last and largest finite logged value of each metric (summary values fill in metrics the history
  lacks).
- status: a ``status`` entry of the summary when it is one of results.json's statuses; else from how the run
  ended: exit code 0 / state "finished" -> finished, a non-zero exit code / "failed" or "crashed" -> failed,
  "killed" -> interrupted, no end recorded (still running, or the machine died) -> incomplete. The report's
  divergence rule then applies as for run folders.

Offline runs (``wandb/offline-run-*/run-<id>.wandb``, and synced ``run-*`` directories) are read from their
``.wandb`` transaction log with W&B's protobuf records (``wandb.proto.wandb_internal_pb2.Record``). wandb 0.31
ships no Python reader for that file (its ``datastore`` module moved into the Go core), so
:func:`read_wandb_records` reads the container itself: a 7-byte header (``:W&B``, magic 0xBEE1, version) and
LevelDB-log framing (32 KiB blocks; each chunk a 7-byte header: CRC32C, length, type FULL/FIRST/MIDDLE/LAST).

Online (needs network and a W&B login): ``lipschitz-dd report --wandb ENTITY/PROJECT`` or
``--wandb ENTITY/PROJECT/SWEEP_ID`` reads the runs with ``wandb.Api`` (config, ``scan_history()``, summary,
state) into the same records.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lipschitz_dd.report.records import (
    INCOMPLETE_STATUS,
    LoadedRun,
    ReportInputError,
    apply_divergence_rule,
    flatten_config,
)
from lipschitz_dd.run_folder import FAILED, FINISHED, INTERRUPTED, STATUSES

__all__ = [
    "WandbRunData",
    "find_wandb_run_dirs",
    "load_wandb_api_runs",
    "load_wandb_run_dir",
    "read_wandb_file",
    "read_wandb_records",
    "run_from_wandb",
]

STEP_KEYS = ("step", "trainer/global_step", "epoch", "_step")
_BLOCK = 32 * 1024
_HEADER = struct.Struct("<IHB")  # CRC32C, length, chunk type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_STATE_STATUS = {"finished": FINISHED, "failed": FAILED, "crashed": FAILED, "killed": INTERRUPTED}


@dataclass
class WandbRunData:
    """What a W&B run holds for the report: id, project, group, config, history rows, summary, how it ended
    (``exit_code`` for offline files, ``state`` from the API; None when unknown)."""

    run_id: str
    project: str = ""
    group: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    state: str | None = None


def find_wandb_run_dirs(root: str | Path, outside: Sequence[Path] = ()) -> list[Path]:
    """W&B run directories (``offline-run-*`` or ``run-*`` holding a ``run-*.wandb`` file) below ``root``,
    except those inside one of the run folders ``outside`` (their run folder is read instead), sorted."""
    root = Path(root)
    outside = [Path(p).resolve() for p in outside]
    found = []
    for log in root.rglob("run-*.wandb"):
        folder = log.parent
        if not (folder.name.startswith("offline-run-") or folder.name.startswith("run-")):
            continue
        resolved = folder.resolve()
        if any(resolved.is_relative_to(run_folder) for run_folder in outside):
            continue
        found.append(folder)
    return sorted(set(found))


def read_wandb_records(path: str | Path) -> Iterator[Any]:
    """The records of a ``.wandb`` file as ``wandb.proto.wandb_internal_pb2.Record`` messages, in order. A torn
    last chunk (a run killed while writing) ends the iteration. Raises ValueError for a file that is not one."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, pending = 7, b""
    while pos + _HEADER.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER.size:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = _HEADER.unpack_from(data, pos)
        chunk = data[pos + _HEADER.size : pos + _HEADER.size + length]
        pos += _HEADER.size + length
        if len(chunk) < length:
            return
        if kind == _FULL:
            payload = chunk
        elif kind == _FIRST:
            pending = chunk
            continue
        elif kind == _MIDDLE:
            pending += chunk
            continue
        elif kind == _LAST:
            payload, pending = pending + chunk, b""
        else:  # zero padding
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def read_wandb_file(path: str | Path) -> WandbRunData:
    """Config, history rows, summary and exit code of the run logged in one ``.wandb`` file."""
    run = WandbRunData(run_id=Path(path).stem.removeprefix("run-"))
    for record in read_wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id = record.run.run_id or run.run_id
            run.project, run.group = record.run.project, record.run.run_group
            _apply_updates(run.config, record.run.config.update, [])
        elif kind == "config":
            _apply_updates(run.config, record.config.update, record.config.remove)
        elif kind == "history":
            row: dict[str, Any] = {}
            _apply_updates(row, record.history.item, [])
            run.history.append(row)
        elif kind == "summary":
            _apply_updates(run.summary, record.summary.update, record.summary.remove)
        elif kind == "exit":
            run.exit_code = int(record.exit.exit_code)
    return run


def load_wandb_run_dir(folder: str | Path) -> LoadedRun:
    """The report's record of one W&B run directory (see :func:`run_from_wandb`); a damaged file gives an
    ``unreadable`` record with the reason, never an exception."""
    folder = Path(folder)
    logs = sorted(folder.glob("run-*.wandb"))
    try:
        data = read_wandb_file(logs[0])
    except (ValueError, OSError, IndexError) as error:
        return LoadedRun(
            path=folder,
            name=folder.name.rsplit("-", 1)[-1],
            experiment=folder.parent.name,
            status="unreadable",
            problems=[f"W&B run unreadable: {error}"],
            source="wandb",
        )
    return run_from_wandb(data, path=folder)


def run_from_wandb(data: WandbRunData, path: Path | str | None = None) -> LoadedRun:
    """The report's record of a W&B run (rules in the module docstring)."""
    config = {k: _config_value(v) for k, v in data.config.items() if k != "_wandb"}
    metrics = _history_frame(data.history)
    final: dict[str, Any] = {}
    maximum: dict[str, Any] = {}
    for column in metrics.columns:
        logged = pd.to_numeric(metrics[column], errors="coerce").dropna()
        if len(logged):
            final[column] = float(logged.iloc[-1])
            finite = logged[logged.map(math.isfinite)]
            if len(finite):
                maximum[column] = float(finite.max())
    for key, value in data.summary.items():
        if not key.startswith("_") and key not in final and _is_number(value):
            final[key] = float(value)
    record = LoadedRun(
        path=Path(path) if path is not None else Path(f"wandb:{data.project}/{data.run_id}"),
        name=data.run_id,
        experiment=data.group or data.project,
        status=_status(data),
        config=flatten_config(config),
        final=final,
        max=maximum,
        epochs=int(metrics.index.max()) if len(metrics) else None,
        seconds=_seconds(data.summary),
        metrics=metrics,
        source="wandb",
    )
    if record.status == INCOMPLETE_STATUS:
        record.problems.append("the W&B run recorded no end (still running, or killed)")
    apply_divergence_rule(record)
    return record


def load_wandb_api_runs(path: str, api: Any = None) -> list[LoadedRun]:
    """The runs of ``ENTITY/PROJECT`` or of the sweep ``ENTITY/PROJECT/SWEEP_ID`` read through ``wandb.Api``
    (network and a W&B login needed) as report records. Raises ReportInputError (one line) for a malformed path
    or when W&B cannot be reached or finds nothing."""
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) not in (2, 3):
        raise ReportInputError(f"--wandb expects ENTITY/PROJECT or ENTITY/PROJECT/SWEEP_ID, got {path!r}")
    if api is None:
        import wandb

        api = wandb.Api()
    try:
        runs = api.sweep("/".join(parts)).runs if len(parts) == 3 else api.runs("/".join(parts))
        records = [run_from_wandb(_api_run_data(run)) for run in runs]
    except Exception as error:  # wandb raises its own CommError/ValueError/requests errors
        raise ReportInputError(f"cannot read W&B runs of {path!r}: {type(error).__name__}: {error}") from None
    if not records:
        raise ReportInputError(f"W&B has no runs under {path!r}")
    return records


def _api_run_data(run: Any) -> WandbRunData:
    """A ``wandb.apis.public.Run`` as WandbRunData (full history through ``scan_history``)."""
    summary = getattr(run.summary, "_json_dict", None) or dict(run.summary)
    return WandbRunData(
        run_id=run.id,
        project=run.project,
        group=run.group or "",
        config=dict(run.config),
        history=[dict(row) for row in run.scan_history()],
        summary=dict(summary),
        state=run.state,
    )


def _apply_updates(target: dict[str, Any], updates: Any, removes: Any) -> None:
    for item in updates:
        keys = list(item.nested_key) or [item.key]
        value = json.loads(item.value_json) if item.value_json else None
        node = target
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                break
        else:
            node[keys[-1]] = value
    for item in removes:
        keys = list(item.nested_key) or [item.key]
        node = target
        for key in keys[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(keys[-1], None)


def _config_value(value: Any) -> Any:
    """W&B's config files store ``{"value": v, "desc": ...}``; the API and the run record store ``v``."""
    if isinstance(value, Mapping) and set(value) <= {"value", "desc"} and "value" in value:
        return value["value"]
    return value


def _history_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame()
    step_key = next((key for key in STEP_KEYS if any(key in row for row in rows)), None)
    kept = []
    for row in rows:
        if step_key is None or row.get(step_key) is None:
            continue
        values = {k: v for k, v in row.items() if not k.startswith("_") and k != step_key and _is_number(v)}
        if step_key == "_step" or values:
            kept.append({**values, "step": int(row[step_key])})
    frame = pd.DataFrame(kept)
    if frame.empty:
        return pd.DataFrame()
    frame = frame.drop(columns=["trainer/global_step"], errors="ignore")
    return frame.groupby("step", sort=True).first()


def _status(data: WandbRunData) -> str:
    status = data.summary.get("status")
    if isinstance(status, str) and status in STATUSES:
        return status
    if data.exit_code is not None:
        return FINISHED if data.exit_code == 0 else FAILED
    if data.state is not None:
        return _STATE_STATUS.get(data.state, INCOMPLETE_STATUS)
    return INCOMPLETE_STATUS


def _seconds(summary: Mapping[str, Any]) -> float | None:
    runtime = summary.get("_runtime", (summary.get("_wandb") or {}).get("runtime"))
    return float(runtime) if _is_number(runtime) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
