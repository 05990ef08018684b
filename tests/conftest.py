"""Test settings (offline W&B, one thread) and the helpers several test modules share: a toy LightningModule and
datamodule, a trainer factory, CSV rows and dense Jacobian norms. Test modules import them with
`from conftest import ...` (never from a sibling test module)."""

from __future__ import annotations

import csv
import os
import signal

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset


@pytest.fixture(autouse=True)
def default_interrupt_handlers():
    """Every test starts and ends with Python's own SIGINT / SIGTERM handlers. In the full suite's order a
    test left SIGINT ignored (Lightning sets SIG_IGN for its shutdown when a fit in this process meets a
    KeyboardInterrupt, and leaves it so), and the later test that presses Ctrl-C on the sweep runner
    (test_sweep_accidents) then waited forever for a run that ignores SIGTERM."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# Two cores are shared by every process on this machine: keep tests single-threaded.
torch.set_num_threads(1)

N_TRAIN, N_TEST, DIM, CLASSES = 30, 12, 5, 3


def toy_arrays(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_TRAIN + N_TEST, DIM, generator=g)
    y = torch.randint(CLASSES, (N_TRAIN + N_TEST,), generator=g)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


class ToyData(pl.LightningDataModule):
    """30 training points (shuffled batches of 8), 12 test points used as the validation set."""

    def __init__(self, shuffle: bool = True, batch_size: int = 8):
        super().__init__()
        self.shuffle, self.batch_size = shuffle, batch_size
        self.train_x, self.train_y, self.test_x, self.test_y = toy_arrays()

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.train_x, self.train_y), batch_size=self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.test_x, self.test_y), batch_size=self.batch_size)

    test_dataloader = val_dataloader


class DictDataset(Dataset):
    """Samples as dicts {"image": x, "label": y}, as many vision pipelines yield them."""

    def __init__(self, x: Tensor, y: Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i]}


class ToyNet(pl.LightningModule):
    """Linear -> BatchNorm -> ReLU -> Dropout -> Linear, SGD; logs test/loss in validation."""

    def __init__(self, hidden: int = 16, dropout: float = 0.2, batchnorm: bool = True, lr: float = 0.1):
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(DIM, hidden),
            nn.BatchNorm1d(hidden) if batchnorm else nn.Identity(),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, CLASSES),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @staticmethod
    def split(batch):
        if isinstance(batch, dict):
            return batch["image"], batch["label"]
        return batch[0], batch[1]

    def training_step(self, batch, batch_idx):
        x, y = self.split(batch)
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = self.split(batch)
        self.log("test/loss", nn.functional.cross_entropy(self(x), y), on_epoch=True)

    test_step = validation_step

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def make_trainer(tmp_path, callbacks, max_epochs: int = 3, logger=True, **kwargs) -> pl.Trainer:
    """A quiet CPU trainer; logger True: a CSVLogger in tmp_path/run/version_0, False: none, else the logger(s)
    given."""
    if logger is True:
        logger = CSVLogger(str(tmp_path), name="run", version=0)
    options = dict(
        max_epochs=max_epochs,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        accelerator="cpu",
        devices=1,
    )
    options.update(kwargs)
    return pl.Trainer(logger=logger, **options)


def read_rows(trainer: pl.Trainer) -> list[dict[str, float]]:
    """Rows of the CSVLogger's metrics.csv, empty cells dropped (read from the path: touching
    `logger.experiment` in the main process after a spawned DDP run would start a new, empty file)."""
    path = os.path.join(trainer.logger.log_dir, "metrics.csv")
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def dense_jacobian_norms(model: nn.Module, x: Tensor) -> Tensor:
    """||J(x_i)||_2 by an independent route: the explicit Jacobian of each sample from
    torch.autograd.functional.jacobian (one sample at a time) and a dense SVD."""
    model.eval()
    norms = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda z: model(z.unsqueeze(0)).reshape(-1), xi)
        norms.append(torch.linalg.svdvals(jac.reshape(jac.shape[0], -1).double())[0])
    return torch.stack(norms)


def without_timing(metrics: dict[str, float]) -> dict[str, float]:
    """Logged metrics without the wall-time one, for comparing two runs' values."""
    return {k: v for k, v in metrics.items() if k != "lipschitz/seconds"}


def random_mlp(sizes, seed, activation=nn.ReLU, bias_scale=1.0):
    """A float64 MLP with the given layer sizes; biases spread so the kinks cross the region near 0."""
    torch.manual_seed(seed)
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=False):
        layers += [nn.Linear(fan_in, fan_out), activation()]
    net = nn.Sequential(*layers[:-1]).double().eval()
    for layer in net:
        if isinstance(layer, nn.Linear):
            layer.bias.data.normal_(0, bias_scale)
    return net
