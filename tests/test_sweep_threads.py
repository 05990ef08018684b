"""A run's CPU thread count is its own setting, not a share of the cores divided among the sweep's workers (CPU
results depend on the thread count): the runner sets OMP/MKL_NUM_THREADS to the run's `threads` (default 1) and
limits the workers so that workers x threads never exceeds the cores."""

import io

import pytest
from test_sweep_runner import make_sweep

import lipschitz_dd.sweep.runner as runner_module
from lipschitz_dd.sweep import run_sweep
from lipschitz_dd.sweep.process import run_threads, sweep_threads, worker_limit
from lipschitz_dd.sweep.runner import SweepRunner

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCH_NUM_THREADS")


def threads_seen(result):
    """Per run: the thread variables its process saw, and the --threads argument it was given (None: none)."""
    seen = {}
    for run in result.runs:
        env = run.results["env"]
        seen[run.values["width"]] = ({env[name] for name in THREAD_VARIABLES}, run.results["config"].get("threads"))
    return seen


@pytest.mark.e2e
@pytest.mark.parametrize("workers", [1, 2])
def test_a_run_uses_one_thread_by_default_whatever_the_workers(tmp_path, monkeypatch, workers):
    """The old rule gave cores // workers threads: 4 with one worker, 2 with two on these 4 cores."""
    monkeypatch.setattr(runner_module, "available_cores", lambda: 4)
    sweep_file = make_sweep(tmp_path, {"width": {"values": [2, 4]}}, name="plain")
    result = run_sweep(sweep_file, out=tmp_path / "out", workers=workers, progress=False)
    assert threads_seen(result) == {2: ({"1"}, None), 4: ({"1"}, None)}


def test_the_sweeps_threads_parameter_sets_each_runs_threads_and_limits_the_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_module, "available_cores", lambda: 4)
    sweep_file = make_sweep(tmp_path, {"width": {"values": [2, 4]}, "threads": {"value": 2}}, name="two_threads")
    stream = io.StringIO()
    runner = SweepRunner(sweep_file, out=tmp_path / "out", workers=3, progress=False, stream=stream)
    assert runner.workers == 2  # 2 x 2 threads = the 4 cores
    (warning,) = stream.getvalue().splitlines()
    assert warning.startswith("warning: --workers 3 reduced to 2: 3 x 2 thread(s) per run would exceed the 4 cores")
    result = runner.run()
    assert threads_seen(result) == {2: ({"2"}, "2"), 4: ({"2"}, "2")}  # the run gets --threads=2 and the variables


def test_workers_within_the_cores_are_kept_without_a_word(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_module, "available_cores", lambda: 4)
    sweep_file = make_sweep(tmp_path, {"width": {"values": [2]}, "threads": {"value": 2}}, name="fits")
    stream = io.StringIO()
    assert SweepRunner(sweep_file, out=tmp_path / "out", workers=2, stream=stream).workers == 2
    assert stream.getvalue() == ""


def test_more_threads_than_cores_runs_one_worker_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_module, "available_cores", lambda: 2)
    sweep_file = make_sweep(tmp_path, {"width": {"values": [2]}, "threads": {"values": [1, 4]}}, name="many")
    stream = io.StringIO()
    assert SweepRunner(sweep_file, out=tmp_path / "out", workers=2, stream=stream).workers == 1
    assert "use 4 threads each, more than the 2 cores" in stream.getvalue()
    assert "--workers 2 reduced to 1" in stream.getvalue()


def test_thread_counts_of_sweep_parameters():
    assert sweep_threads({}) == 1 and sweep_threads({"width": {"values": [1]}}) == 1
    assert sweep_threads({"threads": {"value": 3}}) == 3
    assert sweep_threads({"threads": {"values": [1, 4, 2]}}) == 4
    assert sweep_threads({"threads": {"distribution": "int_uniform", "min": 1, "max": 6}}) == 6
    for bad in ({"value": 0}, {"value": "two"}, {"value": 1.5}, {"values": [True]}):
        with pytest.raises(ValueError, match="must be a positive integer"):
            sweep_threads({"threads": bad})
    assert run_threads({"width": 8}) == 1 and run_threads({"threads": 2}) == 2 and run_threads({"threads": "3"}) == 3
    assert worker_limit(3, 2, 4) == 2 and worker_limit(2, 1, 2) == 2 and worker_limit(4, 3, 2) == 1
    with pytest.raises(ValueError, match="workers"):
        worker_limit(0, 1, 2)


def test_a_bad_thread_count_is_one_line_before_anything_runs(tmp_path, capsys):
    from lipschitz_dd.sweep.cli import main

    sweep_file = make_sweep(tmp_path, {"width": {"values": [2]}, "threads": {"value": 0}}, name="bad")
    assert main([str(sweep_file), "--out", str(tmp_path / "out"), "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the thread count") and "\n" not in err
    assert not (tmp_path / "out" / "bad" / "sweep.db").exists()
