"""Read a finished run's network and training data back from its folder (for analyses on saved checkpoints).

Imports the run's model and data classes by their class_path in config.yaml: this is orchestration code, like
the CLI, not part of the report layer.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
import yaml

from lipschitz_dd.report.records import RunRecord


def checkpoint_files(record: RunRecord) -> list[Path]:
    """The run's checkpoints (checkpoints/*.ckpt), oldest first (by file time)."""
    return sorted((record.path / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch in a checkpoint's name ("epoch=<e>.ckpt", the CLI's naming: finished epochs), else None."""
    match = re.search(r"epoch=(\d+)", path.name)
    return int(match.group(1)) if match else None


def load_trained(
    record: RunRecord, split: str = "train", checkpoint: Path | None = None
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The run's last checkpoint (or `checkpoint`; eval mode, CPU) and its `split` ("train" or "test") points and
    labels, rebuilt from config.yaml (the same subset, label noise and seeds as the run)."""
    checkpoints = [checkpoint] if checkpoint is not None else checkpoint_files(record)
    if not checkpoints:
        raise FileNotFoundError(f"{record.path}: no checkpoint (run with checkpointing enabled)")
    config = yaml.safe_load((record.path / "config.yaml").read_text())

    def build(section: str):
        module, _, name = config[section]["class_path"].rpartition(".")
        return getattr(importlib.import_module(module), name)

    model = build("model").load_from_checkpoint(checkpoints[-1], map_location="cpu").eval()
    data = build("data")(**(config["data"].get("init_args") or {}))
    data.setup("fit")
    return model, getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
