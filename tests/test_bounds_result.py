"""One result type for bounds: every public bound states its kind, which way it errs and whether that is certified,
accepts an nn.Module, and its value is the number it returned before (computed here independently)."""

from __future__ import annotations

import copy
import json
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from lipschitz_dd.bounds import (
    Bound,
    BoundResult,
    eclipse_fast,
    evolution_bounds,
    exact_lipschitz,
    exact_lipschitz_planar,
    jacobian_spectral_norms,
    lower_bound,
    optimised_lower_bound,
    pairwise_lipschitz,
    product_bound,
    upper_bound,
)
from lipschitz_dd.bounds.eclipse import eclipse_fast_weights
from lipschitz_dd.bounds.mlp import mlp_from_module


@pytest.fixture
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()


@pytest.fixture
def x():
    return torch.randn(30, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def states(result, kind, errs, certified):
    assert isinstance(result, BoundResult)
    assert (result.kind, result.errs, result.certified) == (kind, errs, certified)


def test_eclipse_fast_is_a_certified_upper_bound_with_the_old_number(net):
    mlp = mlp_from_module(net)
    result = eclipse_fast(net)
    states(result, "upper", "high", True)
    assert result.value == eclipse_fast_weights(mlp.weights, [a.slope_range for a in mlp.activations])
    assert eclipse_fast(mlp) == result  # an MLP still works


def test_product_bound_accepts_a_module_and_keeps_its_number(net):
    expected = 1.0
    for layer in net:
        if isinstance(layer, nn.Linear):
            expected *= float(torch.linalg.matrix_norm(layer.weight.detach(), ord=2))
    result = product_bound(net)
    states(result, "upper", "high", True)
    assert result.value == pytest.approx(expected, rel=1e-12)
    assert product_bound(mlp_from_module(net)) == result


def test_pairwise_lipschitz_is_a_certified_lower_bound_with_the_brute_force_number(net, x):
    with torch.no_grad():
        out = net(x)
    ratios = [
        float(torch.linalg.vector_norm(out[i] - out[j]) / torch.linalg.vector_norm(x[i] - x[j]))
        for i in range(len(x))
        for j in range(len(x))
        if i != j
    ]
    result = pairwise_lipschitz(net, x)
    states(result, "lower", "low", True)
    assert result.value == pytest.approx(max(ratios), rel=1e-12)


def test_lower_bound_value_is_its_max(net, x):
    result = lower_bound(net, x, batch_size=7)
    states(result, "lower", "low", True)
    assert result.value == result.max == float(jacobian_spectral_norms(net, x).double().max())


@pytest.mark.parametrize("certified", [False, True])
def test_upper_bound_states_whether_it_is_certified(net, x, certified):
    result = upper_bound(net, x[:1], certified=certified)
    states(result, "upper", "high", certified)
    assert result.value >= lower_bound(net, x).value


class Square(nn.Module):
    def forward(self, x):
        return x * x


def test_an_unavailable_upper_bound_has_no_value_and_is_not_certified(x):
    result = upper_bound(Square(), x[:1], certified=True)  # x -> x^2 is not globally Lipschitz
    assert not result.available and result.value is None
    states(result, "upper", "high", False)


def test_exact_lipschitz_says_exact_or_lower(net):
    result = exact_lipschitz(net)
    states(result, "exact", "none", True)
    assert result.value == result.lower == pytest.approx(result.upper)
    cut = exact_lipschitz(net, max_lps=1, samples=0, method="branch and bound")
    if not cut.exact:
        states(cut, "lower", "low", True)
        assert cut.value == cut.lower <= result.value * (1 + 1e-9)
    planar = exact_lipschitz_planar(net)
    states(planar, "exact", "none", True)
    assert planar.value == pytest.approx(result.value, rel=1e-9)


def test_optimised_lower_bound_is_a_certified_lower_bound(net, x):
    result = optimised_lower_bound(net, x, top_m=2, steps=3)
    states(result, "lower", "low", True)
    assert result.value >= result.start_value == pytest.approx(lower_bound(net, x).value, rel=1e-12)


def test_evolution_bounds_are_estimates_erring_low_with_the_formula_numbers():
    bounds = evolution_bounds(c_theta=2.0, path_length=5.0, radius=4.0, c_x0=1.0, clip_norm=50.0, max_lr=0.1, steps=3)
    bound1, bound2 = bounds  # unpacks as the tuple it was
    for bound in bounds:
        states(bound, "estimate", "low", False)
    assert (bound1.value, bound2.value) == (2.0 / 4.0 * 2.0 * 5.0 + 1.0, 2.0 / 4.0 * 2.0 * 50.0 * 0.1 * 3 + 1.0)
    assert bounds.bound1 is bound1 and math.isnan(evolution_bounds(1.0, 1.0, 1.0, 0.0).bound2)


def test_bound_is_a_float_that_survives_copies_pickles_json_and_formatting():
    b = Bound(2.5, "upper", certified=True, method="m")
    assert isinstance(b, float) and 2 * b == 5.0 and type(2 * b) is float
    for other in (copy.deepcopy(b), pickle.loads(pickle.dumps(b))):
        assert (other, other.kind, other.errs, other.certified, other.method) == (2.5, "upper", "high", True, "m")
    assert json.dumps(b) == "2.5" and f"{b}" == "2.5" and f"{b:.2f}" == "2.50" and "kind='upper'" in repr(b)
    assert np.float64(b) == 2.5
    with pytest.raises(ValueError, match="kind"):
        Bound(1.0, "upper-ish", certified=True)
    with pytest.raises(ValueError, match="estimate must say"):
        Bound(1.0, "estimate", certified=False)
