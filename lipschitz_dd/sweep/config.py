"""Load a W&B sweep file and validate it with the `sweeps` package (the engine of the W&B server).

A sweep file is W&B's format unchanged (method, metric, parameters, command/program), so the same file
works with `wandb sweep` + `wandb agent` and with the local runner.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import yaml

with warnings.catch_warnings():
    # `sweeps` uses pydantic v1-style config keys; importing it warns. Silence only this import.
    warnings.simplefilter("ignore")
    import jsonschema

    import sweeps

LOCAL_METHODS = ("grid", "random", "bayes")
COMMAND_MACROS = (
    "env",
    "interpreter",
    "program",
    "args",
    "args_no_equals",
    "args_no_hyphens",
    "args_no_boolean_flags",
    "args_json",
    "args_json_file",
    "args_dict",
    "args_append_hydra",
    "args_override_hydra",
)
_MACRO = re.compile(r"^\$\{(.*)\}$")


class SweepFileError(ValueError):
    """A sweep file that cannot be run; the message is one line meant for the user."""


def load_sweep_config(path: str | Path) -> sweeps.SweepConfig:
    """Read a sweep YAML file and return it validated and filled with defaults by `sweeps.SweepConfig`.

    Raises SweepFileError (one line) when the file is missing, is not YAML, breaks the W&B schema (the
    schema's own messages), uses a method the local runner cannot run ('custom' needs a W&B scheduler),
    or has a `command` the runner cannot expand (unknown `${...}` macro, `${program}` without `program`).
    """
    path = Path(path)
    if not path.is_file():
        raise SweepFileError(f"sweep file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepFileError(f"{path}: not valid YAML: {_one_line(str(err))}") from None
    return validate_sweep_config(raw, source=str(path))


def validate_sweep_config(raw: Any, source: str = "sweep config") -> sweeps.SweepConfig:
    """Validate a sweep config given as a dict (see `load_sweep_config`); returns the filled SweepConfig."""
    if not isinstance(raw, dict):
        raise SweepFileError(f"{source}: a sweep file must be a YAML mapping, got {type(raw).__name__}")
    try:
        config = sweeps.SweepConfig(raw)
    except (jsonschema.ValidationError, ValueError) as err:
        message = err.message if isinstance(err, jsonschema.ValidationError) else str(err)
        raise SweepFileError(f"{source}: invalid sweep config: {_one_line(message)}") from None
    if config["method"] not in LOCAL_METHODS:
        raise SweepFileError(
            f"{source}: method {config['method']!r} is not supported locally; use one of {LOCAL_METHODS}"
        )
    if config["method"] == "bayes" and "metric" not in config:
        raise SweepFileError(f"{source}: method 'bayes' needs a `metric: {{name: ..., goal: ...}}` section")
    _check_command(config, source)
    return config


# Formats of the run's parameters that lipschitz-dd cannot read, with what to write instead.
_UNREADABLE_MACROS = {
    "args_no_hyphens": "LightningCLI takes --key=value, not key=value; use ${args}",
    "args_append_hydra": "lipschitz-dd is not a Hydra program; use ${args}",
    "args_override_hydra": "lipschitz-dd is not a Hydra program; use ${args}",
    "args_dict": "wandb's agent expands it to the parameter names alone; use ${args}",
}
# Macros that lipschitz-dd reads only as the value of --config: a JSON mapping {"model.width": 64, ...} inline
# (${args_json}) or in a file (${args_json_file}); jsonargparse accepts dotted keys in a config.
_CONFIG_VALUE_MACROS = ("args_json", "args_json_file")


def _runs_lipschitz_dd(command: list) -> bool:
    return any(
        str(chunk) == "lipschitz-dd" or str(chunk).endswith(("/lipschitz-dd", "lipschitz_dd.cli")) for chunk in command
    )


def _check_command(config: dict, source: str) -> None:
    """Reject commands that `wandb agent` would expand to something surely unintended: unknown macros, and, when
    the command runs lipschitz-dd, parameter formats it cannot read (see _UNREADABLE_MACROS;
    ${args_json} and ${args_json_file} only right after --config/-c)."""
    command = config.get("command")
    if command is None:
        if "program" not in config:
            raise SweepFileError(f"{source}: give `program` or a `command` (the default command runs `program`)")
        return
    if not isinstance(command, list) or not command:
        raise SweepFileError(f"{source}: `command` must be a non-empty list of strings")
    for chunk in command:
        match = _MACRO.match(str(chunk))
        if match is None:
            continue
        name = match.group(1)
        if name.startswith("envvar:"):
            continue
        if name not in COMMAND_MACROS:
            raise SweepFileError(
                f"{source}: unknown macro {chunk!r} in `command` (wandb would drop it silently); "
                f"known: {', '.join('${' + m + '}' for m in COMMAND_MACROS)}"
            )
        if name == "program" and "program" not in config:
            raise SweepFileError(f"{source}: `command` uses ${{program}} but the file has no `program`")
        if not _runs_lipschitz_dd(command):
            continue
        if name in _UNREADABLE_MACROS:
            raise SweepFileError(f"{source}: lipschitz-dd cannot read {chunk}: {_UNREADABLE_MACROS[name]}")
        if name in _CONFIG_VALUE_MACROS:
            before = str(command[command.index(chunk) - 1]) if command.index(chunk) > 0 else ""
            if before not in ("--config", "-c"):
                raise SweepFileError(
                    f"{source}: lipschitz-dd reads {chunk} only as a config: write `--config` right before it"
                )


def _one_line(message: str) -> str:
    return "; ".join(part.strip() for part in message.splitlines() if part.strip())
