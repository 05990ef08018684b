"""What `pip install .` puts into site-packages: lipschitz_dd and nothing else at the top level."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy: setuptools leaves build/ in the source tree, and stale files there would end up in later
    # wheels (and make this test pass or fail on what an earlier build left).
    source = tmp_path_factory.mktemp("source") / "lipschitz_dd"
    skip = {".venv", ".git", "build", "runs", "data", "sweeps_out", "lipschitz_dd.egg-info"}
    shutil.copytree(ROOT, source, ignore=lambda folder, names: skip & set(names) if Path(folder) == ROOT else ())
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("lipschitz_dd-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.mark.slow
def test_wheel_installs_only_the_lipschitz_dd_package(wheel_names):
    top_level = {name.split("/")[0] for name in wheel_names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"lipschitz_dd"}
    assert not any(name.startswith("callbacks/") for name in wheel_names)


@pytest.mark.slow
def test_wheel_ships_callbacks_configs_and_sweeps_inside_the_package(wheel_names):
    assert "lipschitz_dd/callbacks/lipschitz.py" in wheel_names
    assert "lipschitz_dd/py.typed" in wheel_names
    for folder in ("configs", "sweeps"):
        shipped = {name.split("/")[-1] for name in wheel_names if name.startswith(f"lipschitz_dd/{folder}/")}
        in_repo = {p.name for p in (ROOT / folder).glob("*.yaml")}
        assert in_repo and in_repo <= shipped


@pytest.mark.slow
def test_fit_from_a_project_with_its_own_callbacks_package(tmp_path):
    """A user's project has its own `callbacks/` package: both it and lipschitz_dd's callbacks import, and a
    fit started from that folder runs."""
    (tmp_path / "callbacks").mkdir()
    (tmp_path / "callbacks" / "__init__.py").write_text("MINE = 'the user callbacks'\n")
    script = (
        "import callbacks\n"
        "from lipschitz_dd.callbacks import LipschitzCallback\n"
        "from lipschitz_dd.train_cli import run_training_cli\n"
        "assert callbacks.MINE == 'the user callbacks'\n"
        f"run_training_cli(['fit', '--config', {str(ROOT / 'configs' / 'test_tiny.yaml')!r},"
        " '--trainer.max_epochs', '1', '--run_name', 'r', '--save_dir', 'runs'])\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path), WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "runs" / "test_tiny" / "r" / "results.json").is_file()
