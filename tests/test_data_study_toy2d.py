"""The study's 2-D toy data (lipschitz_dd.data.synthetic.study_toy2d)."""

import numpy as np
import pytest
import torch

from lipschitz_dd.data.synthetic import study_toy2d


def test_study_toy2d_has_the_studys_sizes_means_and_seed():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    x_train, y_train, x_test, y_test = study_toy2d()
    assert torch.equal(torch.get_rng_state(), state)  # the global torch RNG is untouched
    assert x_train.shape == (45, 2) and x_test.shape == (15, 2) and x_train.dtype == torch.float32
    assert torch.equal(torch.bincount(y_train), torch.tensor([15, 15, 15]))
    assert torch.equal(torch.bincount(y_test), torch.tensor([5, 5, 5]))
    # the study's draws: torch.manual_seed(0), then for each class mean + a standard-normal (15, 2) float32 draw
    # (torch.distributions.MultivariateNormal with identity covariance), training points of every class first
    torch.manual_seed(0)
    angles = np.deg2rad([-90.0, 30.0, 150.0])
    means = 1.5 * np.stack([np.cos(angles), np.sin(angles)], 1)
    dists = [torch.distributions.MultivariateNormal(torch.Tensor(m), torch.eye(2)) for m in means]
    expected_train = torch.vstack([d.sample((15,)) for d in dists])
    expected_test = torch.vstack([d.sample((5,)) for d in dists])
    assert torch.equal(x_train, expected_train) and torch.equal(x_test, expected_test)
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
