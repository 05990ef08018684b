"""Evolution-bound ingredients against dense computations, and the callback on a tiny run."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from lipschitz_dd.bounds.evolution import data_radius, evolution_bounds, parameter_jacobian_norms, path_length_step


def _dense_param_jacobian(model: nn.Module, xi: torch.Tensor) -> torch.Tensor:
    out = model(xi.unsqueeze(0)).reshape(-1)
    rows = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(o, list(model.parameters()), retain_graph=True)])
        for o in out
    ]
    return torch.stack(rows)


def test_parameter_jacobian_norms_match_dense_svd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    want = torch.stack([torch.linalg.matrix_norm(_dense_param_jacobian(model, xi), ord=2) for xi in x])
    assert torch.allclose(parameter_jacobian_norms(model, x), want, rtol=1e-10)


def test_data_radius_is_the_largest_pairwise_distance():
    x = torch.randn(13, 2, 3)
    brute = max(float((a - b).norm()) for a, b in itertools.product(x, x))
    assert abs(data_radius(x, chunk=4) - brute) < 1e-5


def test_path_length_step_and_bounds():
    model = nn.Linear(2, 2, bias=False)
    previous = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.weight.add_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
    assert abs(path_length_step(previous, model) - 5.0) < 1e-6
    assert path_length_step(previous, model) == 0.0  # `previous` now holds the current parameters
    b1, b2 = evolution_bounds(c_theta=2.0, path_length=5.0, radius=4.0, c_x0=1.0, clip_norm=50.0, max_lr=0.1, steps=3)
    assert b1 == 2 / 4 * 2 * 5 + 1 and abs(b2 - (2 / 4 * 2 * 50 * 0.1 * 3 + 1)) < 1e-12
    assert evolution_bounds(1.0, 1.0, 1.0, 0.0)[1] != evolution_bounds(1.0, 1.0, 1.0, 0.0)[1]  # NaN without B


def test_callback_logs_the_bounds_with_the_per_update_path():
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from lipschitz_dd.callbacks.evolution import EvolutionBound

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
    callback = EvolutionBound(every_n_epochs=1, clip_norm=5.0, points=x)
    model = Tiny()
    theta_0 = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        gradient_clip_val=5.0,
    )
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8))
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert callback.steps == 8 and callback.max_lr == 0.1
    assert callback.path_length >= float((theta - theta_0).norm()) - 1e-6  # triangle inequality
    metrics = trainer.callback_metrics
    want1, want2 = evolution_bounds(callback.c_theta, callback.path_length, data_radius(x), callback.c_x0, 5.0, 0.1, 8)
    assert abs(float(metrics["evolution/bound1"]) - want1) < 1e-4 * want1
    assert abs(float(metrics["evolution/bound2"]) - want2) < 1e-4 * want2
    assert float(metrics["evolution/c_theta"]) > 0
