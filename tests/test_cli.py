"""The `lipschitz-dd` command line: every config runs (on synthetic data), run folders, bad input."""

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.error import URLError

import pytest
import yaml
from lightning.pytorch.loggers import Logger

from lipschitz_dd import train_cli
from lipschitz_dd.cli import DEFAULT_CONFIG, main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

# Synthetic stand-ins of the right shape for the datasets a config reads from disk (torchgeo's pattern).
SYNTHETIC_FOR = {
    "MNIST1DDataModule": ([40], 10),
    "CIFAR10DataModule": ([3, 32, 32], 10),
    "CIFAR100DataModule": ([3, 32, 32], 20),
    "MNISTDataModule": ([1, 28, 28], 10),
    "FashionMNISTDataModule": ([1, 28, 28], 10),
    "ImageFolderDataModule": ([3, 32, 32], 1000),  # ImageNet configs: small images keep the smoke test quick
    "Toy2DDataModule": None,  # generated in memory already
    "StudyToy2DDataModule": None,
    "SyntheticDataModule": None,
}


def _synthetic_args(config_path: Path) -> list[str]:
    data_class = yaml.safe_load(config_path.read_text())["data"]["class_path"].rsplit(".", 1)[-1]
    replacement = SYNTHETIC_FOR[data_class]
    if replacement is None:
        return []
    shape, classes = replacement
    return [
        "--data",
        "lipschitz_dd.data.SyntheticDataModule",
        f"--data.input_shape={json.dumps(shape)}",
        f"--data.num_classes={classes}",
        "--data.num_train=16",
        "--data.num_test=8",
        "--data.batch_size=8",
        "--data.eval_batch_size=8",
        "--data.train_subset=null",  # a config's subsets of the real data do not fit the 16 + 8 stand-ins
        "--data.test_subset=null",
    ]


def test_every_config_parses_and_names_known_classes():
    assert {p.stem for p in CONFIGS} >= {
        "fcn_mnist1d",
        "fcn_mnist1d_mse",
        "fcn_mnist1d_dd",
        "cnn_cifar10",
        "cnn_cifar100_coarse",
        "cnn_mnist",
        "resnet18k_cifar10",
        "vit_cifar10",
        "toy2d",
    }
    for path in CONFIGS:
        data_class = yaml.safe_load(path.read_text())["data"]["class_path"].rsplit(".", 1)[-1]
        assert data_class in SYNTHETIC_FOR, f"{path.name}: add {data_class} to SYNTHETIC_FOR"


SLOW_CONFIGS = {"resnet50_imagenet"}  # a torchvision ResNet-50: ~20 s even on tiny images


@pytest.mark.e2e
@pytest.mark.parametrize(
    "config",
    [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW_CONFIGS else p for p in CONFIGS],
    ids=[p.stem for p in CONFIGS],
)
def test_config_smoke_fast_dev_run(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "fit",
        "--config",
        str(config),
        *_synthetic_args(config),
        "--trainer.fast_dev_run=true",
        "--trainer.enable_progress_bar=false",
        "--save_dir",
        str(tmp_path / "runs"),
        "--run_name",
        "smoke",
        "--lipschitz.points.max_samples=16",
        "--wandb=false",
    ]
    if "vit" in config.stem:
        args += ["--model.width=12"]  # keep the ViT tiny; width must stay a multiple of its 6 heads
    if "resnet" in config.stem:
        args += ["--model.width=4"]
    assert main(args) == 0
    record = json.loads((tmp_path / "runs" / config.stem / "smoke" / "results.json").read_text())
    assert record["status"] in ("finished", "stopped_converged")
    assert record["config"]["experiment"] == config.stem


@pytest.mark.e2e
def test_run_folder_contents_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "test_tiny.yaml"),
            "--model.width=8",
            "--trainer.max_epochs=2",
            "--experiment",
            "exp",
            "--run_name",
            "r1",
            "--wandb=false",
        ]
    )
    assert code == 0
    run_dir = tmp_path / "runs" / "exp" / "r1"
    assert {"metrics.csv", "config.yaml", "results.json"} <= {p.name for p in run_dir.iterdir()}
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "finished" and record["epochs"] == 2
    assert record["config"]["model.width"] == 8
    final = record["final"]
    for key in ("train/loss", "test/loss", "test/acc", "lipschitz/lower", "lipschitz/upper", "params/count"):
        assert key in final, key
    assert final["params/count"] == 40 * 8 + 8 + 8 * 10 + 10
    assert final["lipschitz/lower"] <= final["lipschitz/upper"]
    header, *rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    step_col = header.split(",").index("step")
    assert [int(float(r.split(",")[step_col])) for r in rows] == [0, 1, 2]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["init_args"]["width"] == 8


@pytest.mark.e2e
def test_mlp_bounds_options_from_a_config_and_a_flag(tmp_path, monkeypatch):
    """`lipschitz.mlp_bounds` is one nested option group: set in a YAML config and by a dotted flag, the exact
    constant is logged and the saved config.yaml holds all of it."""
    monkeypatch.chdir(tmp_path)
    extra = tmp_path / "mlp.yaml"
    extra.write_text(yaml.safe_dump({"lipschitz": {"mlp_bounds": {"exact_every": 1, "exact_time_limit": 5.0}}}))
    args = ["fit", "--config", str(ROOT / "configs" / "test_tiny.yaml"), "--config", str(extra)]
    args += [
        "--lipschitz.mlp_bounds.exact_max_neurons=64",
        "--trainer.max_epochs=1",
        "--experiment",
        "e",
        "--run_name",
        "r",
        "--wandb=false",
    ]
    assert main(args) == 0
    run_dir = tmp_path / "runs" / "e" / "r"
    assert "lipschitz/exact" in json.loads((run_dir / "results.json").read_text())["final"]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["lipschitz"]["mlp_bounds"]
    assert (saved["exact_every"], saved["exact_time_limit"], saved["exact_max_neurons"]) == (1, 5.0, 64)
    assert saved["sdp_every"] == 0  # the other fields keep their defaults


@pytest.mark.e2e
def test_environment_sets_run_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIPSCHITZ_DD_SAVE_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("LIPSCHITZ_DD_EXPERIMENT", "sweep_x")
    monkeypatch.setenv("LIPSCHITZ_DD_RUN_NAME", "run_7")
    assert (
        main(["fit", "--config", str(ROOT / "configs" / "test_tiny.yaml"), "--trainer.max_epochs=1", "--wandb=false"])
        == 0
    )
    assert (tmp_path / "elsewhere" / "sweep_x" / "run_7" / "results.json").is_file()


@pytest.mark.parametrize(
    "override, message",
    [
        ("--model.width=-3", "width"),
        ("--data.label_noise=1.5", "label_noise"),
        ("--data.train_subset=100000", "train_subset"),
        ("--trainer.gradient_clip_algorithm=foo", "gradient_clip_algorithm"),  # Lightning's own config error
        ("--trainer.accumulate_grad_batches=0", "accumulate_grad_batches"),
        ("--trainer.max_epochs=0", "lipschitz-dd validate"),  # finished with no metrics.csv at all before
        ("--trainer.max_epochs=-1", "trains until the process is killed"),  # trained forever before
        ("--threads=0", "threads must be >= 1"),
        ("--ckpt_path=" + str(ROOT / "README.md"), "README.md cannot be read"),  # a traceback of torch.load before
        ("--model.widht=64", "Option 'widht' is not accepted"),  # was ~100 lines of usage before the reason
        ("--model.loss=hinge", "Got value: hinge"),
        ("--lipschitz.mlp_bounds.exact_every=-1", "MLPBounds: exact_every must be a non-negative integer"),
    ],
)
@pytest.mark.slow
def test_bad_input_gives_one_line_error(override, message, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipschitz_dd.cli",
            "fit",
            "--config",
            str(ROOT / "configs" / "test_tiny.yaml"),
            override,
            "--wandb=false",
            "--save_dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**_env(), "WANDB_MODE": "disabled"},
        timeout=300,  # max_epochs=-1 trained forever before it was refused
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "usage:" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lipschitz-dd: error:")]
    assert len(errors) == 1 and message in errors[0]
    # jsonargparse's report on `LightningModule | None` (the None alternative, the dumped value) is dropped
    assert "NoneType" not in proc.stderr and "Given value" not in proc.stderr


@pytest.mark.slow
def test_model_validation_error_is_the_models_own_reason(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipschitz_dd.cli",
            "fit",
            "--config",
            str(ROOT / "configs" / "vit_cifar10.yaml"),
            "--model.width=16",
            "--wandb=false",
            "--save_dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**_env(), "WANDB_MODE": "disabled"},
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "NoneType" not in proc.stderr
    assert "width must be a multiple of heads" in proc.stderr


@pytest.mark.slow
def test_unknown_model_class_is_rejected(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipschitz_dd.cli",
            "fit",
            "--config",
            str(ROOT / "configs" / "test_tiny.yaml"),
            "--model",
            "lipschitz_dd.models.NoSuchNet",
            "--wandb=false",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**_env(), "WANDB_MODE": "disabled"},
    )
    assert proc.returncode == 1 and "usage:" not in proc.stderr
    assert "Traceback" not in proc.stderr and "NoSuchNet" in proc.stderr
    assert "lipschitz_dd.models.FCN" in proc.stderr  # the classes to choose from


@pytest.mark.e2e
def test_missing_data_folder_is_one_line_and_recorded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "cnn_cifar10.yaml"),
            "--data.data_dir",
            "nowhere",
            "--run_name",
            "r",
            "--wandb=false",
        ]
    )
    assert code == 1
    record = json.loads((tmp_path / "runs" / "cnn_cifar10" / "r" / "results.json").read_text())
    assert record["status"] == "failed" and "cifar-10-batches-py" in record["error"]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "spelling",
    [["--config", "{}"], ["--config={}"], ["-c", "{}"], ["-c={}"], ["-c{}"]],
    ids=["--config X", "--config=X", "-c X", "-c=X", "-cX"],
)
def test_every_config_spelling_replaces_the_default_config(spelling, capsys):
    """The embedded default config goes in front only when no config is given, however it is spelled."""
    tiny = str(ROOT / "configs" / "test_tiny.yaml")
    with pytest.raises(SystemExit):
        main(["fit", *(part.format(tiny) for part in spelling), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    default = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert default["data"]["init_args"]["label_noise"] == 0.15 and default["data"]["init_args"]["shuffle"]
    assert config["data"]["class_path"] == "lipschitz_dd.data.SyntheticDataModule"
    assert config["data"]["init_args"]["label_noise"] == 0.0  # not default.yaml's 0.15
    assert config["data"]["init_args"]["shuffle"] is False  # not default.yaml's true
    assert config["model"]["init_args"]["grad_clip_norm"] is not None  # not default.yaml's null
    assert config["model"]["init_args"]["width"] == 16 and config["trainer"]["max_epochs"] == 3


class _FolderOnlyLogger(Logger):
    """Stands in for W&B in a test: creates `<run dir>/wandb` when built, as WandbLogger does, and logs nothing."""

    def __init__(self, run_dir: str) -> None:
        super().__init__()
        os.makedirs(os.path.join(run_dir, "wandb"), exist_ok=True)

    @property
    def name(self) -> str:
        return "wandb_stand_in"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


@pytest.mark.e2e
def test_reusing_a_run_name_is_refused_and_keeps_the_earlier_run(tmp_path, monkeypatch, capsys, recwarn):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(train_cli, "build_wandb_logger", lambda run_dir, *args, **kwargs: _FolderOnlyLogger(run_dir))
    args = [
        "fit",
        "--config",
        str(ROOT / "configs" / "test_tiny.yaml"),
        "--trainer.max_epochs=1",
        "--run_name",
        "same",
        "--snapshot=false",
    ]
    assert main(args) == 0
    # the folder W&B made first is no earlier run: no "Previous log files ... will be deleted" warning
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]
    run_dir = tmp_path / "runs" / "test_tiny" / "same"
    first = {name: (run_dir / name).read_bytes() for name in ("metrics.csv", "config.yaml", "results.json")}
    assert json.loads(first["results.json"])["status"] == "finished"
    capsys.readouterr()
    assert main([*args, "--trainer.max_epochs=2", "--model.width=8"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert str(Path("runs") / "test_tiny" / "same") in err and "--run_name" in err
    assert {name: (run_dir / name).read_bytes() for name in first} == first  # the first run is untouched
    assert [p.name for p in (tmp_path / "runs" / "test_tiny").iterdir()] == ["same"]


@pytest.mark.e2e
def test_failed_download_is_one_line_and_recorded(tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)  # what torchvision's download calls
    code = main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "cnn_cifar10.yaml"),
            "--data.download",
            "true",
            "--run_name",
            "r",
            "--wandb=false",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("lipschitz-dd: error: ")
    assert "download" in err and "Name or service not known" in err
    assert str(Path("data") / "cifar-10-batches-py") in err
    record = json.loads((tmp_path / "runs" / "cnn_cifar10" / "r" / "results.json").read_text())
    assert record["status"] == "failed" and "Name or service not known" in record["error"]


def test_default_config_is_the_cheap_double_descent_setting():
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert config["model"]["class_path"] == "lipschitz_dd.models.FCN"
    assert config["data"]["init_args"]["num_samples"] == 16000
    assert config["data"]["init_args"]["label_noise"] == 0.15


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    test_command = next(b.strip() for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


def _env():
    import os

    return dict(os.environ)
