"""First-order LipSDP-Neuron (lipsdp_first_order): its gradient, its certificate and its place in the sandwich,
each against an independent computation (autograd, a numpy LMI, the exact constant, Clarabel)."""

import numpy as np
import pytest
import torch
from conftest import random_mlp
from torch import nn

from lipschitz_dd.bounds import (
    FirstOrderLipSDPResult,
    eclipse_fast,
    exact_lipschitz,
    jacobian_spectral_norms,
    lipsdp_first_order,
    mlp_from_module,
    product_bound,
)
from lipschitz_dd.bounds.lipsdp import _prepare
from lipschitz_dd.bounds.lipsdp_fo import _Problem
from lipschitz_dd.bounds.result import BoundResult


def lmi(weights, ranges, rho, mults):
    """F(rho, T) of LipSDP-Neuron built independently from the network's own (uncompressed) weights: the
    quadratic form rho |dx|^2 - |W_L da_{L-1}|^2 - sum_k sum_i T_ki (da - a dz)_i (b dz - da)_i as a matrix in
    v = (dx, da_1, ..., da_{L-1}), with dz_k = W_k da_{k-1}; F >= 0 certifies Lip <= sqrt(rho)."""
    sizes = [weights[0].shape[1], *[w.shape[0] for w in weights[:-1]]]
    off = np.r_[0, np.cumsum(sizes)]
    n = off[-1]
    f = np.zeros((n, n))
    f[: sizes[0], : sizes[0]] = rho * np.eye(sizes[0])
    for k, (w, (a, b), t) in enumerate(zip(weights[:-1], ranges, mults, strict=True)):
        ez = np.zeros((w.shape[0], n))  # dz_k = ez v
        ez[:, off[k] : off[k + 1]] = w
        ea = np.zeros((w.shape[0], n))  # da_k = ea v
        ea[:, off[k + 1] : off[k + 2]] = np.eye(w.shape[0])
        # (da - a dz)(b dz - da) = -da^2 + (a + b) da dz - a b dz^2, subtracted with weights T
        f -= -(ea.T * t) @ ea + (a + b) / 2 * ((ea.T * t) @ ez + (ez.T * t) @ ea) - a * b * (ez.T * t) @ ez
    last = np.zeros((weights[-1].shape[0], n))
    last[:, off[-2] :] = weights[-1]
    return f - last.T @ last


def lmi_matrix(net, rho, mults):
    mlp = mlp_from_module(net)
    ranges = [a.slope_range for a in mlp.activations]
    return lmi(mlp.weights, ranges, rho, mults)


def sampled_max(net, n_points=4000, scale=3.0, seed=0):
    dim = mlp_from_module(net).input_dim
    x = torch.randn(n_points, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return float(jacobian_spectral_norms(net, x * scale).max())


ACTIVATIONS = {"relu": nn.ReLU, "leaky": lambda: nn.LeakyReLU(0.1), "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


# ---------------------------------------------------------------- the gradient


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_hand_written_gradient_matches_autograd(name):
    """The solver's gradient (rank-d_out adjoints through the Schur complements) against torch autograd
    through the same forward pass, for a smoothed top eigenvalue mu log sum exp(eig / mu)."""
    net = random_mlp((5, 7, 6, 4, 3), 0, ACTIVATIONS[name])
    prepared = _prepare(mlp_from_module(net))
    problem = _Problem(prepared.weights, prepared.ranges)
    gen = torch.Generator().manual_seed(1)
    t = [s * (1 + 0.3 * torch.rand(len(s), dtype=torch.float64, generator=gen)) for s in problem.eclipse_start()]
    state = problem.forward(t)
    assert state is not None
    mu = 0.1 * float(state[0][-1])
    omega = torch.softmax(state[0] / mu, 0)
    grads = problem.gradient(t, state, omega)
    leaves = [x.clone().requires_grad_(True) for x in t]
    eig = problem.forward(leaves)[0]
    (mu * torch.logsumexp(eig / mu, 0)).backward()
    for mine, leaf in zip(grads, leaves, strict=True):
        np.testing.assert_allclose(
            mine.numpy(), leaf.grad.numpy(), rtol=1e-9, atol=1e-12 * float(leaf.grad.abs().max())
        )


def test_rho_of_the_start_is_eclipse_fast_and_outside_the_domain_is_none():
    net = random_mlp((4, 8, 8, 3), 2)
    mlp = mlp_from_module(net)
    prepared = _prepare(mlp)
    problem = _Problem(prepared.weights, prepared.ranges)
    start = problem.eclipse_start()
    rho = float(problem.forward(start)[0][-1])
    assert np.sqrt(rho) * prepared.factor == pytest.approx(eclipse_fast(net), rel=1e-10)
    assert problem.forward([t * 1e3 for t in start]) is None  # X_k = T - c^2 T M T indefinite: large T


# ---------------------------------------------------------------- certified, and where it lies in the sandwich


@pytest.mark.parametrize(
    ("sizes", "seed", "name"), [((3, 6, 5, 2), 6, "relu"), ((3, 7, 6, 2), 10, "relu"), ((2, 5, 4, 3), 3, "leaky")]
)
def test_value_lies_between_the_exact_constant_and_eclipse(sizes, seed, name):
    net = random_mlp(sizes, seed, ACTIVATIONS[name])
    result = lipsdp_first_order(net, time_limit=None)
    exact = exact_lipschitz(net, time_limit=60)
    assert exact.exact
    assert exact.lower <= result.value
    assert result.value <= eclipse_fast(net) <= product_bound(mlp_from_module(net))
    assert result.value < 0.999 * eclipse_fast(net)  # it improves on its start here
    assert result.source == "first-order"
    assert isinstance(result, BoundResult)
    assert (result.kind, result.errs, result.certified) == ("upper", "high", True)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_certificate_holds_in_numpy_on_the_raw_weights(name):
    """F(value^2, value^2 T') built from the network's own weights (no compression, no normalisation) is
    positive semidefinite, and F((0.99 value)^2, same T) is not (the value is the least rho for these T)."""
    net = random_mlp((6, 12, 10, 4), 4, ACTIVATIONS[name])
    result = lipsdp_first_order(net, time_limit=None)
    rho = result.value**2
    mults = [rho * np.asarray(t) for t in result.multipliers]
    f = lmi_matrix(net, rho, mults)
    assert np.linalg.eigvalsh(f)[0] >= -1e-10 * np.linalg.norm(f)
    lower = lmi_matrix(net, (0.99 * result.value) ** 2, mults)
    assert np.linalg.eigvalsh(lower)[0] < 0
    assert result.value >= sampled_max(net)
    assert result.value <= eclipse_fast(net)


@pytest.mark.parametrize("max_iter", [0, 3])
def test_a_stopped_run_is_still_certified_and_not_above_eclipse(max_iter):
    net = random_mlp((5, 20, 20, 3), 8)
    result = lipsdp_first_order(net, max_iter=max_iter, time_limit=None)
    assert result.iterations == max_iter and result.stopped_by == "max_iter"
    f = lmi_matrix(net, result.value**2, [result.value**2 * np.asarray(t) for t in result.multipliers])
    assert result.source == "eclipse" or np.linalg.eigvalsh(f)[0] >= -1e-10 * np.linalg.norm(f)
    assert result.value <= eclipse_fast(net)
    if max_iter == 0:  # the start is ECLipsE-Fast's point: certified at (about) its value
        assert result.value == pytest.approx(eclipse_fast(net), rel=1e-6)


def test_time_limit_stops_the_iterations():
    net = random_mlp((10, 64, 64, 5), 1)
    result = lipsdp_first_order(net, time_limit=0.0, max_iter=10_000)
    assert result.stopped_by == "time_limit" and result.iterations == 0
    assert result.value <= eclipse_fast(net)


def test_matches_the_interior_point_optimum_on_a_small_net():
    pytest.importorskip("cvxpy")
    from lipschitz_dd.bounds.lipsdp import lipsdp_neuron

    net = random_mlp((5, 16, 16, 3), 5)
    reference = lipsdp_neuron(net)
    result = lipsdp_first_order(net, time_limit=None)
    assert result.value >= reference.solver_value * (1 - 1e-6)  # no certified value below the SDP's optimum
    assert result.value <= reference.value * 1.01  # within 1 % of the optimum


def test_warm_start_from_a_previous_result_converges_in_fewer_iterations():
    net = random_mlp((8, 48, 48, 4), 3)
    first = lipsdp_first_order(net, time_limit=None)
    with torch.no_grad():  # a small training-like step
        gen = torch.Generator().manual_seed(0)
        for p in net.parameters():
            p.add_(1e-3 * torch.randn(p.shape, dtype=p.dtype, generator=gen) * p.abs().mean())
    cold = lipsdp_first_order(net, time_limit=None)
    warm = lipsdp_first_order(net, init=first, time_limit=None)
    assert warm.warm_started and not cold.warm_started
    assert warm.iterations < cold.iterations
    assert warm.value <= cold.value * (1 + 2e-3)
    # a previous result of another shape is not used
    other = lipsdp_first_order(random_mlp((8, 10, 4), 0), time_limit=None)
    assert not lipsdp_first_order(net, init=other, max_iter=5, time_limit=None).warm_started


# ---------------------------------------------------------------- closed forms and bad input


def test_closed_forms_and_bad_input():
    linear = nn.Sequential(nn.Linear(4, 3)).double()
    result = lipsdp_first_order(linear)
    assert result.value == pytest.approx(float(torch.linalg.matrix_norm(linear[0].weight.detach(), 2)), rel=1e-12)
    zero = random_mlp((3, 4, 2), 0)
    zero[2].weight.data.zero_()
    assert lipsdp_first_order(zero).value == 0.0
    assert isinstance(result, FirstOrderLipSDPResult)
    with pytest.raises(ValueError, match="alpha"):
        lipsdp_first_order(random_mlp((3, 4, 2), 0, lambda: nn.LeakyReLU(-0.5)))
    with pytest.raises(ValueError, match="not an MLP"):
        lipsdp_first_order(nn.Conv1d(1, 1, 1))
    with pytest.raises(ValueError, match="init must be"):
        lipsdp_first_order(random_mlp((3, 4, 2), 0), init=1.0)
    small = random_mlp((3, 4, 2), 0)
    assert lipsdp_first_order(small, device="cpu").value == lipsdp_first_order(small).value
    with pytest.raises(ValueError, match="max_iter"):
        lipsdp_first_order(random_mlp((3, 4, 2), 0), memory=0)


# ---------------------------------------------------------------- in the callback (lipschitz/upper_sdp)


def test_callback_upper_sdp_uses_the_first_order_solver_warm_started_beyond_the_old_cap():
    from lipschitz_dd.callbacks import MLPBounds
    from lipschitz_dd.callbacks._mlp_bounds import MLPBoundsTracker

    net = random_mlp((10, 64, 64, 3), 9)  # 128 hidden neurons: over the interior-point solver's cap of 100
    tracker = MLPBoundsTracker(MLPBounds(sdp_every=1))
    warnings = []

    def warn(key, message):
        warnings.append(message)

    first = tracker.compute(net, lambda: None, 0, False, warn)
    assert warnings == [] and "mlp/sdp" in first
    assert tracker._sdp_previous is not None and not tracker._sdp_previous.warm_started
    assert first["mlp/sdp"] == tracker._sdp_previous.value <= first["mlp/eclipse"]
    with torch.no_grad():
        net[0].weight.mul_(1.01)
    second = tracker.compute(net, lambda: None, 1, True, warn)
    assert tracker._sdp_previous.warm_started  # started from the first measurement's multipliers
    assert second["mlp/sdp"] <= second["mlp/eclipse"]
    assert second["mlp/sdp"] >= sampled_max(net)
    # the interior-point solver keeps its cap
    capped = MLPBoundsTracker(MLPBounds(sdp_every=1, sdp_solver="interior_point"))
    assert "mlp/sdp" not in capped.compute(net, lambda: None, 0, False, warn)
    assert "128 hidden neurons > sdp_max_neurons=100" in warnings[-1]


def test_callback_sdp_options_are_checked():
    from lipschitz_dd.callbacks import MLPBounds

    with pytest.raises(ValueError, match="sdp_solver"):
        MLPBounds(sdp_solver="mosek")
    with pytest.raises(ValueError, match="sdp_time_limit"):
        MLPBounds(sdp_time_limit=0)
