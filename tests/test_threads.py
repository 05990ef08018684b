"""A run's torch thread count is its own setting (`--threads`, default 1, config key `threads`), applied before the
model is built, at most the machine's cores, and recorded in results.json with the CPU model (issue 20, section 5):
CPU results depend on the thread count, so the same config gives the same numbers alone or in a sweep."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import pytest
import torch
import yaml

from lipschitz_dd.callbacks.records import cpu_model, machine_info
from lipschitz_dd.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "test_tiny.yaml")


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _fit(run_name: str, *extra: str) -> Path:
    assert main(["fit", "-c", TINY, "--wandb=false", "--snapshot=false", "--run_name", run_name, *extra]) == 0
    return Path("runs") / "test_tiny" / run_name


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _rows(run_dir: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(open(run_dir / "metrics.csv", newline="")))
    return [{k: v for k, v in row.items() if k != "lipschitz/seconds"} for row in rows]


@pytest.mark.e2e
def test_default_is_one_thread_whatever_the_process_had(tmp_path, monkeypatch):
    """Before, a run alone took every core (torch's default) and a sweep run cores // workers."""
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(os.cpu_count() or 1)  # a fresh process's default
    default = _fit("default")
    one = _fit("one", "--threads", "1")
    for run_dir in (default, one):
        record = _record(run_dir)
        assert record["machine"]["threads"] == 1 and record["config"]["threads"] == 1
        assert record["machine"]["cpu"] == cpu_model() and record["machine"]["cpu"]
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["threads"] == 1
    assert _rows(default) == _rows(one) and len(_rows(one)) == 4
    assert torch.get_num_threads() == 1


@pytest.mark.e2e
def test_threads_are_applied_in_the_run_and_clamped_to_the_cores(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    cores = os.cpu_count() or 1
    seen = []
    from lipschitz_dd.models import FCN

    real_init = FCN.__init__

    def init(self, *args, **kwargs):  # the thread count when the model is built
        seen.append(torch.get_num_threads())
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(FCN, "__init__", init)
    torch.set_num_threads(1)
    two = min(2, cores)
    record = _record(_fit("two", "--threads", str(two)))
    assert seen == [two] and record["machine"]["threads"] == two == record["config"]["threads"]
    with caplog.at_level(logging.WARNING):
        record = _record(_fit("many", "--threads", str(cores + 5)))
    assert seen[-1] == cores and record["machine"]["threads"] == cores and record["config"]["threads"] == cores
    assert f"threads={cores + 5} is more than this machine's {cores} cores" in caplog.text


def test_fewer_than_one_thread_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "-c", TINY, "--wandb=false", "--threads", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lipschitz-dd: error:") and "threads must be >= 1, got 0" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.e2e
def test_the_environment_no_longer_chooses_the_thread_count(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_NUM_THREADS", str(os.cpu_count() or 1))
    assert _record(_fit("env"))["machine"]["threads"] == 1


def test_machine_info_reads_the_cpu_model(monkeypatch, tmp_path):
    info = machine_info(3)
    assert info["threads"] == 3 and info["cpus"] == os.cpu_count() and info["cpu"] == cpu_model()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        if names:
            assert cpu_model() == " ".join(names[0].split())
    import builtins
    import platform

    real_open = builtins.open

    def no_proc(file, *args, **kwargs):
        if str(file) == "/proc/cpuinfo":
            raise FileNotFoundError(2, "No such file or directory", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert cpu_model() == "x86_64"
