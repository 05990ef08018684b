"""A drop-in LipschitzCallback leaves a user's logged rows as they were (issue 21): same logger steps, same
columns (Lightning's `epoch` included) and values for the user's metrics, with and without the callback; it adds
only its own keys, and on a user's WandbLogger plots lipschitz/* against `epoch`."""

from __future__ import annotations

import csv
import os

import lightning.pytorch as pl
import torch
from conftest import make_trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lipschitz_dd.callbacks import LipschitzCallback


class PlainNet(pl.LightningModule):
    """A user's module: logs `my_loss` once per epoch, nothing else; knows nothing of lipschitz_dd."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.layers(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("my_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_rows(tmp_path, callbacks) -> list[dict[str, str]]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(3, (64,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)  # 8 updates per epoch
    logger = CSVLogger(str(tmp_path), name="user", version=0)
    trainer = make_trainer(tmp_path, callbacks, max_epochs=3, logger=logger)
    trainer.fit(PlainNet(), train_dataloaders=loader)
    with open(os.path.join(logger.log_dir, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def user_view(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows that hold a user metric, reduced to the user's columns (everything but lipschitz/* and params/*)."""
    own = ("lipschitz/", "params/")
    return [{k: v for k, v in row.items() if not k.startswith(own)} for row in rows if row.get("my_loss")]


def test_user_steps_and_columns_are_unchanged(tmp_path):
    plain = fit_rows(tmp_path / "plain", [])
    measured = fit_rows(tmp_path / "measured", [LipschitzCallback(every_n_epochs=1, progress_bar=False)])
    assert [r["step"] for r in user_view(plain)] == ["7", "15", "23"]  # Lightning's steps, as in the issue
    assert user_view(measured) == user_view(plain)  # steps, epoch column and values
    assert set(plain[0]) == {"epoch", "my_loss", "step"}
    extra = set(measured[0]) - set(plain[0])
    assert extra and all(k.startswith(("lipschitz/", "params/")) for k in extra)
    per_epoch = [r for r in measured if r.get("lipschitz/lower") and r.get("my_loss")]
    assert [r["epoch"] for r in per_epoch] == ["0", "1", "2"]  # measured after each epoch, in that epoch's row


class FakeRun:
    def __init__(self) -> None:
        self.defined: list[tuple[str, str | None]] = []

    def define_metric(self, name, step_metric=None, **kwargs):
        self.defined.append((name, step_metric))

    def log(self, *args, **kwargs):
        pass


def test_wandb_logger_plots_lipschitz_keys_against_epoch(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    run = FakeRun()
    monkeypatch.setattr(WandbLogger, "experiment", property(lambda self: run))
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    callback = LipschitzCallback(every_n_epochs=1, progress_bar=False)
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(16, 4, generator=g), torch.randint(3, (16,), generator=g)))
    trainer = make_trainer(tmp_path, [callback], max_epochs=1, logger=logger)
    trainer.fit(PlainNet(), train_dataloaders=loader)
    assert ("lipschitz/*", "epoch") in run.defined
