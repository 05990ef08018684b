"""Per-sample Jacobian spectral norms against explicit Jacobians (torch.autograd.functional.jacobian)."""

import pytest
import torch
from torch import nn

from lipschitz_dd.bounds import jacobian_spectral_norms
from lipschitz_dd.bounds.jacobian import jacobian_rows, power_iteration_spectral_norms, top_singular_triplets


def reference_norms(model, x):
    """Independent: explicit K x d Jacobian per sample, then its largest singular value."""
    norms = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda z: model(z[None]).reshape(-1), xi)
        norms.append(torch.linalg.svdvals(jac.reshape(jac.shape[0], -1))[0])
    return torch.stack(norms)


def mlp(outputs=5):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, outputs))


def cnn_with_maxpool():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=1),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 7),
    )


def cnn_with_batchnorm():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 3),
    )
    batchnorm = model[1]
    batchnorm.running_mean.uniform_(-1, 1)
    batchnorm.running_var.uniform_(0.2, 3.0)
    batchnorm.weight.data.uniform_(-2, 2)
    return model


CASES = {
    "mlp": (mlp, (6,)),
    "cnn_maxpool": (cnn_with_maxpool, (2, 8, 8)),
    "cnn_batchnorm": (cnn_with_batchnorm, (2, 6, 6)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_norms_match_svd_of_explicit_jacobian(name):
    build, shape = CASES[name]
    model = build().double().eval()
    x = torch.randn(9, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    norms = jacobian_spectral_norms(model, x, method="exact")
    expected = reference_norms(model, x)
    assert norms.shape == (9,)
    torch.testing.assert_close(norms, expected, rtol=1e-5, atol=0)


def test_jacobian_rows_match_explicit_jacobian():
    model = cnn_with_maxpool().double().eval()
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    rows = jacobian_rows(model, x)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda z: model(z[None]).reshape(-1), x[i])
        torch.testing.assert_close(rows[i], jac.reshape(7, -1))


def test_more_outputs_than_inputs_uses_other_gram_and_stays_exact():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 20), nn.Tanh(), nn.Linear(20, 30)).double().eval()
    x = torch.randn(6, 3, dtype=torch.float64)
    norms = jacobian_spectral_norms(model, x, method="exact")
    torch.testing.assert_close(norms, reference_norms(model, x), rtol=1e-5, atol=0)


def test_multidimensional_logits_are_flattened():
    torch.manual_seed(5)
    linear = nn.Linear(4, 6).double()
    model = nn.Sequential(linear, nn.Unflatten(1, (2, 3))).eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    expected = torch.linalg.matrix_norm(linear.weight.detach(), ord=2)
    torch.testing.assert_close(jacobian_spectral_norms(model, x), expected.expand(3))


def test_iterative_approaches_exact_from_below():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(8, 40), nn.Tanh(), nn.Linear(40, 100)).double().eval()
    x = torch.randn(7, 8, dtype=torch.float64)
    exact = jacobian_spectral_norms(model, x, method="exact")
    few = power_iteration_spectral_norms(model, x, max_iter=2, tol=0.0).norms
    many = power_iteration_spectral_norms(model, x, max_iter=500, tol=1e-13)
    assert bool((few <= exact * (1 + 1e-12)).all())
    assert bool((many.norms <= exact * (1 + 1e-12)).all())
    assert bool((many.norms >= few - 1e-12).all())
    torch.testing.assert_close(many.norms, exact, rtol=1e-7, atol=0)
    # auto picks the iterative method for K = 100 > 64 outputs; still below the exact value
    auto = jacobian_spectral_norms(model, x)
    assert bool((auto <= exact * (1 + 1e-12)).all())
    torch.testing.assert_close(auto, exact, rtol=1e-3, atol=0)


def test_power_iteration_warm_start_converges_immediately():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(5, 30), nn.Tanh(), nn.Linear(30, 80)).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    cold = power_iteration_spectral_norms(model, x, tol=1e-10, max_iter=1000)
    warm = power_iteration_spectral_norms(model, x, init=cold.vectors, tol=1e-10, max_iter=1000)
    assert cold.converged and warm.converged
    assert warm.iterations <= 3 < cold.iterations
    torch.testing.assert_close(warm.norms, cold.norms, rtol=1e-9, atol=0)


def test_power_iteration_is_reproducible_with_generator():
    model = mlp(outputs=9).double().eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    runs = [
        power_iteration_spectral_norms(model, x, max_iter=2, tol=0.0, generator=torch.Generator().manual_seed(11)).norms
        for _ in range(2)
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_linear_network_has_norm_of_weight_product_everywhere():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(10, 7, bias=False), nn.Linear(7, 4, bias=True)).double().eval()
    product = model[1].weight.detach() @ model[0].weight.detach()
    expected = torch.linalg.matrix_norm(product, ord=2)
    x = 10 * torch.randn(25, 10, dtype=torch.float64)
    torch.testing.assert_close(jacobian_spectral_norms(model, x, method="exact"), expected.expand(25))
    iterative = power_iteration_spectral_norms(model, x, tol=1e-14, max_iter=2000).norms
    torch.testing.assert_close(iterative, expected.expand(25), rtol=1e-8, atol=0)


@pytest.mark.parametrize("method", ["exact", "iterative"])
def test_triplets_satisfy_singular_relation(method):
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(6, 20), nn.Tanh(), nn.Linear(20, 5)).double().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    options = {"tol": 1e-14, "max_iter": 3000} if method == "iterative" else {}
    triplets = top_singular_triplets(model, x, method=method, **options)
    jac = jacobian_rows(model, x)
    jv = (jac @ triplets.v[:, :, None])[:, :, 0]
    torch.testing.assert_close(jv, triplets.sigma[:, None] * triplets.u, atol=1e-8, rtol=0)
    torch.testing.assert_close(triplets.u.norm(dim=1), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(triplets.v.norm(dim=1), torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("method", ["exact", "iterative"])
def test_parameter_grads_are_not_touched(method):
    model = mlp().eval()
    model[0].weight.grad = torch.full_like(model[0].weight, 3.0)
    before = model[0].weight.grad.clone()
    jacobian_spectral_norms(model, torch.randn(4, 6), method=method)
    assert torch.equal(model[0].weight.grad, before)
    assert all(p.grad is None for name, p in model.named_parameters() if name != "0.weight")


def test_works_under_no_grad_and_refuses_inference_mode():
    model = mlp().double().eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    expected = reference_norms(model, x)
    with torch.no_grad():
        torch.testing.assert_close(jacobian_spectral_norms(model, x), expected, rtol=1e-5, atol=0)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="inference_mode"):
            jacobian_spectral_norms(model, x)
    with torch.inference_mode():
        inference_x = torch.randn(3, 6, dtype=torch.float64)
    assert jacobian_spectral_norms(model, inference_x).shape == (3,)


def test_constant_model_has_zero_norm():
    model = nn.Sequential(nn.Linear(3, 2), nn.Flatten()).eval()
    model[0].weight.data.zero_()
    x = torch.randn(4, 3)
    assert torch.equal(jacobian_spectral_norms(model, x, method="exact"), torch.zeros(4))
    assert torch.equal(jacobian_spectral_norms(model, x, method="iterative"), torch.zeros(4))


def test_bad_input_gives_clear_errors():
    model = mlp().eval()
    with pytest.raises(ValueError, match="method"):
        jacobian_spectral_norms(model, torch.randn(2, 6), method="svd")
    with pytest.raises(ValueError, match="non-empty"):
        jacobian_spectral_norms(model, torch.randn(0, 6))
    with pytest.raises(ValueError, match="floating"):
        jacobian_spectral_norms(model, torch.ones(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="init"):
        power_iteration_spectral_norms(model, torch.randn(2, 6), init=torch.randn(3, 6))
    with pytest.raises(ValueError, match="iterative"):
        jacobian_spectral_norms(model, torch.randn(2, 6), method="exact", max_iter=3)
    with pytest.raises(ValueError, match="Tensor of logits"):
        jacobian_spectral_norms(lambda z: (z, z), torch.randn(2, 6))


def test_training_mode_batchnorm_is_refused():
    model = cnn_with_batchnorm().train()
    with pytest.raises(ValueError, match="eval"):
        jacobian_spectral_norms(model, torch.randn(2, 2, 6, 6))


def test_batchnorm_without_running_statistics_is_refused_in_eval_mode():
    """It normalises by batch statistics even in eval mode, so the 'per-sample' norms depended on the batch
    size (0.49 / 0.84 / 2.49 at batch sizes 64 / 8 / 1)."""
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, track_running_stats=False), nn.Flatten(), nn.Linear(48, 2)
    ).eval()
    with pytest.raises(ValueError, match="running statistics"):
        jacobian_spectral_norms(model, torch.randn(4, 2, 6, 6))
