"""Read a finished run's network and training data back from its folder (for analyses on saved checkpoints).

A run folder may come from elsewhere (`lipschitz-dd reproduce NAME --runs DIR`): it is data, never code. The model
and data classes named by its config.yaml are built only when they are the project's own (a LightningModule
defined under lipschitz_dd.models, a LightningDataModule defined under lipschitz_dd.data) or named by the user
(`allow_class`, the CLI's --allow_class); anything else is refused in one line (`UntrustedClass`) before
anything is imported. Checkpoints are read with `torch.load(weights_only=True)` (tensors and plain containers
only, no pickled objects) and only their state_dict and plain hyper-parameters are used: Lightning's
`load_from_checkpoint` is not called, since it imports whatever `_instantiator` a checkpoint names.

This is orchestration code, like the CLI, not part of the report layer.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from lipschitz_dd.report.records import LoadedRun

# section of config.yaml -> (the package its classes must be defined in, the Lightning class they must extend)
OWN_CLASSES = {
    "model": ("lipschitz_dd.models", "lightning.pytorch.LightningModule"),
    "data": ("lipschitz_dd.data", "lightning.pytorch.LightningDataModule"),
}
_ALLOWED: set[str] = set()


class UntrustedClass(ValueError):
    """A run folder's config.yaml names a class that is not the project's own and that the user did not allow."""


def allow_class(class_path: str) -> None:
    """Let run folders build `class_path` ("package.module.Class"; the CLI's --allow_class): a model or data class
    of the user's own, which the user trusts."""
    module, _, name = class_path.rpartition(".")
    if not module or not name.isidentifier():
        raise ValueError(f"--allow_class {class_path!r}: give a class as package.module.Class")
    _ALLOWED.add(class_path)


def allowed_classes() -> set[str]:
    """The class paths allowed with `allow_class` (beyond the project's own)."""
    return set(_ALLOWED)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def trusted_class(class_path: Any, section: str, source: Path) -> type:
    """The class `class_path` from `source`'s `section` ("model" or "data"), if it may be built: defined under
    lipschitz_dd.models (a LightningModule) or lipschitz_dd.data (a LightningDataModule), or allowed by the user.
    Anything else raises UntrustedClass with one line naming the file and the class; nothing outside the
    project's packages is imported unless the user allowed it."""
    package, base_path = OWN_CLASSES[section]
    refusal = (
        f"{source}: refusing to build {section} class {class_path!r} named there: only lipschitz_dd's own "
        f"{section} classes are built from a run folder (if you trust it: --allow_class {class_path})"
    )
    if not isinstance(class_path, str):
        raise UntrustedClass(refusal)
    module_name, _, name = class_path.rpartition(".")
    allowed = class_path in _ALLOWED
    if not module_name or not (allowed or _within(module_name, package)):
        raise UntrustedClass(refusal)
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise UntrustedClass(f"{source}: {section} class {class_path!r} not found ({error})") from None
    base_module, _, base_name = base_path.rpartition(".")
    base = getattr(importlib.import_module(base_module), base_name)
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise UntrustedClass(refusal)
    if not allowed and not _within(cls.__module__, package):
        raise UntrustedClass(refusal)  # imported into the package from elsewhere, e.g. Lightning's own base class
    return cls


def checkpoint_files(record: LoadedRun) -> list[Path]:
    """The run's checkpoints (checkpoints/*.ckpt), oldest first (by file time)."""
    return sorted((record.path / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch in a checkpoint's name ("epoch=<e>.ckpt", the CLI's naming: finished epochs), else None."""
    match = re.search(r"epoch=(\d+)", path.name)
    return int(match.group(1)) if match else None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint as tensors and plain containers (`torch.load(weights_only=True)`: no pickled object is
    rebuilt); ValueError with one line when the file is not a checkpoint or holds anything else."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - UnpicklingError, RuntimeError (zip), EOFError: one line each
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: not readable as a weights-only checkpoint ({first})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{path}: no state_dict in this checkpoint")
    return checkpoint


def load_trained(
    record: LoadedRun, split: str = "train", checkpoint: Path | None = None
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The run's last checkpoint (or `checkpoint`; eval mode, CPU) and its `split` ("train" or "test") points and
    labels, rebuilt from config.yaml (the same subset, label noise and seeds as the run).

    The model is its trusted class (see `trusted_class`) built with the checkpoint's plain hyper-parameters (the
    constructor's arguments as Lightning saved them, linked ones such as num_classes included; config.yaml's
    init_args without a checkpoint entry), then given the checkpoint's state_dict (strict)."""
    checkpoints = [checkpoint] if checkpoint is not None else checkpoint_files(record)
    if not checkpoints:
        raise FileNotFoundError(f"{record.path}: no checkpoint (run with checkpointing enabled)")
    config_path = record.path / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    if not isinstance(config, dict) or not all(isinstance(config.get(s), dict) for s in OWN_CLASSES):
        raise ValueError(f"{config_path}: no model and data sections")
    model_class = trusted_class(config["model"].get("class_path"), "model", config_path)
    data_class = trusted_class(config["data"].get("class_path"), "data", config_path)

    state = read_checkpoint(checkpoints[-1])
    saved = state.get("hyper_parameters") or {}
    arguments = {**(config["model"].get("init_args") or {}), **saved}
    accepted = inspect.signature(model_class.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        arguments = {k: v for k, v in arguments.items() if k in accepted}
    model = model_class(**{k: v for k, v in arguments.items() if not k.startswith("_")})
    model.load_state_dict(state["state_dict"])
    model.eval()
    x, y = _split(data_class, config, split)
    return model, x, y


def _split(data_class: type, config: dict[str, Any], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = data_class(**(config["data"].get("init_args") or {}))
    data.setup("fit")
    return getattr(data, f"{split}_x"), getattr(data, f"{split}_y")


def load_data(record: LoadedRun, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """The run's `split` ("train" or "test") points and labels, rebuilt from its config.yaml (the same subset,
    label noise and seeds as the run) by its trusted data class; no checkpoint needed."""
    config_path = record.path / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
    if not isinstance(config, dict) or not isinstance(config.get("data"), dict):
        raise ValueError(f"{config_path}: no data section")
    return _split(trusted_class(config["data"].get("class_path"), "data", config_path), config, split)


def row_of_final_checkpoint(record: LoadedRun, out: Path, settings: dict[str, Any], compute) -> dict[str, Any]:
    """`compute()` (one analysis row of the run: plain numbers and strings) for the run's final checkpoint, kept in
    OUT/per_run/<run folder>.json beside `settings` (what else determines the row: the analysis's version,
    radii, schedule) and the checkpoint's path, size and mtime. A later analysis with the same settings of the same
    checkpoint reads the row back instead of computing it again (JSON keeps every float exactly), so an analysis of
    hours that is stopped resumes at the run it was on; any other settings or a retrained run compute it anew."""
    import json

    checkpoints = checkpoint_files(record)
    final = checkpoints[-1].resolve() if checkpoints else None
    stat = final.stat() if final is not None else None
    key = {
        "settings": json.loads(json.dumps(settings)),
        "checkpoint": None if final is None else [str(final), stat.st_size, stat.st_mtime_ns],
    }
    path = out / "per_run" / f"{record.path.name}.json"
    if path.is_file():
        try:
            kept = json.loads(path.read_text())
        except ValueError:
            kept = None
        if isinstance(kept, dict) and kept.get("key") == key and isinstance(kept.get("row"), dict):
            return kept["row"]
    row = json.loads(json.dumps(compute()))  # the same plain types whether computed now or read back
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps({"key": key, "row": row}))
    partial.replace(path)  # whole or absent: a stop mid-write leaves no half row behind
    return row
