"""The local runner end to end with a fast fake training program: records, SQLite state, exit codes,
failures, resume after SIGKILL, thread limits."""

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from lipschitz_dd.sweep import SweepState, run_sweep
from lipschitz_dd.sweep.cli import main
from lipschitz_dd.sweep.lock import RunnerLock, SweepBusyError
from lipschitz_dd.sweep.process import run_environment, thread_share
from lipschitz_dd.sweep.runner import engine_history, gpu_ids
from lipschitz_dd.sweep.table import sweep_progress

FAKE_PROGRAM = textwrap.dedent(
    """
    import json, os, sys, time
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    print("ARGS", " ".join(sys.argv[1:]), flush=True)
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    if args.get("fail") == "True":
        print("boom: this configuration fails", flush=True)
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
        assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["TORCH_NUM_THREADS"] == str(thread_share(2))
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


@pytest.mark.slow
def test_resume_after_runner_is_killed(tmp_path, monkeypatch):
    """SIGKILL the runner while a run is in progress; rerunning finishes the grid, each point exactly once."""
    sweep_file = make_sweep(tmp_path, GRID)
    ledger = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("FAKE_LEDGER", str(ledger))
    monkeypatch.setenv("FAKE_SLEEP", "1.5")
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
    killed_run = None
    deadline = time.time() + 60
    while time.time() < deadline and killed_run is None:
        time.sleep(0.1)
        if not db_path.exists():
            continue
        try:
            with sqlite3.connect(db_path) as db:
                finished = db.execute("SELECT COUNT(*) FROM runs WHERE state='finished'").fetchone()[0]
                running = db.execute("SELECT id, started_at FROM runs WHERE state='running'").fetchall()
        except sqlite3.OperationalError:  # the runner is still creating its tables
            continue
        log_started = running and (db_path.parent / "logs" / f"{running[0][0]}.log").exists()
        if finished >= 1 and log_started and time.time() - running[0][1] < 0.7:
            runner.send_signal(signal.SIGKILL)
            killed_run = running[0][0]
    runner.wait(timeout=10)
    assert killed_run is not None, "the runner never had a finished and a fresh running run"
    time.sleep(0.5)  # the run process dies with its runner (PDEATHSIG)
    (progress,) = sweep_progress(tmp_path / "out")
    assert not progress.active and progress.running == 0 and progress.finished + progress.remaining == 4
    finished_before = {json.dumps(json.loads(line), sort_keys=True) for line in ledger.read_text().splitlines()}

    monkeypatch.setenv("FAKE_SLEEP", "0")
    result = run_sweep(sweep_file, out=tmp_path / "out", progress=False)
    assert len(result.runs) == 4 and all(r.state == "finished" for r in result.runs)
    assert sorted(map(str, (r.values for r in result.runs))) == sorted(map(str, GRID_POINTS))
    assert killed_run in result.started and len(result.started) == 4 - len(finished_before)
    assert next(r for r in result.runs if r.id == killed_run).attempts == 2
    assert (result.folder / "attempts" / f"{killed_run}-1" / f"{killed_run}.log").is_file()
    executions = Counter(ledger.read_text().splitlines())
    assert len(executions) == 4 and set(executions.values()) == {1}


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


def test_thread_share_and_environment(monkeypatch):
    assert thread_share(1, cores=2) == 2 and thread_share(2, cores=2) == 1 and thread_share(3, cores=2) == 1
    assert thread_share(2, cores=16) == 8
    with pytest.raises(ValueError, match="workers"):
        thread_share(0)
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
