"""Sweep files: validation with the sweeps package, the project's own sweep files, the CLI's error path."""

from pathlib import Path

import pytest

from lipschitz_dd.sweep import SweepFileError, load_sweep_config
from lipschitz_dd.sweep.cli import main
from lipschitz_dd.sweep.runner import propose

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_project_sweep_files_are_valid_and_run_lipschitz_dd_fit(path):
    config = load_sweep_config(path)
    assert config["metric"] == {"name": "test/loss", "goal": "minimize"}
    command = config["command"]
    assert command[:4] == ["${env}", "lipschitz-dd", "fit", "--config"] and command[-1] == "${args}"
    assert (ROOT / "configs" / f"{command[4]}.yaml").is_file()  # a shipped config's name: works from any directory
    assert len(propose(config, [], n=10**6)) >= 10


def test_default_dd_sweep_is_24_runs_with_threshold_in_the_middle():
    config = load_sweep_config(Path(SWEEPS[0]).parent / "fcn_mnist1d_dd.yaml")
    widths = config["parameters"]["model.width"]["values"]
    assert len(widths) == 12 and len(propose(config, [], n=100)) == 24
    params = [w * w + 52 * w + 10 for w in widths]  # FCN 40 -> w -> w -> 10 with biases
    below = sum(p < 4000 for p in params)
    assert 4 <= below <= 8


@pytest.mark.parametrize(
    "text, message",
    [
        ("method: grid\nparameters:\n  a: {values: [1]}\n  b: {min: 3, max: 1}\ncommand: [x]\n", "min"),
        ("method: gird\nparameters:\n  a: {values: [1]}\ncommand: [x]\n", "gird"),
        ("method: grid\ncommand: [x]\n", "parameters"),
        ("parameters:\n  a: {values: [1]}\ncommand: [x]\n", "method"),
        ("method: grid\nparameters:\n  a: {values: [1]}\n", "program"),
        ("method: grid\nparameters:\n  a: {values: [1]}\ncommand: [x, '${arg}']\n", "unknown macro"),
        ("method: bayes\nparameters:\n  a: {values: [1, 2]}\ncommand: [x]\n", "metric"),
        ("- just\n- a list\n", "mapping"),
        ("method: [grid\n", "YAML"),
    ],
)
def test_malformed_files_rejected_with_one_line(tmp_path, text, message):
    with pytest.raises(SweepFileError, match=message) as info:
        load_sweep_config(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_cli_rejects_bad_file_and_runs_nothing(tmp_path, capsys):
    path = write(tmp_path, "method: grid\nparameters:\n  a: {min: 3, max: 1}\nprogram: p.py\n")
    assert main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "min" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_missing_file(tmp_path):
    with pytest.raises(SweepFileError, match="not found"):
        load_sweep_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_grid_point_of_a_shipped_sweep_builds_its_model(path):
    """Each proposed run's model arguments (the command's config, a swept `config`, then the swept `model.*`
    keys) construct the model: a grid point the model rejects (e.g. momentum with Adam) fails here, not
    hours into a sweep."""
    import importlib

    import yaml

    from lipschitz_dd.shipped import resolve

    config = load_sweep_config(path)
    for run in propose(config, [], n=300):
        values = {key: entry["value"] for key, entry in run.items()}
        base = yaml.safe_load(resolve(values.get("config", config["command"][4]), "configs").read_text())
        model = base["model"]
        init_args = dict(model.get("init_args") or {})
        init_args.update({k[len("model.") :]: v for k, v in values.items() if k.startswith("model.")})
        module, _, name = model["class_path"].rpartition(".")
        getattr(importlib.import_module(module), name)(**init_args)
