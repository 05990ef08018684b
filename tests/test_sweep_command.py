"""The `command` expansion matches wandb agent's own functions on the same inputs."""

import copy
import json
import platform
from unittest import mock

import pytest
import wandb.sdk.launch.sweeps.utils as wandb_utils

from lipschitz_dd.sweep.command import DEFAULT_SWEEP_COMMAND, command_args, expand_command

RUN_CONFIG = {
    "model.width": {"value": 64},
    "data.label_noise": {"value": 0.15},
    "model.bias": {"value": True},
    "model.dropout": {"value": False},
    "trainer.devices": {"value": None},
    "model.widths": {"value": [32, 16]},
    "model.optimizer": {"value": "adam"},
    "data.scale": {"value": 1e-05},
}


def wandb_agent_argv(command, run_config, program, args_json_file, environ):
    """What wandb.wandb_agent.Agent._command_run builds, using wandb's own helpers (copied loop)."""
    with mock.patch.dict("os.environ", environ, clear=True):
        sweep_command = wandb_utils.create_sweep_command(copy.deepcopy(command))
    sweep_vars = wandb_utils.create_sweep_command_args({"args": run_config})
    sweep_vars["interpreter"] = ["python"]
    sweep_vars["program"] = [program]
    sweep_vars["args_json_file"] = [args_json_file]
    if platform.system() != "Windows":
        sweep_vars["env"] = ["/usr/bin/env"]
    argv = []
    for c in sweep_command:
        c = str(c)
        if c.startswith("${") and c.endswith("}"):
            argv += sweep_vars.get(c[2:-1]) or []
        else:
            argv += [c]
    return argv


def test_agent_loop_copy_matches_wandb_source():
    """Guard: the loop copied above is still the one in wandb's agent (else the comparison is moot)."""
    import inspect

    from wandb.wandb_agent import Agent

    source = inspect.getsource(Agent._command_run)
    assert 'sweep_vars["interpreter"] = ["python"]' in source
    assert 'sweep_vars["env"] = ["/usr/bin/env"]' in source
    assert "replace_list = sweep_vars.get(c[2:-1])" in source
    assert Agent.DEFAULT_SWEEP_COMMAND == DEFAULT_SWEEP_COMMAND


def test_command_args_equal_wandb_for_every_format():
    assert command_args(RUN_CONFIG) == wandb_utils.create_sweep_command_args({"args": RUN_CONFIG})


@pytest.mark.parametrize(
    "command",
    [
        None,
        ["${env}", "${interpreter}", "${program}", "${args}"],
        ["${env}", "lipschitz-dd", "fit", "--config", "configs/fcn_mnist1d_dd.yaml", "${args}"],
        ["${interpreter}", "${program}", "${args_no_hyphens}"],
        ["${program}", "${args_no_equals}", "${args_no_boolean_flags}", "${args_json}", "${args_json_file}"],
        ["${env}", "${interpreter}", "-m", "x", "${args_append_hydra}", "${args_override_hydra}"],
        ["${env}", "--out=${envvar:MY_DIR}/x", "${envvar:UNSET_VAR}", 3, "${unknown}", "${args}"],
    ],
)
def test_expand_command_equals_wandb_agent(command):
    environ = {"MY_DIR": "/data/here"}
    ours = expand_command(command, RUN_CONFIG, program="train.py", args_json_file="/tmp/a.json", environ=environ)
    theirs = wandb_agent_argv(command or list(DEFAULT_SWEEP_COMMAND), RUN_CONFIG, "train.py", "/tmp/a.json", environ)
    assert ours == theirs


def test_documented_formats():
    """The formats written out by hand, independent of wandb's code."""
    cfg = {"model.width": {"value": 64}, "model.bias": {"value": False}, "x": {"value": None}}
    argv = expand_command(["${env}", "${interpreter}", "${program}", "${args}"], cfg, program="t.py")
    assert argv == ["/usr/bin/env", "python", "t.py", "--model.width=64", "--model.bias=False", "--x=None"]
    assert expand_command(["${args_no_hyphens}"], cfg) == ["model.width=64", "model.bias=False", "x=None"]
    assert expand_command(["${args_no_boolean_flags}"], cfg) == ["--model.width=64", "--x=None"]
    assert json.loads(expand_command(["${args_json}"], cfg)[0]) == {"model.width": 64, "model.bias": False, "x": None}


def test_missing_value_is_a_clear_error():
    with pytest.raises(ValueError, match="model.width"):
        command_args({"model.width": {"values": [1, 2]}})
