"""Warm-started per-sample Jacobian norms against dense SVDs of explicit Jacobians.

The ``device`` fixture runs every test on CUDA when it is available (benchmarks/gpu_check.sh), else on the
CPU; nothing here needs a GPU.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from lipschitz_dd.bounds import WarmLowerBound, jacobian_spectral_norms
from lipschitz_dd.bounds.warm_lower import LeftVectorStore, choose_method, warm_spectral_norms


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def reference_jacobians(model, x):
    """Independent: explicit K x d Jacobian per sample (torch.autograd.functional.jacobian), float64."""
    rows = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda z: model(z[None]).reshape(-1), xi)
        rows.append(jac.reshape(jac.shape[0], -1))
    return torch.stack(rows).double()


def reference_norms(model, x):
    return torch.linalg.svdvals(reference_jacobians(model, x))[:, 0]


def mlp(outputs=12, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, outputs)).eval()


def cnn(outputs=9, seed=1):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, outputs),
    ).eval()


CASES = {"mlp": (mlp, (10,)), "cnn": (cnn, (2, 6, 6))}


def perturb(model, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=generator).to(p.device))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("jvp", ["forward", "double_backward"])
@pytest.mark.parametrize("block", [1, 3])
def test_warm_values_err_low_and_converge_to_the_dense_svd(case, jvp, block, device):
    build, shape = CASES[case]
    model = build().to(device)
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(3)).to(device)
    expected = reference_norms(model, x).cpu()
    one = warm_spectral_norms(model, x, block=block, max_iter=1, jvp=jvp).norms.double().cpu()
    assert (one <= expected * (1 + 1e-5)).all()
    assert (one > 0.3 * expected).all()  # a real estimate, not a trivial bound
    result = warm_spectral_norms(model, x, block=block, max_iter=300, tol=1e-7, jvp=jvp)
    norms = result.norms.double().cpu()
    assert (norms <= expected * (1 + 1e-5)).all()
    torch.testing.assert_close(norms, expected, rtol=1e-4, atol=1e-7)
    # the returned left vectors are unit, orthogonal, and the first is the top left singular vector
    left = result.left.double().cpu()
    torch.testing.assert_close(
        left @ left.mT, torch.eye(block, dtype=torch.float64).expand(16, -1, -1), atol=1e-4, rtol=0
    )
    u_ref = torch.linalg.svd(reference_jacobians(model, x)).U[:, :, 0]
    assert ((left[:, 0] * u_ref).sum(1).abs() > 1 - 1e-3).all()


def test_forward_and_double_backward_jvps_match_the_explicit_jacobian(device):
    from lipschitz_dd.bounds.warm_lower import _double_backward_jvp, _forward_jvp

    model = cnn().to(device)
    x = torch.randn(5, 2, 6, 6, generator=torch.Generator().manual_seed(4)).to(device)
    v = torch.randn(5, 2, 72, generator=torch.Generator().manual_seed(5)).to(device)
    expected = torch.einsum("bkd,brd->brk", reference_jacobians(model, x), v.double().cpu())
    leaf = x.clone().requires_grad_(True)
    out = model(leaf).reshape(5, -1)
    for jvp in (_double_backward_jvp(out, leaf), _forward_jvp(model, leaf)):
        torch.testing.assert_close(jvp(v).double().cpu(), expected, rtol=1e-5, atol=1e-6)


def batches(x, size):
    indices = torch.arange(x.shape[0])
    return list(zip(x.split(size), indices.split(size), strict=True))


@pytest.mark.parametrize("case", sorted(CASES))
def test_refined_max_equals_the_exact_max_and_values_stay_below_it(case, device):
    build, shape = CASES[case]
    model = build(outputs=24).to(device) if case == "mlp" else build(outputs=24).to(device)
    x = torch.randn(60, *shape, generator=torch.Generator().manual_seed(6)).to(device)
    expected = reference_norms(model, x).cpu()
    estimator = WarmLowerBound(
        method="warm", block=2, max_iter=2, refine_top=4, cold_exact_max_outputs=0, cold_max_iter=2
    )
    estimator.begin()
    values = torch.cat([estimator.update(model, xb, ib).double().cpu() for xb, ib in batches(x, 25)])
    assert (values <= expected * (1 + 1e-5)).all()
    result = estimator.finish(model)
    assert result.method == "warm" and result.count == 60 and result.refined >= 4 and result.refined_exactly >= 1
    assert math.isclose(result.max, float(expected.max()), rel_tol=1e-5)
    assert result.argmax_index == int(expected.argmax())
    torch.testing.assert_close(result.argmax_point, x[result.argmax_index].cpu())
    assert result.mean <= float(expected.mean()) * (1 + 1e-5)
    assert result.rms <= float(expected.square().mean().sqrt()) * (1 + 1e-5)


def test_refinement_iterates_when_the_exact_jacobians_do_not_fit(device):
    model = mlp(outputs=24).to(device)
    x = torch.randn(40, 10, generator=torch.Generator().manual_seed(7)).to(device)
    expected = reference_norms(model, x).cpu()
    estimator = WarmLowerBound(method="auto", memory_budget_bytes=100, max_iter=1, cold_max_iter=1)
    result = estimator.measure(model, batches(x, 40))
    assert estimator.last_choice.method == "warm" and estimator.last_choice.exact_chunk == 0
    assert "exceeds" in estimator.last_choice.reason
    assert result.refined_exactly == 0 and result.refine_iterations > 1
    assert math.isclose(result.max, float(expected.max()), rel_tol=1e-5)
    assert result.max <= float(expected.max()) * (1 + 1e-6)


def test_warm_start_converges_in_few_iterations_after_a_small_weight_change(device):
    model = mlp(outputs=16).to(device)
    x = torch.randn(80, 10, generator=torch.Generator().manual_seed(8)).to(device)
    estimator = WarmLowerBound(method="warm", block=2, max_iter=200, tol=1e-6, cold_exact_max_outputs=0)
    cold = estimator.measure(model, batches(x, 40))
    assert cold.iterations > 3 and cold.cold == 80  # from random vectors it takes a while
    estimator.max_iter, estimator.tol = 3, 1e-4
    for step in range(3):
        perturb(model, 1e-3, seed=step)
        expected = reference_norms(model, x).cpu()
        estimator.begin()
        values = torch.cat([estimator.update(model, xb, ib).double().cpu() for xb, ib in batches(x, 40)])
        result = estimator.finish(model)
        assert result.iterations <= 3
        assert (values <= expected * (1 + 1e-5)).all()
        assert float(((expected - values) / expected).mean()) < 1e-4
        assert abs(result.mean - float(expected.mean())) <= 1e-4 * float(expected.mean())
        assert math.isclose(result.max, float(expected.max()), rel_tol=1e-5)
        assert 0 <= result.avg_tol < 1e-3


def test_exact_method_matches_the_exact_norms(device):
    model = mlp(outputs=5).to(device)
    x = torch.randn(30, 10, generator=torch.Generator().manual_seed(9)).to(device)
    expected = reference_norms(model, x).cpu()
    estimator = WarmLowerBound()  # auto: K = 5 <= 16 -> exact
    result = estimator.measure(model, batches(x, 12))
    assert result.method == "exact" and result.avg_tol == 0 and result.refined == 0
    assert math.isclose(result.max, float(expected.max()), rel_tol=1e-5)
    assert math.isclose(result.mean, float(expected.mean()), rel_tol=1e-5)
    assert estimator.store is None  # no vectors kept for exact measurements


def test_choose_method():
    budget = 1 << 30
    assert choose_method(10, 3072, memory_budget_bytes=budget, chunk_size=256).method == "exact"
    choice = choose_method(100, 3072, memory_budget_bytes=budget, chunk_size=256)
    assert (choice.method, choice.exact_chunk) == ("warm", 256)
    choice = choose_method(1000, 12288, memory_budget_bytes=budget, chunk_size=256)
    assert choice.exact_chunk == budget // (1000 * 12288 * 4)
    tiny = choose_method(10, 3072, memory_budget_bytes=1000, chunk_size=256)
    assert (tiny.method, tiny.exact_chunk) == ("warm", 0)
    assert choose_method(10, 3072, method="warm", memory_budget_bytes=budget, chunk_size=8).method == "warm"
    with pytest.raises(ValueError, match="method must be one of"):
        choose_method(10, 10, method="svd", memory_budget_bytes=budget, chunk_size=8)


def test_store_roundtrip_shards_and_memmap(tmp_path):
    store = LeftVectorStore(4, block=2)
    vectors = torch.randn(3, 2, 4)
    store.put(torch.tensor([7, 2, 1000]), vectors)
    got = store.get(torch.tensor([1000, 5, 7]))
    assert torch.equal(got[0], vectors[2]) and torch.equal(got[2], vectors[0])
    assert torch.equal(got[1], torch.zeros(2, 4))
    store.put(torch.tensor([2]), torch.ones(1, 2, 4))
    assert len(store) == 3 and torch.equal(store.get(torch.tensor([2]))[0], torch.ones(2, 4))
    copy = LeftVectorStore(4, block=2)
    copy.load_state_dict(store.state_dict())
    assert torch.equal(copy.get(torch.tensor([2, 7, 1000])), store.get(torch.tensor([2, 7, 1000])))
    with pytest.raises(ValueError, match="K=4"):
        LeftVectorStore(5, block=2).load_state_dict(store.state_dict())
    mapped = LeftVectorStore(4, block=2, path=str(tmp_path / "u.npy"), capacity=3)
    mapped.load_state_dict(store.state_dict())
    assert torch.equal(mapped.get(torch.tensor([7])), store.get(torch.tensor([7])))
    assert np.load(tmp_path / "u.npy", mmap_mode="r").shape == (3, 2, 4)
    with pytest.raises(ValueError, match="memmap store holds 3"):
        mapped.put(torch.tensor([1]), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="non-negative"):
        store.get(torch.tensor([-1]))


def test_estimator_state_dict_resumes_and_each_rank_keeps_its_shard(device):
    model = mlp(outputs=20).to(device)
    x = torch.randn(40, 10, generator=torch.Generator().manual_seed(10)).to(device)
    ranks = [WarmLowerBound(method="warm", max_iter=2) for _ in range(2)]
    shards = [batches(x, 40)[0][0][rank::2] for rank in range(2)]
    shard_indices = [torch.arange(40)[rank::2] for rank in range(2)]
    for estimator, xs, idx in zip(ranks, shards, shard_indices, strict=True):
        estimator.measure(model, [(xs, idx)])
        assert len(estimator.store) == 20
        state = estimator.state_dict()
        assert set(state["store"]["indices"].tolist()) == set(idx.tolist())
    perturb(model, 1e-3, seed=0)
    resumed = WarmLowerBound(method="warm", max_iter=2)
    resumed.load_state_dict(ranks[0].state_dict())
    a = ranks[0].measure(model, [(shards[0], shard_indices[0])])
    b = resumed.measure(model, [(shards[0], shard_indices[0])])
    assert (a.max, a.sum, a.avg_tol) == (b.max, b.sum, b.avg_tol)


@pytest.mark.parametrize("method", ["warm", "exact"])
def test_mixed_precision_measures_the_float32_model(method):
    model = cnn(outputs=20)
    x = torch.randn(12, 2, 6, 6, generator=torch.Generator().manual_seed(11))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # autocast is really active around the calls below
        under_autocast = WarmLowerBound(method=method).measure(model, batches(x, 6))
        exact_under_autocast = jacobian_spectral_norms(model, x, method="exact")
        warm_under_autocast = warm_spectral_norms(model, x.bfloat16(), max_iter=2).norms
    plain = WarmLowerBound(method=method).measure(model, batches(x, 6))
    assert (under_autocast.max, under_autocast.sum) == (plain.max, plain.sum)
    assert torch.equal(exact_under_autocast, jacobian_spectral_norms(model, x, method="exact"))
    assert warm_under_autocast.dtype == torch.float32
    assert torch.equal(warm_under_autocast, warm_spectral_norms(model, x.bfloat16().float(), max_iter=2).norms)


def test_zero_jacobian_and_bad_input():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
    x = torch.randn(5, 4)
    assert torch.equal(warm_spectral_norms(model, x).norms, torch.zeros(5))
    estimator = WarmLowerBound(method="warm")
    with pytest.raises(ValueError, match="3 indices for 5 points"):
        estimator.update(model, x, torch.arange(3))
    with pytest.raises(ValueError, match="no points"):
        estimator.finish(model)
    with pytest.raises(ValueError, match="jvp must be"):
        WarmLowerBound(jvp="reverse")


def test_cold_points_start_exactly_with_their_top_left_singular_vectors(device):
    model = mlp(outputs=20).to(device)
    x = torch.randn(30, 10, generator=torch.Generator().manual_seed(12)).to(device)
    jac = reference_jacobians(model, x)
    expected = torch.linalg.svdvals(jac)[:, 0]
    estimator = WarmLowerBound(method="warm", block=3)
    estimator.begin()
    values = estimator.update(model, x[:20], torch.arange(20)).double().cpu()
    torch.testing.assert_close(values, expected[:20], rtol=1e-5, atol=0)
    estimator.update(model, x[20:], torch.arange(20, 30))
    result = estimator.finish(model)
    assert (result.cold, result.iterations, result.refined, result.refined_exactly) == (30, 0, 0, 0)
    assert math.isclose(result.max, float(expected.max()), rel_tol=1e-5)
    stored = estimator.store.get(torch.arange(30)).double()
    top_left = torch.linalg.svd(jac).U[:, :, :3].mT
    assert ((stored * top_left).sum(2).abs() > 1 - 1e-4).all()
    perturb(model, 1e-3, seed=1)
    result = estimator.measure(model, batches(x, 30))
    assert result.cold == 0 and 1 <= result.iterations <= estimator.max_iter


def test_models_with_half_precision_weights_are_measured_in_their_dtype():
    """A "bf16-true" model cannot run float32 inputs: the input is cast for it (values ~ bfloat16 accurate)."""
    model = mlp(outputs=20)
    x = torch.randn(8, 10, generator=torch.Generator().manual_seed(13))
    expected = reference_norms(model, x)
    model = model.to(torch.bfloat16)
    exact = jacobian_spectral_norms(model, x, method="exact")
    assert exact.dtype == torch.float32
    torch.testing.assert_close(exact.double(), expected, rtol=2e-2, atol=0)
    result = WarmLowerBound(method="warm").measure(model, batches(x, 8))
    assert math.isclose(result.max, float(expected.max()), rel_tol=2e-2)
