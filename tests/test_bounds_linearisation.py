"""The mixed derivative's norm by JVP/VJP power iteration against the dense matrix from nested autograd."""

from __future__ import annotations

import copy

import torch
from torch import nn

from lipschitz_dd.bounds.linearisation import linearisation_check, mixed_derivative_norms, parameter_distance


def _dense_mixed_norm(model: nn.Module, x: torch.Tensor) -> float:
    """Spectral norm of the (K*P) x d matrix d/dx (d f / d theta), built entry by entry with nested autograd."""
    params = list(model.parameters())

    def flat_param_jacobian(xi: torch.Tensor) -> torch.Tensor:
        out = model(xi.unsqueeze(0)).reshape(-1)
        rows = []
        for k in range(out.numel()):
            grads = torch.autograd.grad(out[k], params, create_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
        return torch.stack(rows).reshape(-1)

    dense = torch.autograd.functional.jacobian(flat_param_jacobian, x)  # [K*P, d]
    return float(torch.linalg.matrix_norm(dense, ord=2))


def test_mixed_derivative_norms_match_dense_svd():
    torch.manual_seed(0)
    for activation in (nn.Tanh(), nn.ReLU()):
        model = nn.Sequential(nn.Linear(3, 5), activation, nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        x = torch.randn(4, 3, dtype=torch.float64)
        got = mixed_derivative_norms(model, x, max_iter=500, tol=1e-12)
        want = torch.tensor([_dense_mixed_norm(model, xi) for xi in x], dtype=torch.float64)
        assert torch.allclose(got, want, rtol=1e-6), (got, want)


def test_linearisation_check_distance_and_constants():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    initial = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    x = torch.randn(5, 3, dtype=torch.float64)
    check = linearisation_check(initial, model, x, batch_size=2)
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(check.distance - 0.1 * n_params**0.5) < 1e-9
    assert parameter_distance(initial, {k: v.detach() for k, v in initial.named_parameters()}) == 0.0
    norms = torch.stack([torch.linalg.matrix_norm(torch.autograd.functional.jacobian(model, xi), ord=2) for xi in x])
    assert abs(check.c_lower_now - float(norms.max())) < 1e-9
    assert check.first_order == check.c_lower_init + check.distance * check.mixed_sup_init
