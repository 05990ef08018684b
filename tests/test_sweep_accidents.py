"""The sweep runner after accidents: kill -9 of the runner, a double Ctrl-C, an earlier attempt that cannot be moved,
and what it prints (the `wandb sync` hint on paths with spaces). The fake training program is test_sweep_runner's."""

import errno
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from test_sweep_runner import make_sweep, wait_for

from lipschitz_dd.sweep import SweepState, run_sweep
from lipschitz_dd.sweep.cli import main
from lipschitz_dd.sweep.runner import KILL_DELAY_S, AttemptMoveError, move_aside

TWO = {"width": {"values": [2, 4]}}


def ledger_counts(ledger):
    """How many times each grid point was trained (the fake program appends its arguments when it ends)."""
    return Counter(json.loads(line)["width"] for line in ledger.read_text().splitlines())


def set_state(db_path, state):
    """What a runner killed with SIGKILL leaves in sweep.db: rows still `running` (sqlite3, independently)."""
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE runs SET state=?", (state,))


# ---------------------------------------------------------------- item 5: left `running`
@pytest.mark.e2e
def test_runs_left_running_are_kept_when_their_results_json_says_finished(tmp_path, monkeypatch):
    sweep_file = make_sweep(tmp_path, TWO, name="two")
    ledger = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("FAKE_LEDGER", str(ledger))
    first = run_sweep(sweep_file, out=tmp_path / "out", progress=False)
    assert ledger_counts(ledger) == {"2": 1, "4": 1}
    folder = first.folder
    set_state(folder / "sweep.db", "running")  # the runner died before it recorded either run as ended
    by_width = {r.values["width"]: r.id for r in first.runs}
    killed = folder / "runs" / "two" / by_width[4] / "results.json"  # the width-4 run had been stopped mid-way
    killed.write_text(json.dumps({**json.loads(killed.read_text()), "status": "interrupted"}))

    stream = io.StringIO()
    again = run_sweep(sweep_file, out=tmp_path / "out", progress=False, stream=stream)
    assert again.started == [by_width[4]]
    assert ledger_counts(ledger) == {"2": 1, "4": 2}  # the finished run is not trained again
    assert {r.id: r.state for r in again.runs} == {by_width[2]: "finished", by_width[4]: "finished"}
    kept = next(r for r in again.runs if r.id == by_width[2])
    assert kept.results["status"] == "finished" and kept.results["final"]["test/loss"] == 2.0
    assert "2 run(s) left running by a stopped runner: 1 had finished (kept" in stream.getvalue()
    assert "1 queued again" in stream.getvalue()


@pytest.mark.slow
def test_kill_9_of_the_runner_after_a_run_wrote_its_record(tmp_path, monkeypatch):
    """SIGKILL the runner process while a run has written results.json (finished) but is still tearing down
    (e.g. W&B finishing): rerunning the same command does not train it again."""
    sweep_file = make_sweep(tmp_path, {"width": {"values": [2]}}, name="one")
    ledger, teardown = tmp_path / "ledger.jsonl", tmp_path / "in_teardown"
    env = dict(os.environ, FAKE_LEDGER=str(ledger), FAKE_TEARDOWN=str(teardown), WANDB_MODE="disabled")
    command = [sys.executable, "-m", "lipschitz_dd.sweep.cli", str(sweep_file), "--out", str(tmp_path / "out")]
    runner = subprocess.Popen(
        [*command, "--no_progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(teardown.exists, "the run to write its record")
    finally:
        runner.kill()
        runner.wait(timeout=30)
    with SweepState(tmp_path / "out" / "one" / "sweep.db") as state:
        assert [r.state for r in state.runs()] == ["running"]
    monkeypatch.setenv("FAKE_LEDGER", str(ledger))
    again = run_sweep(sweep_file, out=tmp_path / "out", progress=False)
    assert again.started == [] and [r.state for r in again.runs] == ["finished"]
    assert ledger_counts(ledger) == {"2": 1}


def test_double_ctrl_c_kills_at_once_keeps_finished_runs_and_says_how_to_resume(tmp_path, monkeypatch):
    """Ctrl-C, then Ctrl-C again while the runs are being stopped: the runs still alive are killed at once (no wait
    of KILL_DELAY_S for a run that ignores SIGTERM), the run that had written a finished record is kept, and the
    messages say what happened and how to resume."""
    sweep_file = make_sweep(tmp_path, TWO, name="two")
    ledger, teardown = tmp_path / "ledger.jsonl", tmp_path / "in_teardown"
    monkeypatch.setenv("FAKE_LEDGER", str(ledger))
    monkeypatch.setenv("FAKE_TEARDOWN", str(teardown))
    monkeypatch.setenv("FAKE_IGNORE_TERM", "1")  # stopping it takes a SIGKILL
    stream = io.StringIO()

    def press_ctrl_c_twice():
        wait_for(teardown.exists, "the run to write its record")
        os.kill(os.getpid(), signal.SIGINT)
        wait_for(lambda: "interrupted: stopping" in stream.getvalue(), "the runner to start stopping the runs")
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=press_ctrl_c_twice, daemon=True)
    watcher.start()
    start = time.monotonic()
    result = run_sweep(sweep_file, out=tmp_path / "out", progress=False, stream=stream)
    watcher.join()
    assert time.monotonic() - start < KILL_DELAY_S
    assert result.interrupted
    assert Counter(r.state for r in result.runs) == {"finished": 1, "queued": 1}
    said = stream.getvalue()
    assert "interrupted again: the runs still alive were killed" in said
    assert "0 run(s) stopped and queued again, 1 that had finished kept; rerun the same command to resume" in said

    for name in ("FAKE_TEARDOWN", "FAKE_IGNORE_TERM"):
        monkeypatch.delenv(name)
    again = run_sweep(sweep_file, out=tmp_path / "out", progress=False)
    assert len(again.started) == 1 and all(r.state == "finished" for r in again.runs)
    assert ledger_counts(ledger) == {"2": 1, "4": 1}


def test_an_interrupt_outside_the_loop_says_runs_stopped_and_how_to_resume(tmp_path, monkeypatch, capsys):
    import lipschitz_dd.sweep.cli as sweep_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_cli, "run_sweep", interrupted)
    assert main([str(make_sweep(tmp_path, TWO)), "--out", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        "interrupted: the sweep's runs were stopped (finished runs are kept); rerun the same command to resume"
    )


# ---------------------------------------------------------------- item 6: moving an earlier attempt aside
def failing_rename(monkeypatch, fails, error=errno.EACCES):
    """os.rename raising `error` for the paths `fails(source)` picks (tests run as root, which ignores file modes:
    a read-only folder is simulated); every other rename goes through."""
    real_rename = os.rename

    def rename(source, target, *args, **kwargs):
        if fails(Path(source)):
            raise OSError(error, os.strerror(error), str(source))
        return real_rename(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)


def tree(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.e2e
@pytest.mark.parametrize("unmovable", ["run folder", "log"])
def test_an_earlier_attempt_that_cannot_be_moved_stays_whole_and_the_run_waits(
    tmp_path, monkeypatch, capsys, unmovable
):
    sweep_file = make_sweep(tmp_path, TWO, name="two")
    fail_once = tmp_path / "fail_once"
    fail_once.mkdir()
    monkeypatch.setenv("FAKE_FAIL_ONCE", str(fail_once))
    monkeypatch.setenv("FAKE_VARY", "1")
    out = tmp_path / "out"
    assert main([str(sweep_file), "--out", str(out), "--no_progress"]) == 1  # both first attempts fail
    folder = out / "two"
    with SweepState(folder / "sweep.db") as state:
        stuck = next(r for r in state.runs() if r.values["width"] == 2).id
    run_dir, log = folder / "runs" / "two" / stuck, folder / "logs" / f"{stuck}.log"
    before = {"run": tree(run_dir), "log": log.read_bytes()}
    capsys.readouterr()

    failing_rename(monkeypatch, lambda source: source == (run_dir if unmovable == "run folder" else log))
    assert main([str(sweep_file), "--out", str(out), "--no_progress", "--retry_failed"]) == 1
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if stuck in line]
    moved = run_dir if unmovable == "run folder" else log
    assert said == [
        f"run {stuck} not started: cannot move the earlier attempt {moved} to {folder / 'attempts' / f'{stuck}-1'}/ "
        "(Permission denied); nothing was moved"
    ]
    assert "Traceback" not in captured.err and "1 run(s) not started" in captured.out
    assert tree(run_dir) == before["run"] and log.read_bytes() == before["log"]  # all of it where it was
    assert not (folder / "attempts" / f"{stuck}-1").exists()
    with SweepState(folder / "sweep.db") as state:
        runs = {r.id: r for r in state.runs()}
    assert (runs[stuck].state, runs[stuck].attempts) == ("queued", 1)  # waits for the next invocation
    assert [r.state for r in runs.values() if r.id != stuck] == ["finished"]  # the other run went on

    monkeypatch.undo()  # the folder is writable again: the same command resumes
    monkeypatch.setenv("FAKE_FAIL_ONCE", str(fail_once))
    assert main([str(sweep_file), "--out", str(out), "--no_progress"]) == 0
    assert tree(folder / "attempts" / f"{stuck}-1" / stuck) == before["run"]
    assert (folder / "attempts" / f"{stuck}-1" / f"{stuck}.log").read_bytes() == before["log"]


def _attempt_folder(tmp_path):
    run_dir = tmp_path / "runs" / "x" / "abcd1234"
    (run_dir / "wandb").mkdir(parents=True)
    (run_dir / "results.json").write_text('{"status": "failed"}')
    (run_dir / "metrics.csv").write_text("step,train/loss\n0,2.3\n")
    (run_dir / "wandb" / "run-abcd1234.wandb").write_bytes(b":W&B\xe1\xbe\x00")
    log = tmp_path / "logs" / "abcd1234.log"
    log.parent.mkdir()
    log.write_text("boom\n")
    return run_dir, log


def test_move_aside_across_file_systems_copies_then_removes(tmp_path, monkeypatch):
    run_dir, log = _attempt_folder(tmp_path)
    before = tree(run_dir)
    failing_rename(monkeypatch, lambda source: source in (run_dir, log), error=errno.EXDEV)
    attempt = tmp_path / "attempts" / "abcd1234-1"
    move_aside([run_dir, log], attempt)
    assert not run_dir.exists() and not log.exists()
    assert tree(attempt / "abcd1234") == before and (attempt / "abcd1234.log").read_text() == "boom\n"
    assert sorted(p.name for p in attempt.iterdir()) == ["abcd1234", "abcd1234.log"]  # no .partial left


def test_move_aside_undoes_a_removal_that_fails_half_way(tmp_path, monkeypatch):
    """Across file systems the original is removed after the copy; when that fails half-way (a read-only file),
    the removed files are put back from the copy and the copy is removed: nothing is half-moved."""
    run_dir, log = _attempt_folder(tmp_path)
    before = tree(run_dir)
    failing_rename(monkeypatch, lambda source: source == run_dir, error=errno.EXDEV)
    real_rmtree = shutil.rmtree

    def rmtree(path, ignore_errors=False, **kwargs):
        if Path(path) == run_dir and not ignore_errors:
            (run_dir / "results.json").unlink()  # removed before the read-only file stops the removal
            raise PermissionError(errno.EACCES, "Permission denied", str(run_dir / "metrics.csv"))
        return real_rmtree(path, ignore_errors=ignore_errors, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    attempt = tmp_path / "attempts" / "abcd1234-1"
    with pytest.raises(AttemptMoveError, match=r"cannot move the earlier attempt .*abcd1234 .*nothing was moved"):
        move_aside([run_dir, log], attempt)
    assert tree(run_dir) == before and log.read_text() == "boom\n"
    assert not attempt.exists()


def test_move_aside_refuses_to_overwrite_an_attempt(tmp_path):
    run_dir, log = _attempt_folder(tmp_path)
    attempt = tmp_path / "attempts" / "abcd1234-1"
    (attempt / "abcd1234.log").parent.mkdir(parents=True)
    (attempt / "abcd1234.log").write_text("an older log\n")
    with pytest.raises(AttemptMoveError, match="already holds it"):
        move_aside([run_dir, log], attempt)
    assert run_dir.is_dir() and log.read_text() == "boom\n"
    assert (attempt / "abcd1234.log").read_text() == "an older log\n" and not (attempt / "abcd1234").exists()


# ---------------------------------------------------------------- item 9: the `wandb sync` hint
def test_wandb_sync_hint_works_in_a_save_dir_with_spaces_and_quotes(tmp_path, capsys):
    sweep_file = make_sweep(tmp_path, {"width": {"values": [2]}}, name="one")
    out = tmp_path / "my sweeps 'v2'"
    assert main([str(sweep_file), "--out", str(out), "--no_progress"]) == 0
    (hint,) = [line for line in capsys.readouterr().out.splitlines() if "wandb sync" in line]
    command = hint.removeprefix("upload to W&B later with: ")
    assert command.startswith("wandb sync ")
    (run_dir,) = (out / "one" / "runs" / "one").iterdir()
    offline = [run_dir / "wandb" / f"offline-run-2026010{i}_000000-{run_dir.name}" for i in (1, 2)]
    for folder in offline:
        folder.mkdir(parents=True)
    # the shell gives `wandb sync` exactly the offline run folders, one argument each
    printed = subprocess.run(
        ["bash", "-c", "printf '%s\\n' " + command.removeprefix("wandb sync ")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert printed == [str(folder) for folder in offline]


# ---------------------------------------------------------------- item 3, end to end
@pytest.mark.slow
def test_report_after_kill_9_during_start_up_counts_each_grid_point_once(tmp_path):
    """The runner is killed (SIGKILL) while its first run is starting (only wandb/ written); the same command
    finishes the grid, the earlier attempt lands in attempts/ and the report counts each grid point once."""
    from lipschitz_dd.report.build import build_report

    sweep_file = make_sweep(tmp_path, {"width": {"values": [2, 4]}, "noise": {"values": [0.0, 0.5]}}, name="grid")
    marks = tmp_path / "started"
    marks.mkdir()
    env = dict(os.environ, FAKE_WANDB_ONLY_ONCE=str(marks), WANDB_MODE="disabled")
    command = [sys.executable, "-m", "lipschitz_dd.sweep.cli", str(sweep_file), "--out", str(tmp_path / "out")]
    runner = subprocess.Popen(
        [*command, "--no_progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: list(tmp_path.glob("out/grid/runs/grid/*/wandb/offline-run-*/run-*.wandb")), "a start-up")
    finally:
        runner.kill()
        runner.wait(timeout=30)
    (stuck,) = [p.name for p in marks.iterdir()]
    result = run_sweep(sweep_file, out=tmp_path / "out", progress=False)
    assert Counter(r.state for r in result.runs) == {"finished": 4}
    assert (result.folder / "attempts" / f"{stuck}-1" / stuck / "wandb").is_dir()

    summary = build_report(result.folder, out=tmp_path / "report", x="width", hue="noise", seed_key="seed")
    assert summary.runs == 4 and summary.statuses == {"finished": 4}
