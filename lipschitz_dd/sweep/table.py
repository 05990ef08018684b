"""Plain-text tables: the runs of one sweep, and the progress of every sweep under an output folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lipschitz_dd.metric_names import LOWER, TEST_LOSS

from .lock import runner_is_active
from .state import SweepRunRow, SweepState

SUMMARY_METRICS = (TEST_LOSS, LOWER)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = [header] + rows
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=False)).rstrip() for line in lines)


def format_runs(runs: list[SweepRunRow], metrics: tuple[str, ...] = SUMMARY_METRICS) -> str:
    """One line per run: id, parameters, state, final value of each metric, seconds."""
    header = ["id", "params", "state", *metrics, "seconds"]
    rows = [
        [
            r.id,
            " ".join(f"{k}={v}" for k, v in r.values.items()),
            r.state + (" (outside grid)" if r.outside_grid else ""),
            *(_number(r.final_metric(m)) for m in metrics),
            _number(r.seconds, ".1f"),
        ]
        for r in runs
    ]
    return format_table(header, rows)


@dataclass(frozen=True)
class SweepProgress:
    """Run counts of one sweep folder. `remaining` = queued runs (for grids: the grid points left);
    `running` runs of a runner that is no longer alive count as remaining (they are re-queued)."""

    name: str
    folder: Path
    method: str
    finished: int
    failed: int
    running: int
    remaining: int
    active: bool


def sweep_progress(out: str | Path = "sweeps_out") -> list[SweepProgress]:
    """The progress of every sweep folder (one with a sweep.db) directly under `out`."""
    result = []
    for db in sorted(Path(out).glob("*/sweep.db")):
        with SweepState(db) as state:
            sweep = state.sweep()
            counts = state.counts()
        if sweep is None:
            continue
        active = runner_is_active(db.parent)
        running = counts["running"] if active else 0
        remaining = counts["queued"] + (0 if active else counts["running"])
        result.append(
            SweepProgress(
                sweep.name,
                db.parent,
                sweep.config.get("method", "?"),
                counts["finished"],
                counts["failed"] + counts["killed"],
                running,
                remaining,
                active,
            )
        )
    return result


def format_progress(progress: list[SweepProgress]) -> str:
    """One line per sweep: name, method, finished/failed/running/remaining, runner alive or not."""
    header = ["sweep", "method", "finished", "failed", "running", "remaining", "runner", "folder"]
    rows = [
        [
            p.name,
            p.method,
            str(p.finished),
            str(p.failed),
            str(p.running),
            str(p.remaining),
            "active" if p.active else "-",
            str(p.folder),
        ]
        for p in progress
    ]
    return format_table(header, rows)


def _number(value: Any, fmt: str = ".4g") -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, fmt)
    return "-" if value is None else str(value)
