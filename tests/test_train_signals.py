"""A fit stopped by SIGTERM or Ctrl-C (SIGINT) records `status: interrupted` and exits 143 / 130 with one line
saying where its record is (in-process: the signal is sent to this process once the run has started)."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from lipschitz_dd.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _send_when_started(run_dir: Path, signum: int) -> threading.Thread:
    def send():
        deadline = time.monotonic() + 120
        # metrics.csv appears once epoch 1 is logged: the training loop runs, Lightning's SIGTERM handler is set
        while not (run_dir / "metrics.csv").exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.mark.e2e
@pytest.mark.parametrize(("signum", "name", "code"), [(signal.SIGTERM, "SIGTERM", 143), (signal.SIGINT, "SIGINT", 130)])
def test_signal_records_interrupted_and_exits_non_zero(signum, name, code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "exp" / "r"
    # as in a fresh `lipschitz-dd fit` process (the sweep CLI tests leave their own SIGTERM handler installed)
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sender = _send_when_started(run_dir, signum)
    args = ["fit", "--config", str(ROOT / "configs" / "test_tiny.yaml"), "--trainer.max_epochs=100000"]
    args += ["--experiment", "exp", "--run_name", "r", "--wandb=false", "--snapshot=false"]
    try:
        with pytest.raises(SystemExit) as stopped:
            main(args)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores SIGINT after a Ctrl-C
        signal.signal(signal.SIGTERM, previous)
        sender.join()
    assert stopped.value.code == code
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "interrupted" and record["signal"] == name and name in record["error"]
    assert record["epochs"] < 100000
    err = capsys.readouterr().err
    assert f"interrupted by {name}" in err and str(Path("runs") / "exp" / "r" / "results.json") in err
