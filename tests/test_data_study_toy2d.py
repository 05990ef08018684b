"""The study's 2-D toy data (lipschitz_dd.data.synthetic.study_toy2d)."""

import numpy as np
import pytest
import torch

from lipschitz_dd.data.synthetic import study_toy2d


def test_study_toy2d_has_the_studys_sizes_means_and_seed():
    state = np.random.get_state()[1].copy()
    x_train, y_train, x_test, y_test = study_toy2d()
    assert np.array_equal(np.random.get_state()[1], state)  # the global NumPy state is untouched
    assert x_train.shape == (45, 2) and x_test.shape == (15, 2) and x_train.dtype == torch.float32
    assert torch.equal(torch.bincount(y_train), torch.tensor([15, 15, 15]))
    assert torch.equal(torch.bincount(y_test), torch.tensor([5, 5, 5]))
    # exactly np.random.seed(0) followed by standard-normal draws, class by class, training points first
    rng = np.random.RandomState(0)
    angles = np.deg2rad([-90.0, 30.0, 150.0])
    means = 1.5 * np.stack([np.cos(angles), np.sin(angles)], 1)
    expected = np.concatenate([m + rng.standard_normal((15, 2)) for m in means])
    np.testing.assert_allclose(x_train.numpy(), expected, rtol=1e-6)
    assert means[0] == pytest.approx([0.0, -1.5], abs=1e-12)
    again = study_toy2d()
    assert all(torch.equal(a, b) for a, b in zip(again, (x_train, y_train, x_test, y_test), strict=True))
    other = study_toy2d(seed=1)
    assert not torch.equal(other[0], x_train)


def test_study_toy2d_draws_from_identity_covariance_gaussians():
    x, y, _, _ = study_toy2d(train_per_class=4000, test_per_class=1)
    for k, angle in enumerate(np.deg2rad([-90.0, 30.0, 150.0])):
        pts = x[y == k].double().numpy()
        np.testing.assert_allclose(pts.mean(0), 1.5 * np.array([np.cos(angle), np.sin(angle)]), atol=0.06)
        np.testing.assert_allclose(np.cov(pts.T), np.eye(2), atol=0.08)
    with pytest.raises(ValueError, match="train_per_class=0"):
        study_toy2d(train_per_class=0)
