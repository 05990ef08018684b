"""The console script's start and end (issue 24): W&B's run-start module imported before torch when W&B will
probably start, the process ended without the interpreter's teardown after its atexit handlers, and a plain fit
that imports no heavy package beyond what Lightning itself loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lipschitz_dd.cli import WANDB_START_MODULE, wandb_likely

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "test_tiny.yaml")


def _python(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=300,
    )


@pytest.mark.parametrize(
    ("argv", "mode", "expected"),
    [
        ([], None, True),
        (["-c", "x.yaml", "--model.width", "8"], "offline", True),
        (["--wandb=false"], None, False),
        (["--wandb", "False"], None, False),
        (["--wandb", "0"], None, False),
        (["--wandb=true"], None, True),
        (["--", "--wandb=false"], None, True),  # after `--`: not an option of ours
        ([], "disabled", False),
        ([], "DISABLED", False),
    ],
)
def test_wandb_likely(monkeypatch, argv, mode, expected):
    if mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", mode)
    assert wandb_likely(argv) is expected


@pytest.mark.e2e
def test_preload_wandb_imports_the_run_start_module_without_torch():
    result = _python(
        """
        import json, sys
        from lipschitz_dd.cli import WANDB_START_MODULE, preload_wandb
        print(json.dumps([preload_wandb(), WANDB_START_MODULE in sys.modules, "torch" in sys.modules]))
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == [True, True, False]
    assert WANDB_START_MODULE.startswith("wandb.")


@pytest.mark.e2e
def test_exit_without_teardown_runs_atexit_handlers_flushes_and_keeps_the_code(tmp_path):
    marker = tmp_path / "atexit.txt"
    result = _python(
        """
        import atexit, sys
        from lipschitz_dd.cli import exit_without_teardown
        atexit.register(lambda: open(sys.argv[1], "w").write("ran"))
        sys.stdout.write("unflushed out")  # no newline: still in the buffer of a pipe
        sys.stderr.write("err line")
        exit_without_teardown(3)
        print("not reached")
        """,
        str(marker),
    )
    assert result.returncode == 3
    assert result.stdout == "unflushed out"
    assert "err line" in result.stderr
    assert marker.read_text() == "ran"


@pytest.mark.e2e
def test_exit_without_teardown_returns_while_a_non_daemon_thread_runs():
    result = _python(
        """
        import threading
        from lipschitz_dd.cli import exit_without_teardown
        release = threading.Event()
        worker = threading.Thread(target=release.wait)
        worker.start()
        exit_without_teardown(5)
        print("returned")
        release.set()
        worker.join()
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "returned"


@pytest.mark.slow
def test_console_fit_ends_fast_and_imports_nothing_heavy_of_its_own(tmp_path):
    """`python -m lipschitz_dd.cli fit` (main without argv, as the console script): exit code 0 through
    exit_without_teardown, the run folder complete, the atexit handlers run; and lipschitz_dd's modules, the
    model, data, callbacks, loggers and trainer add none of the heavy packages that Lightning itself does not
    import already (Lightning's torchmetrics imports scipy, matplotlib and torchvision: those are upstream)."""
    report = tmp_path / "modules.json"
    result = _python(
        """
        import atexit, json, sys
        heavy = ("matplotlib", "seaborn", "scipy", "torchvision", "pandas", "sklearn", "cvxpy", "mnist1d", "PIL")
        def loaded():
            return sorted(h for h in heavy if h in sys.modules)
        import lightning.pytorch
        upstream = loaded()
        out = sys.argv[1]
        atexit.register(lambda: open(out, "w").write(json.dumps({"upstream": upstream, "end": loaded()})))
        sys.argv = ["lipschitz-dd", *sys.argv[2:]]
        from lipschitz_dd.cli import main
        main()
        """,
        str(report),
        "fit",
        "-c",
        TINY,
        "--trainer.max_epochs=1",
        "--wandb=false",
        f"--save_dir={tmp_path}",
        "--run_name=run",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "test_tiny" / "run" / "results.json").read_text())
    assert record["status"] == "finished"
    modules = json.loads(report.read_text())
    assert modules["end"] == modules["upstream"]
    assert not {"seaborn", "pandas", "sklearn", "cvxpy", "mnist1d"} & set(modules["end"])
