"""Records that survive accidents (issue 20, section 2): a resume never loses or degrades a finished run's record,
metrics.csv is never removed (every rewrite is a temporary file and an atomic replace), and a resumed run's
`seconds` is the sum over its attempts."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lipschitz_dd import loggers
from lipschitz_dd.callbacks import ResultsWriter
from lipschitz_dd.cli import main
from lipschitz_dd.loggers import EpochCSVLogger
from lipschitz_dd.run_folder import RunResults

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "test_tiny.yaml")
HEADER = "lipschitz/lower,step,train/loss\n"
OLD_ROWS = "".join(f"{1.5 + s},{s},{2.0 - s / 10}\n" for s in range(4))


def _run_folder(tmp_path: Path) -> Path:
    run_dir = tmp_path / "exp" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.csv").write_text(HEADER + OLD_ROWS)
    return run_dir


def _steps(path: Path) -> list[int]:
    return [int(float(row["step"])) for row in csv.DictReader(open(path, newline=""))]


def test_opening_a_resumed_logger_keeps_metrics_csv(tmp_path):
    """Lightning's CSV writer deleted metrics.csv when it opened; the earlier rows came back only at the first
    save, so a crash (kill -9) in between lost the whole history."""
    run_dir = _run_folder(tmp_path)
    logger = EpochCSVLogger(save_dir=str(tmp_path), name="exp", version="r", resume=True)
    _ = logger.experiment
    assert (run_dir / "metrics.csv").read_text() == HEADER + OLD_ROWS
    logger.keep_rows_through(2)  # resumed at epoch 2: rows 3.. are measured again
    logger.log_metrics({"train/loss": 0.5, "test/acc": 0.9}, step=3)
    logger.save()
    logger.flush()
    rows = list(csv.DictReader(open(run_dir / "metrics.csv", newline="")))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert [r["lipschitz/lower"] for r in rows[:3]] == ["1.5", "2.5", "3.5"]  # the earlier rows, as written
    assert rows[3]["test/acc"] == "0.9" and rows[3]["lipschitz/lower"] == ""
    logger.log_metrics({"train/loss": 0.4, "test/acc": 0.95}, step=4)
    logger.flush()
    assert _steps(run_dir / "metrics.csv") == [0, 1, 2, 3, 4]


def test_a_fresh_logger_does_not_delete_an_existing_metrics_csv_before_replacing_it(tmp_path):
    run_dir = _run_folder(tmp_path)
    logger = EpochCSVLogger(save_dir=str(tmp_path), name="exp", version="r")
    _ = logger.experiment
    assert (run_dir / "metrics.csv").read_text() == HEADER + OLD_ROWS
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.flush()
    assert (run_dir / "metrics.csv").read_text() == "step,train/loss\n0,1.0\n"


def test_a_metrics_rewrite_that_fails_leaves_the_old_file(tmp_path, monkeypatch):
    """A new column rewrites the whole file: through a temporary file and os.replace, so a failure (disk full,
    a kill) leaves the earlier file complete and no temporary file behind."""
    run_dir = _run_folder(tmp_path)
    logger = EpochCSVLogger(save_dir=str(tmp_path), name="exp", version="r", resume=True)
    logger.keep_rows_through(3)
    logger.log_metrics({"train/loss": 0.3, "new/column": 1.0}, step=4)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        logger.flush()
    assert (run_dir / "metrics.csv").read_text() == HEADER + OLD_ROWS
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.csv"]
    monkeypatch.undo()
    logger.flush()
    assert _steps(run_dir / "metrics.csv") == [0, 1, 2, 3, 4]


def test_hparams_yaml_is_written_atomically(tmp_path, monkeypatch):
    logger = EpochCSVLogger(save_dir=str(tmp_path), name="exp", version="r")
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append(os.path.basename(b)), real_replace(a, b)))
    logger.log_hyperparams({"width": 8})
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.flush()
    assert "hparams.yaml" in replaced and "metrics.csv" in replaced
    assert "width: 8" in (tmp_path / "exp" / "r" / "hparams.yaml").read_text()


_KILL_AT_FIT_START = """
import os, signal, sys
from lipschitz_dd.callbacks import ResultsWriter
ResultsWriter.on_fit_start = lambda self, trainer, module: os.kill(os.getpid(), signal.SIGKILL)
from lipschitz_dd.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_early_in_a_resume_keeps_the_whole_record(tmp_path, monkeypatch):
    """kill -9 of a resumed fit before its first save: metrics.csv, results.json and config.yaml as they were."""
    monkeypatch.chdir(tmp_path)
    common = ["-c", TINY, "--trainer.enable_checkpointing=true", "--wandb=false", "--snapshot=false"]
    assert main(["fit", *common, "--run_name", "r"]) == 0
    run_dir = tmp_path / "runs" / "test_tiny" / "r"
    before = {name: (run_dir / name).read_bytes() for name in ("metrics.csv", "results.json", "config.yaml")}
    (ckpt,) = run_dir.glob("checkpoints/*.ckpt")
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_AT_FIT_START, "fit", *common, "--trainer.max_epochs=5", "--ckpt_path", str(ckpt)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert {name: (run_dir / name).read_bytes() for name in before} == before


def test_reading_rows_ignores_nothing_it_should_keep(tmp_path):
    """The raw reader keeps every non-empty cell as written (no float round trip of the earlier rows)."""
    path = tmp_path / "metrics.csv"
    path.write_text("a,step\n1e-05,0\n,1\n")
    assert loggers._read_raw_rows(str(path)) == [{"a": "1e-05", "step": "0"}, {"step": "1"}]
    assert loggers._read_raw_rows(str(tmp_path / "none.csv")) == []


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _fit(*extra: str) -> int:
    return main(["fit", "-c", TINY, "--trainer.enable_checkpointing=true", "--wandb=false", *extra])


def _files(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in ("metrics.csv", "results.json", "config.yaml")}


@pytest.mark.slow
def test_a_resume_that_fails_or_trains_nothing_keeps_the_finished_record(tmp_path, monkeypatch, capsys):
    """Issue 20, 2.1: a resume whose checkpoint is gone wrote `failed`, epochs 0 over the finished results.json
    and its own config.yaml over the run's; a resume that trained nothing replaced config.yaml and `seconds`."""
    monkeypatch.chdir(tmp_path)
    assert _fit("--run_name", "r", "--snapshot=false") == 0
    run_dir = tmp_path / "runs" / "test_tiny" / "r"
    before = _files(run_dir)
    assert _record(run_dir)["status"] == "finished" and _record(run_dir)["epochs"] == 3
    (ckpt,) = run_dir.glob("checkpoints/*.ckpt")
    kept = ckpt.read_bytes()
    ckpt.unlink()
    capsys.readouterr()
    assert _fit("--ckpt_path", str(ckpt), "--trainer.max_epochs=5", "--snapshot=false") == 1
    err = capsys.readouterr().err
    assert "Checkpoint file not found" in err and "earlier finished record is kept" in err
    assert _files(run_dir) == before
    ckpt.write_bytes(kept)
    # max_epochs already reached: Lightning trains nothing (and says so only in a warning)
    assert _fit("--ckpt_path", str(ckpt), "--snapshot=false") == 0
    assert "trained no further" in capsys.readouterr().err
    assert _files(run_dir) == before


@pytest.mark.slow
def test_a_resumed_run_records_the_sum_of_its_attempts_seconds(tmp_path, monkeypatch):
    """Issue 20, 2.9: `seconds` of a resumed run covered only the resumed part."""
    from lipschitz_dd.run_folder import update_results

    monkeypatch.chdir(tmp_path)
    assert _fit("--run_name", "r", "--trainer.max_epochs=2", "--snapshot=false") == 0
    run_dir = tmp_path / "runs" / "test_tiny" / "r"
    update_results(run_dir, seconds=1000.0)  # stands for a long first attempt
    (ckpt,) = run_dir.glob("checkpoints/*.ckpt")
    started = time.monotonic()
    assert _fit("--ckpt_path", str(ckpt), "--trainer.max_epochs=3", "--snapshot=false") == 0
    wall = time.monotonic() - started
    record = _record(run_dir)
    assert record["status"] == "finished" and record["epochs"] == 3 and record["attempts"] == 2
    assert 1000.0 < record["seconds"] < 1000.0 + wall
    # the resumed run's config.yaml is the one it finished with
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["max_epochs"] == 3
    assert _steps(run_dir / "metrics.csv") == [0, 1, 2, 3]


def _results(status: str, epochs: int) -> RunResults:
    return RunResults(status=status, epochs=epochs, global_step=epochs * 10)


@pytest.mark.parametrize(
    ("earlier", "status", "epochs", "resumed", "replaced"),
    [
        (None, "failed", 0, True, True),
        (_results("interrupted", 2), "failed", 0, True, True),
        (_results("failed", 2), "finished", 0, False, True),
        (_results("finished", 3), "failed", 0, True, False),  # a resume that fails
        (_results("finished", 3), "failed", 7, True, False),
        (_results("finished", 3), "failed", 0, False, False),  # a failure never replaces an ended run
        (_results("stopped_converged", 3), "failed", 5, True, False),
        (_results("diverged", 3), "failed", 5, True, False),
        (_results("finished", 3), "finished", 3, True, False),  # trained nothing
        (_results("finished", 3), "interrupted", 3, True, False),
        (_results("finished", 3), "finished", 5, True, True),  # trained further
        (_results("finished", 3), "interrupted", 4, True, True),
        (_results("diverged", 3), "finished", 4, True, True),
        (_results("finished", 3), "finished", 2, False, True),  # not a resume: another run, as before
    ],
)
def test_which_state_replaces_an_earlier_record(earlier, status, epochs, resumed, replaced):
    assert ResultsWriter._may_replace(earlier, status, epochs, epochs * 10, resumed) is replaced


_KILL_AT_TENTH_BATCH = """
import os, signal, sys
from lipschitz_dd.models.base import LipschitzModule
real_step = LipschitzModule.training_step
calls = []
def training_step(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 10:  # 4 batches an epoch: the second batch of the third epoch
        os.kill(os.getpid(), signal.SIGKILL)
    return real_step(self, *args, **kwargs)
LipschitzModule.training_step = training_step
from lipschitz_dd.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _rows_without_seconds(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(open(path, newline=""))]


@pytest.mark.slow
def test_a_kill_mid_epoch_keeps_the_row_of_the_checkpointed_epoch(tmp_path, monkeypatch):
    """The row of epoch 2 stayed in memory during epoch 3 while epoch=2.ckpt was on disk: kill -9 in epoch 3 lost
    it, and the resume from epoch=2.ckpt went on at epoch 3, so the finished run had no row 2."""
    monkeypatch.chdir(tmp_path)
    common = ["-c", TINY, "--trainer.enable_checkpointing=true", "--wandb=false", "--trainer.max_epochs=4"]
    assert main(["fit", *common, "--run_name", "ref"]) == 0
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_AT_TENTH_BATCH, "fit", *common, "--run_name", "r"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    run_dir = tmp_path / "runs" / "test_tiny" / "r"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["epoch=2.ckpt"]
    assert _steps(run_dir / "metrics.csv") == [0, 1, 2]
    assert main(["fit", *common, "--ckpt_path", str(run_dir / "checkpoints" / "epoch=2.ckpt")]) == 0
    reference = _rows_without_seconds(tmp_path / "runs" / "test_tiny" / "ref" / "metrics.csv")
    assert _rows_without_seconds(run_dir / "metrics.csv") == reference


def test_values_logged_after_a_written_row_join_it(tmp_path):
    """The last epoch's row is written when training ends; what is logged at the end of fit (the model's f(0))
    joins that row (one row per epoch) and is listed in `fit_end_keys`."""
    logger = EpochCSVLogger(save_dir=str(tmp_path), name="exp", version="r")
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.log_metrics({"train/loss": 0.5}, step=1)
    logger.flush()
    logger.begin_fit_end()
    logger.log_metrics({"f0/0": 0.25}, step=1)
    logger.flush()
    rows = list(csv.DictReader(open(tmp_path / "exp" / "r" / "metrics.csv", newline="")))
    assert [(r["step"], r["train/loss"], r["f0/0"]) for r in rows] == [("0", "1.0", ""), ("1", "0.5", "0.25")]
    assert logger.fit_end_keys == {"f0/0"}


@pytest.mark.slow
def test_extending_a_finished_run_gives_the_rows_of_an_uninterrupted_run(tmp_path, monkeypatch):
    """The 2-epoch fit's end values (f0/*) stayed in row 2 of the run extended to 4 epochs."""
    monkeypatch.chdir(tmp_path)
    assert _fit("--run_name", "ref", "--trainer.max_epochs=4") == 0
    assert _fit("--run_name", "r", "--trainer.max_epochs=2") == 0
    run_dir = tmp_path / "runs" / "test_tiny" / "r"
    assert "f0/0" in _record(run_dir)["fit_end_metrics"]
    assert _fit("--ckpt_path", str(run_dir / "checkpoints" / "epoch=2.ckpt"), "--trainer.max_epochs=4") == 0
    reference = _rows_without_seconds(tmp_path / "runs" / "test_tiny" / "ref" / "metrics.csv")
    assert _rows_without_seconds(run_dir / "metrics.csv") == reference


def test_a_resume_past_the_earlier_end_drops_its_end_values_from_that_row(tmp_path):
    """Resumed at epoch 3 from a run whose earlier fit ended at epoch 2: f0 of that end leaves row 2."""
    run_dir = tmp_path / "exp" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("f0/0,step,train/loss\n,0,2.0\n,1,1.5\n0.3,2,1.2\n,3,1.1\n")
    logger = EpochCSVLogger(save_dir=str(tmp_path), name="exp", version="r", resume=True)
    logger.keep_rows_through(3, ["f0/0"], drop_at=2)
    logger.log_metrics({"train/loss": 1.0}, step=4)
    logger.flush()
    text = (run_dir / "metrics.csv").read_text()
    assert text == "f0/0,step,train/loss\n,0,2.0\n,1,1.5\n,2,1.2\n,3,1.1\n,4,1.0\n"
