"""Operating-system errors and bad checkpoints end `lipschitz-dd fit` with one line naming the path and a
non-zero exit (issue 20, 2.8), and `--trainer.max_epochs -1` is refused unless something bounds the run (2.7).
Tests run as root, which ignores file modes: the errors are simulated."""

from __future__ import annotations

import builtins
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from lipschitz_dd.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "test_tiny.yaml")


def _fit(*extra: str) -> int:
    return main(["fit", "-c", TINY, "--wandb=false", "--snapshot=false", *extra])


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("lipschitz-dd: error:")]
    assert len(errors) == 1, err[-3000:]
    return errors[0]


@pytest.mark.e2e
def test_read_only_save_dir_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    save_dir = tmp_path / "read_only"
    real_makedirs = os.makedirs

    def makedirs(name, *args, **kwargs):
        if str(name).startswith(str(save_dir)):
            raise PermissionError(13, "Permission denied", str(name))
        return real_makedirs(name, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", makedirs)
    assert _fit("--save_dir", str(save_dir), "--run_name", "r") == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "Permission denied" in line and str(save_dir) in line


@pytest.mark.e2e
def test_read_only_run_folder_is_one_line(tmp_path, monkeypatch, capsys):
    """The run folder exists but nothing can be created in it (its files are written through temporary files)."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "test_tiny" / "r"
    real_open = builtins.open

    def read_only_open(file, mode="r", *args, **kwargs):
        if str(file).startswith(str(run_dir)) and any(c in mode for c in "wax+"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only_open)
    assert _fit("--run_name", "r") == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "Permission denied" in line and str(Path("runs") / "test_tiny" / "r") in line
    assert ".tmp" not in line  # the file meant, not the temporary one


@pytest.mark.e2e
def test_disk_full_at_results_json_is_one_line_and_keeps_the_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith("results.json"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    assert _fit("--run_name", "r") == 1
    line = _one_error_line(capsys.readouterr().err)
    run_dir = tmp_path / "runs" / "test_tiny" / "r"
    assert "No space left on device" in line and str(Path("runs") / "test_tiny" / "r" / "results.json") in line
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 4  # header, epochs 0..3
    assert not (run_dir / "results.json").exists()
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name]


def _checkpoint_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "made.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": {"w": torch.ones(64, 64)}}, path)
    return path.read_bytes()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (lambda good: b"garbage\n", "UnpicklingError"),
        (lambda good: b"this is no checkpoint", "cannot be read"),  # IndexError inside torch's unpickler
        (lambda good: good[: len(good) // 2], "corrupt"),  # truncated: torch's zip reader fails (OSError here)
        (lambda good: b"", "EOFError"),
        (lambda good: None, "not a Lightning checkpoint"),  # a plain torch.save of a dict
    ],
    ids=["garbage", "text", "truncated", "empty", "not_lightning"],
)
def test_bad_checkpoint_is_one_line_naming_it(content, reason, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "bad.ckpt"
    data = content(_checkpoint_bytes(tmp_path))
    if data is None:
        torch.save({"weights": torch.ones(3)}, ckpt)
    else:
        ckpt.write_bytes(data)
    assert _fit("--run_name", "r", "--ckpt_path", str(ckpt)) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert str(ckpt) in line and reason in line and len(line) < 400
    assert not (tmp_path / "runs").exists()  # refused before any run folder is made


@pytest.mark.e2e
def test_bad_checkpoint_of_a_finished_run_keeps_its_record(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _fit("--run_name", "r", "--trainer.enable_checkpointing=true", "--trainer.max_epochs=1") == 0
    run_dir = tmp_path / "runs" / "test_tiny" / "r"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    (ckpt,) = run_dir.glob("checkpoints/*.ckpt")
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    capsys.readouterr()
    assert _fit("--ckpt_path", str(ckpt), "--trainer.max_epochs=2") == 1
    assert str(ckpt) in _one_error_line(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


class RanForever(Exception):
    """Not one of the errors `main` turns into a line: it reaches the test."""


@pytest.mark.e2e
def test_max_epochs_minus_one_is_refused_unless_bounded(tmp_path, monkeypatch, capsys):
    """-1 (no epoch limit) used to train until killed; 0 was already refused."""
    monkeypatch.chdir(tmp_path)

    def ran_forever(signum, frame):
        raise RanForever("trainer.max_epochs=-1 was accepted and trained on")

    previous = signal.signal(signal.SIGALRM, ran_forever)
    signal.alarm(60)
    try:
        code = _fit("--run_name", "a", "--trainer.max_epochs=-1")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert code == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "max_epochs=-1" in line and "max_steps" in line and "stopping" in line
    assert not (tmp_path / "runs").exists()
    assert _fit("--run_name", "b", "--trainer.max_epochs=-1", "--trainer.max_steps=8") == 0  # 256 / 64 = 4 a epoch
    record = json.loads((tmp_path / "runs" / "test_tiny" / "b" / "results.json").read_text())
    assert record["status"] == "finished" and record["epochs"] == 2 and record["global_step"] == 8
    # a stopping rule that is met at once also bounds it
    args = ["--run_name", "c", "--trainer.max_epochs=-1", "--stopping.enabled=true", "--stopping.target=100"]
    assert _fit(*args) == 0
    record = json.loads((tmp_path / "runs" / "test_tiny" / "c" / "results.json").read_text())
    assert record["status"] == "stopped_converged"
