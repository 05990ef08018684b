"""Start one sweep run as its own process and collect what it leaves behind.

The process gets W&B's run variables (offline, run id, group and tags = the sweep's name), the
run-folder variables of lipschitz-dd and its own CPU thread count (one GPU each if present).

Threads: CPU results depend on the torch thread count, so a run's thread count is its own setting (the training
CLI's `threads`, default 1), never derived from how many workers share the machine: the same config gives the
same numbers alone or in a sweep. The runner sets OMP_NUM_THREADS/MKL_NUM_THREADS (and TORCH_NUM_THREADS) to it
and limits the workers instead, so that workers x threads never exceeds the cores.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lipschitz_dd.run_folder import FAILED, INTERRUPTED, ResultsFileError
from lipschitz_dd.run_folder import read_results as read_results_file

LOG_TAIL_CHARS = 4000
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RunSpec:
    """Everything needed to start one run: argv, full environment, where its record and log go."""

    run_id: str
    argv: list[str]
    env: dict[str, str]
    run_dir: Path
    log_path: Path


@dataclass(frozen=True)
class RunOutcome:
    """How a run's process ended. state is 'finished', 'failed' or 'killed'."""

    run_id: str
    state: str
    exit_code: int | None
    log_tail: str
    results: dict[str, Any] | None


#: A run's CPU thread count when its sweep does not set the `threads` parameter (the training CLI's default).
DEFAULT_THREADS = 1
THREADS_KEY = "threads"


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one, else os.cpu_count())."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def run_threads(values: dict[str, Any]) -> int:
    """A run's own CPU thread count: its `threads` parameter ({key: value} of the run), else DEFAULT_THREADS."""
    return _threads(values.get(THREADS_KEY, DEFAULT_THREADS))


def sweep_threads(parameters: dict[str, Any]) -> int:
    """The most CPU threads any run of a sweep may use: its `threads` parameter (a fixed `value`, the largest of
    `values`, or the `max` of a distribution), else DEFAULT_THREADS. Raises ValueError (one line) for a thread
    count that is not a positive integer."""
    entry = parameters.get(THREADS_KEY)
    if entry is None:
        return DEFAULT_THREADS
    if not isinstance(entry, dict):
        return _threads(entry)
    if "value" in entry:
        return _threads(entry["value"])
    if "values" in entry and entry["values"]:
        return max(_threads(value) for value in entry["values"])
    if "max" in entry:
        return _threads(entry["max"])
    raise ValueError(f"sweep parameter {THREADS_KEY!r} needs a value, values or a max, got {entry!r}")


def worker_limit(workers: int, threads: int, cores: int) -> int:
    """The most workers such that workers x threads <= cores (at least 1: a run never waits for a free core)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return max(1, min(workers, cores // max(1, threads)))


def _threads(value: Any) -> int:
    try:
        threads = int(value)
    except (TypeError, ValueError):
        threads = 0
    if threads < 1 or (isinstance(value, float) and value != threads) or isinstance(value, bool):
        raise ValueError(
            f"the thread count (sweep parameter {THREADS_KEY!r}) must be a positive integer, got {value!r}"
        )
    return threads


def run_environment(
    base: dict[str, str],
    *,
    sweep_id: str,
    sweep_name: str,
    run_id: str,
    save_dir: Path,
    threads: int,
    gpu: str | None = None,
) -> dict[str, str]:
    """The environment of one run: `base` plus W&B sweep variables, run-folder variables, thread limits.

    W&B stays offline (no sweep server here) unless `base` asks for WANDB_MODE=disabled. WANDB_SWEEP_ID
    is deliberately NOT set: with it, wandb.init ignores the project/entity/id given by the logger, and
    `wandb sync` of the offline run fails on the server ("sweep ... not found", wandb issue 8115) because
    the id is local. The sweep id goes to LIPSCHITZ_DD_SWEEP_ID instead; runs are grouped and tagged
    by the sweep's name (WANDB_RUN_GROUP, WANDB_TAGS). The directory
    of the running Python is put first on PATH so `python` and `lipschitz-dd` in the command resolve to
    the runner's own environment even when the virtual environment is not activated.
    """
    env = dict(base)
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bin_dir] + [p for p in env.get("PATH", "").split(os.pathsep) if p])
    env.update(
        WANDB_MODE="disabled" if base.get("WANDB_MODE") == "disabled" else "offline",
        WANDB_RUN_ID=run_id,
        WANDB_RUN_GROUP=sweep_name,
        WANDB_TAGS=sweep_name,
        LIPSCHITZ_DD_SWEEP_ID=sweep_id,
        LIPSCHITZ_DD_SAVE_DIR=str(save_dir),
        LIPSCHITZ_DD_EXPERIMENT=sweep_name,
        LIPSCHITZ_DD_RUN_NAME=run_id,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TORCH_NUM_THREADS=str(threads),
        PYTHONUNBUFFERED="1",
    )
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


class LiveProcesses:
    """The run processes currently alive (thread-safe), so an interrupted runner can stop them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen] = {}

    def add(self, run_id: str, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs[run_id] = proc

    def remove(self, run_id: str) -> None:
        with self._lock:
            self._procs.pop(run_id, None)

    def terminate_all(self) -> None:
        """Send SIGTERM to every live run process."""
        with self._lock:
            for proc in self._procs.values():
                if proc.poll() is None:
                    proc.terminate()

    def kill_all(self) -> None:
        """Send SIGKILL to every live run process."""
        with self._lock:
            for proc in self._procs.values():
                if proc.poll() is None:
                    proc.kill()


def execute_run(spec: RunSpec, live: LiveProcesses | None = None) -> RunOutcome:
    """Run spec.argv to completion (blocking), stdout+stderr to spec.log_path, then read results.json.

    A run that cannot even start (command not found) is a failed run with the error as its log tail;
    this function does not raise for anything the run does.
    """
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(spec.log_path, "w") as log:
        log.write("$ " + " ".join(spec.argv) + "\n")
        log.flush()
        try:
            proc = subprocess.Popen(
                spec.argv,
                env=spec.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        except OSError as err:
            log.write(f"could not start the run: {err}\n")
            return RunOutcome(spec.run_id, "failed", None, f"could not start the run: {err}", None)
        if live is not None:
            live.add(spec.run_id, proc)
        try:
            exit_code = proc.wait()
        finally:
            if live is not None:
                live.remove(spec.run_id)
    results = read_results(spec.run_dir)
    return RunOutcome(spec.run_id, run_state(exit_code, results), exit_code, log_tail(spec.log_path), results)


def run_state(exit_code: int, results: dict[str, Any] | None) -> str:
    """'killed' when a signal ended the process, 'failed' for a non-zero exit code or a results.json
    whose status is 'failed' or 'interrupted', else 'finished' (a run without results.json too)."""
    if exit_code < 0:
        return "killed"
    if exit_code != 0:
        return "failed"
    if results is not None and results.get("status") in (FAILED, INTERRUPTED):
        return "failed"
    return "finished"


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """The run's results.json (:class:`lipschitz_dd.run_folder.RunResults`) as a dict; None when it is missing or
    unreadable."""
    try:
        results = read_results_file(run_dir)
    except ResultsFileError:
        return None
    return None if results is None else results.to_dict()


def log_tail(log_path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    """The last `chars` characters of a log file ('' if missing)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the runner dies, so no orphan writes into a run folder
    that the next runner starts again."""
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
