"""Run folders made elsewhere (`lipschitz-dd reproduce NAME --runs DIR`) are data, not code: a config.yaml that
names anything but the project's own model and data classes (or one the user allowed with --allow_class) is
refused in one line before anything is imported or called, and checkpoints are read weights-only."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml
from conftest import ToyNet

import lipschitz_dd.reproduce.checkpoints as checkpoints
from lipschitz_dd.cli import main
from lipschitz_dd.models import FCN
from lipschitz_dd.report.records import load_runs
from lipschitz_dd.reproduce.checkpoints import UntrustedClass, load_trained, read_checkpoint, trusted_class

DATA = {
    "class_path": "lipschitz_dd.data.SyntheticDataModule",
    "init_args": {"input_shape": [5], "num_classes": 3, "num_train": 20, "num_test": 10},
}


@pytest.fixture(autouse=True)
def no_allowed_classes(monkeypatch):
    monkeypatch.setattr(checkpoints, "_ALLOWED", set())


def write_run(folder, model: dict, data: dict = DATA, checkpoint: dict | None = None) -> None:
    """A finished run folder (results.json, metrics.csv, config.yaml, checkpoints/epoch=1.ckpt)."""
    folder.mkdir(parents=True)
    config = {"model.width": 16, "data.label_noise": 0.15, "seed_everything": 0}
    final = {"train/loss": 0.1, "lipschitz/lower": 2.0}
    payload = {"status": "finished", "config": config, "final": final, "max": {}, "epochs": 1, "seconds": 1.0}
    (folder / "results.json").write_text(json.dumps(payload))
    (folder / "metrics.csv").write_text("step,train/loss,lipschitz/lower\n0,2.3,1.0\n1,0.1,2.0\n")
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": model, "data": data}))
    (folder / "checkpoints").mkdir()
    torch.save(checkpoint or {"state_dict": {}, "hyper_parameters": {}}, folder / "checkpoints" / "epoch=1.ckpt")


@pytest.mark.parametrize("section", ["model", "data"])
def test_a_config_naming_subprocess_call_is_refused_and_runs_nothing(tmp_path, capsys, section):
    marker = tmp_path / "marker"
    hostile = {"class_path": "subprocess.call", "init_args": {"args": f"touch {marker}", "shell": True}}
    model = hostile if section == "model" else {"class_path": "lipschitz_dd.models.FCN", "init_args": {"input_dim": 5}}
    write_run(tmp_path / "runs" / "r", model, hostile if section == "data" else DATA)
    out = tmp_path / "out"
    # the user even allowing it does not make a function a model or data class
    argv = ["reproduce", "jacobian_distributions", "--runs", str(tmp_path / "runs"), "--out", str(out)]
    for extra in ([], ["--allow_class", "subprocess.call"]):
        assert main(argv + extra) == 1
        error = capsys.readouterr().err
        assert error.count("\n") == 1
        assert str(tmp_path / "runs" / "r" / "config.yaml") in error and "'subprocess.call'" in error
        assert "refusing to build" in error
        assert not marker.exists()
    summary = (out / "jacobian_distributions" / "cpu" / "summary.md").read_text()
    assert "analysis failed: UntrustedClass:" in summary


def test_nothing_outside_the_projects_packages_is_imported_unless_allowed(tmp_path, monkeypatch):
    """Refused before its module is imported: importing alone runs a module's code."""
    marker = tmp_path / "imported"
    (tmp_path / "hostile_module.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\nclass Net:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UntrustedClass, match=r"^\S+config.yaml: refusing to build model class 'hostile_module.Net'"):
        trusted_class("hostile_module.Net", "model", tmp_path / "config.yaml")
    assert not marker.exists() and "hostile_module" not in sys.modules


@pytest.mark.parametrize(
    "class_path, section",
    [
        ("lipschitz_dd.data.base.LightningDataModule", "data"),  # imported into the package, not the project's
        ("lipschitz_dd.models.build_fcn", "model"),  # a function of the project, not a class
        ("lipschitz_dd.models.FCN", "data"),  # the wrong kind for the section
        ("lipschitz_dd.data.SyntheticDataModule", "model"),
        ("lipschitz_dd.models.base.torch", "model"),  # a module reachable as an attribute
        ("builtins.eval", "model"),
        (["not", "a", "string"], "model"),
    ],
)
def test_only_the_projects_own_lightning_classes_are_trusted(tmp_path, class_path, section):
    with pytest.raises(UntrustedClass) as error:
        trusted_class(class_path, section, tmp_path / "config.yaml")
    assert "\n" not in str(error.value) and str(tmp_path / "config.yaml") in str(error.value)


def test_the_projects_own_classes_are_trusted(tmp_path):
    from lipschitz_dd.data import FashionMNISTDataModule, SyntheticDataModule
    from lipschitz_dd.models import CNN, ResNet20

    source = tmp_path / "config.yaml"
    assert trusted_class("lipschitz_dd.models.FCN", "model", source) is FCN
    assert trusted_class("lipschitz_dd.models.cnn.CNN", "model", source) is CNN
    assert trusted_class("lipschitz_dd.models.ResNet20", "model", source) is ResNet20
    assert trusted_class("lipschitz_dd.data.SyntheticDataModule", "data", source) is SyntheticDataModule
    assert trusted_class("lipschitz_dd.data.FashionMNISTDataModule", "data", source) is FashionMNISTDataModule


def test_a_users_own_model_is_built_once_allowed(tmp_path, capsys):
    """conftest.ToyNet stands for a user's model: refused until named with --allow_class, then rebuilt with the
    checkpoint's weights (same outputs as the saved network)."""
    torch.manual_seed(0)
    net = ToyNet(hidden=7).eval()
    saved = {"state_dict": net.state_dict(), "hyper_parameters": {"hidden": 7, "_instantiator": "os.system"}}
    write_run(tmp_path / "runs" / "r", {"class_path": "conftest.ToyNet"}, checkpoint=saved)
    (record,) = load_runs(tmp_path / "runs")
    with pytest.raises(UntrustedClass, match="--allow_class conftest.ToyNet"):
        load_trained(record)
    argv = ["reproduce", "jacobian_distributions", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert main(argv) == 1 and "conftest.ToyNet" in capsys.readouterr().err

    checkpoints.allow_class("conftest.ToyNet")
    model, x, y = load_trained(record)
    assert isinstance(model, ToyNet) and not model.training and x.shape == (20, 5) and y.shape == (20,)
    assert torch.equal(model(x), net(x))
    assert main(argv + ["--allow_class", "conftest.ToyNet"]) == 0


def test_checkpoints_are_read_weights_only(tmp_path):
    """A checkpoint holding a pickled object whose unpickling would open (create) a file is refused in one line,
    and the file is never created."""
    marker = tmp_path / "opened"

    class Hostile:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "callbacks": Hostile()}, path)
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"not readable as a weights-only checkpoint") as error:
        read_checkpoint(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    assert not marker.exists()
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt: not readable"):
        read_checkpoint(tmp_path / "junk.ckpt")


def test_a_real_checkpoint_rebuilds_the_network_it_saved(tmp_path):
    """A Lightning checkpoint of the project's FCN (written by Trainer.save_checkpoint) gives back the same
    function; Lightning's `_instantiator` entry in it is ignored, never imported."""
    import lightning.pytorch as pl

    from lipschitz_dd.data import SyntheticDataModule

    torch.manual_seed(0)
    model = FCN(input_dim=5, width=6, num_classes=3)
    data = SyntheticDataModule(**DATA["init_args"])
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(model, data)
    folder = tmp_path / "runs" / "r"
    write_run(folder, {"class_path": "lipschitz_dd.models.FCN", "init_args": {"input_dim": 5, "width": 6}})
    trainer.save_checkpoint(folder / "checkpoints" / "epoch=1.ckpt")
    saved = torch.load(folder / "checkpoints" / "epoch=1.ckpt", weights_only=True)
    saved["hyper_parameters"]["_instantiator"] = "os.system"
    torch.save(saved, folder / "checkpoints" / "epoch=1.ckpt")
    (record,) = load_runs(tmp_path / "runs")
    rebuilt, x, _ = load_trained(record)
    model.eval()
    assert torch.equal(rebuilt(x), model(x))


def test_a_data_dir_named_by_a_run_folder_cannot_unpickle_code(tmp_path):
    """A foreign config.yaml also names the data_dir, and CIFAR batches are pickles: a batch whose unpickling
    would open (create) a file is refused in one line, the file never created."""
    import pickle

    from lipschitz_dd.data import CIFAR10DataModule

    marker = tmp_path / "opened"

    class Hostile:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": Hostile(), "labels": [0]}))
    module = CIFAR10DataModule(data_dir=str(tmp_path / "data"))
    with pytest.raises(ValueError, match=r"data_batch_1: not a data batch \(refusing (io|builtins)\.open") as error:
        module.setup("fit")
    assert "\n" not in str(error.value) and not marker.exists()
