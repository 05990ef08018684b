"""MLP bounds: reading an MLP, the exact constant of ReLU MLPs, ECLipsE-Fast, LipSDP-Neuron, and their order."""

import itertools

import numpy as np
import pytest
import scipy.optimize
import torch
from conftest import random_mlp
from torch import nn

from lipschitz_dd.bounds import (
    eclipse_fast,
    exact_lipschitz,
    jacobian_spectral_norms,
    mlp_from_module,
    optimised_lower_bound,
    product_bound,
)
from lipschitz_dd.bounds.eclipse import eclipse_fast_weights
from lipschitz_dd.models import FCN, Toy2DFCN


def brute_force_constant(net) -> float:
    """Independent exact constant: every one of the 2^(hidden neurons) patterns, kept if its region has an
    interior (a ball of radius > 1e-7 by LP over all constraints at once), max of ||J||_2 (dense SVD)."""
    mlp = mlp_from_module(net)
    ws, bs = mlp.weights, mlp.biases
    widths = mlp.hidden_widths
    n = mlp.input_dim
    best = 0.0
    for bits in itertools.product([0, 1], repeat=sum(widths)):
        rows, offs = [], []
        a, c = np.eye(n), np.zeros(n)
        cursor = 0
        for k, width in enumerate(widths):
            pattern = np.array(bits[cursor : cursor + width], dtype=float)
            cursor += width
            a, c = ws[k] @ a, ws[k] @ c + bs[k]
            neg, pos = mlp.activations[k].pieces
            sign = 2 * pattern - 1
            rows.append(sign[:, None] * a)
            offs.append(sign * c)
            slope = np.where(pattern > 0, pos, neg)
            a, c = slope[:, None] * a, slope * c
        g, h = np.vstack(rows), np.concatenate(offs)
        norms = np.linalg.norm(g, axis=1)
        live = norms > 1e-12
        if np.any(~live & (h <= 0)):
            continue
        g, h = g[live] / norms[live, None], h[live] / norms[live]
        res = scipy.optimize.linprog(
            np.r_[np.zeros(n), -1.0],
            A_ub=np.hstack([-g, np.ones((len(h), 1))]),
            b_ub=h,
            bounds=[(None, None)] * n + [(None, 1.0)],
            method="highs",
        )
        if res.status == 0 and res.x[-1] > 1e-7:
            best = max(best, float(np.linalg.svd(ws[-1] @ a, compute_uv=False)[0]))
    return best


def sampled_max(net, n_points=20000, scale=3.0, seed=0) -> float:
    x = torch.randn(
        n_points, mlp_from_module(net).input_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    return float(jacobian_spectral_norms(net, x * scale).max())


# ---------------------------------------------------------------- reading an MLP


def test_mlp_from_fcn_net_matches_the_network_and_adds_the_output_activation_as_a_layer():
    model = FCN(input_dim=5, widths=[7, 6], bias=True, num_classes=3, loss="mse").double()  # LeakyReLU output
    mlp = mlp_from_module(model.net)
    assert mlp.hidden_widths == [7, 6, 3]
    assert [a.name for a in mlp.activations] == ["relu", "relu", "leaky_relu"]
    np.testing.assert_array_equal(mlp.weights[-1], np.eye(3))
    x = torch.randn(10, 5, dtype=torch.float64)
    np.testing.assert_allclose(mlp.forward(x.numpy()), model.net(x).detach().numpy(), rtol=1e-12, atol=1e-12)


def test_mlp_from_module_merges_linear_layers_and_rejects_other_layers():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 2)).double()
    mlp = mlp_from_module(net)
    assert mlp.hidden_widths == [5]
    x = torch.randn(4, 3, dtype=torch.float64)
    np.testing.assert_allclose(mlp.forward(x.numpy()), net.eval()(x).detach().numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="layer 1 is Conv1d"):
        mlp_from_module(nn.Sequential(nn.Linear(3, 4), nn.Conv1d(1, 1, 1)))
    with pytest.raises(ValueError, match="not an MLP"):
        mlp_from_module(nn.Conv1d(1, 1, 1))


# ---------------------------------------------------------------- exact constant


@pytest.mark.parametrize(
    ("sizes", "seed", "activation"),
    [((2, 4, 4, 2), 0, nn.ReLU), ((3, 5, 3, 2), 1, nn.ReLU), ((2, 4, 3, 3), 2, nn.LeakyReLU), ((2, 10, 3), 3, nn.ReLU)],
)
def test_exact_matches_brute_force_over_all_patterns(sizes, seed, activation):
    net = random_mlp(sizes, seed, activation)
    result = exact_lipschitz(net, time_limit=60, method="branch and bound")  # 2-D inputs default to planar
    truth = brute_force_constant(net)
    assert result.exact and result.method == "branch and bound"
    assert result.lower == pytest.approx(truth, rel=1e-9)
    assert result.upper == pytest.approx(truth, rel=1e-8)
    # the reported point is real: the network's Jacobian norm there is the value
    assert float(jacobian_spectral_norms(net, torch.from_numpy(result.point)[None])) == pytest.approx(
        result.lower, rel=1e-9
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_one_hidden_layer_enumeration_matches_brute_force(seed):
    net = random_mlp((6, 5, 3), seed)  # 5 <= 6 independent rows: all 32 patterns exist
    result = exact_lipschitz(net)
    assert result.method == "enumeration" and result.regions == 32
    assert result.lower == pytest.approx(brute_force_constant(net), rel=1e-9)
    assert float(jacobian_spectral_norms(net, torch.from_numpy(result.point)[None])) == pytest.approx(
        result.lower, rel=1e-9
    )


def test_exact_with_a_budget_returns_a_certified_interval():
    net = random_mlp((3, 8, 8, 2), 4)
    truth = exact_lipschitz(net, time_limit=120)
    assert truth.exact
    cut = exact_lipschitz(net, max_lps=3, samples=0)
    assert not cut.exact
    assert cut.lower <= truth.lower * (1 + 1e-9) and truth.lower <= cut.upper * (1 + 1e-9)
    assert cut.upper <= product_bound(mlp_from_module(net)) * (1 + 1e-9)


def test_exact_constant_of_the_toy_net_lies_between_its_grid_maximum_and_its_product_bound():
    torch.manual_seed(0)
    model = Toy2DFCN(width=10).double().eval()
    result = exact_lipschitz(model.net, time_limit=120)
    axis = torch.linspace(-4, 4, 201, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    grid_max = float(jacobian_spectral_norms(model.net, grid).max())
    assert result.exact
    assert grid_max <= result.lower * (1 + 1e-9)
    assert result.upper <= product_bound(mlp_from_module(model.net))
    assert result.lower >= sampled_max(model.net, scale=10.0) * (1 - 1e-9)


def test_exact_rejects_smooth_activations():
    with pytest.raises(ValueError, match="ReLU"):
        exact_lipschitz(random_mlp((2, 3, 2), 0, nn.Tanh))


# ---------------------------------------------------------------- ECLipsE-Fast


def s_procedure_matrix(weights, c, lams, rho):
    """The LipSDP matrix with scalar multipliers (alpha beta terms dropped), built block by block."""
    sizes = [weights[0].shape[1], *[w.shape[0] for w in weights[:-1]]]
    off = np.r_[0, np.cumsum(sizes)]
    f = np.zeros((off[-1], off[-1]))
    f[: sizes[0], : sizes[0]] = np.eye(sizes[0])
    for k in range(1, len(weights)):
        blk = slice(off[k], off[k + 1])
        prev = slice(off[k - 1], off[k])
        f[blk, blk] = lams[k - 1] * np.eye(sizes[k])
        f[blk, prev] = -c * lams[k - 1] * weights[k - 1]
        f[prev, blk] = f[blk, prev].T
    last = slice(off[-2], off[-1])
    f[last, last] -= weights[-1].T @ weights[-1] / rho
    return f


@pytest.mark.parametrize("sizes", [(4, 6, 3), (3, 7, 5, 6, 2), (20, 30, 30, 10)])
def test_eclipse_fast_is_certified_by_its_own_matrix_inequality_and_below_the_product(sizes):
    net = random_mlp(sizes, 5)
    value = eclipse_fast(net)
    mlp = mlp_from_module(net)
    # recompute the closed-form multipliers independently (explicit inverses are fine in a test)
    x = np.eye(sizes[0])
    lams = []
    for w in mlp.weights[:-1]:
        m = w @ np.linalg.inv(x) @ w.T
        lam = 1 / (2 * 0.25 * np.linalg.eigvalsh(m)[-1])
        lams.append(lam)
        x = lam * np.eye(len(m)) - 0.25 * lam**2 * m
    f = s_procedure_matrix(mlp.weights, 0.5, lams, value**2 * (1 + 1e-9))
    assert np.linalg.eigvalsh(f)[0] >= -1e-9 * np.abs(f).max()
    f_tighter = s_procedure_matrix(mlp.weights, 0.5, lams, value**2 * (1 - 1e-6))
    assert np.linalg.eigvalsh(f_tighter)[0] < 0  # and it is the least rho for these multipliers
    assert value <= product_bound(mlp)
    assert value >= sampled_max(net) * (1 - 1e-12)


def test_eclipse_fast_of_a_linear_map_and_of_one_layer_products():
    w = np.diag([3.0, 1.0])
    assert eclipse_fast_weights([w], []) == pytest.approx(3.0)
    # ReLU slopes [0, 1] and orthogonal W's: lambda_1 = 2, X_1 = I, so the bound is ||W_2|| = 1 (= product)
    q1, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((4, 4)))
    q2, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((4, 4)))
    assert eclipse_fast_weights([q1, q2], [(0.0, 1.0)]) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="alpha"):
        eclipse_fast_weights([q1, q2], [(-1.0, 1.0)])


# ---------------------------------------------------------------- LipSDP


def test_lipsdp_is_certified_and_between_exact_and_eclipse():
    pytest.importorskip("cvxpy")
    from lipschitz_dd.bounds.lipsdp import lipsdp_neuron

    net = random_mlp((3, 6, 5, 2), 6)
    result = lipsdp_neuron(net)
    exact = exact_lipschitz(net, time_limit=60)
    assert exact.exact
    assert exact.lower <= result.value
    assert result.value <= eclipse_fast(net) * (1 + 1e-6)
    assert result.value >= result.solver_value * (1 - 1e-6)
    assert result.value == pytest.approx(result.solver_value, rel=1e-3)  # the certificate costs little


def test_lipsdp_input_compression_keeps_the_constant():
    pytest.importorskip("cvxpy")
    from lipschitz_dd.bounds.lipsdp import lipsdp_neuron

    net = random_mlp((3, 5, 2), 7)
    wide = nn.Sequential(nn.Linear(12, 3, bias=False), *net).double()  # an orthonormal-row front layer
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((12, 3)))
    wide[0].weight.data = torch.from_numpy(q.T.copy())
    compressed = lipsdp_neuron(wide)
    assert compressed.lmi_size == 3 + 5  # input dimension 12 compressed to rank 3
    assert compressed.value == pytest.approx(lipsdp_neuron(net).value, rel=1e-4)


# ---------------------------------------------------------------- the sandwich


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_sandwich_order_on_random_nets(seed):
    """Theory: every sampled Jacobian norm <= exact <= LipSDP <= ECLipsE-Fast <= product (LipSDP <=
    ECLipsE-Fast because ECLipsE-Fast's multipliers are feasible for LipSDP-Neuron; allowed 1e-6 for the
    solver). The optimised bound starts from the top sampled points and only accepts increases, so
    sampled max <= optimised <= exact holds by construction (each value is a real point's norm)."""
    net = random_mlp((3, 7, 6, 2), seed)
    x = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    sampled = float(jacobian_spectral_norms(net, x).max())
    optimised = optimised_lower_bound(net, x, top_m=4, steps=40).value
    exact = exact_lipschitz(net, time_limit=60)
    eclipse = eclipse_fast(net)
    product = product_bound(mlp_from_module(net))
    assert exact.exact
    assert sampled <= optimised <= exact.lower * (1 + 1e-9)
    assert exact.upper <= eclipse <= product
    try:
        from lipschitz_dd.bounds.lipsdp import lipsdp_neuron
    except ImportError:
        return
    pytest.importorskip("cvxpy")
    sdp = lipsdp_neuron(net).value
    assert exact.upper <= sdp <= eclipse * (1 + 1e-6)
