"""Layer norms and layer constants against independent computations (explicit matrices, SVD, brute force)."""

import math

import pytest
import torch
from torch import nn

from lipschitz_dd.bounds import layer_constants as lc
from lipschitz_dd.bounds import rules
from lipschitz_dd.bounds.conv_operator import conv_explicit_bound, conv_fourier_bound, conv_geometry
from lipschitz_dd.bounds.gram import gram_max_spectral_bound, gram_spectral_bound
from lipschitz_dd.bounds.norm_estimates import power_iteration
from lipschitz_dd.bounds.operator_norms import conv_operator_norm, linear_operator_norm

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


def explicit_matrix(fn, in_shape):
    """The matrix of a linear map, built by applying it to every standard basis vector (float64)."""
    n = math.prod(in_shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    with torch.no_grad():
        return fn(basis).reshape(n, -1).T


def spectral_norm(matrix):
    return torch.linalg.svdvals(matrix)[0].item()


CONV_CASES = [  # (conv module, input shape of one sample)
    (nn.Conv2d(3, 4, 3, padding=1, bias=False), (3, 6, 6)),
    (nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 7, 6)),
    (nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), (4, 7, 7)),
    (nn.Conv2d(2, 4, (2, 3), stride=(1, 2)), (2, 5, 6)),
    (nn.Conv2d(2, 3, 4, padding="same"), (2, 6, 6)),  # asymmetric padding
    (nn.Conv2d(4, 8, 1, stride=2), (4, 6, 6)),
    (nn.Conv2d(3, 5, 7, stride=2, padding=3), (3, 9, 9)),
    (nn.Conv2d(4, 4, 3, padding=1, groups=4), (4, 5, 5)),  # depthwise
    (nn.Conv1d(3, 5, 5, stride=3, padding=2), (3, 11)),
    (nn.Conv1d(2, 4, 3, padding="same", dilation=2), (2, 9)),
    (nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), (2, 5, 5)),
    (nn.Conv2d(2, 4, 3, stride=2, padding=1, padding_mode="circular"), (2, 6, 4)),
    (nn.Conv1d(2, 3, 5, padding=4, dilation=2, padding_mode="circular"), (2, 7)),
    (nn.Conv1d(2, 3, 5, padding=1, dilation=2, padding_mode="circular"), (2, 7)),  # 1 output row: loose
    (nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 5, 5)),
    (nn.Conv2d(2, 3, 3, stride=2, padding=1, padding_mode="replicate"), (2, 6, 5)),
]


def _conv_case(index):
    conv, shape = CONV_CASES[index]
    torch.manual_seed(index)
    conv.reset_parameters()
    conv = conv.double()
    exact = spectral_norm(explicit_matrix(lambda x: conv._conv_forward(x, conv.weight, None), shape))
    return conv, shape, exact


@pytest.mark.parametrize("index", range(len(CONV_CASES)))
def test_conv_power_iteration_matches_svd_of_explicit_matrix(index):
    conv, shape, exact = _conv_case(index)
    estimate = conv_operator_norm(conv, shape, tol=1e-13, max_iters=4000, generator=torch.Generator().manual_seed(0))
    assert not estimate.certified
    assert estimate.value <= exact * (1 + 1e-9)  # power iteration errs low
    assert estimate.value == pytest.approx(exact, rel=1e-5)


@pytest.mark.parametrize("index", range(len(CONV_CASES)))
def test_conv_certified_bounds_are_above_the_exact_norm(index):
    conv, shape, exact = _conv_case(index)
    geo = conv_geometry(conv.weight, shape, conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode)
    fourier = conv_fourier_bound(conv.weight, geo)
    explicit = conv_explicit_bound(conv.weight, geo)
    certified = conv_operator_norm(conv, shape, certified=True)
    assert certified.certified
    assert fourier >= exact * (1 - 1e-12) and explicit >= exact * (1 - 1e-12)
    # Gram iteration on the explicit matrix is tight: looseness <= multiplicity^(1/2^13) of the top value
    assert explicit <= exact * 1.001
    # Tiny inputs make the circular embedding loose; padding that copies entries adds sqrt(copies).
    # circular padding whose output covers the whole input is exactly circulant: tight
    tight = conv.padding_mode == "circular" and conv.padding[0] * 2 == conv.dilation[0] * (conv.kernel_size[0] - 1)
    assert fourier <= exact * (1.001 if tight else 1.5 if conv.padding_mode == "zeros" else 2.5), fourier / exact
    assert exact * (1 - 1e-12) <= certified.value <= min(fourier, explicit) * (1 + 1e-12)


def test_conv_fourier_bound_is_tight_on_a_larger_input():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False).double()
    shape = (3, 16, 16)
    exact = spectral_norm(explicit_matrix(conv, shape))
    geo = conv_geometry(conv.weight, shape, 1, 1)
    ratio = conv_fourier_bound(conv.weight, geo) / exact
    assert 1 - 1e-12 <= ratio <= 1.02, ratio


def test_conv_norm_is_not_the_reshaped_kernel_norm():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False).double()
    exact = spectral_norm(explicit_matrix(conv, (3, 8, 8)))
    kernel_norm = spectral_norm(conv.weight.reshape(8, -1))
    value = conv_operator_norm(conv, (3, 8, 8), tol=1e-12, max_iters=3000).value
    assert value == pytest.approx(exact, rel=1e-5)
    assert abs(value - kernel_norm) > 0.05 * exact


def test_conv_accepts_weight_and_arguments_and_a_batch_shape():
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False).double()
    from_module = conv_operator_norm(conv, (2, 7, 7), certified=True).value
    from_weight = conv_operator_norm(conv.weight, (1, 2, 7, 7), stride=2, padding=1, certified=True).value
    assert from_module == pytest.approx(from_weight, rel=1e-12)


@pytest.mark.parametrize("bad", [dict(input_shape=(3, 7, 7)), dict(input_shape=(2, 7)), dict(input_shape=(2, 2, 2))])
def test_conv_rejects_shapes_that_do_not_fit(bad):
    conv = nn.Conv2d(2, 3, 3)
    with pytest.raises(ValueError):
        conv_operator_norm(conv, bad["input_shape"])


def test_linear_norm_power_and_certified_against_svd():
    torch.manual_seed(3)
    w = torch.randn(30, 17, dtype=torch.float64)
    exact = spectral_norm(w)
    power = linear_operator_norm(w, tol=1e-14, max_iters=5000)
    certified = linear_operator_norm(nn.Linear(17, 30).double().requires_grad_(False).weight.copy_(w), certified=True)
    assert power.value <= exact * (1 + 1e-12) and power.value == pytest.approx(exact, rel=1e-8)
    assert certified.certified and exact * (1 - 1e-12) <= certified.value <= exact * (1 + 1e-6)
    with pytest.raises(ValueError):
        linear_operator_norm(torch.randn(3))


def test_power_iteration_errs_low_and_warm_start_converges_at_once():
    torch.manual_seed(4)
    w = torch.randn(40, 40, dtype=torch.float64)
    exact = spectral_norm(w)
    early = linear_operator_norm(w, max_iters=2, tol=0.0, generator=torch.Generator().manual_seed(0))
    assert early.value <= exact
    converged = linear_operator_norm(w, max_iters=5000, tol=1e-14)
    w2 = w + 1e-4 * torch.randn(40, 40, dtype=torch.float64)  # parameters moved a little
    warm = linear_operator_norm(w2, max_iters=3, tol=1e-6, init=converged.vector)
    assert warm.iterations <= 3
    assert warm.value == pytest.approx(spectral_norm(w2), rel=1e-6)


def test_power_iteration_of_the_zero_map_is_zero():
    result = power_iteration(lambda v: 0 * v, lambda u: u, torch.ones(3))
    assert result.value == 0.0


def test_gram_bound_on_batched_complex_matrices():
    torch.manual_seed(5)
    a = torch.randn(20, 6, 9, dtype=torch.complex128)
    exact = torch.linalg.svdvals(a)[:, 0]
    for iters in (1, 3, 12):
        bound = gram_spectral_bound(a, iters)
        assert (bound >= exact * (1 - 1e-12)).all()
        assert (bound <= exact * 6 ** (1 / 2 ** (iters + 1)) * (1 + 1e-9)).all()  # rank^(1/2^(t+1))
    assert gram_spectral_bound(torch.zeros(2, 3, 3)).abs().max() == 0


# ------------------------------------------------------------------------------------- layer constants
def jacobian_norm(fn, x):
    jac = torch.autograd.functional.jacobian(fn, x).reshape(fn(x).numel(), x.numel())
    return spectral_norm(jac)


def test_max_pool_constant_overlapping_3x3_stride_2_is_2_and_attained():
    pool = nn.MaxPool2d(3, stride=2)
    in_shape, out_shape = (1, 7, 7), (1, 3, 3)
    rule = rules.module_rule(pool, in_shape, out_shape)
    assert rule == rules.Fixed(2.0)
    gen = torch.Generator().manual_seed(0)
    random_max = max(
        jacobian_norm(pool, torch.randn(1, 1, 7, 7, dtype=torch.float64, generator=gen)) for _ in range(20)
    )
    assert random_max <= 2.0 + 1e-12
    x = torch.randn(1, 1, 7, 7, dtype=torch.float64, generator=gen) * 0.1
    x[0, 0, 2, 2] = 10.0  # the corner shared by four windows is the max of all of them
    assert jacobian_norm(pool, x) == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize(
    "pool, in_shape",
    [
        (nn.MaxPool2d(2), (3, 8, 8)),
        (nn.MaxPool2d(8), (2, 8, 8)),
        (nn.MaxPool1d(3, stride=1, padding=1), (1, 9)),
        (nn.MaxPool2d(3, stride=2, padding=1, dilation=1, ceil_mode=True), (1, 6, 6)),
        (nn.AdaptiveMaxPool2d((3, 2)), (1, 7, 5)),
    ],
)
def test_max_pool_constant_is_attained_by_a_peak_and_bounds_random_jacobians(pool, in_shape):
    x = torch.randn(1, *in_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out_shape = tuple(pool(x).shape[1:])
    constant = rules.module_rule(pool, in_shape, out_shape).value
    # brute force: put a peak at every position, take the largest Jacobian norm
    best = 0.0
    for pos in range(math.prod(in_shape[1:])):
        peak = x.clone() * 0.01
        peak.view(1, in_shape[0], -1)[0, 0, pos] = 10.0
        best = max(best, jacobian_norm(pool, peak))
    assert best == pytest.approx(constant, rel=1e-12)
    assert jacobian_norm(pool, x) <= constant + 1e-12


@pytest.mark.parametrize(
    "pool, in_shape",
    [
        (nn.AvgPool2d(2), (1, 8, 8)),
        (nn.AvgPool2d(3), (1, 9, 9)),
        (nn.AvgPool2d(3, stride=1, padding=1), (1, 6, 6)),
        (nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (1, 7, 7)),
        (nn.AvgPool1d(4, 2), (1, 10)),
        (nn.AdaptiveAvgPool2d(1), (1, 4, 4)),
        (nn.AdaptiveAvgPool2d((3, 2)), (1, 7, 5)),
    ],
)
def test_avg_pool_constants_against_the_explicit_matrix(pool, in_shape):
    exact = spectral_norm(explicit_matrix(pool, in_shape))
    out_shape = tuple(pool(torch.zeros(1, *in_shape)).shape[1:])
    rule = rules.module_rule(pool, in_shape, out_shape)
    assert rule.get(False) == pytest.approx(exact, rel=1e-8)
    assert rule.get(True) >= exact * (1 - 1e-12)
    if isinstance(pool, nn.AvgPool2d) and pool.stride == pool.kernel_size:
        assert rule.get(True) == pytest.approx(1 / pool.kernel_size, rel=1e-12)  # non-overlapping: 1/k


def test_batchnorm_constant_closed_form_and_explicit_jacobian():
    bn = nn.BatchNorm2d(3).double().eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -2.0, 1.0]))
        bn.running_var.copy_(torch.tensor([1.0, 3.0, 0.25]))
    rule = rules.module_rule(bn, (3, 2, 2), (3, 2, 2))
    expected = max(0.5 / math.sqrt(1 + 1e-5), 2 / math.sqrt(3 + 1e-5), 1 / math.sqrt(0.25 + 1e-5))
    assert rule.compute() == pytest.approx(expected, rel=1e-12)
    assert rule.compute() == pytest.approx(jacobian_norm(bn, torch.randn(1, 3, 2, 2, dtype=torch.float64)), rel=1e-10)
    assert isinstance(rules.module_rule(nn.BatchNorm1d(3, track_running_stats=False), (3,), (3,)), rules.Unavailable)


@pytest.mark.parametrize(
    "module, expected",
    [
        (nn.ReLU(), 1.0),
        (nn.LeakyReLU(0.2), 1.0),
        (nn.LeakyReLU(-3.0), 3.0),
        (nn.Tanh(), 1.0),
        (nn.Sigmoid(), 0.25),
        (nn.ELU(2.0), 2.0),
        (nn.Hardswish(), 1.5),
        (nn.Softplus(), 1.0),
    ],
)
def test_simple_activation_constants(module, expected):
    assert rules.module_rule(module, (4,), (4,)).value == pytest.approx(expected)


@pytest.mark.parametrize(
    "module",
    [nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Mish(), nn.Sigmoid(), nn.ELU(), nn.SELU(), nn.Hardswish()],
)
def test_smooth_activation_constants_against_a_dense_derivative_grid(module):
    x = torch.linspace(-12, 12, 2_000_001, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(module(x).sum(), x)
    grid_max = grad.abs().max().item()
    constant = rules.module_rule(module, (1,), (1,)).value
    assert grid_max <= constant * (1 + 1e-12)
    assert constant == pytest.approx(grid_max, rel=1e-6)


def test_gelu_and_silu_constants_have_the_known_values():
    assert lc.GELU_CONSTANT == pytest.approx(1.128904, abs=1e-6)
    assert rules.module_rule(nn.SiLU(), (1,), (1,)).value == pytest.approx(1.09984, abs=1e-5)


def test_softmax_constant_half_bounds_jacobians():
    gen = torch.Generator().manual_seed(0)
    worst = max(
        jacobian_norm(lambda z: torch.softmax(z, -1), torch.randn(5, dtype=torch.float64, generator=gen) * 3)
        for _ in range(50)
    )
    assert worst <= 0.5
    assert jacobian_norm(
        lambda z: torch.softmax(z, -1), torch.tensor([0.0, 0.0, -50.0], dtype=torch.float64)
    ) == pytest.approx(0.5, rel=1e-9)
    assert rules.module_rule(nn.Softmax(-1), (5,), (5,)).value == 0.5


@pytest.mark.parametrize(
    "module", [nn.LayerNorm(4), nn.MultiheadAttention(4, 1), nn.GroupNorm(2, 4), nn.Hardshrink(), nn.Embedding(3, 4)]
)
def test_not_lipschitz_or_unknown_modules_are_unavailable_with_a_reason(module):
    rule = rules.module_rule(module, (4,), (4,))
    assert isinstance(rule, rules.Unavailable) and rule.reason


def test_nearest_upsampling_copies_each_entry():
    up = nn.Upsample(scale_factor=2, mode="nearest")
    exact = spectral_norm(explicit_matrix(up, (1, 3, 3)))
    assert rules.module_rule(up, (1, 3, 3), (1, 6, 6)).value == pytest.approx(exact, rel=1e-12)


def test_pruned_gram_max_bound_matches_the_max_of_the_batch():
    torch.manual_seed(6)
    a = torch.randn(300, 7, 5, dtype=torch.complex128) * torch.rand(300, 1, 1, dtype=torch.float64)
    exact = torch.linalg.svdvals(a)[:, 0].max().item()
    for iters in (2, 12):
        assert gram_max_spectral_bound(a, iters) >= exact * (1 - 1e-12)
        assert gram_max_spectral_bound(a, iters) <= gram_spectral_bound(a, iters).max().item() * (1 + 1e-12)
    assert gram_max_spectral_bound(a, 12) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("scale", [1e-200, 1e160])
def test_gram_bounds_at_extreme_scales(scale):
    """Squaring entries of 1e-200 or 1e160 underflows / overflows float64: the bound came out 0 or nan."""
    torch.manual_seed(0)
    matrix = torch.randn(6, 4, dtype=torch.float64)
    exact = torch.linalg.svdvals(matrix)[0].item() * scale
    bound = gram_spectral_bound(matrix * scale).item()
    assert exact * (1 - 1e-12) <= bound <= exact * (1 + 1e-6)
    assert exact * (1 - 1e-12) <= gram_max_spectral_bound((matrix * scale)[None]) <= exact * (1 + 1e-6)


def test_power_mode_is_scale_invariant_for_huge_and_non_finite_weights():
    """A diverging run's float32 weights of 1e10: ||A^T A v|| overflowed and the estimate came out 0 (an
    'upper bound' below the lower bound); weights with a NaN have no norm (NaN, not an exception)."""
    torch.manual_seed(0)
    weight = torch.randn(16, 40) * 1e10
    exact = torch.linalg.svdvals(weight.double())[0].item()
    assert linear_operator_norm(weight).value == pytest.approx(exact, rel=1e-4)
    conv = nn.Conv2d(3, 4, 3, bias=False)
    with torch.no_grad():
        conv.weight.mul_(1e12)
    reference = conv_operator_norm(conv.weight.double() * 1e-12, (3, 8, 8), certified=True).value * 1e12
    assert conv_operator_norm(conv, (3, 8, 8)).value == pytest.approx(reference, rel=1e-3)
    weight[0, 0] = float("nan")
    assert math.isnan(linear_operator_norm(weight).value)
