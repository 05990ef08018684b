"""`lipschitz-dd`: the console script. Dispatches to the sweep runner, the report, or LightningCLI.

    lipschitz-dd fit                                  # the embedded default: FCN on MNIST-1D, 15 % label noise
    lipschitz-dd fit --config fcn_mnist1d --model.width 64 --data.label_noise 0.2
    lipschitz-dd fit --config my_experiment.yaml --print_config
    lipschitz-dd sweep fcn_mnist1d_dd --workers 2
    lipschitz-dd report sweeps_out/fcn_mnist1d_dd
    lipschitz-dd configs                              # the configs and sweeps that ship with the package
    lipschitz-dd reproduce [NAME [--quick]]

A config or sweep is a file path or the name of a shipped file (lipschitz_dd.shipped.resolve), so every
command works from any directory. Lightning is imported only for fit/validate/test, so `sweep status`,
`configs` and `report` start quickly.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path

# `lipschitz-dd fit` with no config and no model/data: the study's cheap double-descent setting at width 256.
DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")


_UNION_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value",
    "- Expected a <class 'NoneType'>",
)


def _reason(message: str) -> str:
    """The reason in jsonargparse's report on a model/data argument, on one line: it checks each alternative of
    `LightningModule | None` and dumps them all; the None alternative and the dumped value are dropped."""
    lines = [line.strip() for line in str(message).replace(_UNION_NOISE[0], "\n").splitlines()]
    kept = [line.removeprefix("- ") for line in lines if line and not line.startswith(_UNION_NOISE)]
    reason = " ".join(kept)
    unknown_class = ("has no attribute", "not accessible or invalid", "Expected a dot import path")
    for key, package, shared_base in (
        ('"model"', "lipschitz_dd.models", "LipschitzModule"),
        ('"data"', "lipschitz_dd.data", "ArrayDataModule"),
    ):
        if f"Parser key {key}" in reason and any(words in reason for words in unknown_class):
            import importlib

            from lightning.pytorch import LightningDataModule, LightningModule

            module = importlib.import_module(package)
            kind = LightningModule if key == '"model"' else LightningDataModule
            names = [
                n
                for n in module.__all__
                if n != shared_base and isinstance(getattr(module, n), type) and issubclass(getattr(module, n), kind)
            ]
            reason += f" (lipschitz_dd's: {', '.join(f'{package}.{n}' for n in names)}; or a class_path of your own)"
    return reason


def _one_line_error(exc: BaseException) -> int:
    kind = "" if isinstance(exc, ArgumentError) else f"{type(exc).__name__}: "
    sys.stderr.write(f"lipschitz-dd: error: {kind}{_reason(str(exc))}\n")
    return 1


def _chooses_config_or_classes(args: list[str]) -> bool:
    """True when the subcommand's arguments give a config file, a model or data class (`--data X` or
    `--data.class_path X`, which must give the same defaults), or ask for help: then the
    embedded default config is not put in front. Every spelling jsonargparse accepts counts: `--config X`,
    `--config=X`, `-c X`, `-c=X`, `-cX` and unambiguous abbreviations (`--conf X`)."""
    for arg in args:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if name in ("--model", "--data", "--model.class_path", "--data.class_path", "-h", "--help"):
            return True
        if arg.startswith("-c") or (len(name) >= 4 and "--config".startswith(name)):  # --c alone: --ckpt_path
            return True
    return False


TRAINING_SUBCOMMANDS = ("fit", "validate", "test")

#: Upstream notices every fit printed that say nothing about the run (issue 21): Lightning's two advertising tips
#: (litlogger, litmodels) and the FutureWarning torch raises when Lightning 2.6 builds a `LeafSpec`. Filtered
#: here, in the console script only: a user's own script that imports lipschitz_dd still sees them.
UPSTREAM_TIPS = ("💡 Tip:",)
UPSTREAM_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)
#: the loggers Lightning's rank_zero_info writes through (which one depends on the import order)
_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)


def _not_a_tip(record: logging.LogRecord) -> bool:
    """logging filter: False (drop) for Lightning's advertising tips, True for every other record."""
    return not str(record.msg).startswith(UPSTREAM_TIPS)


def quiet_upstream_notices() -> None:
    """Drop the known upstream notices of UPSTREAM_TIPS and UPSTREAM_WARNINGS for this process (the console
    script calls it before a fit; nothing else does). Every other warning and log line is left as it was."""
    for message in UPSTREAM_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _not_a_tip not in logger.filters:
            logger.addFilter(_not_a_tip)


#: The W&B module `wandb.init` imports on every start (`Run._detect_and_apply_job_inputs`, even offline). Its
#: pydantic models read their field docstrings through `inspect.getmodule`, which walks every loaded module:
#: imported after torch and Lightning (4,000 modules) that took 1.0 s CPU per run, imported first 0.1 s.
WANDB_START_MODULE = "wandb.sdk.launch.inputs.internal"


def wandb_likely(argv: list[str]) -> bool:
    """Whether a training command will probably start W&B: not with WANDB_MODE=disabled nor with `--wandb
    false` (`--wandb=false`, `--wandb False`, `--wandb 0`) on the command line. A config file that turns it off
    is not read here: then the early import of `preload_wandb` was merely unneeded."""
    if os.environ.get("WANDB_MODE", "").lower() == "disabled":
        return False
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        value = arg.split("=", 1)[1] if arg.startswith("--wandb=") else None
        if arg == "--wandb" and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None and value.strip().lower() in ("false", "0", "no", "off", "null"):
            return False
    return True


def preload_wandb() -> bool:
    """Import W&B's run-start module (WANDB_START_MODULE) now, before torch and Lightning fill sys.modules, so
    the fit's `wandb.init` does not pay the walk over them. Only the import order changes: nothing is run,
    patched or skipped. Returns whether it was imported (False: W&B missing or laid out otherwise)."""
    import importlib

    try:
        importlib.import_module(WANDB_START_MODULE)
    except Exception:  # another W&B layout, or W&B not installed: the fit then imports what it needs itself
        return False
    return True


def exit_without_teardown(code: int) -> None:
    """End the console script's process now with `code`, without the interpreter's module teardown.

    With torch and Lightning loaded (4,000 modules), Python's finalisation, which only frees memory the operating
    system frees anyway, took 1.2-1.4 s CPU per run on this machine. Everything a normal exit does that has an
    effect still happens first: the atexit handlers (W&B's run teardown, logging.shutdown) and the flush of
    stdout and stderr. Returns without exiting (the normal exit follows) when a non-daemon thread is still
    running (a normal exit would wait for it) or the atexit module offers no way to run its handlers."""
    import atexit
    import threading

    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if run_exit_handlers is None or others:
        return
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)


USAGE = """usage: lipschitz-dd [-h] [--version] COMMAND ...

Measure lower and upper bounds of a network's Lipschitz constant while it trains (PyTorch Lightning).

commands:
  fit        train a model, measuring the bounds (LightningCLI; `lipschitz-dd fit --help`)
  validate   evaluate a model and measure the bounds once, no training
  test       evaluate a model on the test set
  sweep      run a W&B sweep file locally, no server (`lipschitz-dd sweep --help`)
  report     figures and tables of a sweep's runs (`lipschitz-dd report --help`)
  reproduce  reproduce the paper's experiments (`lipschitz-dd reproduce --help`)
  configs    list the configs and sweeps that ship with lipschitz_dd

options:
  -h, --help  show this message and exit
  --version   show the version and exit

--config (or -c) takes a file path or the name of a shipped config (`lipschitz-dd fit -c fcn_mnist1d_dd`).
"""

# `--config X`, `--config=X`, `-c X`, `-c=X`, `-cX` and unambiguous abbreviations of --config (`--conf X`).
_CONFIG_OPTION = re.compile(r"^(--co(?:n(?:f(?:i(?:g)?)?)?)?|-c)(=?)(.*)$", re.DOTALL)
# A value that can only mean a file name (not an inline YAML/JSON config string).
_FILE_NAME = re.compile(r"^[\w.\-/~]+$")


def _config_value(value: str) -> str:
    """A --config value as a path jsonargparse can open: an existing file as given, a shipped config's name
    (`fcn_mnist1d_dd`, `configs/fcn_mnist1d_dd.yaml`) as its installed path; an inline config string is kept.

    Raises ValueError (one line, naming the file) for a missing file, an empty file, or a file that is not a
    YAML mapping, before jsonargparse reports them without the file's name."""
    from lipschitz_dd.shipped import resolve

    if not _FILE_NAME.match(value) and not Path(value).is_file():
        return value  # an inline config such as '{"model.width": 64}' (a sweep's ${args_json})
    path = resolve(value, "configs")
    import yaml

    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        reason = " ".join(str(err).split())
        raise ValueError(f"config file {path}: not valid YAML: {reason}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"config file {path}: cannot be read: {err}") from None
    if content is None:
        raise ValueError(f"config file {path} is empty")
    if not isinstance(content, dict):
        raise ValueError(f"config file {path}: must be a YAML mapping (key: value), got a {type(content).__name__}")
    return str(path)


def prepare_training_args(args: list[str]) -> list[str]:
    """The subcommand's arguments as LightningCLI should see them:
    - every --config/-c value resolved by `_config_value` (shipped names work from any directory);
    - a value `None` (`--key=None`, `--key None`) becomes `null`: `wandb agent` and the local sweep runner write a
      sweep's `null` with Python's str, which jsonargparse would read as the string "None"."""
    prepared: list[str] = []
    expects_config = False
    for i, arg in enumerate(args):
        if arg == "--":
            prepared += args[i:]
            break
        if expects_config:
            prepared.append(_config_value(arg))
            expects_config = False
            continue
        match = _CONFIG_OPTION.match(arg)
        if match and arg != "--c":  # `--c` alone is ambiguous (--ckpt_path)
            option, equals, value = match.groups()
            if not equals and not value:
                expects_config = True
                prepared.append(arg)
            else:
                prepared.append(f"{option}{equals}{_config_value(value)}")
            continue
        if arg.startswith("--") and arg.endswith("=None"):
            arg = arg[: -len("None")] + "null"
        elif arg == "None" and prepared and prepared[-1].startswith("--") and "=" not in prepared[-1]:
            arg = "null"
        prepared.append(arg)
    return prepared


def describe_shipped(path: Path, kind: str, width: int = 100) -> str:
    """One line about a shipped file: a sweep's `description`, else the first sentence of the file's leading
    comment block, cut at `width` characters."""
    import yaml

    text = path.read_text()
    description = ""
    if kind == "sweeps":
        try:
            description = str((yaml.safe_load(text) or {}).get("description") or "")
        except (yaml.YAMLError, AttributeError):
            description = ""
    if not description:
        comments = []
        for line in text.splitlines():
            if not line.startswith("#"):
                break
            comments.append(line.lstrip("#").strip())
        block = " ".join(c for c in comments if c)
        description = re.split(r"(?<=\.)\s", block, maxsplit=1)[0].rstrip(".") if block else ""
    description = " ".join(description.split())
    if len(description) > width:
        description = description[: width - 3].rsplit(" ", 1)[0] + "..."
    return description or "(no description)"


def format_shipped() -> str:
    """`lipschitz-dd configs`: every shipped config and sweep, one line each, with where they are installed."""
    from lipschitz_dd.shipped import shipped_dir, shipped_files

    lines = []
    for kind, usage in (("configs", "lipschitz-dd fit --config NAME"), ("sweeps", "lipschitz-dd sweep NAME")):
        files = shipped_files(kind)
        lines.append(f"{kind} ({usage}; in {shipped_dir(kind)}):")
        name_width = max(len(name) for name in files)
        lines += [f"  {name:<{name_width}}  {describe_shipped(path, kind)}" for name, path in files.items()]
    scripts = sorted((shipped_dir("sweeps") / "agents").glob("*.sh"))
    if scripts:
        lines.append(f"agent scripts (docs/agents.md; in {scripts[0].parent}): {', '.join(p.name for p in scripts)}")
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lipschitz_dd")
    except PackageNotFoundError:
        from lipschitz_dd import __version__

        return __version__


def main(argv: list[str] | None = None) -> int:
    """`lipschitz-dd` console script: `sweep ...`, `report ...`, `configs`, or LightningCLI's fit/validate/test.

    Called without `argv` (the console script, `python -m lipschitz_dd.cli`), a training command that returns
    ends the process through `exit_without_teardown`; called with `argv` (tests, scripts) it returns."""
    console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"lipschitz-dd {_version()}")
        return 0
    if argv[0] == "configs":
        print(format_shipped())
        return 0
    if argv and argv[0] == "sweep":
        from lipschitz_dd.sweep.cli import main as sweep_main

        return sweep_main(argv[1:]) or 0
    if argv and argv[0] == "report":
        from lipschitz_dd.report.cli import main as report_main

        return report_main(argv[1:]) or 0
    if argv and argv[0] == "reproduce":
        from lipschitz_dd.reproduce.cli import main as reproduce_main

        return reproduce_main(argv[1:]) or 0
    if argv[0] not in TRAINING_SUBCOMMANDS and not argv[0].startswith("-"):
        sys.stderr.write(
            f"lipschitz-dd: error: unknown command {argv[0]!r}; one of: fit, validate, test, sweep, report, "
            "reproduce, configs (lipschitz-dd --help)\n"
        )
        return 2
    if argv[0] in TRAINING_SUBCOMMANDS:
        try:
            argv = [argv[0], *prepare_training_args(argv[1:])]
        except (ValueError, FileNotFoundError) as exc:
            return _one_line_error(exc)
        if not _chooses_config_or_classes(argv[1:]):
            argv = [argv[0], "--config", str(DEFAULT_CONFIG), *argv[1:]]
    # We pass the (possibly completed) argv ourselves: LightningCLI's "args and sys.argv both given" is noise.
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
    quiet_upstream_notices()
    if argv[0] in TRAINING_SUBCOMMANDS and wandb_likely(argv[1:]):
        preload_wandb()
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from lipschitz_dd.data.vision import DownloadError
    from lipschitz_dd.train_cli import run_training_cli

    bad_input = (
        ValueError,
        OSError,  # FileNotFoundError, PermissionError (read-only folder), disk full, ...: each names its path
        DownloadError,
        MisconfigurationException,
        ArgumentError,
    )
    try:
        run_training_cli(argv)
    except bad_input as exc:  # bad input (ours, or a Trainer flag Lightning refuses): one clear line
        code = _one_line_error(exc)
    else:
        code = 0
    if console:
        exit_without_teardown(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
