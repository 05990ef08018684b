"""The small base of the four callbacks (callbacks/_base.py): isolation, schedule, declared state, point access."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lipschitz_dd.callbacks import EvolutionBound, FunctionSnapshot, GradNormStopping, LipschitzCallback
from lipschitz_dd.callbacks._base import PackageCallback
from lipschitz_dd.callbacks._schedule import Schedule


def test_the_four_callbacks_share_the_base():
    for cls in (LipschitzCallback, FunctionSnapshot, EvolutionBound, GradNormStopping):
        assert issubclass(cls, PackageCallback), cls


@pytest.mark.parametrize("freeze", [True, False])
def test_isolated_restores_modes_grads_and_every_random_stream(freeze):
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    net.train()
    net[2].eval()  # a submodule in its own mode must get it back, not the parent's
    net[0].weight.grad = torch.ones_like(net[0].weight)
    before_grad = net[0].weight.grad
    loader = DataLoader(TensorDataset(torch.randn(8, 3)), batch_size=4, shuffle=True, generator=torch.Generator())
    loader.generator.manual_seed(5)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    expected = (torch.rand(1), np.random.rand(), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    with torch.no_grad(), PackageCallback.isolated(net, freeze_parameters=freeze, loaders=[loader]):
        assert not net.training and not any(m.training for m in net.modules())
        assert torch.is_grad_enabled()
        assert all(p.requires_grad is not freeze for p in net.parameters())
        list(loader), torch.rand(5), np.random.rand(3), random.random()  # draws that must not leak
        x = torch.randn(2, 3, requires_grad=True)
        (grad,) = torch.autograd.grad(net(x).sum(), x)
        assert grad.shape == x.shape
    assert net.training and not net[2].training and net[1].training
    assert all(p.requires_grad for p in net.parameters())
    assert net[0].weight.grad is before_grad and net[1].weight.grad is None
    assert (torch.rand(1), np.random.rand(), random.random()) == expected
    assert torch.equal(loader.generator.get_state(), torch.Generator().manual_seed(5).get_state())


class _Stateful(PackageCallback):
    state_attributes = {"count": "count", "saved_tensor": "_tensor"}

    def __init__(self) -> None:
        self.count, self._tensor, self.loaded = 0, torch.zeros(2, requires_grad=True), False

    def on_state_loaded(self, state_dict):
        self.loaded = True


def test_declared_state_round_trips_and_tolerates_older_checkpoints():
    saved = _Stateful()
    saved.count, saved._tensor = 3, torch.tensor([1.0, 2.0], requires_grad=True)
    state = saved.state_dict()
    assert state["count"] == 3 and not state["saved_tensor"].requires_grad
    restored = _Stateful()
    restored.load_state_dict(state)
    assert restored.loaded and restored.count == 3 and torch.equal(restored._tensor, saved._tensor.detach())
    older = _Stateful()
    older.load_state_dict({"count": 7})  # a key missing from an earlier version keeps its value
    assert older.count == 7 and torch.equal(older._tensor, torch.zeros(2))


def test_schedules_of_the_callbacks():
    trainer = SimpleNamespace(max_epochs=9, max_steps=-1, global_step=0, should_stop=False)
    due = lambda cb: [e for e in range(1, 10) if cb.is_due(trainer, e)]  # noqa: E731
    assert due(EvolutionBound(every_n_epochs=4)) == [4, 8, 9]  # every n-th and the last
    assert due(GradNormStopping(every_n_epochs=4)) == [4, 8]  # every n-th only
    assert due(LipschitzCallback(every_n_epochs=4, dense_epochs=2, progress_bar=False)) == [1, 2, 4, 8, 9]
    assert Schedule(3, 0, measure_last=False).is_scheduled(7, last=True) is False


def test_evolution_bound_reads_points_from_a_map_style_training_loader():
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(x, torch.zeros(10, dtype=torch.long)), batch_size=4)
    trainer = SimpleNamespace(datamodule=None, train_dataloader=loader)
    callback = EvolutionBound(max_samples=6, seed=1)
    points = callback._points(trainer, torch.device("cpu"))
    from lipschitz_dd.callbacks._points import seeded_subset

    assert torch.equal(points, x[seeded_subset(10, 6, 1)])
    with pytest.raises(ValueError, match="EvolutionBound needs training points"):
        callback._points(SimpleNamespace(datamodule=None, train_dataloader=None), torch.device("cpu"))
