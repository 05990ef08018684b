"""Turn a sweep's `command` and one run's parameters into an argv, exactly as `wandb agent` does.

Reproduces `wandb.sdk.launch.sweeps.utils.create_sweep_command` / `create_sweep_command_args` and the
macro substitution of `wandb.wandb_agent.Agent._command_run` (checked against them in the tests):
- `${envvar:NAME}` anywhere in a chunk becomes os.environ["NAME"] (or "NAME" when unset);
- a chunk that is exactly `${name}` is replaced by the list of the macro's values (an unknown macro by
  nothing); every other chunk is kept as `str(chunk)`;
- `${env}` -> "/usr/bin/env" (not on Windows), `${interpreter}` -> "python", `${program}` -> the sweep's
  `program`, `${args}` -> ["--key=value", ...] with `value` formatted by Python's `str` (True, None,
  [1, 2], ...), in the order of the run's parameters.
"""

from __future__ import annotations

import json
import os
import platform
import re
from collections.abc import Mapping
from typing import Any

DEFAULT_SWEEP_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
_ENVVAR_MACRO = re.compile(r"\$\{envvar\:([A-Z0-9_]*)\}")


def command_args(run_config: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The argument formats of one run, keyed by macro name (wandb's `create_sweep_command_args`).

    run_config is a run's config in the sweeps format: {param: {"value": v}, ...}.
    """
    flags, no_hyphens, no_booleans, no_equals, hydra_append, hydra_override = [], [], [], [], [], []
    as_dict: dict[str, Any] = {}
    for param, entry in run_config.items():
        if "value" not in entry:
            raise ValueError(f'no "value" for parameter {param!r} in run config {dict(run_config)}')
        value = entry["value"]
        flag = f"{param}={value}"
        flags.append("--" + flag)
        no_hyphens.append(flag)
        no_equals += [f"--{param}", str(value)]
        hydra_append.append("+" + flag)
        hydra_override.append("++" + flag)
        if isinstance(value, bool):
            if value:
                no_booleans.append("--" + param)
        else:
            no_booleans.append("--" + flag)
        as_dict[param] = value
    return {
        "args": flags,
        "args_no_equals": no_equals,
        "args_no_hyphens": no_hyphens,
        "args_no_boolean_flags": no_booleans,
        "args_json": [json.dumps(as_dict)],
        "args_dict": as_dict,
        "args_append_hydra": hydra_append,
        "args_override_hydra": hydra_override,
    }


def substitute_envvars(command: list[Any], environ: Mapping[str, str] | None = None) -> list[Any]:
    """Replace `${envvar:NAME}` inside each chunk by environ[NAME] (by NAME itself when unset).

    Non-string chunks are kept as they are. Returns a new list (wandb edits its list in place).
    """
    environ = os.environ if environ is None else environ
    result = []
    for chunk in command:
        if isinstance(chunk, str):
            chunk = _ENVVAR_MACRO.sub(lambda m: environ.get(m.group(1), m.group(1)), chunk)
        result.append(chunk)
    return result


def expand_command(
    command: list[Any] | None,
    run_config: Mapping[str, Mapping[str, Any]],
    *,
    program: str | None = None,
    args_json_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """The argv `wandb agent` would run for this run: `command` (default DEFAULT_SWEEP_COMMAND) expanded.

    args_json_file is the path substituted for `${args_json_file}`; the caller writes
    `command_args(run_config)["args_json"][0]` there (the agent writes it only when the macro is used).
    """
    values: dict[str, Any] = command_args(run_config)
    values["interpreter"] = ["python"]
    values["program"] = [program]
    values["args_json_file"] = [args_json_file]
    if platform.system() != "Windows":
        values["env"] = ["/usr/bin/env"]
    argv: list[str] = []
    for chunk in substitute_envvars(list(command or DEFAULT_SWEEP_COMMAND), environ):
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += values.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    return argv
