"""What `pip install .` puts into site-packages: lipschitz_dd and nothing else at the top level, every package of
the source tree (lipschitz_dd/ and callbacks/, found, not listed), the configs and sweeps; and `lipschitz-dd
reproduce` working from the installed wheel alone, in an empty directory.

CI installs the project editable, which imports every subpackage straight from the source tree: a package left
out of the wheel fails only after a real install. The wheel is built here (about a second) from a copy of the
build inputs, so the fast test checks what actually ships."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The folders the wheel is built from (setup.cfg's package folders); every file at the root goes along too.
SOURCE_FOLDERS = ("lipschitz_dd", "callbacks", "configs", "sweeps")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel .` builds from the working tree (its current files, committed or not)."""
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy: setuptools leaves build/ in the source tree, and stale files there would end up in later
    # wheels (and make this test pass or fail on what an earlier build left).
    source = tmp_path_factory.mktemp("source") / "lipschitz_dd"
    source.mkdir()
    for path in ROOT.iterdir():
        if path.is_file():
            shutil.copy2(path, source / path.name)
    for folder in SOURCE_FOLDERS:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (built,) = out.glob("lipschitz_dd-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def source_packages() -> dict[str, Path]:
    """Every folder with an __init__.py under lipschitz_dd/ and callbacks/, by the path it must have in the wheel
    (callbacks/ installs as lipschitz_dd/callbacks/)."""
    packages = {}
    for folder, installed in (("lipschitz_dd", Path("lipschitz_dd")), ("callbacks", Path("lipschitz_dd/callbacks"))):
        for init in (ROOT / folder).rglob("__init__.py"):
            packages[(installed / init.parent.relative_to(ROOT / folder)).as_posix()] = init.parent
    return packages


@pytest.mark.e2e
def test_every_package_of_the_source_tree_is_in_the_wheel(wheel_names):
    """Fast on purpose: a subpackage missing from the wheel (lipschitz_dd.reproduce was) breaks only real
    installs, so every test run checks the built wheel."""
    packages = source_packages()
    assert {
        "lipschitz_dd",
        "lipschitz_dd/reproduce",
        "lipschitz_dd/reproduce/findings",
        "lipschitz_dd/callbacks",
    } <= set(packages)
    shipped = set(wheel_names)
    missing = [
        f"{installed}/{module.name}"
        for installed, folder in packages.items()
        for module in folder.glob("*.py")
        if f"{installed}/{module.name}" not in shipped
    ]
    assert missing == [], "modules of the source tree missing from the wheel"


@pytest.mark.e2e
def test_wheel_ships_the_config_and_sweep_files_and_sweeps_stays_a_data_folder(wheel_names):
    shipped = set(wheel_names)
    for folder, pattern in (("configs", "*.yaml"), ("sweeps", "*.yaml"), ("sweeps", "agents/*.sh")):
        in_repo = {
            f"lipschitz_dd/{folder}/{p.relative_to(ROOT / folder).as_posix()}" for p in (ROOT / folder).glob(pattern)
        }
        assert in_repo and in_repo <= shipped, f"{folder}/{pattern}"
    for name in ("lipschitz_dd/default.yaml", "lipschitz_dd/py.typed", "lipschitz_dd/callbacks/py.typed"):
        assert name in shipped
    # `import sweeps` is the W&B sweeps engine (a dependency): the repository's sweeps/ must never be a package
    assert not (ROOT / "sweeps" / "__init__.py").exists() and not (ROOT / "configs" / "__init__.py").exists()


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


@pytest.mark.slow
def test_reproduce_runs_from_the_installed_wheel_in_an_empty_directory(wheel, tmp_path):
    """A fresh virtual environment with the wheel installed (its dependencies are this environment's, reached
    through a path entry that leaves this environment's editable install of lipschitz_dd switched off): the
    listing and one quick finding run from an empty directory, with the project coming only from the wheel."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # A plain path line (not site.addsitedir): the .pth files there, the editable finder among them, stay unread.
    (site / "host_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        WANDB_MODE="disabled",
        WANDB_SILENT="true",
        OMP_NUM_THREADS="1",
    )

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=600)

    where = run(str(python), "-c", "import lipschitz_dd, lipschitz_dd.reproduce.findings as f; print(f.__file__)")
    assert where.returncode == 0, where.stderr[-2000:]
    assert Path(where.stdout.strip()).is_relative_to(site), "lipschitz_dd must come from the installed wheel"

    listing = run(str(venv / "bin" / "lipschitz-dd"), "reproduce")
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert "jacobian_distributions" in listing.stdout and "double_descent" in listing.stdout

    out = tmp_path / "out"
    quick = run(str(venv / "bin" / "lipschitz-dd"), "reproduce", "jacobian_distributions", "--quick", "--out", str(out))
    assert quick.returncode == 0, (quick.stdout + quick.stderr)[-3000:]
    summary = out / "jacobian_distributions" / "quick" / "summary.md"
    assert summary.is_file() and "## Verdict" in summary.read_text()
