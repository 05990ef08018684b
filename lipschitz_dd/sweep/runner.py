"""The local sweep runner: propose runs with `sweeps`, run N at a time as processes, record them in SQLite.

Folder of a sweep `sweeps/x.yaml` (default out = sweeps_out):
    <out>/x/sweep.db                      the state (see state.py)
    <out>/x/runs/x/<run id>/              each run's record (results.json, metrics.csv, wandb/, ...)
    <out>/x/logs/<run id>.log             each run's stdout and stderr
    <out>/x/params/<run id>.json          the run's parameters ({key: value}, used for ${args_json_file})
    <out>/x/attempts/<run id>-<k>/        run folders and logs of earlier attempts, moved out of runs/ (all or
                                          nothing: when they cannot be moved, the run is not started this time)
Re-running the same command resumes: runs left `running` by a dead runner (kill -9, a second Ctrl-C) are
recorded as finished when their own results.json says they ended their training, else queued again with the
same id and parameters; grid points already recorded are not proposed again. Failed runs are run again only
with --retry_failed. When the sweep file's grid changed, runs whose parameters are no longer in it are flagged
`outside_grid` (in sweep.db and in their results.json): they are neither run nor retried, and the report leaves
them out. When the first SAME_FAILURE_LIMIT runs of an invocation all fail the same way (e.g. a missing config
file), the runner starts no more runs and says why in one line.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import signal
import string
import sys
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from lipschitz_dd.run_folder import (
    DIVERGED,
    FAILED,
    FINISHED,
    INTERRUPTED,
    STOPPED_CONVERGED,
    ResultsFileError,
    RunResults,
    update_results,
    write_results,
)

from .command import command_args, expand_command
from .config import load_sweep_config
from .lock import RunnerLock
from .process import (
    LiveProcesses,
    RunOutcome,
    RunSpec,
    available_cores,
    execute_run,
    log_tail,
    read_results,
    run_environment,
    run_threads,
    sweep_threads,
    worker_limit,
)
from .state import SweepRecord, SweepRunRow, SweepState

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import sweeps

KILL_DELAY_S = 30  # after Ctrl-C, runs get this long to exit on SIGTERM before SIGKILL
SAME_FAILURE_LIMIT = 3  # the first this many runs of an invocation all failing the same way stop the runner
# A run whose results.json says one of these has ended its training: it is never queued again.
_ENDED_STATUSES = (FINISHED, STOPPED_CONVERGED, DIVERGED)
_ID_ALPHABET = string.ascii_lowercase + string.digits
_ENGINE_STATE = {
    "queued": "pending",
    "running": "running",
    "finished": "finished",
    "failed": "failed",
    "killed": "killed",
}


def params_key(params: dict[str, Any]) -> str:
    """A canonical string of a run's parameter values (sweeps format {key: {"value": v}}), to compare runs."""
    return json.dumps({key: entry.get("value") for key, entry in params.items()}, sort_keys=True, default=str)


@dataclass(frozen=True)
class SweepResult:
    """What a call of run_sweep did: the sweep, its folder, all its runs, and the ids started this time."""

    sweep: SweepRecord
    folder: Path
    runs: list[SweepRunRow]
    started: list[str]
    interrupted: bool
    stopped_early: str | None = None  # the one-line reason when the runner stopped on a repeated failure
    skipped: list[str] = field(default_factory=list)  # runs not started: their earlier attempt could not be moved

    def failed_this_time(self) -> list[SweepRunRow]:
        started = set(self.started)
        return [r for r in self.runs if r.id in started and r.state in ("failed", "killed")]


def new_id() -> str:
    """A W&B-style id: 8 random lowercase letters and digits."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def sweep_folder(sweep_file: str | Path, out: str | Path = "sweeps_out") -> Path:
    """`<out>/<sweep file stem>`."""
    return Path(out) / Path(sweep_file).stem


def engine_history(runs: list[SweepRunRow]) -> list[Any]:
    """The recorded runs as `sweeps.SweepRun`s (state, config, final metrics as summary) for the engine."""
    return [
        sweeps.SweepRun(
            name=r.id,
            state=_ENGINE_STATE[r.state],
            config=r.params,
            summary_metrics=dict((r.results or {}).get("final") or {}),
            exitcode=r.exit_code,
        )
        for r in runs
    ]


def propose(config: dict, runs: list[SweepRunRow], n: int) -> list[dict[str, Any]]:
    """Up to n new run configs ({key: {"value": v}}) from the sweeps engine given the recorded runs;
    fewer (possibly none) when a grid is exhausted."""
    try:
        proposals = sweeps.next_runs(config, engine_history(runs), n=n)
    except ValueError as err:
        raise ValueError(f"the sweeps engine cannot propose runs for this file: {err}") from None
    return [p.config for p in proposals if p is not None]


class SweepRunner:
    """Runs one sweep file to completion (or to `count` new runs) with `workers` parallel processes."""

    def __init__(
        self,
        sweep_file: str | Path,
        *,
        out: str | Path = "sweeps_out",
        workers: int = 1,
        count: int | None = None,
        retry_failed: bool = False,
        progress: bool = True,
        stream: TextIO | None = None,
    ):
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        if count is not None and count < 0:
            raise ValueError(f"--count must be >= 0, got {count}")
        self.config = load_sweep_config(sweep_file)
        self.sweep_file = Path(sweep_file)
        self.name = self.sweep_file.stem
        self.folder = sweep_folder(sweep_file, out)
        self.workers, self.count, self.retry_failed = workers, count, retry_failed
        self.progress = progress
        self.stream = stream or sys.stderr
        self.threads = sweep_threads(self.config.get("parameters") or {})  # the most any of its runs uses
        cores = available_cores()
        if self.threads > cores:
            self._say(
                f"warning: runs of {self.sweep_file} use {self.threads} threads each, more than the {cores} cores"
            )
        allowed = worker_limit(workers, self.threads, cores)
        if allowed < workers:
            self._say(
                f"warning: --workers {workers} reduced to {allowed}: {workers} x {self.threads} thread(s) per run "
                f"would exceed the {cores} cores (set the sweep's `threads` parameter to change the per-run count)"
            )
        self.workers = allowed
        self.gpus = _visible_gpus()
        self.live = LiveProcesses()
        self.stopped_early: str | None = None
        self.skipped: list[str] = []

    def run(self) -> SweepResult:
        """Resume or start the sweep; returns when the grid is done, `count` runs have ended, or Ctrl-C."""
        with RunnerLock(self.folder), SweepState(self.folder / "sweep.db") as state:
            previous = state.sweep()
            sweep = state.save_sweep(
                previous.id if previous else new_id(), self.name, str(self.sweep_file), self.config
            )
            if previous is not None and previous.config != json.loads(json.dumps(self.config)):
                self._say(f"note: {self.sweep_file} changed since the last run of this sweep; using the new file")
            if self.config["method"] == "grid":
                self._flag_outside_grid(state)
            self._resume_left_running(state)
            if self.retry_failed:
                retried = state.requeue(("failed", "killed"))
                self._say(f"--retry_failed: {retried} failed run(s) queued again")
            else:
                counts = state.counts()
                failed = counts["failed"] + counts["killed"]
                if failed:
                    self._say(
                        f"note: {failed} failed run(s) of earlier invocations are not run again; to retry them: "
                        f"lipschitz-dd sweep {self.sweep_file} --retry_failed"
                    )
            if self.config["method"] == "grid":
                for params in propose(self.config, state.runs(), n=10**9):
                    state.add_run(new_id(), params)
            elif self.count is None:
                self._say(f"method {self.config['method']} has no end: stop with Ctrl-C or give --count")
            self.stopped_early, self.skipped = None, []
            started, interrupted = self._loop(state, sweep)
            return SweepResult(
                sweep, self.folder, state.runs(), started, interrupted, self.stopped_early, list(self.skipped)
            )

    def _resume_left_running(self, state: SweepState) -> None:
        """Runs left `running` by a runner that died (kill -9, a second Ctrl-C, power loss): a run whose own
        results.json says it ended its training (finished, stopped_converged, diverged) is recorded as finished
        and never trained again; the others are queued again (same id and parameters)."""
        left = state.runs("running")
        kept = 0
        for run in left:
            results = read_results(self._run_dir(run.id))
            if (results or {}).get("status") in _ENDED_STATUSES:
                state.mark_ended(run.id, "finished", None, log_tail(self.folder / "logs" / f"{run.id}.log"), results)
                kept += 1
        requeued = state.requeue(("running",))
        if left:
            self._say(
                f"resuming: {len(left)} run(s) left running by a stopped runner: {kept} had finished (kept, from "
                f"their results.json), {requeued} queued again"
            )

    def _flag_outside_grid(self, state: SweepState) -> None:
        """Flag the runs whose parameters are not in the sweep file's grid (the file changed since they were
        proposed), in sweep.db and in their results.json; unflag those that are in it again."""
        grid = {params_key(params) for params in propose(self.config, [], n=10**9)}
        flagged = 0
        for run in state.runs():
            outside = params_key(run.params) not in grid
            if outside == run.outside_grid:
                continue
            state.set_outside_grid(run.id, outside)
            try:
                update_results(self._run_dir(run.id), outside_grid=outside)
            except ResultsFileError:
                pass  # the report lists an unreadable record as such anyway
            flagged += outside
        if flagged:
            self._say(
                f"note: {flagged} run(s) whose parameters are no longer in the grid of {self.sweep_file} are set "
                "aside (outside_grid: not run, not retried, left out of the report)"
            )

    # --- the scheduling loop (all database access happens in this thread) ---
    def _loop(self, state: SweepState, sweep: SweepRecord) -> tuple[list[str], bool]:
        budget = self.count
        if self.config["method"] == "grid":
            queued = len(state.runs("queued", outside_grid=False))
            budget = queued if budget is None else min(budget, queued)
        bar = tqdm(total=budget, desc=self.name, unit="run", disable=not self.progress, file=self.stream)
        free_slots = list(range(self.workers))
        futures: dict[Future, tuple[str, int]] = {}
        started: list[str] = []
        failures: list[str | None] = []  # per run ended this time: its failure reason, None when it finished
        interrupted = False
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            try:
                while True:
                    while free_slots and self.stopped_early is None and (budget is None or len(started) < budget):
                        record = self._next_run(state)
                        if record is None:
                            break
                        slot = free_slots[0]
                        try:
                            spec = self._spec(record, sweep, slot)  # moves an earlier attempt aside first
                        except AttemptMoveError as err:  # nothing moved: the run stays queued for a later invocation
                            self._say(f"run {record.id} not started: {err}")
                            self.skipped.append(record.id)
                            continue
                        free_slots.pop(0)
                        state.mark_running(record.id)
                        futures[pool.submit(execute_run, spec, self.live)] = (record.id, slot)
                        started.append(record.id)
                    if not futures:
                        break
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for future in done:
                        _, slot = futures.pop(future)
                        failures.append(self._record(state, future.result()))
                        free_slots.append(slot)
                        self._stop_on_repeated_failure(failures)
                        bar.update(1)
                        counts = state.counts()
                        bar.set_postfix(failed=counts["failed"] + counts["killed"])
            except KeyboardInterrupt:
                interrupted = True
                self._stop_runs(state, futures)
        bar.close()
        return started, interrupted

    def _stop_runs(self, state: SweepState, futures: dict[Future, tuple[str, int]]) -> None:
        """After Ctrl-C (or SIGTERM): SIGTERM every run, SIGKILL those still alive after KILL_DELAY_S or at once at
        a further Ctrl-C / SIGTERM, then record each: kept as finished when its results.json says it ended its
        training, else queued again for the next invocation."""
        with _kill_on_signal(self.live) as again:
            self._say(
                f"\ninterrupted: stopping {len(futures)} running run(s) (SIGTERM; SIGKILL after {KILL_DELAY_S} s "
                "or at another Ctrl-C)"
            )
            self.live.terminate_all()
            if wait(futures, timeout=KILL_DELAY_S).not_done:
                self.live.kill_all()
            kept = requeued = 0
            for future in futures:
                outcome = future.result()
                if (outcome.results or {}).get("status") in _ENDED_STATUSES:
                    # it had ended its training (results.json written) before or while being stopped: keep it
                    self._record(state, replace(outcome, state="finished"))
                    kept += 1
                else:
                    state.mark_interrupted(outcome.run_id, outcome.exit_code, outcome.log_tail)
                    requeued += 1
            if again:
                self._say("interrupted again: the runs still alive were killed (SIGKILL)")
            self._say(
                f"stopped: {requeued} run(s) stopped and queued again, {kept} that had finished kept; "
                "rerun the same command to resume"
            )

    def _stop_on_repeated_failure(self, failures: list[str | None]) -> None:
        """Start no more runs when the first SAME_FAILURE_LIMIT runs ended this time all failed for the same
        reason: the cause is common to every run (a missing config, a broken environment)."""
        first = failures[:SAME_FAILURE_LIMIT]
        if self.stopped_early is not None or len(first) < SAME_FAILURE_LIMIT:
            return
        if first[0] is not None and all(reason == first[0] for reason in first):
            self.stopped_early = first[0]
            self._say(
                f"stopping: the first {SAME_FAILURE_LIMIT} runs all failed the same way ({first[0]}); "
                "fix the cause and rerun (the other runs stay queued)"
            )

    def _next_run(self, state: SweepState) -> SweepRunRow | None:
        queued = [run for run in state.runs("queued", outside_grid=False) if run.id not in self.skipped]
        if queued:
            return queued[0]
        if self.config["method"] == "grid":
            return None
        proposal = propose(self.config, state.runs(), n=1)
        if not proposal:
            return None
        run_id = new_id()
        state.add_run(run_id, proposal[0])
        return state.runs("queued")[-1]

    def _record(self, state: SweepState, outcome: RunOutcome) -> str | None:
        """Store how a run ended; returns its failure reason (exit code and last log line, the run id replaced
        by "<run id>" so that equal failures of different runs compare equal), None when it finished."""
        state.mark_ended(outcome.run_id, outcome.state, outcome.exit_code, outcome.log_tail, outcome.results)
        if outcome.state == "finished":
            return None
        code = "no exit code" if outcome.exit_code is None else f"exit code {outcome.exit_code}"
        last = (outcome.log_tail.strip().splitlines() or [""])[-1]
        self._say(f"run {outcome.run_id} {outcome.state} ({code}): {last}")
        if outcome.results is None:
            record = next(r for r in state.runs() if r.id == outcome.run_id)
            self._write_failure_record(record, outcome, f"{code}: {last}")
        return f"{code}: {last}".replace(outcome.run_id, "<run id>")

    def _write_failure_record(self, record: SweepRunRow, outcome: RunOutcome, error: str) -> None:
        """A run that ended before writing its results.json (e.g. a grid point the CLI rejects, such as width 0)
        gets a minimal one, so the report lists it as failed, with its parameters and the reason (log tail)."""
        results = RunResults(
            status=INTERRUPTED if outcome.state == "killed" else FAILED,
            config=record.values,
            epochs=0,
            seconds=0.0,
            error=error,
            outside_grid=record.outside_grid,
            extra={"written_by": "sweep runner (the run wrote no record of its own)"},
        )
        write_results(self._run_dir(outcome.run_id), results)

    def _run_dir(self, run_id: str) -> Path:
        """Where the training CLI writes a run's record (save_dir / experiment / run name)."""
        return self.folder / "runs" / self.name / run_id

    def _spec(self, record: SweepRunRow, sweep: SweepRecord, slot: int) -> RunSpec:
        save_dir = self.folder / "runs"
        run_dir = self._run_dir(record.id)
        log_path = self.folder / "logs" / f"{record.id}.log"
        if run_dir.exists() or log_path.exists():  # an earlier attempt: keep it, out of the report's way
            move_aside([run_dir, log_path], self.folder / "attempts" / f"{record.id}-{record.attempts}")
        json_path = self.folder / "params" / f"{record.id}.json"  # also the ${args_json_file}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(command_args(record.params)["args_json"][0])
        env = run_environment(
            dict(os.environ),
            sweep_id=sweep.id,
            sweep_name=self.name,
            run_id=record.id,
            save_dir=save_dir,
            threads=run_threads(record.values),
            gpu=self.gpus[slot % len(self.gpus)] if self.gpus else None,
        )
        argv = expand_command(
            self.config.get("command"),
            record.params,
            program=self.config.get("program"),
            args_json_file=str(json_path),
            environ=env,
        )
        return RunSpec(record.id, argv, env, run_dir, log_path)

    def _say(self, message: str) -> None:
        tqdm.write(message, file=self.stream)


class AttemptMoveError(ValueError):
    """An earlier attempt could not be moved aside; nothing was moved (one-line message naming the path)."""


def move_aside(paths: list[Path], attempt: Path) -> None:
    """Move ``paths`` (an earlier attempt's run folder and log) into the folder ``attempt``, all or nothing.

    Each path is renamed (os.rename: atomic on one file system; across file systems it is copied to a temporary
    name, renamed into place, then the original removed, and a failed removal is undone from the copy). When any
    step fails, the paths already moved are moved back and an ``attempt`` folder made here is removed, so each path
    is either in ``attempt`` or where it was, never half in both; then AttemptMoveError names the path."""
    paths = [Path(path) for path in paths if os.path.lexists(path)]
    made = not attempt.exists()
    moved: list[tuple[Path, Path]] = []
    current = attempt
    try:
        attempt.mkdir(parents=True, exist_ok=True)
        for current in paths:
            target = attempt / current.name
            if os.path.lexists(target):
                raise FileExistsError(errno.EEXIST, "the attempts folder already holds it", str(target))
            _move(current, target)
            moved.append((current, target))
    except OSError as err:
        for source, target in reversed(moved):
            try:
                _move(target, source)
            except OSError as back:
                raise AttemptMoveError(
                    f"cannot move the earlier attempt {current} to {attempt}/ ({err.strerror or err}), nor {target} "
                    f"back ({back.strerror or back}): move {target} to {source} by hand"
                ) from None
        if made:
            shutil.rmtree(attempt, ignore_errors=True)
        raise AttemptMoveError(
            f"cannot move the earlier attempt {current} to {attempt}/ ({err.strerror or err}); nothing was moved"
        ) from None


def _move(source: Path, target: Path) -> None:
    """os.rename, or across file systems copy (to ``<target>.partial``, then renamed) and remove ``source``; a
    removal that fails half-way is undone from the copy and the copy removed before the error is raised."""
    try:
        os.rename(source, target)
        return
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
    partial = target.with_name(target.name + ".partial")
    try:
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, partial, symlinks=True)
        else:
            shutil.copy2(source, partial, follow_symlinks=False)
        os.rename(partial, target)
    except OSError:
        _remove(partial)
        raise
    try:
        _remove(source, strict=True)
    except OSError:
        if target.is_dir():
            shutil.copytree(target, source, symlinks=True, dirs_exist_ok=True)
        elif not os.path.lexists(source):
            shutil.copy2(target, source, follow_symlinks=False)
        _remove(target)
        raise


def _remove(path: Path, strict: bool = False) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=not strict)
    elif os.path.lexists(path):
        try:
            path.unlink()
        except OSError:
            if strict:
                raise


@contextmanager
def _kill_on_signal(live: LiveProcesses) -> Iterator[list[int]]:
    """While stopping the runs: a further SIGINT or SIGTERM kills every live run at once (SIGKILL) instead of
    raising KeyboardInterrupt in the middle of recording them; yields the list of signals received. Only the main
    thread can set handlers: elsewhere nothing changes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def kill_now(signum, frame):
        received.append(signum)
        live.kill_all()

    previous = {signum: signal.signal(signum, kill_now) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_sweep(sweep_file: str | Path, **options: Any) -> SweepResult:
    """Run (or resume) a sweep; options as SweepRunner: out, workers, count, retry_failed, progress."""
    return SweepRunner(sweep_file, **options).run()


def _visible_gpus() -> list[str]:
    """The CUDA device ids this machine lets the runner hand out ([] without an NVIDIA driver or torch).
    Torch (seconds to import) is asked only on machines with an NVIDIA driver."""
    if not (os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")):
        return []
    try:
        import torch
    except ImportError:
        return []
    return gpu_ids(torch.cuda.device_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def gpu_ids(device_count: int, cuda_visible_devices: str | None) -> list[str]:
    """The ids to put in each worker's CUDA_VISIBLE_DEVICES (worker slot k gets ids[k % len(ids)]):
    the entries of an existing CUDA_VISIBLE_DEVICES (they may be "2,3" or UUIDs), else "0".."n-1"."""
    if cuda_visible_devices:
        ids = [d.strip() for d in cuda_visible_devices.split(",") if d.strip()]
    else:
        ids = [str(i) for i in range(device_count)]
    return ids[:device_count]
