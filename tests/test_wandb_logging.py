"""W&B logging: who counts as logged in, run names in sweeps, the summary, the run config, resuming a run."""

import csv
import json
import os
from pathlib import Path

import pytest

from lipschitz_dd import loggers
from lipschitz_dd.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A HOME without W&B credentials and no W&B variables."""
    for name in list(os.environ):
        if name.startswith("WANDB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / ".config" / "wandb"))
    return tmp_path


def test_self_hosted_credentials_count_as_configured(home, monkeypatch):
    # wandb_is_configured reads the environment and the files afresh at every call (it imports nothing of wandb,
    # whose settings a process caches), so the cases run in this process; in `home`, away from any ./wandb/settings
    monkeypatch.chdir(home)

    def configured(**env) -> bool:
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            return loggers.wandb_is_configured()

    assert not configured()
    (home / ".netrc").write_text(f"machine wandb.example.org\n  login user\n  password {'k' * 40}\n")
    (home / ".netrc").chmod(0o600)
    assert not configured()  # a key for another host than wandb's default
    assert configured(WANDB_BASE_URL="https://wandb.example.org")
    settings = home / ".config" / "wandb" / "settings"
    settings.parent.mkdir(parents=True)
    settings.write_text("[default]\nbase_url = https://wandb.example.org\n")
    assert configured()  # the host from wandb's settings file
    assert not configured(WANDB_MODE="offline")  # WANDB_MODE wins
    settings.unlink()
    assert not configured()
    assert configured(WANDB_MODE="online")
    assert configured(WANDB_API_KEY="k" * 40)


def test_readable_run_names_from_swept_parameters(monkeypatch):
    monkeypatch.delenv("WANDB_SWEEP_PARAM_PATH", raising=False)
    argv = ["fit", "--config", "x", "--model.width=64", "--data.label_noise=0.15", "--seed_everything=0"]
    argv += ["--trainer.max_epochs=300", "--model.init_args.bias=False", "--wandb=true", "--snapshot=false"]
    assert loggers.readable_run_name(loggers.sweep_params(argv)) == "w64-noise0.15-s0-bias=False"
    assert loggers.readable_run_name({}) == ""


def test_run_summary_has_maxima_final_values_epochs_status():
    record = {
        "status": "finished",
        "epochs": 7,
        "max": {"lipschitz/lower": 3.0, "lipschitz/upper": 9.0, "test/loss": 2.5, "train/loss": 2.4},
        "final": {"lipschitz/lower": 2.0, "test/loss": 1.0},
    }
    assert loggers.run_summary(record) == {
        "epochs": 7,
        "status": "finished",
        "max/lipschitz/lower": 3.0,
        "max/lipschitz/upper": 9.0,
        "max/test/loss": 2.5,
        "final/lipschitz/lower": 2.0,
        "final/test/loss": 1.0,
    }


@pytest.fixture
def finish_wandb():
    import wandb

    yield wandb
    wandb.finish()


@pytest.mark.slow
def test_offline_sweep_run_name_group_summary_and_config(home, tmp_path, monkeypatch, finish_wandb):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("LIPSCHITZ_DD_SWEEP_ID", "sweep123")
    monkeypatch.setenv("WANDB_RUN_GROUP", "tiny_sweep")
    args = ["fit", "-c", "test_tiny", "--run_name", "r1", "--model.width=8", "--data.label_noise=0.1"]
    assert main([*args, "--trainer.max_epochs=2", "--seed_everything=3"]) == 0
    run = finish_wandb.run  # Lightning leaves the run open until the process ends
    assert run.name == "w8-noise0.1-s3" and run.group == "tiny_sweep"
    config = dict(run.config)
    assert config["model.width"] == 8 and config["sweep_id"] == "sweep123"
    assert "width" not in config and "label_noise" not in config and "lr" not in config  # no unprefixed copies
    summary = dict(run.summary)
    assert summary["epochs"] == 2 and summary["status"] in ("finished", "stopped_converged")
    rows = list(csv.DictReader(open(tmp_path / "runs" / "test_tiny" / "r1" / "metrics.csv")))
    assert summary["max/lipschitz/lower"] == pytest.approx(max(float(r["lipschitz/lower"]) for r in rows))
    assert summary["final/test/loss"] == pytest.approx(float(rows[-1]["test/loss"]))


@pytest.mark.slow
def test_resume_continues_the_run_folder_and_the_wandb_run(home, tmp_path, monkeypatch, finish_wandb):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    common = ["-c", "test_tiny", "--trainer.enable_checkpointing=true"]
    assert main(["fit", *common, "--run_name", "r1", "--trainer.max_epochs=2"]) == 0
    run_dir = tmp_path / "runs" / "test_tiny" / "r1"
    first_rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    (ckpt,) = run_dir.glob("checkpoints/*.ckpt")
    first_id = loggers.stored_wandb_id(str(run_dir))
    assert first_id == finish_wandb.run.id
    finish_wandb.finish()
    assert main(["fit", *common, "--trainer.max_epochs=4", "--ckpt_path", str(ckpt)]) == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "test_tiny").iterdir()) == ["r1"]  # the same folder
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["lipschitz/lower"] == first_rows[0]["lipschitz/lower"]  # the untrained network's row, kept
    assert rows[2]["test/loss"] == first_rows[2]["test/loss"]
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 4
    # offline-run-<time>-<id>, and wandb appends "-<n>" when that folder exists already (a resume in the same second)
    ids = {p.name.split("-")[3] for p in run_dir.glob("wandb/offline-run-*")}
    assert ids == {first_id}  # the same W&B run, resumed
