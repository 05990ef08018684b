"""The shipped agent scripts (docs/agents.md): valid bash, shipped as package data, named in the docs."""

import configparser
import subprocess
from pathlib import Path

import pytest

from lipschitz_dd.shipped import shipped_dir

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((shipped_dir("sweeps") / "agents").glob("*.sh"))


def test_the_three_recipes_ship():
    assert {p.name for p in SCRIPTS} == {"agents_per_gpu.sh", "slurm_agents.sh", "agent_count.sh"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_valid_bash_and_documented(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "wandb agent" in text
    assert script.name in (ROOT / "docs" / "agents.md").read_text()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_without_a_sweep_id_prints_its_usage(script, tmp_path):
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode != 0 and "usage:" in done.stderr


def test_package_data_ships_the_scripts():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    patterns = [p.strip() for p in setup["options.package_data"]["lipschitz_dd.sweeps"].split(",")]
    assert "agents/*.sh" in patterns
