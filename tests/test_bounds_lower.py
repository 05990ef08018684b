"""Streaming lower-bound statistics against one-shot computations."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lipschitz_dd.bounds import LowerBoundStats, jacobian_spectral_norms, lower_bound


@pytest.fixture
def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 4)).double().eval()


@pytest.fixture
def points():
    return torch.randn(37, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def direct_stats(norms):
    return {
        "max": float(norms.max()),
        "mean": float(norms.mean()),
        "rms": float(norms.pow(2).mean().sqrt()),
        "count": norms.numel(),
        "argmax": int(torch.argmax(norms)),
    }


def assert_matches(stats, expected, points):
    assert stats.count == expected["count"]
    assert stats.max == pytest.approx(expected["max"], rel=1e-12)
    assert stats.mean == pytest.approx(expected["mean"], rel=1e-12)
    assert stats.rms == pytest.approx(expected["rms"], rel=1e-12)
    assert stats.argmax_index == expected["argmax"]
    assert torch.equal(stats.argmax_point, points[expected["argmax"]])


@pytest.mark.parametrize("batch_size", [1, 5, 16, 100])
def test_streamed_tensor_matches_one_shot(model, points, batch_size):
    norms = jacobian_spectral_norms(model, points)
    stats = lower_bound(model, points, batch_size=batch_size, keep_norms=True)
    assert_matches(stats, direct_stats(norms), points)
    torch.testing.assert_close(stats.norms, norms, rtol=1e-12, atol=0)


def test_iterable_and_dataloader_match_tensor(model, points):
    expected = direct_stats(jacobian_spectral_norms(model, points))
    chunks = [points[:10], points[10:11], points[11:]]
    assert_matches(lower_bound(model, iter(chunks), batch_size=4), expected, points)
    labels = torch.zeros(37, dtype=torch.long)
    loader = DataLoader(TensorDataset(points, labels), batch_size=8)
    assert_matches(lower_bound(model, loader, batch_size=3), expected, points)


def test_merge_equals_stats_of_concatenation(model, points):
    first, second = points[:20], points[20:]
    merged = lower_bound(model, first, keep_norms=True).merge(lower_bound(model, second, keep_norms=True))
    whole = lower_bound(model, points, keep_norms=True)
    assert merged.count == whole.count
    assert merged.max == whole.max
    assert merged.argmax_index == whole.argmax_index
    assert torch.equal(merged.argmax_point, whole.argmax_point)
    assert merged.sum == pytest.approx(whole.sum, rel=1e-12)
    assert merged.sum_sq == pytest.approx(whole.sum_sq, rel=1e-12)
    torch.testing.assert_close(merged.norms, whole.norms)


def test_merge_with_empty_and_ties():
    empty = LowerBoundStats()
    stats = LowerBoundStats()
    stats.update(torch.tensor([1.0, 3.0, 3.0]), torch.arange(3.0)[:, None])
    assert empty.merge(stats).argmax_index == 1
    assert stats.merge(empty).max == 3.0
    later = LowerBoundStats()
    later.update(torch.tensor([3.0]), torch.tensor([[9.0]]))
    combined = stats.merge(later)  # a tie keeps the first occurrence
    assert (combined.argmax_index, combined.count) == (1, 4)
    assert math.isnan(empty.mean) and empty.norms is None
    assert combined.rms == pytest.approx(math.sqrt((1 + 9 + 9 + 9) / 4))


def test_tolerances_add_in_merge_and_survive_the_state_vector():
    plain = LowerBoundStats()
    plain.update(torch.tensor([1.0, 2.0]))
    warm = LowerBoundStats(count=3, sum=6.0, sum_sq=14.0, max=3.0, argmax_index=2, tol_sum=0.3, tol_count=3)
    assert not plain.has_tol and math.isnan(plain.avg_tol)
    merged = plain.merge(warm)
    assert merged.has_tol and (merged.tol_sum, merged.tol_count) == (0.3, 3)
    assert merged.avg_tol == pytest.approx(0.1) and (merged.count, merged.max) == (5, 3.0)
    again = LowerBoundStats.from_state_vector(merged.state_vector())
    assert again.state_vector() == merged.state_vector() and again.argmax_index == 0
    assert LowerBoundStats.from_state_vector(LowerBoundStats().state_vector()).argmax_index is None
    assert LowerBoundStats.merge_all([plain, warm]).state_vector() == merged.state_vector()


def test_nan_norms_propagate_to_max_mean_and_rms():
    stats = LowerBoundStats()
    stats.update(torch.tensor([1.0, 2.0]))
    stats.update(torch.tensor([float("nan"), 5.0]))
    stats.update(torch.tensor([7.0]))
    assert math.isnan(stats.max) and math.isnan(stats.mean) and math.isnan(stats.rms)
    assert stats.argmax_index == 2
    clean = LowerBoundStats()
    clean.update(torch.tensor([9.0]))
    assert math.isnan(clean.merge(stats).max) and math.isnan(stats.merge(clean).max)


def test_keep_norms_off_stores_nothing(model, points):
    assert lower_bound(model, points).norms is None


def test_works_under_no_grad_and_leaves_parameters_alone(model, points):
    with torch.no_grad():
        stats = lower_bound(model, points, batch_size=8)
    assert stats.max == pytest.approx(float(jacobian_spectral_norms(model, points).max()), rel=1e-12)
    assert all(p.grad is None for p in model.parameters())


def test_linear_network_lower_bound_is_weight_norm():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 3, bias=False)).double().eval()
    stats = lower_bound(model, torch.randn(50, 6, dtype=torch.float64), batch_size=7)
    expected = float(torch.linalg.matrix_norm(model[0].weight.detach(), ord=2))
    assert stats.max == pytest.approx(expected, rel=1e-10)
    assert stats.mean == pytest.approx(expected, rel=1e-10)
    assert stats.rms == pytest.approx(expected, rel=1e-10)


def test_bad_arguments(model, points):
    with pytest.raises(ValueError, match="batch_size"):
        lower_bound(model, points, batch_size=0)
    with pytest.raises(ValueError, match="no points"):
        lower_bound(model, points[:0])
    with pytest.raises(ValueError, match="Tensor"):
        lower_bound(model, 3.0)
    with pytest.raises(ValueError, match="expected a Tensor"):
        lower_bound(model, [["a"]])
