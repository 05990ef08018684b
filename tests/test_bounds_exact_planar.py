"""The exact constant of 1- and 2-D-input ReLU MLPs by planar arrangement (bounds/exact_planar.py), checked
against brute force over all activation patterns, dense grids, the branch and bound and the one-hidden-layer
enumeration of exact.py, and a point-location check of the cells themselves."""

import itertools

import numpy as np
import pytest
import scipy.optimize
import torch
from conftest import random_mlp
from torch import nn

from lipschitz_dd.bounds import (
    exact_lipschitz,
    exact_lipschitz_planar,
    jacobian_spectral_norms,
    mlp_from_module,
    product_bound,
)
from lipschitz_dd.bounds.exact_planar import planar_regions


def brute_force_constant(net) -> float:
    """Independent exact constant: every one of the 2^(hidden neurons) activation patterns whose region holds a
    ball of radius > 1e-7 (one LP over all its constraints), max of ||J||_2 by a dense SVD."""
    mlp = mlp_from_module(net)
    n, best = mlp.input_dim, 0.0
    for bits in itertools.product([0.0, 1.0], repeat=sum(mlp.hidden_widths)):
        rows, offs, a, c, cursor = [], [], np.eye(n), np.zeros(n), 0
        for k, width in enumerate(mlp.hidden_widths):
            on = np.array(bits[cursor : cursor + width])
            cursor += width
            a, c = mlp.weights[k] @ a, mlp.weights[k] @ c + mlp.biases[k]
            rows.append((2 * on - 1)[:, None] * a)
            offs.append((2 * on - 1) * c)
            slope = np.where(on > 0, mlp.activations[k].pieces[1], mlp.activations[k].pieces[0])
            a, c = slope[:, None] * a, slope * c
        g, h = np.vstack(rows), np.concatenate(offs)
        norms = np.linalg.norm(g, axis=1)
        live = norms > 1e-12
        if np.any(~live & (h < 0)):  # a constant pre-activation of the wrong sign (0: either slope, same J)
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
            best = max(best, float(np.linalg.svd(mlp.weights[-1] @ a, compute_uv=False)[0]))
    return best


def jac(net, x: np.ndarray) -> np.ndarray:
    """Jacobians [B, m, n] of net at the points x [B, n] by autograd (float64), independent of the module."""
    xt = torch.from_numpy(np.atleast_2d(x))
    return torch.vmap(torch.func.jacrev(net))(xt).detach().numpy()


def grid(box, points: int) -> torch.Tensor:
    (x0, x1), (y0, y1) = box
    return torch.cartesian_prod(
        torch.linspace(x0, x1, points, dtype=torch.float64), torch.linspace(y0, y1, points, dtype=torch.float64)
    )


def grid_max(net, box, points: int) -> float:
    g = grid(box, points)
    return max(float(jacobian_spectral_norms(net, g[i : i + 200_000]).max()) for i in range(0, len(g), 200_000))


def random_points(n_in: int, seed: int = 0) -> torch.Tensor:
    """Gaussian points at scales 0.3 .. 300 (far points reach the unbounded cells)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(40_000, n_in, dtype=torch.float64, generator=gen)
    return x * torch.logspace(-0.5, 2.5, 40_000, dtype=torch.float64)[:, None]


def cell_of_points(regions, points: np.ndarray) -> np.ndarray:
    """For each point, how many cells contain it strictly inside (every edge's orientation test > 0)."""
    p = np.c_[points, np.ones(len(points))]
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    inside = np.zeros((len(points), len(regions.counts)), dtype=bool)
    for i in range(len(regions.counts)):
        v = regions.cell(i)
        w = np.roll(v, -1, axis=0)
        edge_normals = np.cross(v, w)  # det(v_i, v_{i+1}, p) = (v_i x v_{i+1}) . p
        inside[:, i] = np.all(p @ edge_normals.T > 1e-12, axis=1)
    return inside


# ---------------------------------------------------------------- brute force and grids


@pytest.mark.parametrize(
    ("sizes", "seed", "activation"),
    [((2, 5, 5, 2), 0, nn.ReLU), ((2, 5, 5, 2), 1, nn.LeakyReLU), ((2, 4, 3, 3, 2), 2, nn.ReLU)],
)
def test_planar_matches_brute_force_over_all_patterns_and_is_attained(sizes, seed, activation):
    net = random_mlp(sizes, seed, activation)
    result = exact_lipschitz_planar(net)
    assert result.exact and result.method == "planar arrangement"
    assert result.lower == pytest.approx(brute_force_constant(net), rel=1e-9)
    # attained: the Jacobian at the returned point is the cell's and has the returned norm
    j_point = jac(net, result.point)[0]
    np.testing.assert_allclose(j_point, result.jacobian, rtol=1e-9, atol=1e-12)
    assert np.linalg.norm(j_point, 2) == pytest.approx(result.lower, rel=1e-9)
    # and the point lies inside the returned cell (homogeneous orientation test)
    p = np.r_[result.point, 1.0]
    v = result.cell
    assert np.all(np.cross(v, np.roll(v, -1, axis=0)) @ p > 0)
    assert float(jacobian_spectral_norms(net, random_points(2)).max()) <= result.lower * (1 + 1e-9)


@pytest.mark.parametrize(("sizes", "seed"), [((2, 5, 5, 2), 3), ((2, 8, 8, 3), 4), ((2, 8, 8, 3), 5)])
def test_dense_grid_and_random_points_approach_the_exact_constant_from_below(sizes, seed):
    net = random_mlp(sizes, seed)
    box = ((-4.0, 4.0), (-4.0, 4.0))
    inside = exact_lipschitz_planar(net, box=box)
    whole = exact_lipschitz_planar(net)
    g_max = grid_max(net, box, 1000)
    sampled = float(jacobian_spectral_norms(net, random_points(2, seed)).max())
    assert inside.exact and whole.exact
    assert g_max <= inside.lower * (1 + 1e-12) and inside.lower <= whole.lower * (1 + 1e-12)
    assert sampled <= whole.lower * (1 + 1e-12)
    # the grid's spacing (0.008) is finer than these nets' steepest cells in the box: it finds the same value
    assert g_max == pytest.approx(inside.lower, rel=1e-12)
    assert np.all(np.abs(inside.point) <= 4.0)
    assert whole.upper <= product_bound(mlp_from_module(net)) * (1 + 1e-12)


def test_cells_partition_the_plane_and_carry_the_networks_jacobian():
    net = random_mlp((2, 6, 5, 3), 6, nn.LeakyReLU)
    regions = planar_regions(net)
    points = random_points(2, 1)[::20].numpy()  # 2,000 points at scales 0.3 .. 300
    inside = cell_of_points(regions, points)
    # almost every point lies strictly inside exactly one cell; never in two
    assert inside.sum(axis=1).max() == 1 and inside.sum(axis=1).mean() > 0.99
    hit = inside.any(axis=1)
    cell = inside[hit].argmax(axis=1)
    np.testing.assert_allclose(regions.jacobians[cell], jac(net, points[hit]), rtol=1e-9, atol=1e-12)
    # the interior points given for the cells lie in their own cells
    own = cell_of_points(regions, regions.points)
    assert np.array_equal(own.argmax(axis=1), np.arange(len(regions.counts))) and own.sum(axis=1).max() == 1


def test_cells_of_a_box_tile_it():
    net = random_mlp((2, 7, 6, 2), 7)
    box = ((-2.0, 3.0), (-1.0, 1.5))
    regions = planar_regions(net, box=box)
    areas = []
    for i in range(len(regions.counts)):
        v = regions.cell(i)
        xy = v[:, :2] / v[:, 2:]
        areas.append(0.5 * np.sum(xy[:, 0] * np.roll(xy[:, 1], -1) - np.roll(xy[:, 0], -1) * xy[:, 1]))
    assert min(areas) > 0  # counter-clockwise, none degenerate
    assert sum(areas) == pytest.approx(5.0 * 2.5, rel=1e-12)


# ---------------------------------------------------------------- against exact.py


@pytest.mark.parametrize(
    ("sizes", "seed", "activation"),
    [
        ((2, 8, 8, 3), 8, nn.ReLU),
        ((2, 6, 6, 6, 2), 9, nn.ReLU),
        ((2, 10, 6, 2), 10, nn.LeakyReLU),
        ((2, 12, 3), 11, nn.ReLU),
        ((1, 6, 6, 2), 12, nn.ReLU),
    ],
)
def test_planar_agrees_with_the_branch_and_bound_where_it_finishes(sizes, seed, activation):
    net = random_mlp(sizes, seed, activation)
    bb = exact_lipschitz(net, time_limit=120, method="branch and bound")
    planar = exact_lipschitz(net)  # auto: planar for inputs of rank <= 2
    assert bb.exact and bb.method == "branch and bound"
    assert planar.exact and planar.method == "planar arrangement"
    assert planar.lower == pytest.approx(bb.lower, rel=1e-12)
    assert float(jacobian_spectral_norms(net, torch.from_numpy(planar.point)[None])) == pytest.approx(
        planar.lower, rel=1e-9
    )


def test_one_hidden_layer_agrees_with_the_enumeration_of_exact_py():
    for seed in range(4):
        net = random_mlp((2, 2, 3), seed)  # 2 rows in 2-D: exact.py enumerates all 4 patterns
        enumerated = exact_lipschitz(net)
        planar = exact_lipschitz(net, method="planar")
        assert enumerated.method == "enumeration" and planar.method == "planar arrangement"
        assert planar.lower == pytest.approx(enumerated.lower, rel=1e-12)
    wide = random_mlp((2, 9, 3), 5)  # wider than the input: against brute force over the 512 patterns
    assert exact_lipschitz_planar(wide).lower == pytest.approx(brute_force_constant(wide), rel=1e-9)


def test_a_first_layer_of_rank_two_in_more_dimensions_is_compressed_to_the_plane():
    torch.manual_seed(13)
    first = nn.Linear(5, 6).double()
    first.weight.data = torch.randn(6, 2, dtype=torch.float64) @ torch.randn(2, 5, dtype=torch.float64)
    net = nn.Sequential(first, nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    for layer in net:
        if isinstance(layer, nn.Linear):
            layer.bias.data.normal_(0, 1)
    planar = exact_lipschitz(net)
    bb = exact_lipschitz(net, time_limit=120, method="branch and bound")
    assert planar.method == "planar arrangement" and planar.exact and bb.exact
    assert planar.lower == pytest.approx(bb.lower, rel=1e-12)
    assert planar.point.shape == (5,)
    assert float(jacobian_spectral_norms(net, torch.from_numpy(planar.point)[None])) == pytest.approx(
        planar.lower, rel=1e-9
    )
    np.testing.assert_allclose(planar.jacobian, jac(net, planar.point)[0], rtol=1e-9, atol=1e-12)


def test_degenerate_neurons_parallel_lines_and_constant_ones():
    net = random_mlp((2, 6, 4, 2), 14)
    w = net[0].weight.data
    w[1] = 2.5 * w[0]  # parallel lines (strips to infinity)
    w[2] = 0.0  # a neuron constant on the plane (its bias decides its slope)
    w[3], net[0].bias.data[3] = 0.0, 0.0  # a neuron identically zero
    result = exact_lipschitz_planar(net)
    assert result.exact
    assert result.lower == pytest.approx(brute_force_constant(net), rel=1e-9)
    rank_one = random_mlp((2, 5, 4, 2), 15)
    rank_one[0].weight.data = torch.randn(5, 1, dtype=torch.float64) * torch.tensor([[0.6, -0.8]])
    planar = exact_lipschitz_planar(rank_one)  # all layer-1 lines parallel, not compressed
    assert planar.lower == pytest.approx(exact_lipschitz(rank_one, method="branch and bound").lower, rel=1e-12)


# ---------------------------------------------------------------- budgets and errors


def test_a_budget_or_cell_cap_returns_a_certified_interval():
    net = random_mlp((2, 10, 10, 2), 16)
    truth = exact_lipschitz_planar(net)
    for kwargs in ({"time_limit": 0.0}, {"max_cells": 30}):
        cut = exact_lipschitz_planar(net, **kwargs)
        assert not cut.exact and "certified interval" in cut.notes[0]
        assert cut.lower <= truth.lower * (1 + 1e-12) <= cut.upper * (1 + 1e-12)
        assert cut.upper <= product_bound(mlp_from_module(net)) * (1 + 1e-12)
        if cut.point is not None:
            assert float(jacobian_spectral_norms(net, torch.from_numpy(cut.point)[None])) == pytest.approx(
                cut.lower, rel=1e-9
            )
    assert exact_lipschitz(net, time_limit=0.0).exact is False  # the hook passes the budget on


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="dimension 1 or 2, got 3"):
        exact_lipschitz_planar(random_mlp((3, 4, 2), 0))
    with pytest.raises(ValueError, match="ReLU"):
        exact_lipschitz_planar(random_mlp((2, 4, 2), 0, nn.Tanh))
    with pytest.raises(ValueError, match="box"):
        exact_lipschitz_planar(random_mlp((2, 4, 2), 0), box=((1, 0), (0, 1)))
    with pytest.raises(ValueError, match="box"):
        exact_lipschitz_planar(random_mlp((2, 4, 2), 0), box=(1, 2))
    with pytest.raises(ValueError, match="rank <= 2, got rank 3"):
        exact_lipschitz(random_mlp((3, 4, 4, 2), 0), method="planar")
    with pytest.raises(ValueError, match="method="):
        exact_lipschitz(random_mlp((2, 4, 4, 2), 0), method="lp")


@pytest.mark.slow
def test_a_wide_random_toy_net_is_exact_in_seconds():
    net = random_mlp((2, 100, 100, 3), 17)
    result = exact_lipschitz(net, time_limit=60)
    assert result.exact and result.method == "planar arrangement" and result.seconds < 60
    assert float(jacobian_spectral_norms(net, random_points(2, 3)).max()) <= result.lower * (1 + 1e-12)
    assert grid_max(net, ((-5, 5), (-5, 5)), 500) <= result.lower * (1 + 1e-12)
