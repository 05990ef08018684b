"""The linearisation check: how much can C_lower move along the parameter path to first order?

For f(x; theta): R^d -> R^K, a first-order Taylor expansion of the input Jacobian in theta gives
    sup_x ||J(x; theta)||_2 <= sup_x ||J(x; theta_0)||_2 + ||theta - theta_0||_2 * sup_x ||M(x; theta_0)||_2,
with M(x; theta) = d^2 f / (dx dtheta), a (K*P) x d matrix per point (P parameters). A small sup ||M|| next to a
large growth of C_lower says the displacement ||theta - theta_0|| (not the curvature) drives the growth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap


def _flat_param_jacobian(model: nn.Module, params: dict[str, Tensor]):
    """x (one point, the model's input shape) -> d f / d theta as a [K, P] matrix (K VJPs by jacrev)."""

    def outputs(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return functional_call(model, p, (xi.unsqueeze(0),)).reshape(-1)

    def jac(xi: Tensor) -> Tensor:
        blocks = jacrev(outputs)(params, xi)
        return torch.cat([b.reshape(b.shape[0], -1) for b in blocks.values()], dim=1)

    return jac


def mixed_derivative_norms(
    model: nn.Module,
    x: Tensor,
    max_iter: int = 100,
    tol: float = 1e-6,
    generator: torch.Generator | None = None,
) -> Tensor:
    """||d^2 f / (dx dtheta)(x_i)||_2 per point, [B]: the top singular value of the (K*P) x d mixed derivative.

    Power iteration on M^T M with one JVP (M v, forward in x through d f / d theta) and one VJP (M^T u) per step,
    vectorised over the batch; M itself is never formed (only d f / d theta, K x P, per point). Each iterate
    ||M v|| with ||v|| = 1 is <= the true norm: the result errs low, reaching it to `tol` (relative change).
    Evaluated at the model's current parameters, in its current mode (use eval mode).
    """
    params = {name: p.detach() for name, p in model.named_parameters()}
    jac = _flat_param_jacobian(model, params)
    flat_x = x.detach().reshape(len(x), -1)
    generator = generator or torch.Generator(device=x.device).manual_seed(0)
    v = torch.randn(flat_x.shape, generator=generator, device=x.device, dtype=x.dtype)
    v = v / v.norm(dim=1, keepdim=True)

    def forward(xi: Tensor, vi: Tensor) -> Tensor:
        return jvp(jac, (xi,), (vi.reshape(xi.shape),))[1]

    def backward(xi: Tensor, ui: Tensor) -> Tensor:
        return vjp(jac, xi)[1](ui)[0].reshape(-1)

    sigma = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    for _ in range(max_iter):
        mv = vmap(forward)(x.detach(), v)
        new_sigma = mv.flatten(1).norm(dim=1)
        w = vmap(backward)(x.detach(), mv)
        v = w / w.norm(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        converged = ((new_sigma - sigma).abs() <= tol * new_sigma.clamp_min(torch.finfo(x.dtype).tiny)).all()
        sigma = torch.maximum(sigma, new_sigma)
        if converged:
            break
    return sigma


def parameter_distance(model: nn.Module, initial: dict[str, Tensor]) -> float:
    """||theta - theta_0||_2 over all parameters, with `initial` a {name: tensor} copy taken at init."""
    squares = [(p.detach() - initial[name].to(p.device)).pow(2).sum() for name, p in model.named_parameters()]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


@dataclass(frozen=True)
class LinearisationCheck:
    """The check's numbers: C_lower at init and now (max over the points), sup ||M|| at init, the distance
    ||theta - theta_0|| and the first-order prediction C_lower(init) + distance * sup ||M|| (not a bound)."""

    c_lower_init: float
    c_lower_now: float
    mixed_sup_init: float
    distance: float

    @property
    def first_order(self) -> float:
        return self.c_lower_init + self.distance * self.mixed_sup_init


def linearisation_check(
    initial_model: nn.Module, model: nn.Module, x: Tensor, batch_size: int = 64
) -> LinearisationCheck:
    """C_lower of both models on `x` (exact input-Jacobian norms), sup ||M|| of `initial_model` on `x` and the
    parameter distance between the two (same architecture, parameters matched by name)."""
    from lipschitz_dd.bounds.jacobian import jacobian_spectral_norms

    c_init = max(float(jacobian_spectral_norms(initial_model, b).max()) for b in x.split(batch_size))
    c_now = max(float(jacobian_spectral_norms(model, b).max()) for b in x.split(batch_size))
    mixed = max(float(mixed_derivative_norms(initial_model, b).max()) for b in x.split(batch_size))
    initial = {name: p.detach() for name, p in initial_model.named_parameters()}
    return LinearisationCheck(c_init, c_now, mixed, parameter_distance(model, initial))
