"""LipschitzCallback on user code that strays from the plain pattern: non-tensor outputs, no forward, integer
inputs, streamed data, one callback reused for several fits, loaders passed straight to validate/test."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from conftest import CLASSES, DIM, ToyData, ToyNet, dense_jacobian_norms, make_trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lipschitz_dd.bounds import upper_bound
from lipschitz_dd.callbacks.lipschitz import LipschitzCallback


class TupleOutput(ToyNet):
    """forward returns (logits, features), as models with auxiliary outputs do."""

    def forward(self, x: Tensor):
        return self.net(x), x

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0])[0], batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("test/loss", nn.functional.cross_entropy(self(batch[0])[0], batch[1]))


class NoForward(ToyNet):
    """Calls its network as self.model(x) in the steps and defines no forward."""

    def __init__(self):
        super().__init__(batchnorm=False)
        self.model = self.net
        del self.net

    forward = nn.Module.forward  # what LightningModule leaves: raises NotImplementedError

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.model(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("test/loss", nn.functional.cross_entropy(self.model(batch[0]), batch[1]))


class TokenNet(ToyNet):
    """Integer token ids in, an embedding first: the input Jacobian does not exist."""

    def __init__(self):
        super().__init__(batchnorm=False)
        self.net = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(4 * DIM, CLASSES))


def lipschitz_rows(trainer) -> list[str]:
    return [k for k in trainer.callback_metrics if k.startswith("lipschitz/")]


def test_tuple_output_warns_without_output_and_is_measured_with_it(tmp_path):
    model = TupleOutput(batchnorm=False)
    trainer = make_trainer(tmp_path, [LipschitzCallback(progress_bar=False)], max_epochs=2, logger=False)
    with pytest.warns(RuntimeWarning, match="cannot measure this model.*Tensor of logits"):
        trainer.fit(model, datamodule=ToyData())
    assert trainer.current_epoch == 2 and not lipschitz_rows(trainer)

    callback = LipschitzCallback(output=0, progress_bar=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=2, logger=False)
    trainer.fit(model, datamodule=ToyData())
    expected = dense_jacobian_norms(model.net, ToyData().train_x).max()
    assert callback.last_metrics["lipschitz/lower"] == pytest.approx(float(expected), rel=1e-5)
    assert callback.last_metrics["lipschitz/upper_available"] == 1.0


def test_module_without_forward_warns_and_network_names_its_submodule(tmp_path):
    trainer = make_trainer(tmp_path, [LipschitzCallback(progress_bar=False)], max_epochs=1, logger=False)
    with pytest.warns(RuntimeWarning, match="defines no forward.*network="):
        trainer.fit(NoForward(), datamodule=ToyData())
    assert not lipschitz_rows(trainer)

    model, callback = NoForward(), LipschitzCallback(network="model", progress_bar=False)
    make_trainer(tmp_path, [callback], max_epochs=1, logger=False).fit(model, datamodule=ToyData())
    expected = dense_jacobian_norms(model.model, ToyData().train_x).max()
    assert callback.last_metrics["lipschitz/lower"] == pytest.approx(float(expected), rel=1e-5)


def test_integer_inputs_warn_and_training_goes_on(tmp_path):
    tokens = torch.randint(10, (30, DIM), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(CLASSES, (30,), generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(tokens, labels), batch_size=8)
    trainer = make_trainer(tmp_path, [LipschitzCallback(progress_bar=False)], max_epochs=2, logger=False)
    with pytest.warns(RuntimeWarning, match="floating point"):
        trainer.fit(TokenNet(), loader, loader)
    assert trainer.current_epoch == 2 and not lipschitz_rows(trainer)


class Endless(IterableDataset):
    """An infinite stream of (x, y) samples."""

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for _ in itertools.count():
            yield torch.randn(DIM, generator=g), torch.randint(CLASSES, (), generator=g)


def test_an_endless_stream_is_measured_up_to_the_trainer_limit(tmp_path):
    callback = LipschitzCallback(upper=False, progress_bar=False)
    loader = DataLoader(Endless(), batch_size=4)
    trainer = make_trainer(tmp_path, [callback], max_epochs=2, logger=False, limit_train_batches=3, limit_val_batches=0)
    trainer.fit(ToyNet(batchnorm=False), loader)  # hung forever before: the stream was read to its end
    points = [x for x, _ in itertools.islice(iter(loader), 3)]
    expected = dense_jacobian_norms(trainer.lightning_module, torch.cat(points))
    assert callback.last_metrics["lipschitz/avg"] == pytest.approx(float(expected.mean()), rel=1e-5)


def test_a_reused_callback_starts_afresh_for_every_fit(tmp_path):
    callback = LipschitzCallback(progress_bar=False)
    make_trainer(tmp_path, [callback], max_epochs=2, logger=False).fit(ToyNet(hidden=16), datamodule=ToyData())
    second = ToyNet(hidden=7, batchnorm=False)  # another width: the old theta_0 and traced graph do not fit
    theta_0 = torch.cat([p.detach().flatten() for p in second.parameters()])
    make_trainer(tmp_path, [callback], max_epochs=2, logger=False).fit(second, datamodule=ToyData())
    assert [h["epoch"] for h in callback.history] == [0.0, 1.0, 2.0]
    second.eval()
    assert callback.last_metrics["lipschitz/upper"] == pytest.approx(
        upper_bound(second, ToyData().train_x[:1]).value, rel=1e-4
    )
    theta = torch.cat([p.detach().flatten() for p in second.parameters()])
    assert callback.last_metrics["params/dist_init"] == pytest.approx(float((theta - theta_0).norm()), rel=1e-5)


def test_validate_with_loaders_only_omits_the_training_set_bounds(tmp_path):
    data = ToyData()
    model, callback = ToyNet(), LipschitzCallback(test=True, progress_bar=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1, logger=False)
    trainer.fit(model, data.train_dataloader(), data.val_dataloader())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = trainer.validate(model, data.val_dataloader(), verbose=False)[0]
    assert "lipschitz/lower" not in metrics and "lipschitz/avg" not in metrics  # was NaN
    assert metrics["lipschitz/lower_test"] == pytest.approx(
        float(dense_jacobian_norms(model, data.test_x).max()), rel=1e-5
    )
    assert all(math.isfinite(v) for k, v in metrics.items() if k.startswith("lipschitz/"))
    assert not any("diverged" in str(w.message) for w in caught)


class SplitData(ToyData):
    """Different validation and test sets, held only by the loaders (no in-memory test_x to take first)."""

    def __init__(self):
        super().__init__()
        self.val_x, self.val_y, self.test_x, self.test_y = self.test_x, self.test_y, None, None

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.val_x, self.val_y), batch_size=4)

    def test_dataloader(self):
        return DataLoader(TensorDataset(self.train_x[:10], self.train_y[:10]), batch_size=4)


def test_trainer_test_measures_the_test_loader(tmp_path):
    data, model = SplitData(), ToyNet()
    trainer = make_trainer(tmp_path, [LipschitzCallback(test=True, progress_bar=False)], logger=False)
    tested = trainer.test(model, datamodule=data, verbose=False)[0]
    assert tested["lipschitz/lower_test"] == pytest.approx(
        float(dense_jacobian_norms(model, data.train_x[:10]).max()), rel=1e-5
    )
