"""The sweep runner after accidents: kill -9 of the runner, a double Ctrl-C, an earlier attempt that cannot be moved,
and what it prints (the `wandb sync` hint on paths with spaces). The fake training program is test_sweep_runner's."""

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from test_sweep_runner import make_sweep, wait_for

from lipschitz_dd.sweep import SweepState, run_sweep
from lipschitz_dd.sweep.cli import main
from lipschitz_dd.sweep.runner import KILL_DELAY_S

TWO = {"width": {"values": [2, 4]}}


def ledger_counts(ledger):
    """How many times each grid point was trained (the fake program appends its arguments when it ends)."""
    return Counter(json.loads(line)["width"] for line in ledger.read_text().splitlines())


def set_state(db_path, state):
    """What a runner killed with SIGKILL leaves in sweep.db: rows still `running` (sqlite3, independently)."""
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE runs SET state=?", (state,))


# ---------------------------------------------------------------- item 5: left `running`
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
