"""Interrupt single fits and a small sweep at many points of their life, finish the work, check the invariants.

Each fit scenario kills (SIGKILL), terminates (SIGTERM) or interrupts (SIGINT) a `lipschitz-dd fit` of the tiny
config at one point (tests/fault_inject.py patches the function behind it in the child process only), then does
what a user would: resume from the run's checkpoint when there is a usable one, else start the run again under a
new name. The invariants:

* a record never goes missing: after the interruption, a results.json that exists parses, a run whose
  metrics.csv existed before still has it, and a finished record is never replaced by a failed one;
* the finished run's rows equal an uninterrupted run's rows (every metric but wall-clock seconds);
* a bad checkpoint is refused in a short message, not a traceback.

The sweep scenarios interrupt the runner (and with it its run) at three points with each signal, rerun it, and
check that every grid point is reported exactly once and that no finished run was trained again.

Interruptions: 12 in a first fit (6 points with SIGKILL, 3 each with SIGTERM and SIGINT), 6 in a resume (2 points
x 3 signals), 6 in a sweep (2 points x 3 signals): 24 in all.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
EPOCHS = 4
FIT = ["fit", "-c", "test_tiny", "--trainer.enable_checkpointing=true", f"--trainer.max_epochs={EPOCHS}"]
SIGNALS = ["KILL", "TERM", "INT"]
#: (point, nth, signal): where the first fit is interrupted (4 batches and 10 autograd.grad calls per measurement).
#: SIGKILL at every point; SIGTERM and SIGINT, which the process sees, at half of them each.
FIT_FAULTS = [
    *[
        (point, nth, "KILL")
        for point, nth in [
            ("train_start", 1),  # start-up: the run folder exists, no epoch has run
            ("train_step", 10),  # mid-epoch, in the third epoch
            ("measure", 25),  # inside the measurement after the second epoch
            ("checkpoint", 2),  # half of the second checkpoint written
            ("replace:results.json", 1),  # results.json complete in its temporary file, not yet renamed
            ("replace:metrics.csv", 2),  # a metrics.csv rewrite about to be renamed
        ]
    ],
    ("train_step", 10, "TERM"),
    ("checkpoint", 2, "TERM"),
    ("replace:results.json", 1, "TERM"),
    ("train_start", 1, "INT"),
    ("measure", 25, "INT"),
    ("replace:metrics.csv", 2, "INT"),
]
#: where the resume of a finished 2-epoch run to 4 epochs is interrupted, with each signal
RESUME_FAULTS = [(point, 1, sig) for point in ("train_start", "replace:metrics.csv") for sig in SIGNALS]

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def run_cli(cwd: Path, args: list[str], fault: tuple[str, str, int] | None = None) -> subprocess.CompletedProcess:
    if fault is None:
        command = [sys.executable, "-m", "lipschitz_dd.cli", *args]
    else:
        point, signame, nth = fault
        command = [sys.executable, str(TESTS / "fault_inject.py"), point, signame, str(nth), "--", *args]
    return subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(f)]


def epoch_values(row: dict[str, str]) -> dict[str, str]:
    """A row without the fit's end values (f(0) at the final weights, logged once training is over)."""
    return {k: v for k, v in row.items() if not k.startswith("f0/")}


def results(run_dir: Path) -> dict | None:
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict[str, str]]:
    """The rows of an uninterrupted run."""
    cwd = tmp_path_factory.mktemp("reference")
    done = run_cli(cwd, [*FIT, "--run_name", "ref"])
    assert done.returncode == 0, done.stderr[-3000:]
    return rows(cwd / "runs" / "test_tiny" / "ref")


def finish(cwd: Path, run_dir: Path) -> Path:
    """Finish an interrupted run as a user would: resume from its checkpoint when that works, else start again
    under a new name. Returns the folder holding the finished run."""
    record = results(run_dir)
    if record is not None and record["status"] == "finished" and record.get("epochs") == EPOCHS:
        return run_dir  # the interruption came after the run had finished
    ckpt = checkpoint(run_dir)
    if ckpt is not None:
        resumed = run_cli(cwd, [*FIT, "--ckpt_path", str(ckpt)])
        if resumed.returncode == 0:
            return run_dir
        # a half-written checkpoint: refused in a few lines naming it, never a traceback
        assert "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
        assert len(resumed.stderr.strip().splitlines()) <= 5, resumed.stderr[-3000:]
    again = run_cli(cwd, [*FIT, "--run_name", run_dir.name + "-again"])
    assert again.returncode == 0, again.stderr[-3000:]
    return run_dir.parent / (run_dir.name + "-again")


def check_record_readable(run_dir: Path) -> None:
    record = results(run_dir)  # parses (json raises otherwise)
    if record is not None:
        assert record["status"] in ("finished", "stopped_converged", "interrupted", "failed"), record["status"]


@pytest.mark.parametrize("point, nth, signame", FIT_FAULTS, ids=[f"{p}-{s}" for p, _, s in FIT_FAULTS])
def test_interrupted_fit_finishes_with_the_uninterrupted_rows(tmp_path, reference, point, nth, signame):
    interrupted = run_cli(tmp_path, [*FIT, "--run_name", "r"], fault=(point, signame, nth))
    run_dir = tmp_path / "runs" / "test_tiny" / "r"
    check_record_readable(run_dir)
    record = results(run_dir)
    if interrupted.returncode == 0:  # the signal came after the last thing that could be lost
        assert record is not None and record["status"] == "finished"
    else:
        assert record is None or record["status"] != "finished" or record["epochs"] == EPOCHS
    done = finish(tmp_path, run_dir)
    final = results(done)
    assert final["status"] == "finished" and final["epochs"] == EPOCHS
    assert rows(done) == reference


@pytest.mark.parametrize("point, nth, signame", RESUME_FAULTS, ids=[f"{p}-{s}" for p, _, s in RESUME_FAULTS])
def test_interrupted_resume_keeps_the_finished_record(tmp_path, reference, point, nth, signame):
    first = run_cli(tmp_path, ["fit", *FIT[1:-1], "--trainer.max_epochs=2", "--run_name", "r"])
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "runs" / "test_tiny" / "r"
    before_rows, before_record = rows(run_dir), results(run_dir)
    before_config = (run_dir / "config.yaml").read_text()
    assert before_record["status"] == "finished"
    run_cli(tmp_path, [*FIT, "--ckpt_path", str(checkpoint(run_dir))], fault=(point, signame, nth))
    # nothing of the finished 2-epoch run is lost: its rows are all there (the fit's end values, f(0), may have left
    # its last row: they describe the end of a fit that is being extended), its record is finished or interrupted
    after_rows = rows(run_dir)
    assert [epoch_values(r) for r in after_rows[: len(before_rows)]] == [epoch_values(r) for r in before_rows]
    after = results(run_dir)
    assert after["status"] in ("finished", "interrupted"), after
    if after["status"] == "finished" and after.get("epochs") == 2:
        assert (run_dir / "config.yaml").read_text() == before_config
    done = finish(tmp_path, run_dir)
    assert done == run_dir  # the finished checkpoint is still there to resume from
    assert results(done)["epochs"] == EPOCHS
    assert rows(done) == reference


# ---- the sweep runner ----------------------------------------------------------------------------------------

SWEEP_YAML = """
name: faults
method: grid
parameters:
  model.width:
    values: [4, 8, 16]
  trainer.max_epochs:
    value: 3
command: [ "${env}", "lipschitz-dd", "fit", "--config", "test_tiny", "${args}" ]
"""


def _finished(out: Path) -> dict[str, float]:
    """run folder -> mtime of its finished results.json."""
    done = {}
    for path in (out / "runs").glob("*/*/results.json"):
        if json.loads(path.read_text()).get("status") == "finished":
            done[str(path.parent)] = path.stat().st_mtime_ns
    return done


def _wait(condition, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the sweep"
        time.sleep(0.05)


#: when the runner is interrupted: as soon as the first run process has its folder (start-up), and while the
#: second run trains (one finished run exists)
SWEEP_POINTS = ["first_start", "second_running"]


@pytest.mark.parametrize("signame", SIGNALS)
@pytest.mark.parametrize("point", SWEEP_POINTS)
def test_interrupted_sweep_reports_each_point_once(tmp_path, point, signame):
    sweep = tmp_path / "faults.yaml"
    sweep.write_text(SWEEP_YAML)
    out = tmp_path / "sweeps_out" / "faults"
    command = [
        sys.executable,
        "-m",
        "lipschitz_dd.cli",
        "sweep",
        str(sweep),
        "--out",
        str(out.parent),
        "--workers",
        "1",
    ]
    runner = subprocess.Popen(
        command, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        if point == "first_start":
            _wait(lambda: any((out / "runs").glob("*/*/")) if (out / "runs").exists() else False)
        else:
            _wait(lambda: len(_finished(out)) >= 1 if (out / "runs").exists() else False)
            time.sleep(1.5)
        finished_before = _finished(out)
        if signame == "KILL":
            os.killpg(runner.pid, signal.SIGKILL)  # the runner and its run, as a crash or power loss would
        else:
            runner.send_signal(getattr(signal, f"SIG{signame}"))
        runner.wait(timeout=120)
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
    again = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    after = _finished(out)
    for folder, mtime in finished_before.items():  # no finished run was trained (or rewritten) again
        assert after.get(folder) == mtime, folder
    report = subprocess.run(
        [sys.executable, "-m", "lipschitz_dd.cli", "report", str(out)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    with open(out / "report" / "runs.csv", newline="") as f:
        widths = sorted(int(float(row["model.width"])) for row in csv.DictReader(f))
    assert widths == [4, 8, 16]
