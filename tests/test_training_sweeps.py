"""The training-side sweep files: every run's argv names shipped configs and valid options of the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lipschitz_dd.shipped import resolve
from lipschitz_dd.sweep import load_sweep_config
from lipschitz_dd.sweep.command import command_args
from lipschitz_dd.sweep.runner import propose

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def run_argvs(name: str) -> list[list[str]]:
    config = load_sweep_config(SWEEPS / f"{name}.yaml")
    runs = propose(config, [], n=10**6)
    argvs = []
    for run in runs:
        params = run.config if hasattr(run, "config") else run
        argvs.append(command_args(params)["args"])
    return argvs


def model_args(config_name: str) -> dict:
    return yaml.safe_load(resolve(config_name, "configs").read_text())["model"]["init_args"]


def test_constrained_sweep_pairs_each_bound_with_its_temperature_and_varies_width():
    argvs = run_argvs("fcn_mnist1d_constrained_dd")
    assert len(argvs) == 36
    settings = set()
    for args in argvs:
        assert args[0].startswith("--config=")  # sorted first: the config cannot override the width
        name = args[0].split("=", 1)[1]
        init = model_args(name)
        settings.add((init.get("lipschitz_bound"), init.get("logit_temperature", 1.0)))
    assert settings == {(None, 1.0), (10.0, 10.0), (1.0, 40.0)}
    base = model_args("fcn_mnist1d_dd")
    # otherwise the very same setting, except C = 1's smaller learning rate (lr 0.01 collapsed every width)
    for name, lr in (("fcn_mnist1d_dd_c10", base["lr"]), ("fcn_mnist1d_dd_c1", 0.001)):
        init = {k: v for k, v in model_args(name).items() if k not in ("lipschitz_bound", "logit_temperature")}
        assert init == {**base, "lr": lr}


@pytest.mark.parametrize(
    ("name", "option", "values", "config"),
    [
        ("fcn_mnist1d_jacobian_penalty", "model.jacobian_penalty", [0.0, 0.001, 0.01, 0.03, 0.1], "fcn_mnist1d_dd"),
        ("resnet20_fashion_mnist_dropout", "model.dropout", [0.0, 0.1, 0.2, 0.3, 0.4], "resnet20_fashion_mnist"),
        (
            "resnet20_fashion_mnist_weight_decay",
            "model.weight_decay",
            [0.0, 1e-4, 5e-4, 1e-3, 2.5e-3],
            "resnet20_fashion_mnist",
        ),
        ("cnn_fashion_mnist_dd", "model.width", [1, 2, 3, 4, 5, 6, 8, 10, 12, 16], "cnn_fashion_mnist_dd"),
    ],
)
def test_training_sweeps_vary_their_option_over_the_study_values(name, option, values, config):
    config_file = load_sweep_config(SWEEPS / f"{name}.yaml")
    assert config_file["command"][3:5] == ["--config", config]
    resolve(config, "configs")  # a shipped config
    seen = sorted({float(a.split("=", 1)[1]) for args in run_argvs(name) for a in args if a.startswith(f"--{option}=")})
    assert seen == [float(v) for v in values]


def test_imagenet_sweep_runs_both_networks_over_five_seeds():
    argvs = run_argvs("imagenet_seeds")
    assert len(argvs) == 10
    assert {args[0] for args in argvs} == {"--config=resnet50_imagenet", "--config=simplevit_imagenet"}
    assert {args[1] for args in argvs} == {f"--seed_everything={s}" for s in range(5)}
    classes = {
        yaml.safe_load(resolve(n, "configs").read_text())["model"]["class_path"]
        for n in ("resnet50_imagenet", "simplevit_imagenet")
    }
    assert classes == {"lipschitz_dd.models.ResNet50", "lipschitz_dd.models.SimpleViT"}
