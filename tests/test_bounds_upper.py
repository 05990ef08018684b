"""The graph-composed upper bound against independent computations (SVDs, explicit Jacobians, closed forms)."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lipschitz_dd.bounds.upper import LayerConstant, UpperBoundEstimator, UpperBoundResult, upper_bound


def spectral_norm(matrix):
    return torch.linalg.svdvals(matrix.detach().double())[0].item()


def jacobian_norms(model, x):
    """||J(x_i)||_2 per sample with torch.autograd.functional.jacobian (independent of the bounds code)."""
    jac = torch.autograd.functional.jacobian(lambda z: model(z).sum(0), x)  # (K, B, *input): samples independent
    jac = jac.movedim(1, 0).reshape(x.shape[0], jac.shape[0], -1)
    return torch.linalg.svdvals(jac.double())[:, 0]


def fcn(widths, bias=False):
    layers = []
    for a, b in zip(widths[:-1], widths[1:], strict=False):
        layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
    return nn.Sequential(*layers)


def nakkiran_cnn(w=2, batchnorm=False, classes=10):
    layers, channels = [], 3
    for i, pool in enumerate((1, 2, 2, 8)):
        layers += [nn.Conv2d(channels, w * 2**i, 3, padding=1, bias=False)]
        layers += [nn.BatchNorm2d(w * 2**i)] if batchnorm else []
        layers += [nn.ReLU(), nn.MaxPool2d(pool)]
        channels = w * 2**i
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels, classes, bias=False))


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 of width k (Nakkiran et al.), small enough for a test."""

    def __init__(self, k=2, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, k, 3, 1, 1, bias=False)
        blocks, cin = [], k
        for i, stride in enumerate((1, 2, 2, 2)):
            blocks += [PreActBlock(cin, k * 2**i, stride), PreActBlock(k * 2**i, k * 2**i, 1)]
            cin = k * 2**i
        self.layers = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, classes)

    def forward(self, x):
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(torch.flatten(out, 1))


def randomise_batchnorm(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.weight.copy_(torch.randn(m.num_features, generator=gen))


# --------------------------------------------------------------------------------------- composition
def test_linear_network_upper_is_the_product_of_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 9, bias=False), nn.Linear(9, 7), nn.Linear(7, 3, bias=False)).double()
    product = math.prod(spectral_norm(m.weight) for m in model)
    estimator = UpperBoundEstimator(model, torch.randn(2, 6, dtype=torch.float64), tol=1e-12, iters=5000)
    power, certified = estimator.compute(), estimator.compute(certified=True)
    assert (power.mode, certified.mode) == ("power", "certified") and power.available
    assert power.value == pytest.approx(product, rel=1e-6)
    assert product * (1 - 1e-12) <= certified.value <= product * (1 + 1e-4)
    assert [layer.op for layer in certified.layers] == ["Linear"] * 3
    assert all(isinstance(layer, LayerConstant) and layer.certified for layer in certified.layers)
    assert not any(layer.certified for layer in power.layers)
    assert certified.layers[-1].cumulative == pytest.approx(certified.value)


def test_single_linear_layer_lower_equals_upper_equals_its_norm():
    torch.manual_seed(1)
    model = nn.Linear(5, 4).double()
    norm = spectral_norm(model.weight)
    lower = jacobian_norms(model, torch.randn(3, 5, dtype=torch.float64)).max().item()
    result = upper_bound(model, torch.randn(1, 5, dtype=torch.float64), tol=1e-13, iters=5000)
    assert lower == pytest.approx(norm, rel=1e-12)
    assert result.value == pytest.approx(norm, rel=1e-8)
    certified = upper_bound(model, torch.randn(1, 5, dtype=torch.float64), certified=True)
    assert certified.value == pytest.approx(norm, rel=1e-6)


class Residual(nn.Module):
    def __init__(self, d=5):
        super().__init__()
        self.g = nn.Linear(d, d)

    def forward(self, x):
        return x + self.g(x)


class TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3, bias=False), nn.Linear(4, 3, bias=False)

    def forward(self, x):
        both = torch.cat([self.a(x), torch.tanh(self.b(x))], dim=1) * 3.0
        return both - torch.add(self.a(x), self.b(x), alpha=2)[:, :1].sum(1, True)


def test_residual_identity_is_one_plus_the_branch():
    torch.manual_seed(2)
    model = Residual().double()
    result = upper_bound(model, torch.randn(1, 5, dtype=torch.float64), certified=True)
    assert result.value == pytest.approx(1 + spectral_norm(model.g.weight), rel=1e-6)
    assert result.value >= spectral_norm(torch.eye(5, dtype=torch.float64) + model.g.weight)


def test_branches_cat_scale_and_weighted_add():
    torch.manual_seed(3)
    model = TwoBranches().double()
    la, lb = spectral_norm(model.a.weight), spectral_norm(model.b.weight)
    # cat: sqrt(La^2 + Lb^2), * 3; add(alpha=2): La + 2 Lb, then a slice (1) and a sum over 1 entry (1); the
    # subtraction broadcasts that one column to all 6: each entry copied 6 times, a factor sqrt(6)
    expected = 3 * math.sqrt(la**2 + lb**2) + math.sqrt(6) * (la + 2 * lb)
    result = upper_bound(model, torch.randn(1, 4, dtype=torch.float64), certified=True)
    assert result.available, result.reason
    assert result.value == pytest.approx(expected, rel=1e-6)
    x = torch.randn(64, 4, dtype=torch.float64)
    assert jacobian_norms(model, x).max().item() <= result.value


class MeanAndParameterScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.5, -4.0, 2.0]))

    def forward(self, x):
        return (x * self.scale).mean(dim=1, keepdim=True) / 0.25


def test_mean_parameter_scale_and_division():
    model = MeanAndParameterScale().double()
    result = upper_bound(model, torch.randn(1, 3, dtype=torch.float64), certified=True)
    exact = (model.scale.detach().abs().max() / math.sqrt(3) / 0.25).item()  # 4 * (1/sqrt 3) * 4
    assert result.value == pytest.approx(exact, rel=1e-12)
    with torch.no_grad():
        model.scale[1] = 1.0  # parameters are read at compute time
    assert upper_bound(model, torch.randn(1, 3, dtype=torch.float64)).value == pytest.approx(2 / math.sqrt(3) * 4)


def test_overlapping_max_pool_enters_with_its_factor():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.MaxPool2d(3, 2), nn.Flatten()).double()
    result = upper_bound(model, torch.randn(1, 1, 7, 7, dtype=torch.float64), certified=True)
    assert [layer.constant for layer in result.layers][1] == 2.0
    assert result.value == pytest.approx(2 * result.layers[0].constant, rel=1e-12)


# ------------------------------------------------------------------------------------- architectures
def test_fcn_certified_bounds_power_and_jacobians():
    torch.manual_seed(5)
    model = fcn([40, 32, 32, 10])
    estimator = UpperBoundEstimator(model, torch.randn(8, 40))
    power, certified = estimator.compute(), estimator.compute(certified=True)
    assert power.value <= certified.value * (1 + 1e-6)
    assert power.value == pytest.approx(certified.value, rel=1e-3)
    assert jacobian_norms(model, torch.randn(256, 40)).max().item() <= certified.value


@pytest.mark.parametrize("batchnorm", [False, True])
def test_nakkiran_cnn(batchnorm):
    torch.manual_seed(6)
    model = nakkiran_cnn(2, batchnorm)
    if batchnorm:
        randomise_batchnorm(model)
    model.train()  # the estimator evaluates in eval mode and restores the mode
    estimator = UpperBoundEstimator(model, torch.randn(4, 3, 32, 32), iters=300, tol=1e-6)
    assert model.training and all(m.training for m in model.modules())
    power, certified = estimator.compute(), estimator.compute(certified=True)
    assert power.available and certified.available
    assert power.value <= certified.value and certified.value <= 1.1 * power.value
    ops = [layer.op for layer in certified.layers]
    assert ops.count("Conv2d") == 4 and ops.count("MaxPool2d") == 4 and ops.count("BatchNorm2d") == 4 * batchnorm
    if batchnorm:
        bn = model[1]
        closed_form = (bn.weight.abs() / (bn.running_var + bn.eps).sqrt()).max().item()
        assert certified.layers[1].constant == pytest.approx(closed_form, rel=1e-6)
    model.eval()
    assert jacobian_norms(model, torch.randn(16, 3, 32, 32)).max().item() <= certified.value


@pytest.mark.slow  # a PreAct ResNet-18: ~5 s on two busy cores
def test_preact_resnet18_with_residual_adds_and_projection_shortcuts():
    torch.manual_seed(7)
    model = PreActResNet18(k=2)
    randomise_batchnorm(model, 1)
    model.eval()
    estimator = UpperBoundEstimator(model, torch.randn(1, 3, 32, 32), iters=200, tol=1e-5)
    power, certified = estimator.compute(), estimator.compute(certified=True)
    assert certified.available, certified.reason
    assert 0 < power.value <= certified.value * (1 + 1e-6)
    ops = [layer.op for layer in certified.layers]
    assert ops.count("Conv2d") == 1 + 16 + 3 and "adaptive_avg_pool2d" in ops
    assert jacobian_norms(model, torch.randn(8, 3, 32, 32)).max().item() <= certified.value


@pytest.mark.slow
def test_torchvision_resnet18_gives_a_finite_positive_value():
    torch.manual_seed(8)
    model = torchvision.models.resnet18(num_classes=10)
    result = upper_bound(model, torch.randn(1, 3, 32, 32), iters=20)
    assert result.available and result.mode == "power"
    assert math.isfinite(result.value) and result.value > 0
    assert len([layer for layer in result.layers if layer.op == "Conv2d"]) == 20


def test_vit_is_not_available_and_names_attention():
    torch.manual_seed(9)
    vit = torchvision.models.VisionTransformer(
        image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=10
    )
    result = upper_bound(vit, torch.randn(1, 3, 16, 16))
    assert isinstance(result, UpperBoundResult)
    assert not result.available and result.value is None
    assert "attention" in result.reason and "MultiheadAttention" in result.reason


class Product(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x) @ x.T


class WithLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.norm = nn.Linear(3, 3), nn.LayerNorm(3)

    def forward(self, x):
        return self.norm(self.fc(x))


class Unknown(nn.Module):
    def forward(self, x):
        return x


class UsesUnknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.odd = Unknown()

    def forward(self, x):
        return torch.cumsum(self.odd(x), 1)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.bilinear = nn.Bilinear(3, 3, 2)

    def forward(self, x):
        return self.bilinear(x, x)


@pytest.mark.parametrize(
    "model, words",
    [
        (Product(), ["mul", "product"]),
        (WithLayerNorm(), ["LayerNorm", "norm"]),
        (UsesUnknown(), ["cumsum", "no Lipschitz rule"]),
        (TwoInputs(), ["Bilinear"]),
    ],
)
def test_unsupported_operations_make_the_bound_unavailable_with_a_reason(model, words):
    result = upper_bound(model, torch.randn(1, 3))
    assert not result.available and result.value is None
    assert all(word in result.reason for word in words), result.reason


# ---------------------------------------------------------------------------------------- fallback
class DataDependent(nn.Module):
    """fx cannot trace `if x.sum() > 0`: the hook fallback sees a chain of leaf modules."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 6, bias=False), nn.Tanh(), nn.Linear(6, 2, bias=False)

    def forward(self, x):
        if x.sum() > -1e9:
            x = self.act(self.fc1(x))
        return self.fc2(x.view(x.shape[0], -1))


class DataDependentResidual(DataDependent):
    def forward(self, x):
        if x.sum() > -1e9:
            x = self.act(self.fc1(x)) + 1.0 * self.fc1(x)
        return self.fc2(x)


def test_untraceable_chain_uses_forward_hooks():
    torch.manual_seed(10)
    model = DataDependent().double()
    result = upper_bound(model, torch.randn(1, 4, dtype=torch.float64), certified=True)
    assert result.available, result.reason
    expected = spectral_norm(model.fc1.weight) * spectral_norm(model.fc2.weight)
    assert result.value == pytest.approx(expected, rel=1e-6)
    assert [layer.name for layer in result.layers] == ["fc1", "act", "fc2"]


def test_untraceable_non_chain_is_not_available():
    result = upper_bound(DataDependentResidual(), torch.randn(1, 4))
    assert not result.available and "could not trace" in result.reason


# ---------------------------------------------------------------------------- warm start and state
def small_conv_net():
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(3, 3, 3, stride=2),
        nn.Flatten(),
        nn.Linear(27, 4, bias=False),
    ).double()


def exact_product(model, shape):
    """Product of the layers' exact norms, from SVDs of explicit matrices (ReLU: 1)."""
    total = 1.0
    for layer in model:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            n = math.prod(shape)
            basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
            with torch.no_grad():
                out = (
                    F.linear(basis, layer.weight)
                    if isinstance(layer, nn.Linear)
                    else layer._conv_forward(basis, layer.weight, None)
                )
            total *= spectral_norm(out.reshape(n, -1))
        shape = tuple(layer(torch.zeros(1, *shape, dtype=torch.float64)).shape[1:])
    return total


def test_warm_start_reaches_the_value_with_few_iterations():
    torch.manual_seed(11)
    model = small_conv_net()
    estimator = UpperBoundEstimator(
        model, torch.randn(1, 2, 8, 8, dtype=torch.float64), iters=5000, warm_iters=3, tol=1e-12
    )
    first = estimator.compute().value
    assert first == pytest.approx(exact_product(model, (2, 8, 8)), rel=1e-6)
    assert estimator.compute().value == pytest.approx(first, rel=1e-9)  # second call: same value
    with torch.no_grad():  # a training step: parameters move a little
        for p in model.parameters():
            p.add_(1e-4 * torch.randn_like(p))
    exact = exact_product(model, (2, 8, 8))
    warm = [estimator.compute().value for _ in range(3)]  # three epochs of 3 iterations each
    cold = UpperBoundEstimator(model, torch.randn(1, 2, 8, 8, dtype=torch.float64), iters=9).compute().value
    assert warm[-1] == pytest.approx(exact, rel=1e-5)
    assert abs(warm[-1] - exact) < abs(cold - exact)


def test_state_dict_round_trip_continues_from_the_saved_vectors():
    torch.manual_seed(12)
    model = fcn([10, 16, 4])
    first = UpperBoundEstimator(model, torch.randn(1, 10), iters=3000, tol=1e-10)
    value = first.compute().value
    state = first.state_dict()
    assert set(state["vectors"]) == {"0", "2"} and all(v.device.type == "cpu" for v in state["vectors"].values())
    resumed = UpperBoundEstimator(model, torch.randn(1, 10), iters=1, warm_iters=1, seed=99)
    resumed.load_state_dict(state)
    assert resumed.compute().value == pytest.approx(value, rel=1e-6)
    fresh = UpperBoundEstimator(model, torch.randn(1, 10), iters=1, seed=99).compute().value
    assert abs(fresh - value) > 1e-3 * value  # one cold iteration is not enough: the vectors did the work
    with pytest.raises(ValueError):
        resumed.load_state_dict({"vectors": {"0": torch.zeros(3)}})
    with pytest.raises(ValueError):
        resumed.load_state_dict({"nothing": 1})


# ------------------------------------------------------------------------------------ trained 2-D net
def test_upper_bound_dominates_a_dense_grid_on_a_trained_2d_relu_net():
    gen = torch.Generator().manual_seed(13)
    centres = torch.tensor([[0.0, 2.0], [-2.0, -1.0], [2.0, -1.0]])
    y = torch.arange(3).repeat_interleave(50)
    x = centres[y] + 0.7 * torch.randn(150, 2, generator=gen)
    torch.manual_seed(13)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
    grid = torch.stack(torch.meshgrid(torch.linspace(-5, 5, 80), torch.linspace(-5, 5, 80), indexing="ij"), -1)
    grid_max = jacobian_norms(model, grid.reshape(-1, 2)).max().item()
    estimator = UpperBoundEstimator(model, x)
    certified, power = estimator.compute(certified=True), estimator.compute()
    assert certified.value >= grid_max and power.value >= grid_max
    assert certified.value < 100 * grid_max  # and not absurdly loose


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError):
        UpperBoundEstimator(nn.Linear(2, 2), [[1.0, 2.0]])
    with pytest.raises(ValueError):
        UpperBoundEstimator("not a model", torch.randn(1, 2))
    with pytest.raises(ValueError):
        UpperBoundEstimator(nn.Linear(2, 2), torch.randn(1, 2), iters=0)


def test_sequential_holding_a_residual_block_is_traced_through():
    torch.manual_seed(14)
    model = nn.Sequential(Residual(3), nn.ReLU()).double()
    result = upper_bound(model, torch.randn(1, 3, dtype=torch.float64), certified=True)
    assert result.value == pytest.approx(1 + spectral_norm(model[0].g.weight), rel=1e-6)


class ShapeScaled(nn.Module):
    def forward(self, x):
        return F.leaky_relu(x, 0.2) * x.shape[-1] ** -0.5 + F.gelu(x)


def test_scale_computed_from_the_shape_and_functional_activations():
    result = upper_bound(ShapeScaled(), torch.randn(1, 16), certified=True)
    assert result.value == pytest.approx(1 / 4 + 1.1289041, rel=1e-6)
    assert jacobian_norms(ShapeScaled(), torch.randn(32, 16)).max().item() <= result.value


@pytest.mark.parametrize(
    "layer, in_shape",
    [
        (nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1), (3, 4, 4)),
        (nn.ConvTranspose1d(4, 6, 4, stride=3, padding=2, groups=2, dilation=2), (4, 5)),
    ],
)
def test_transposed_convolution_norm_against_the_explicit_matrix(layer, in_shape):
    torch.manual_seed(15)
    model = nn.Sequential(layer, nn.Flatten()).double()
    n = math.prod(in_shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    with torch.no_grad():
        matrix = (model(basis) - model(torch.zeros(1, *in_shape, dtype=torch.float64))).reshape(n, -1)
    exact = spectral_norm(matrix)
    estimator = UpperBoundEstimator(model, basis[:1], tol=1e-12, iters=5000)
    assert estimator.compute().value == pytest.approx(exact, rel=1e-6)
    assert exact * (1 - 1e-12) <= estimator.compute(certified=True).value <= exact * 1.01


def test_works_under_inference_mode_with_autograd_adjoints():
    """trainer.validate runs under torch.inference_mode: reflect padding and average pooling use autograd."""
    torch.manual_seed(16)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), nn.AvgPool2d(2), nn.Flatten())
    with torch.inference_mode():
        estimator = UpperBoundEstimator(model, torch.randn(1, 2, 6, 6))
        power, certified = estimator.compute(), estimator.compute(certified=True)
    assert 0 < power.value <= certified.value
    assert estimator.compute().value == pytest.approx(power.value, rel=1e-4)  # warm, outside inference mode


# ------------------------------------------------------------------ broadcasting, in-place, odd call forms
class Lambda(nn.Module):
    """A model whose forward is the given function of (self, x); parameters/buffers set by `setup`."""

    def __init__(self, fn, setup=None):
        super().__init__()
        self.fn = fn
        if setup is not None:
            setup(self)

    def forward(self, x):
        return self.fn(self, x)


def _weights(module):
    module.w = nn.Parameter(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64))


def _buffer(module):
    module.register_buffer("c", torch.zeros(100, dtype=torch.float64))


@pytest.mark.parametrize(
    "fn, setup, shape, exact",
    [
        # each input entry copied to r outputs: a factor sqrt(r) (the old rule gave 5, 1, 3: below the truth)
        (lambda s, x: x * s.w, _weights, (1,), math.sqrt(55.0)),  # J = w: bound max|w| sqrt(5) >= ||w||
        (lambda s, x: x + s.c, _buffer, (1,), 10.0),
        (lambda s, x: x + x.sum(1, keepdim=True), None, (4,), 5.0),  # J = I + 1 1^T
        (lambda s, x: torch.add(1.0, x, alpha=3), None, (3,), 3.0),  # alpha scales the input-dependent second operand
        (lambda s, x: torch.sub(1.0, x, alpha=4), None, (3,), 4.0),
        (lambda s, x: F.avg_pool2d(x, 2, ceil_mode=True).flatten(1), None, (1, 5, 5), 1.0),  # corner window: 1 entry
        (lambda s, x: nn.functional.max_pool1d(x, 3, 1), None, (10,), math.sqrt(3.0)),  # no channel dim: rows pooled
    ],
)
def test_broadcasts_alpha_and_pool_call_forms_are_bounded_from_above(fn, setup, shape, exact):
    torch.manual_seed(20)
    model = Lambda(fn, setup).double()
    result = upper_bound(model, torch.randn(1, *shape, dtype=torch.float64), certified=True)
    assert result.available, result.reason
    x = torch.randn(256, *shape, dtype=torch.float64)
    assert result.value >= exact * (1 - 1e-9) and exact * (1 + 1e-9) >= jacobian_norms(model, x).max().item()
    if setup is not _weights:  # tight wherever the rule is exact
        assert result.value == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize(
    "pool, shape, exact", [(nn.MaxPool1d(3, 1), (10,), math.sqrt(3.0)), (nn.MaxPool2d(3, 2), (9, 9), 2.0)]
)
def test_pool_modules_on_samples_without_a_channel_dim(pool, shape, exact):
    model = nn.Sequential(pool).double()
    assert upper_bound(model, torch.randn(1, *shape, dtype=torch.float64)).value == pytest.approx(exact)


class InPlace(nn.Module):
    def __init__(self, update, reread):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False)
        self.update, self.reread = update, reread

    def forward(self, x):
        h = self.a(x)
        view = h.view(-1)
        out = self.update(h, x)
        return self.b(view.view(x.shape[0], -1) if self.reread else out)


@pytest.mark.parametrize(
    "update, reread, available",
    [
        (lambda h, x: h.add_(x), True, False),  # later readers of h see h + x
        (lambda h, x: h.mul_(10.0), True, False),
        (lambda h, x: h.relu_(), True, True),  # a pointwise map with constant 1: readers of h stay bounded
        (lambda h, x: F.silu(h, True), True, False),  # `inplace` passed by position; SiLU's constant is 1.0998
        (lambda h, x: F.leaky_relu(h, 2.0, True), True, False),
        (lambda h, x: F.leaky_relu(h, 0.1, True), True, True),
        (lambda h, x: F.elu(h, alpha=2.0, inplace=True), True, False),
        (lambda h, x: h.__iadd__(x), False, True),  # out += identity, as in torchvision's ResNet: nobody rereads h
    ],
)
def test_in_place_updates_read_again_later_are_refused(update, reread, available):
    torch.manual_seed(21)
    model = InPlace(update, reread).double()
    result = upper_bound(model, torch.randn(1, 4, dtype=torch.float64), certified=True)
    assert result.available == available, result.reason
    if available:
        x = torch.randn(128, 4, dtype=torch.float64)
        assert result.value >= jacobian_norms(model, x).max().item() * (1 - 1e-9)
    else:
        assert "in-place" in result.reason


class UntraceableInPlace(DataDependent):
    def forward(self, x):
        if x.sum() > -1e9:
            h = self.fc1(x)
            h *= 10.0  # outside any module: the hooks cannot see it
            x = self.act(h)
        return self.fc2(x)


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 10.0


class UntraceableSubclass(DataDependent):
    def __init__(self):
        super().__init__()
        self.fc2 = ScaledLinear(6, 2, bias=False)


def test_hook_fallback_refuses_unseen_in_place_changes_and_overridden_forwards():
    first = upper_bound(UntraceableInPlace(), torch.randn(1, 4))
    assert not first.available and "in-place" in first.reason
    second = upper_bound(UntraceableSubclass(), torch.randn(1, 4))
    assert not second.available and "ScaledLinear overrides the forward of Linear" in second.reason


@pytest.mark.parametrize(
    "fn",
    [
        lambda s, x: torch.div(x, 0.01, rounding_mode="floor"),
        lambda s, x: x // 0.5,
        lambda s, x: torch.remainder(x, 1.0),
    ],
)
def test_discontinuous_divisions_are_not_available(fn):
    result = upper_bound(Lambda(fn), torch.randn(1, 3))
    assert not result.available and "discontinuous" in result.reason
