"""FunctionSnapshot on tiny models and data written as a user would (not lipschitz_dd.models/data).

Every saved array is checked against an independent computation: per-sample Jacobians from
torch.autograd.functional.jacobian (one sample at a time), direct forward passes, E||x||^2 by numpy.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lipschitz_dd.callbacks import FunctionSnapshot
from lipschitz_dd.callbacks.snapshot import SNAPSHOT_FILE

N_TRAIN, N_TEST, DIM, CLASSES = 40, 30, 6, 3
IMAGE = (2, 5, 5)


class Classifier(pl.LightningModule):
    """Any network with a CE training step and plain SGD."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Linear(16, CLASSES))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(IMAGE[0], 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, CLASSES),
    )


class InMemoryData(pl.LightningDataModule):
    """Holds train_x / test_x tensors, like lipschitz_dd's ArrayDataModule."""

    def __init__(self, shape: tuple[int, ...] = (DIM,)):
        super().__init__()
        g = torch.Generator().manual_seed(123)
        self.train_x, self.test_x = torch.randn(N_TRAIN, *shape, generator=g), torch.randn(N_TEST, *shape, generator=g)
        self.train_y = torch.randint(CLASSES, (N_TRAIN,), generator=g)
        self.test_y = torch.randint(CLASSES, (N_TEST,), generator=g)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.train_x, self.train_y), batch_size=10, shuffle=True)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.test_x, self.test_y), batch_size=10)


class LoaderOnlyData(InMemoryData):
    """The same data reachable only through its loaders (no train_x / test_x attributes)."""

    def __init__(self, shape: tuple[int, ...] = (DIM,)):
        super().__init__(shape)
        self.arrays = (self.train_x, self.train_y, self.test_x, self.test_y)
        del self.train_x, self.test_x, self.train_y, self.test_y

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.arrays[0], self.arrays[1]), batch_size=10, shuffle=True)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.arrays[2], self.arrays[3]), batch_size=10)


def fit(
    net: nn.Module, data: pl.LightningDataModule, snapshot: FunctionSnapshot, seed: int = 0, epochs: int = 2
) -> Classifier:
    pl.seed_everything(seed, verbose=False)
    model = Classifier(net())
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[snapshot],
    )
    trainer.fit(model, datamodule=data)
    return model


def load(run_dir) -> dict[str, np.ndarray]:
    with np.load(run_dir / SNAPSHOT_FILE) as archive:
        return dict(archive)


def autograd_jacobians(model: nn.Module, x: Tensor) -> Tensor:
    """[B, K, d] one sample at a time with torch.autograd.functional.jacobian (independent of the callback)."""
    rows = [
        torch.autograd.functional.jacobian(lambda v: model(v[None])[0].flatten(), xi).reshape(CLASSES, -1) for xi in x
    ]
    return torch.stack(rows)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mlp")
    data = InMemoryData()
    model = fit(mlp, data, FunctionSnapshot(run_dir=str(run_dir), test_points=20, train_points=16))
    return run_dir, data, model.eval()


def test_snapshot_shapes_and_fixed_sorted_subsets(mlp_run):
    run_dir, data, _ = mlp_run
    arrays = load(run_dir)
    assert arrays["test_outputs"].shape == (20, CLASSES) and arrays["test_outputs"].dtype == np.float32
    assert arrays["jacobians"].shape == (16, CLASSES, DIM) and arrays["jacobians"].dtype == np.float32
    assert arrays["f0"].shape == (CLASSES,) and arrays["mean_sq_norm"].shape == ()
    for name, n in (("test_indices", N_TEST), ("train_indices", N_TRAIN)):
        indices = arrays[name]
        assert (np.diff(indices) > 0).all() and indices.min() >= 0 and indices.max() < n
    assert float(arrays["seconds"]) > 0
    expected = (data.test_x.double().numpy() ** 2).sum(axis=1).mean()
    assert float(arrays["mean_sq_norm"]) == pytest.approx(expected, rel=1e-6)


def test_snapshot_values_match_direct_computation(mlp_run):
    run_dir, data, model = mlp_run
    arrays = load(run_dir)
    train_x = data.train_x[torch.as_tensor(arrays["train_indices"])]
    expected = autograd_jacobians(model, train_x)
    np.testing.assert_allclose(arrays["jacobians"], expected.numpy(), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        outputs = model(data.test_x[torch.as_tensor(arrays["test_indices"])])
        f0 = model(torch.zeros(1, DIM))[0]
    np.testing.assert_allclose(arrays["test_outputs"], outputs.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arrays["f0"], f0.numpy(), rtol=1e-5, atol=1e-6)


def test_other_training_seed_same_points_other_function(mlp_run, tmp_path):
    run_dir, data, _ = mlp_run
    fit(mlp, data, FunctionSnapshot(run_dir=str(tmp_path), test_points=20, train_points=16), seed=1)
    first, second = load(run_dir), load(tmp_path)
    np.testing.assert_array_equal(first["test_indices"], second["test_indices"])
    np.testing.assert_array_equal(first["train_indices"], second["train_indices"])
    assert not np.allclose(first["test_outputs"], second["test_outputs"])


def test_snapshot_leaves_rng_and_modes_untouched(mlp_run, tmp_path):
    _, data, model = mlp_run
    model.train()
    trainer = pl.Trainer(logger=False, enable_progress_bar=False)
    trainer.datamodule = data  # what fit would have attached
    torch.manual_seed(7)
    before = torch.get_rng_state()
    FunctionSnapshot(run_dir=str(tmp_path)).on_fit_end(trainer, model)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(m.training for m in model.modules()) and all(p.requires_grad for p in model.parameters())
    assert (tmp_path / SNAPSHOT_FILE).exists()
    model.eval()


def test_jacobian_budget_reduces_training_points(mlp_run, tmp_path):
    _, data, model = mlp_run
    trainer = pl.Trainer(logger=False, enable_progress_bar=False)
    trainer.datamodule = data
    snapshot = FunctionSnapshot(run_dir=str(tmp_path), train_points=16, max_jacobian_numbers=5 * CLASSES * DIM + 1)
    with pytest.warns(UserWarning, match="saving 5 points instead"):
        snapshot.on_fit_end(trainer, model)
    full = FunctionSnapshot(run_dir=str(tmp_path / "full"), train_points=16)
    full.on_fit_end(trainer, model)
    reduced = load(tmp_path)["train_indices"]
    assert len(reduced) == 5 and set(reduced) <= set(load(tmp_path / "full")["train_indices"])


def test_cnn_from_loaders_only(tmp_path):
    data = LoaderOnlyData(IMAGE)
    model = fit(cnn, data, FunctionSnapshot(run_dir=str(tmp_path), test_points=7, train_points=9)).eval()
    arrays = load(tmp_path)
    d = int(np.prod(IMAGE))
    assert arrays["jacobians"].shape == (9, CLASSES, d) and arrays["test_outputs"].shape == (7, CLASSES)
    train_x = data.arrays[0][torch.as_tensor(arrays["train_indices"])]
    np.testing.assert_allclose(arrays["jacobians"], autograd_jacobians(model, train_x).numpy(), rtol=1e-4, atol=1e-6)
    expected = (data.arrays[2].double().numpy() ** 2).reshape(N_TEST, -1).sum(axis=1).mean()
    assert float(arrays["mean_sq_norm"]) == pytest.approx(expected, rel=1e-6)


def test_no_affordable_jacobian_leaves_an_empty_array(tmp_path):
    trainer = pl.Trainer(logger=False, enable_progress_bar=False)
    trainer.datamodule = LoaderOnlyData()
    snapshot = FunctionSnapshot(run_dir=str(tmp_path), max_jacobian_numbers=CLASSES * DIM - 1)
    with pytest.warns(UserWarning, match="saving 0 points instead"):
        snapshot.on_fit_end(trainer, Classifier(mlp()))
    arrays = load(tmp_path)
    assert arrays["jacobians"].shape == (0, CLASSES, DIM) and arrays["test_outputs"].shape == (N_TEST, CLASSES)


def test_run_dir_defaults_to_log_dir(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = Classifier(mlp())
    trainer = pl.Trainer(
        max_epochs=1,
        default_root_dir=str(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[FunctionSnapshot(test_points=5, train_points=5)],
    )
    trainer.fit(model, datamodule=InMemoryData())
    assert (tmp_path / "lightning_logs" / "version_0" / SNAPSHOT_FILE).exists()


def test_failure_is_a_warning_not_a_failed_run(tmp_path):
    trainer = pl.Trainer(logger=False, enable_progress_bar=False)  # no datamodule, no loaders
    with pytest.warns(UserWarning, match="snapshot not written"):
        FunctionSnapshot(run_dir=str(tmp_path)).on_fit_end(trainer, Classifier(mlp()))
    assert not (tmp_path / SNAPSHOT_FILE).exists()


@pytest.mark.parametrize("option", ["test_points", "train_points", "max_jacobian_numbers", "batch_size"])
def test_bad_sizes_are_rejected(option):
    with pytest.raises(ValueError, match=option):
        FunctionSnapshot(**{option: 0})


class PairOutput(nn.Module):
    """A network whose forward returns (logits, features), as some users' models do."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(x), x


class PairClassifier(Classifier):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x)[0], y)


def test_non_tensor_model_output_is_a_warning_not_a_failed_run(tmp_path):
    snapshot = FunctionSnapshot(run_dir=str(tmp_path), test_points=5, train_points=5)
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[snapshot],
    )
    with pytest.warns(UserWarning, match="model output is a tuple, not a Tensor"):
        trainer.fit(PairClassifier(PairOutput()), datamodule=InMemoryData())
    assert trainer.state.finished and snapshot.path is None and not (tmp_path / SNAPSHOT_FILE).exists()
