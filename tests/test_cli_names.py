"""Shipped configs and sweeps by name from any directory, `None` values, bad config files, top-level commands."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lipschitz_dd.cli import main, prepare_training_args
from lipschitz_dd.shipped import shipped_files
from lipschitz_dd.sweep import SweepFileError, command_args, expand_command, validate_sweep_config
from lipschitz_dd.sweep.cli import main as sweep_main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "test_tiny.yaml"


def _printed_config(capsys, args):
    with pytest.raises(SystemExit):
        main(["fit", *args, "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "spelling",
    [["--config", "test_tiny"], ["--config=test_tiny"], ["-c", "test_tiny"], ["-c=test_tiny"], ["-ctest_tiny"]]
    + [["--conf", "test_tiny"], ["--config", "test_tiny.yaml"], ["--config", "configs/test_tiny.yaml"]],
)
def test_a_shipped_config_by_name_from_any_directory(spelling, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    config = _printed_config(capsys, spelling)
    assert config["data"]["class_path"] == "lipschitz_dd.data.SyntheticDataModule"
    assert config["model"]["init_args"]["width"] == 16 and config["trainer"]["max_epochs"] == 3
    assert str(TINY.resolve()) in "".join(prepare_training_args(spelling))


@pytest.mark.e2e
def test_a_local_file_wins_over_a_shipped_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    mine = yaml.safe_load(TINY.read_text())
    mine["model"]["init_args"]["width"] = 5
    (tmp_path / "test_tiny.yaml").write_text(yaml.safe_dump(mine))
    assert _printed_config(capsys, ["-c", "test_tiny.yaml"])["model"]["init_args"]["width"] == 5
    assert _printed_config(capsys, ["-c", "test_tiny"])["model"]["init_args"]["width"] == 16  # the shipped one


@pytest.mark.e2e
def test_none_from_a_sweep_is_null(capsys):
    """wandb agent writes a sweep's `null` as `--key=None` (Python's str); it must reach the model as None."""
    args = expand_command(
        ["lipschitz-dd", "fit", "--config", str(TINY), "${args}"],
        {"model.grad_clip_norm": {"value": None}, "trainer.max_epochs": {"value": None}},
    )
    assert args[-2:] == ["--model.grad_clip_norm=None", "--trainer.max_epochs=None"]
    config = _printed_config(capsys, args[2:])
    assert config["model"]["init_args"]["grad_clip_norm"] is None and config["trainer"]["max_epochs"] is None
    no_equals = command_args({"model.grad_clip_norm": {"value": None}})["args_no_equals"]
    config = _printed_config(capsys, ["--config", str(TINY), *no_equals])
    assert config["model"]["init_args"]["grad_clip_norm"] is None


def test_prepare_training_args_keeps_everything_else():
    args = ["--model.width=None", "--data.x", "None", "--run_name", "None-run", "--", "--a=None"]
    assert prepare_training_args(args) == ["--model.width=null", "--data.x", "null", "--run_name", "None-run"] + [
        "--",
        "--a=None",
    ]


@pytest.mark.e2e
def test_args_json_reaches_the_cli_as_an_inline_config(tmp_path, capsys):
    sweep = {
        "method": "grid",
        "parameters": {"model.width": {"value": 7}, "model.grad_clip_norm": {"value": None}},
        "command": ["lipschitz-dd", "fit", "--config", str(TINY), "--config", "${args_json}"],
    }
    config = validate_sweep_config(sweep)
    args = expand_command(config["command"], {k: {"value": v["value"]} for k, v in sweep["parameters"].items()})
    assert json.loads(args[-1]) == {"model.width": 7, "model.grad_clip_norm": None}
    printed = _printed_config(capsys, args[2:])
    assert printed["model"]["init_args"]["width"] == 7 and printed["model"]["init_args"]["grad_clip_norm"] is None
    params = tmp_path / "params.json"
    params.write_text(args[-1])
    printed = _printed_config(capsys, [*args[2:-1], str(params)])  # ${args_json_file}
    assert printed["model"]["init_args"]["width"] == 7


@pytest.mark.parametrize(
    "command, message",
    [
        (["lipschitz-dd", "fit", "${args_no_hyphens}"], "cannot read ${args_no_hyphens}"),
        (["lipschitz-dd", "fit", "${args_override_hydra}"], "not a Hydra program"),
        (["lipschitz-dd", "fit", "${args_dict}"], "parameter names alone"),
        (["lipschitz-dd", "fit", "${args_json}"], "write `--config` right before it"),
        (["lipschitz-dd", "fit", "--model.width", "${args_json_file}"], "write `--config` right before it"),
    ],
)
def test_parameter_formats_lipschitz_dd_cannot_read_are_rejected_at_load(command, message):
    with pytest.raises(SweepFileError, match="cannot read|only as a config") as err:
        validate_sweep_config({"method": "grid", "parameters": {"a": {"value": 1}}, "command": command})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [("", "is empty"), ("trainer:\n  max_epochs: [\n", "not valid YAML"), ("- 1\n- 2\n", "must be a YAML mapping")],
)
def test_empty_or_malformed_config_file_is_one_line_naming_it(text, message, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert main(["fit", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and message in err


def test_unknown_config_name_lists_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "-c", "no_such_config"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_config" in err and "fcn_mnist1d_dd" in err


def test_configs_lists_every_shipped_file_with_its_description(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    for kind in ("configs", "sweeps"):
        for name in shipped_files(kind):
            assert any(line.split()[:1] == [name] and len(line.split()) > 2 for line in out.splitlines()), name
    assert "Lipschitz double descent, FCN width x label noise" in out  # a sweep's `description`
    assert "A seconds-long run for tests" in out  # a config's leading comment


def test_help_lists_every_command_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "sweep", "report", "reproduce", "configs"):
        assert f"\n  {command} " in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip().startswith("lipschitz-dd 0.")


def test_predict_is_not_offered(capsys):
    from lipschitz_dd.train_cli import LipschitzCLI

    assert set(LipschitzCLI.subcommands()) == {"fit", "validate", "test"}
    assert main(["predict"]) == 2
    assert "unknown command 'predict'" in capsys.readouterr().err


def test_sweep_by_name_unknown_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert sweep_main(["no_such_sweep", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no_such_sweep" in err and "fcn_mnist1d_dd" in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_shipped_sweeps_command_runs_from_an_empty_directory(tmp_path):
    """What `wandb agent` runs for the shipped default sweep, in a directory without configs/: a real fit on the
    tiny config's synthetic data (the shipped config by name, then overrides, then the sweep's ${args})."""
    sweep = yaml.safe_load(shipped_files("sweeps")["fcn_mnist1d_dd"].read_text())
    command = sweep["command"]
    assert "fcn_mnist1d_dd" in command and not any("/" in str(c) for c in command[1:])
    # Tiny override: the shipped sweep's own command, with the tiny config's data and model size appended.
    command = [*command[:-1], "--config", "test_tiny", "--trainer.max_epochs=1", command[-1]]
    run = {"model.width": {"value": 4}, "data.label_noise": {"value": 0.15}, "seed_everything": {"value": 0}}
    argv = expand_command(command, run)
    assert argv[:5] == ["/usr/bin/env", "lipschitz-dd", "fit", "--config", "fcn_mnist1d_dd"]
    work = tmp_path / "empty"
    work.mkdir()
    env = {
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
        "LIPSCHITZ_DD_RUN_NAME": "r1",
        "HOME": str(tmp_path),
    }
    done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((work / "runs" / "test_tiny" / "r1" / "results.json").read_text())
    assert record["epochs"] == 1 and record["status"] in ("finished", "stopped_converged")
    config = record["config"]
    assert config.get("model.width", config.get("model.init_args.width")) == 4
    assert config.get("data.label_noise", config.get("data.init_args.label_noise")) == 0.15


@pytest.mark.e2e
def test_data_class_and_data_class_path_give_the_same_defaults(capsys):
    """Both choose the data class, so neither gets the embedded default config's data settings."""
    by_class = _printed_config(capsys, ["--data", "lipschitz_dd.data.MNIST1DDataModule"])
    by_path = _printed_config(capsys, ["--data.class_path", "lipschitz_dd.data.MNIST1DDataModule"])
    assert by_class == by_path
    assert by_path["data"]["init_args"]["label_noise"] == 0.0  # the class's default, not default.yaml's 0.15


@pytest.mark.e2e
def test_a_plain_lightning_module_without_dataloader_idx_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "plain_net.py").write_text(
        "import torch\nimport lightning as L\n\n"
        "class Net(L.LightningModule):\n"
        "    def __init__(self, num_classes: int = 10):\n"
        "        super().__init__()\n        self.net = torch.nn.Linear(40, num_classes)\n"
        "    def forward(self, x):\n        return self.net(x)\n"
        "    def training_step(self, batch, batch_idx):\n"
        "        return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])\n"
        "    def validation_step(self, batch, batch_idx):\n        pass\n"
        "    def configure_optimizers(self):\n        return torch.optim.SGD(self.parameters(), lr=0.1)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["--model", "plain_net.Net", "--data", "lipschitz_dd.data.SyntheticDataModule", "--data.input_shape=[40]"]
    assert main(["fit", *args, "--trainer.max_epochs=1", "--run_name", "p"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (earlier lines: log records of other tests' streams)
    assert last.startswith("lipschitz-dd: error:") and "plain_net.Net" in last and "dataloader_idx" in last
    assert not (tmp_path / "runs").exists()  # refused before anything ran


@pytest.mark.e2e
def test_no_progress_bar_silences_the_lipschitz_bar(tmp_path, monkeypatch):
    """With the Trainer's bar off, the callback gets no measurement bar at all (its `_progress` gives None); with
    it on, a bar factory (a tqdm bar shown only for measurements longer than 2 s)."""
    from lipschitz_dd.callbacks.lipschitz import LipschitzCallback

    bars = []
    real_progress = LipschitzCallback._progress

    def recording_progress(self, trainer):
        bars.append(real_progress(self, trainer))
        return bars[-1]

    monkeypatch.setattr(LipschitzCallback, "_progress", recording_progress)
    monkeypatch.chdir(tmp_path)
    common = ["fit", "-c", "test_tiny", "--trainer.max_epochs=1", "--snapshot=false"]
    assert main([*common, "--trainer.enable_progress_bar=true", "--run_name", "a"]) == 0
    assert bars and all(callable(bar) for bar in bars)
    bars.clear()
    assert main([*common, "--trainer.enable_progress_bar=false", "--run_name", "b"]) == 0
    assert bars and all(bar is None for bar in bars)
