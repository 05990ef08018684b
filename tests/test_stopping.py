"""GradNormStopping with a user's module and loaders (not lipschitz_dd.models/data): it must not change
training, must take the gradient over the training set, and must only act inside `fit`."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lipschitz_dd.callbacks.stopping import GradNormStopping, full_batch_gradient_norm


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randint(3, (n,), generator=g))


class Net(pl.LightningModule):
    """A tiny classifier with dropout (draws from the global RNG in training) and `batch_loss`."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)

    def batch_loss(self, batch):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def training_step(self, batch, batch_idx):
        return self.batch_loss(batch)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.log("val/loss", self.batch_loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(callbacks, epochs: int = 2) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


@pytest.mark.parametrize("own_generator", [False, True], ids=["global-rng", "loader-generator"])
def test_training_is_the_same_with_and_without_it(own_generator):
    def run(callbacks):
        pl.seed_everything(0, verbose=False)
        model = Net()
        generator = torch.Generator().manual_seed(5) if own_generator else None
        train = DataLoader(_data(24, 0), batch_size=8, shuffle=True, generator=generator)
        _trainer(callbacks).fit(model, train, DataLoader(_data(8, 1), batch_size=8))
        return [p.detach().clone() for p in model.parameters()], torch.rand(3)

    (with_params, with_draw), (without_params, without_draw) = run([GradNormStopping(target=None)]), run([])
    assert all(torch.equal(a, b) for a, b in zip(with_params, without_params, strict=False))
    assert torch.equal(with_draw, without_draw)  # the global RNG ends where it would have


class TwoValLoaders(pl.LightningDataModule):
    """A user's datamodule whose second validation loader is another held-out set, not the training set."""

    def __init__(self, train_eval: bool = False):
        super().__init__()
        self.train, self.val, self.extra = _data(24, 0), _data(8, 1), _data(16, 2)
        if train_eval:
            self.train_eval_dataloader = lambda: DataLoader(self.train, batch_size=24)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=8, shuffle=True)

    def val_dataloader(self):
        return [DataLoader(self.val, batch_size=8), DataLoader(self.extra, batch_size=8)]


@pytest.mark.parametrize("train_eval", [False, True], ids=["train-loader", "train_eval_dataloader"])
def test_gradient_is_over_the_training_set_not_a_second_val_loader(train_eval):
    pl.seed_everything(0, verbose=False)
    model, data, stopper = Net(), TwoValLoaders(train_eval), GradNormStopping(target=None)
    _trainer([stopper], epochs=1).fit(model, datamodule=data)
    model.eval()
    expected, _ = full_batch_gradient_norm(model, DataLoader(data.train, batch_size=5), model.batch_loss)
    other, _ = full_batch_gradient_norm(model, DataLoader(data.extra, batch_size=5), model.batch_loss)
    assert stopper.last_grad_norm == pytest.approx(expected, rel=1e-5)
    assert other != pytest.approx(expected, rel=1e-3)


def test_validate_and_test_after_fit_leave_it_alone():
    pl.seed_everything(0, verbose=False)
    model, stopper = Net(), GradNormStopping(target=None)
    val = DataLoader(_data(8, 1), batch_size=8)
    trainer = _trainer([stopper], epochs=1)
    trainer.fit(model, DataLoader(_data(24, 0), batch_size=8, shuffle=True), val)
    after_fit = stopper.last_grad_norm
    trainer.validate(model, val, verbose=False)
    assert "train/grad_norm" not in trainer.callback_metrics
    model.test_step = model.validation_step
    trainer.test(model, val, verbose=False)
    assert stopper.last_grad_norm == after_fit and not stopper.converged
