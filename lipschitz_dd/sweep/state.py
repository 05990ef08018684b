"""The sweep's state in one SQLite file (`<sweep folder>/sweep.db`, WAL journal).

Every change is committed at once, so killing the runner (Ctrl-C, crash, power loss) loses nothing that
was already recorded. A run is `queued` (proposed, not started), `running`, `finished`, `failed`
(non-zero exit code or a results.json that says so) or `killed` (ended by a signal). Independently of its state,
a run is flagged `outside_grid` when the sweep file changed and its parameters are no longer in the grid: such a
run is neither started nor retried, and not counted in the progress.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_STATES = ("queued", "running", "finished", "failed", "killed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sweep (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, file_path TEXT NOT NULL, config_json TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, params_json TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, exit_code INTEGER,
    started_at REAL, ended_at REAL, log_tail TEXT, results_json TEXT, outside_grid INTEGER NOT NULL DEFAULT 0);
"""


@dataclass(frozen=True)
class SweepRunRow:
    """One row of the runs table. params is the run config in the sweeps format {key: {"value": v}};
    results is the run's results.json as a dict (None when it wrote none)."""

    id: str
    params: dict[str, Any]
    state: str
    attempts: int
    exit_code: int | None
    started_at: float | None
    ended_at: float | None
    log_tail: str | None
    results: dict[str, Any] | None
    outside_grid: bool = False

    @property
    def values(self) -> dict[str, Any]:
        """The parameters as {key: value}."""
        return {key: entry.get("value") for key, entry in self.params.items()}

    @property
    def seconds(self) -> float | None:
        """Wall-clock seconds of the last attempt, None while it has not ended."""
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    def final_metric(self, name: str) -> Any:
        """results.json's final value of a metric, None when absent."""
        return ((self.results or {}).get("final") or {}).get(name)


@dataclass(frozen=True)
class SweepRecord:
    """The sweep row: W&B-style sweep id, name, the sweep file and its validated config."""

    id: str
    name: str
    file_path: str
    config: dict[str, Any]


class SweepState:
    """The SQLite database of one sweep. Use from one thread (the runner's main loop)."""

    def __init__(self, db_path: str | Path):
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # WAL + FULL: a commit survives power loss
        self._db.executescript(_SCHEMA)
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(runs)")}
        if "outside_grid" not in columns:  # a database written before the flag existed
            self._db.execute("ALTER TABLE runs ADD COLUMN outside_grid INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SweepState:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the sweep row ---
    def sweep(self) -> SweepRecord | None:
        """The sweep row, None for a new database."""
        row = self._db.execute("SELECT * FROM sweep").fetchone()
        if row is None:
            return None
        return SweepRecord(row["id"], row["name"], row["file_path"], json.loads(row["config_json"]))

    def save_sweep(self, sweep_id: str, name: str, file_path: str, config: dict[str, Any]) -> SweepRecord:
        """Create the sweep row, or update file path and config of the existing one (its id is kept)."""
        existing = self.sweep()
        config_json = json.dumps(config, sort_keys=True)
        if existing is None:
            self._db.execute(
                "INSERT INTO sweep VALUES (?, ?, ?, ?, ?)", (sweep_id, name, file_path, config_json, time.time())
            )
        else:
            self._db.execute("UPDATE sweep SET name=?, file_path=?, config_json=?", (name, file_path, config_json))
        return self.sweep()

    # --- runs ---
    def add_run(self, run_id: str, params: dict[str, Any]) -> None:
        """Record a proposed run as `queued`."""
        self._db.execute(
            "INSERT INTO runs (id, params_json, state) VALUES (?, ?, 'queued')", (run_id, json.dumps(params))
        )

    def mark_running(self, run_id: str) -> None:
        """The run's process is starting now."""
        self._db.execute(
            "UPDATE runs SET state='running', attempts=attempts+1, started_at=?, ended_at=NULL, exit_code=NULL "
            "WHERE id=?",
            (time.time(), run_id),
        )

    def mark_ended(
        self, run_id: str, state: str, exit_code: int | None, log_tail: str, results: dict[str, Any] | None
    ) -> None:
        """The run's process has ended: store its state, exit code, log tail and results.json."""
        if state not in RUN_STATES:
            raise ValueError(f"unknown run state {state!r}; expected one of {RUN_STATES}")
        self._db.execute(
            "UPDATE runs SET state=?, exit_code=?, ended_at=?, log_tail=?, results_json=? WHERE id=?",
            (state, exit_code, time.time(), log_tail, None if results is None else json.dumps(results), run_id),
        )

    def mark_interrupted(self, run_id: str, exit_code: int | None, log_tail: str) -> None:
        """The runner was interrupted while the run was in progress: queue it again (same id and params)."""
        self._db.execute(
            "UPDATE runs SET state='queued', exit_code=?, ended_at=NULL, log_tail=? WHERE id=?",
            (exit_code, log_tail, run_id),
        )

    def requeue(self, states: tuple[str, ...]) -> int:
        """Put every run in one of `states` back to `queued` (same id and params), except runs flagged
        outside_grid; returns how many."""
        marks = ",".join("?" * len(states))
        cursor = self._db.execute(f"UPDATE runs SET state='queued' WHERE state IN ({marks}) AND outside_grid=0", states)
        return cursor.rowcount

    def set_outside_grid(self, run_id: str, outside: bool) -> None:
        """Flag (or unflag) a run whose parameters are no longer in the sweep file's grid."""
        self._db.execute("UPDATE runs SET outside_grid=? WHERE id=?", (int(outside), run_id))

    def runs(self, state: str | None = None, outside_grid: bool | None = None) -> list[SweepRunRow]:
        """All runs (or those in one state; with `outside_grid` given, only those flagged so or not) in the
        order they were proposed."""
        query, args = "SELECT * FROM runs WHERE 1=1", []
        if state is not None:
            query, args = query + " AND state=?", [*args, state]
        if outside_grid is not None:
            query, args = query + " AND outside_grid=?", [*args, int(outside_grid)]
        return [_record(row) for row in self._db.execute(query + " ORDER BY seq", args)]

    def counts(self) -> dict[str, int]:
        """Number of runs per state (every state present, zeros included), runs flagged outside_grid left out
        of the states and counted under "outside_grid"."""
        counts = dict.fromkeys(RUN_STATES, 0)
        for state, n in self._db.execute("SELECT state, COUNT(*) FROM runs WHERE outside_grid=0 GROUP BY state"):
            counts[state] = n
        counts["outside_grid"] = self._db.execute("SELECT COUNT(*) FROM runs WHERE outside_grid=1").fetchone()[0]
        return counts


def _record(row: sqlite3.Row) -> SweepRunRow:
    return SweepRunRow(
        id=row["id"],
        params=json.loads(row["params_json"]),
        state=row["state"],
        attempts=row["attempts"],
        exit_code=row["exit_code"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        log_tail=row["log_tail"],
        results=None if row["results_json"] is None else json.loads(row["results_json"]),
        outside_grid=bool(row["outside_grid"]),
    )


def __getattr__(name: str):
    """Deprecated names (see lipschitz_dd/compat.py)."""
    from lipschitz_dd.compat import deprecated_name

    return deprecated_name(__name__, name)
