"""The local runner end to end with a fast fake training program: records, SQLite state, exit codes,
failures, resume after SIGKILL, the run environment (threads: tests/test_sweep_threads.py)."""

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from lipschitz_dd.sweep import SweepState, run_sweep
from lipschitz_dd.sweep.cli import main
from lipschitz_dd.sweep.lock import RunnerLock, SweepBusyError
from lipschitz_dd.sweep.process import run_environment
from lipschitz_dd.sweep.runner import SAME_FAILURE_LIMIT, engine_history, gpu_ids
from lipschitz_dd.sweep.table import sweep_progress

FAKE_PROGRAM = textwrap.dedent(
    """
    import json, os, signal, sys, time
    if os.environ.get("FAKE_IGNORE_TERM"):  # slow to stop (e.g. writing its record): SIGTERM and SIGINT ignored
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    print("ARGS", " ".join(sys.argv[1:]), flush=True)
    run_id = os.environ["LIPSCHITZ_DD_RUN_NAME"]
    gate = os.environ.get("FAKE_GATE")  # a folder: each run leaves its id there; run number FAKE_BLOCK_AT blocks
    if gate:
        open(os.path.join(gate, run_id), "w").close()
        if len(os.listdir(gate)) == int(os.environ.get("FAKE_BLOCK_AT", "0")):
            while True:  # until killed
                time.sleep(0.05)
    start_once = os.environ.get("FAKE_WANDB_ONLY_ONCE")  # a folder: a first attempt hangs in start-up, wandb/ only
    if start_once and not os.path.exists(os.path.join(start_once, run_id)):
        open(os.path.join(start_once, run_id), "w").close()
        offline = os.path.join(os.environ["LIPSCHITZ_DD_SAVE_DIR"], os.environ["LIPSCHITZ_DD_EXPERIMENT"], run_id,
                               "wandb", "offline-run-20260101_000000-" + run_id)
        os.makedirs(offline)
        with open(os.path.join(offline, "run-" + run_id + ".wandb"), "wb") as f:
            f.write(b":W&B\\xe1\\xbe\\x00")  # what W&B has written when a start-up is killed: the header only
        while True:  # until killed
            time.sleep(0.05)
    fail_once = os.environ.get("FAKE_FAIL_ONCE")  # a folder: a run's first attempt fails
    if fail_once and not os.path.exists(os.path.join(fail_once, run_id)):
        open(os.path.join(fail_once, run_id), "w").close()
        print("boom: first attempt fails" + (f" (width {args['width']})" if os.environ.get("FAKE_VARY") else ""))
        sys.exit(3)
    if args.get("fail") == "True":
        vary = f" (width {args['width']})" if os.environ.get("FAKE_VARY") else ""
        print("boom: this configuration fails" + vary, flush=True)
        sys.exit(3)
    run_dir = os.path.join(os.environ["LIPSCHITZ_DD_SAVE_DIR"], os.environ["LIPSCHITZ_DD_EXPERIMENT"],
                           os.environ["LIPSCHITZ_DD_RUN_NAME"])
    os.makedirs(run_dir, exist_ok=True)
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCH_NUM_THREADS",
           "WANDB_MODE", "WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_RUN_GROUP", "WANDB_TAGS",
           "LIPSCHITZ_DD_SWEEP_ID", "LIPSCHITZ_DD_EXPERIMENT", "LIPSCHITZ_DD_RUN_NAME")}
    loss = float(args["width"]) * (1 + float(args.get("noise", 0)))
    results = {"status": "finished", "config": args, "final": {"test/loss": loss, "lipschitz/lower": 2 * loss},
               "max": {}, "epochs": 1, "seconds": 0.0, "versions": {}, "env": env}
    with open(os.path.join(run_dir, "results.json.tmp"), "w") as f:
        json.dump(results, f)
    os.replace(os.path.join(run_dir, "results.json.tmp"), os.path.join(run_dir, "results.json"))
    if os.environ.get("FAKE_LEDGER"):
        with open(os.environ["FAKE_LEDGER"], "a") as f:
            f.write(json.dumps(args, sort_keys=True) + "\\n")
    if os.environ.get("FAKE_TEARDOWN"):  # e.g. W&B finishing: the record is written, the process still runs
        open(os.environ["FAKE_TEARDOWN"], "w").close()
        time.sleep(3600)
    """
)


def make_sweep(tmp_path, parameters, method="grid", name="grid2x2"):
    program = tmp_path / "fake_train.py"
    program.write_text(FAKE_PROGRAM)
    config = {
        "method": method,
        "metric": {"name": "test/loss", "goal": "minimize"},
        "program": str(program),
        "parameters": parameters,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


GRID = {"width": {"values": [2, 4]}, "noise": {"values": [0.0, 0.5]}}
GRID_POINTS = [{"noise": n, "width": w} for n in (0.0, 0.5) for w in (2, 4)]  # keys alphabetical, last fastest


@pytest.mark.e2e
def test_grid_end_to_end(tmp_path):
    sweep_file = make_sweep(tmp_path, GRID)
    result = run_sweep(sweep_file, out=tmp_path / "out", workers=2, progress=False)
    folder = tmp_path / "out" / "grid2x2"
    assert result.folder == folder and len(result.started) == 4 and not result.interrupted
    assert [r.values for r in result.runs] == GRID_POINTS
    for run in result.runs:
        assert run.state == "finished" and run.exit_code == 0 and run.attempts == 1
        assert run.results["final"]["test/loss"] == pytest.approx(run.values["width"] * (1 + run.values["noise"]))
        assert f"--noise={run.values['noise']}" in run.log_tail and f"--width={run.values['width']}" in run.log_tail
        assert (folder / "runs" / "grid2x2" / run.id / "results.json").is_file()
        env = run.results["env"]
        assert env["WANDB_RUN_ID"] == env["LIPSCHITZ_DD_RUN_NAME"] == run.id
        assert env["LIPSCHITZ_DD_SWEEP_ID"] == result.sweep.id and len(result.sweep.id) == 8
        assert env["WANDB_SWEEP_ID"] is None  # a local id would break `wandb sync` (see process.py)
        assert env["WANDB_RUN_GROUP"] == env["WANDB_TAGS"] == env["LIPSCHITZ_DD_EXPERIMENT"] == "grid2x2"
        assert env["WANDB_MODE"] in ("offline", "disabled")
        assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["TORCH_NUM_THREADS"] == "1"  # the default
        assert json.loads((folder / "params" / f"{run.id}.json").read_text()) == run.values
        assert run.seconds is not None and run.seconds > 0
    # the database, read independently with sqlite3
    db = sqlite3.connect(folder / "sweep.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = db.execute("SELECT id, state, exit_code, params_json FROM runs ORDER BY seq").fetchall()
    assert [(r[1], r[2]) for r in rows] == [("finished", 0)] * 4
    assert [{k: v["value"] for k, v in json.loads(r[3]).items()} for r in rows] == GRID_POINTS
    name, file_path = db.execute("SELECT name, file_path FROM sweep").fetchone()
    assert (name, file_path) == ("grid2x2", str(sweep_file))
    # running it again proposes nothing new
    again = run_sweep(sweep_file, out=tmp_path / "out", workers=2, progress=False)
    assert again.started == [] and [r.id for r in again.runs] == [r.id for r in result.runs]


@pytest.mark.e2e
def test_failing_run_does_not_stop_the_sweep_and_retry_flag(tmp_path, capsys):
    sweep_file = make_sweep(tmp_path, {"fail": {"values": [False, True]}, "width": {"values": [1, 2]}})
    out = str(tmp_path / "out")
    assert main([str(sweep_file), "--out", out, "--no_progress"]) == 1
    printed = capsys.readouterr().out
    assert "wandb sync" in printed and "test/loss" in printed
    with SweepState(tmp_path / "out" / "grid2x2" / "sweep.db") as state:
        runs = state.runs()
    assert Counter(r.state for r in runs) == {"finished": 2, "failed": 2}
    for run in runs:
        failing = run.values["fail"] is True
        assert run.exit_code == (3 if failing else 0)
        assert ("boom" in run.log_tail) == failing
        assert (run.results is None) == failing
    # a run that died before writing its record still gets one (status, parameters, reason), so the report,
    # which reads only the run folders, counts it as failed instead of leaving it out
    from lipschitz_dd.report.records import load_runs

    reported = {r.name: r for r in load_runs(tmp_path / "out" / "grid2x2" / "runs")}
    assert sorted(r.status for r in reported.values()) == ["failed", "failed", "finished", "finished"]
    for run in runs:
        if run.values["fail"] is True:
            folder = tmp_path / "out" / "grid2x2" / "runs" / "grid2x2" / run.id
            record = json.loads((folder / "results.json").read_text())
            assert "exit code 3" in record["error"] and "boom" in record["error"]
            assert record["config"]["width"] == run.values["width"]
    # failed runs are not retried by default ...
    assert main([str(sweep_file), "--out", out, "--no_progress"]) == 0
    with SweepState(tmp_path / "out" / "grid2x2" / "sweep.db") as state:
        assert [r.attempts for r in state.runs()] == [1, 1, 1, 1]
    # ... but are with --retry_failed (same ids, a second attempt)
    assert main([str(sweep_file), "--out", out, "--no_progress", "--retry_failed"]) == 1
    with SweepState(tmp_path / "out" / "grid2x2" / "sweep.db") as state:
        after = state.runs()
    assert [r.id for r in after] == [r.id for r in runs]
    assert [r.attempts for r in after] == [2 if r.values["fail"] else 1 for r in after]


def test_count_limits_new_runs_and_status(tmp_path, capsys):
    sweep_file = make_sweep(tmp_path, GRID)
    result = run_sweep(sweep_file, out=tmp_path / "out", count=1, progress=False)
    assert len(result.started) == 1
    assert Counter(r.state for r in result.runs) == {"finished": 1, "queued": 3}
    (progress,) = sweep_progress(tmp_path / "out")
    assert (progress.name, progress.finished, progress.failed, progress.remaining) == ("grid2x2", 1, 0, 3)
    assert main(["status", "--out", str(tmp_path / "out")]) == 0
    line = capsys.readouterr().out.splitlines()[1].split()
    assert line[:6] == ["grid2x2", "grid", "1", "0", "0", "3"]


def wait_for(condition, what, timeout=120.0):
    """Poll `condition()` until it is true; fail with `what` after `timeout` seconds (a bound, not a timing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.slow
def test_resume_after_runner_is_killed(tmp_path, monkeypatch):
    """SIGKILL the runner while a run is in progress; rerunning finishes the grid, each point exactly once.
    The second run blocks until killed (FAKE_GATE), so the kill always lands while it runs: no timing."""
    sweep_file = make_sweep(tmp_path, GRID)
    ledger = tmp_path / "ledger.jsonl"
    gate = tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setenv("FAKE_LEDGER", str(ledger))
    monkeypatch.setenv("FAKE_GATE", str(gate))
    monkeypatch.setenv("FAKE_BLOCK_AT", "2")
    db_path = tmp_path / "out" / "grid2x2" / "sweep.db"
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lipschitz_dd.sweep.cli",
            str(sweep_file),
            "--out",
            str(tmp_path / "out"),
            "--no_progress",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: len(list(gate.iterdir())) == 2, "the second run to start")  # the first has finished
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=30)
    (blocked,) = {p.name for p in gate.iterdir()} - _finished_ids(db_path)
    wait_for(lambda: not sweep_progress(tmp_path / "out")[0].active, "the lock to be released")
    (progress,) = sweep_progress(tmp_path / "out")
    assert progress.running == 0 and progress.finished == 1 and progress.remaining == 3
    assert len(ledger.read_text().splitlines()) == 1

    monkeypatch.delenv("FAKE_GATE")
    result = run_sweep(sweep_file, out=tmp_path / "out", progress=False)
    assert len(result.runs) == 4 and all(r.state == "finished" for r in result.runs)
    assert sorted(map(str, (r.values for r in result.runs))) == sorted(map(str, GRID_POINTS))
    assert blocked in result.started and len(result.started) == 3
    assert next(r for r in result.runs if r.id == blocked).attempts == 2
    assert (result.folder / "attempts" / f"{blocked}-1" / f"{blocked}.log").is_file()
    executions = Counter(ledger.read_text().splitlines())
    assert len(executions) == 4 and set(executions.values()) == {1}


def _finished_ids(db_path):
    with sqlite3.connect(db_path) as db:
        return {row[0] for row in db.execute("SELECT id FROM runs WHERE state='finished'")}


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["random", "bayes"])
def test_random_and_bayes_with_count(tmp_path, method):
    sweep_file = make_sweep(tmp_path, {"width": {"distribution": "int_uniform", "min": 1, "max": 100}}, method=method)
    result = run_sweep(sweep_file, out=tmp_path / "out", count=3, workers=2, progress=False)
    assert len(result.runs) == 3 and len({r.id for r in result.runs}) == 3
    assert all(r.state == "finished" and 1 <= r.values["width"] <= 100 for r in result.runs)
    again = run_sweep(sweep_file, out=tmp_path / "out", count=1, progress=False)  # proposes from the history
    assert len(again.runs) == 4 and again.started == [again.runs[-1].id]


def test_engine_history_carries_states_and_final_metrics(tmp_path):
    with SweepState(tmp_path / "s.db") as state:
        state.add_run("aaaaaaaa", {"width": {"value": 2}})
        state.add_run("bbbbbbbb", {"width": {"value": 4}})
        state.mark_running("aaaaaaaa")
        state.mark_ended("aaaaaaaa", "finished", 0, "", {"final": {"test/loss": 0.25}})
        history = engine_history(state.runs())
    assert [(h.name, h.state) for h in history] == [("aaaaaaaa", "finished"), ("bbbbbbbb", "pending")]
    assert history[0].summary_metric("test/loss") == 0.25 and history[1].config == {"width": {"value": 2 * 2}}


def test_run_environment(monkeypatch):
    env = run_environment(
        {"WANDB_MODE": "online", "PATH": "/bin"},
        sweep_id="s",
        sweep_name="n",
        run_id="r",
        save_dir=Path("/o/runs"),
        threads=3,
        gpu="1",
    )
    assert env["WANDB_MODE"] == "offline" and env["CUDA_VISIBLE_DEVICES"] == "1" and "WANDB_SWEEP_ID" not in env
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env["TORCH_NUM_THREADS"]) == ("3", "3", "3")
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent) and env["PATH"].endswith("/bin")
    assert env["LIPSCHITZ_DD_SAVE_DIR"] == "/o/runs" and env["LIPSCHITZ_DD_RUN_NAME"] == "r"


def test_second_runner_on_the_same_sweep_is_refused(tmp_path):
    sweep_file = make_sweep(tmp_path, GRID)
    with RunnerLock(tmp_path / "out" / "grid2x2"):
        with pytest.raises(SweepBusyError, match="another runner"):
            run_sweep(sweep_file, out=tmp_path / "out", progress=False)
    with SweepState(tmp_path / "out" / "grid2x2" / "sweep.db") as state:
        assert state.runs() == []


def test_bad_options(tmp_path):
    sweep_file = make_sweep(tmp_path, GRID)
    with pytest.raises(ValueError, match="workers"):
        run_sweep(sweep_file, out=tmp_path / "out", workers=0)
    with pytest.raises(ValueError, match="count"):
        run_sweep(sweep_file, out=tmp_path / "out", count=-1)


def test_gpu_ids_one_per_worker_slot():
    assert gpu_ids(0, None) == [] and gpu_ids(2, None) == ["0", "1"]
    assert gpu_ids(2, "2,3") == ["2", "3"] and gpu_ids(1, "GPU-ab12, GPU-cd34") == ["GPU-ab12"]


@pytest.mark.e2e
def test_report_counts_each_grid_point_once_after_retries(tmp_path, monkeypatch):
    """A retried run's earlier attempt is moved to attempts/; the report reads the latest attempt only."""
    from lipschitz_dd.report.records import load_runs

    sweep_file = make_sweep(tmp_path, GRID)
    fail_once = tmp_path / "fail_once"
    fail_once.mkdir()
    monkeypatch.setenv("FAKE_FAIL_ONCE", str(fail_once))
    monkeypatch.setenv("FAKE_VARY", "1")  # different messages: the runner does not stop early
    out = tmp_path / "out"
    assert main([str(sweep_file), "--out", str(out), "--no_progress"]) == 1  # every first attempt fails
    assert main([str(sweep_file), "--out", str(out), "--no_progress", "--retry_failed"]) == 0
    folder = out / "grid2x2"
    assert len(list((folder / "attempts").glob("*-1/*/results.json"))) == 4  # the failed attempts, kept
    runs = load_runs(folder)
    assert len(runs) == 4 and {r.status for r in runs} == {"finished"}
    assert sorted((r.config["width"], r.config["noise"]) for r in runs) == sorted(
        (str(p["width"]), str(p["noise"])) for p in GRID_POINTS
    )


def test_ctrl_c_keeps_a_run_that_had_already_finished(tmp_path, monkeypatch):
    """Ctrl-C while a run, its results.json already written (status finished), is still tearing down: the run
    stays finished and is not trained again on resume."""
    sweep_file = make_sweep(tmp_path, {"width": {"values": [2]}})
    ledger, teardown = tmp_path / "ledger.jsonl", tmp_path / "in_teardown"
    monkeypatch.setenv("FAKE_LEDGER", str(ledger))
    monkeypatch.setenv("FAKE_TEARDOWN", str(teardown))

    def press_ctrl_c():
        wait_for(teardown.exists, "the run to write its record")
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=press_ctrl_c, daemon=True)
    watcher.start()
    result = run_sweep(sweep_file, out=tmp_path / "out", progress=False)
    watcher.join()
    assert result.interrupted
    (run,) = result.runs
    assert run.state == "finished" and run.results["status"] == "finished"
    monkeypatch.delenv("FAKE_TEARDOWN")
    again = run_sweep(sweep_file, out=tmp_path / "out", progress=False)
    assert again.started == [] and len(ledger.read_text().splitlines()) == 1


@pytest.mark.e2e
def test_retry_failed_skips_runs_no_longer_in_the_grid(tmp_path, capsys):
    from lipschitz_dd.report.records import load_runs

    out = str(tmp_path / "out")
    sweep_file = make_sweep(tmp_path, {"fail": {"values": [False, True]}, "width": {"values": [1, 2]}})
    assert main([str(sweep_file), "--out", out, "--no_progress"]) == 1
    # the sweep file changes: width 2 is dropped, width 3 added
    make_sweep(tmp_path, {"fail": {"values": [False, True]}, "width": {"values": [1, 3]}})
    assert main([str(sweep_file), "--out", out, "--no_progress", "--retry_failed"]) == 1
    with SweepState(tmp_path / "out" / "grid2x2" / "sweep.db") as state:
        runs = state.runs()
    stale = [r for r in runs if r.values["width"] == 2]
    assert len(stale) == 2 and all(r.outside_grid and r.attempts == 1 for r in stale)
    assert all(not r.outside_grid for r in runs if r.values["width"] != 2)
    retried = [r for r in runs if r.values["width"] == 1 and r.values["fail"]]
    assert [r.attempts for r in retried] == [2]
    for run in stale:
        record = json.loads((tmp_path / "out" / "grid2x2" / "runs" / "grid2x2" / run.id / "results.json").read_text())
        assert record["outside_grid"] is True
    reported = load_runs(tmp_path / "out" / "grid2x2")
    assert sorted(str(r.config["width"]) for r in reported) == ["1", "1", "3", "3"]  # the stale runs are left out
    everything = load_runs(tmp_path / "out" / "grid2x2", include_outside_grid=True)
    assert len(everything) == 6


def test_rerun_without_retry_flag_says_how_to_retry(tmp_path):
    sweep_file = make_sweep(tmp_path, {"fail": {"values": [True]}, "width": {"values": [1]}})
    stream = io.StringIO()
    run_sweep(sweep_file, out=tmp_path / "out", progress=False, stream=stream)
    assert "--retry_failed" not in stream.getvalue()
    stream = io.StringIO()
    run_sweep(sweep_file, out=tmp_path / "out", progress=False, stream=stream)
    assert "1 failed run(s)" in stream.getvalue() and "--retry_failed" in stream.getvalue()


@pytest.mark.e2e
def test_same_failure_on_every_run_stops_after_the_first_few(tmp_path, capsys):
    sweep_file = make_sweep(tmp_path, {"fail": {"values": [True]}, "width": {"values": [1, 2, 3, 4, 5, 6]}})
    assert main([str(sweep_file), "--out", str(tmp_path / "out"), "--no_progress"]) == 1
    err = capsys.readouterr().err
    stopping = [line for line in err.splitlines() if line.startswith("stopping:")]
    assert len(stopping) == 1 and "boom: this configuration fails" in stopping[0]
    with SweepState(tmp_path / "out" / "grid2x2" / "sweep.db") as state:
        assert Counter(r.state for r in state.runs()) == {
            "failed": SAME_FAILURE_LIMIT,
            "queued": 6 - SAME_FAILURE_LIMIT,
        }


@pytest.mark.e2e
def test_different_failures_do_not_stop_the_sweep(tmp_path, monkeypatch):
    sweep_file = make_sweep(tmp_path, {"fail": {"values": [True]}, "width": {"values": [1, 2, 3, 4]}})
    monkeypatch.setenv("FAKE_VARY", "1")  # each run fails with its own message
    result = run_sweep(sweep_file, out=tmp_path / "out", progress=False)
    assert result.stopped_early is None and Counter(r.state for r in result.runs) == {"failed": 4}
