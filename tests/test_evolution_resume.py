"""EvolutionBound keeps its state across a checkpoint: a resumed run ends with the path length, update count and
C_theta of an uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from conftest import ToyData, ToyNet, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lipschitz_dd.callbacks import EvolutionBound


def run(tmp_path, epochs: int, resume_from: str | None = None) -> EvolutionBound:
    torch.manual_seed(2)
    evolution = EvolutionBound(every_n_epochs=1, clip_norm=5.0, max_samples=20, batch_size=8)
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, save_top_k=0)
    trainer = make_trainer(tmp_path, [evolution, checkpoint], max_epochs=epochs, enable_checkpointing=True)
    trainer.fit(ToyNet(dropout=0.0, batchnorm=False), datamodule=ToyData(shuffle=False), ckpt_path=resume_from)
    return evolution


def test_resume_continues_path_length_steps_and_c_theta(tmp_path):
    full = run(tmp_path / "full", 4)
    part = run(tmp_path / "part", 2)
    resumed = run(tmp_path / "resumed", 4, resume_from=str(tmp_path / "part" / "ckpt" / "last.ckpt"))
    assert part.steps == 8 and resumed.steps == full.steps == 16
    assert resumed.path_length == pytest.approx(full.path_length, rel=1e-6)
    assert resumed.path_length > part.path_length
    assert resumed.c_theta == pytest.approx(full.c_theta, rel=1e-6)
    assert (resumed.c_x0, resumed.radius, resumed.max_lr) == (full.c_x0, full.radius, full.max_lr)
