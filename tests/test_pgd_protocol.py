"""PGD points under the study's protocol (bounds.STUDY_PGD: 1,000 steps of size 10 decayed x0.95, Gaussian start of
std 1e-4, projection onto the L2 ball and the data box), against independent computations: the closed-form
optimum on a linear two-class model, and scipy's SLSQP for the projection and for the box-constrained optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import Bounds, NonlinearConstraint, minimize
from torch import nn

from lipschitz_dd.bounds import STUDY_PGD, pgd_perturbations, project_ball_and_box
from lipschitz_dd.callbacks import PGDPoints


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def linear_two_class(seed: int, dim: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 2)).double().eval()


def margin_direction(model: nn.Module, label: int) -> np.ndarray:
    """v = w_label - w_other: CE(f(x), label) = log(1 + exp(-(v . x + b))) falls with v . x, so the loss maximiser
    over a convex set minimises v . x' there."""
    w = model[0].weight.detach().numpy()
    return w[label] - w[1 - label]


def slsqp(objective, gradient, start, eps, low=None, high=None):
    """min objective(d) s.t. ||d||^2 <= eps^2 and low <= d <= high, by scipy's SLSQP (an independent solver)."""
    bounds = None if low is None else list(zip(low, high, strict=True))
    ball = {"type": "ineq", "fun": lambda d: eps**2 - d @ d, "jac": lambda d: -2 * d}
    result = minimize(
        objective,
        start,
        jac=gradient,
        method="SLSQP",
        bounds=bounds,
        constraints=[ball],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    assert result.success, result.message
    return result.x


def test_the_study_schedule_is_recorded():
    assert dict(STUDY_PGD) == {"steps": 1000, "step_size": 10.0, "decay": 0.95, "start_noise": 1e-4}
    with pytest.raises(TypeError):
        STUDY_PGD["steps"] = 10  # read-only


def projection_by_scipy(z, eps, low, high):
    """argmin ||d - z||^2 s.t. ||d||^2 <= eps^2, low <= d <= high, by scipy's trust-constr (interior point)."""
    dim = len(z)
    ball = NonlinearConstraint(lambda d: d @ d, -np.inf, eps**2, jac=lambda d: 2 * d[None])
    result = minimize(
        lambda d: 0.5 * (d - z) @ (d - z),
        np.zeros(dim),
        jac=lambda d: d - z,
        hess=lambda d: np.eye(dim),
        method="trust-constr",
        bounds=Bounds(low, high),
        constraints=[ball],
        options={"gtol": 1e-12, "xtol": 1e-14, "maxiter": 5000},
    )
    assert result.success, result.message
    return result.x


def test_projection_matches_an_independent_solver():
    rng = np.random.default_rng(0)
    for _ in range(8):
        dim, eps = 7, float(rng.uniform(0.2, 1.5))
        x = rng.uniform(0, 1, dim)
        z = rng.normal(0, 1.0, dim)
        low, high = -x, 1 - x  # the box [0, 1] seen from x
        expected = projection_by_scipy(z, eps, low, high)
        got = project_ball_and_box(
            torch.tensor(z)[None], eps, torch.tensor(low)[None], torch.tensor(high)[None]
        ).numpy()[0]
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert np.linalg.norm(got) <= eps * (1 + 1e-12) and (got >= low).all() and (got <= high).all()


def test_projection_without_box_is_radial_and_keeps_points_inside():
    z = torch.tensor([[3.0, 4.0], [0.1, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(project_ball_and_box(z, 1.0), torch.tensor([[0.6, 0.8], [0.1, 0.2]], dtype=z.dtype))


def test_study_pgd_reaches_the_closed_form_optimum_of_a_linear_model():
    """No box: the loss maximiser in the ball is x - eps v / ||v|| (v = w_y - w_other), whatever the start."""
    model = linear_two_class(0)
    x = torch.randn(16, 6, dtype=torch.float64, generator=seeded(1))
    y = torch.randint(0, 2, (16,), generator=seeded(2))
    eps = 0.5
    adversarial = pgd_perturbations(model, x, y, eps=eps, generator=seeded(3), **STUDY_PGD)
    for point, start, label in zip(adversarial, x, y, strict=True):
        v = margin_direction(model, int(label))
        np.testing.assert_allclose(point.numpy(), start.numpy() - eps * v / np.linalg.norm(v), atol=1e-7)


@pytest.mark.slow
def test_study_pgd_reaches_the_box_constrained_optimum_of_a_linear_model():
    """With the box [0, 1] and points near its faces: the optimum of min v . d over the ball and the box, by SLSQP."""
    model = linear_two_class(5)
    x = torch.rand(12, 6, dtype=torch.float64, generator=seeded(6))
    x[:, :3] = x[:, :3].round()  # half the coordinates on a face of the box: the box binds
    y = torch.randint(0, 2, (12,), generator=seeded(7))
    eps = 0.8
    adversarial = pgd_perturbations(model, x, y, eps=eps, data_box=(0.0, 1.0), generator=seeded(8), **STUDY_PGD)
    binding = 0
    for point, start, label in zip(adversarial, x, y, strict=True):
        v = margin_direction(model, int(label))
        low, high = -start.numpy(), 1 - start.numpy()
        expected = slsqp(lambda d, v=v: v @ d, lambda d, v=v: v, np.zeros(6), eps, low, high)
        np.testing.assert_allclose(point.numpy() - start.numpy(), expected, atol=1e-5)
        binding += not np.allclose(expected, -eps * v / np.linalg.norm(v), atol=1e-3)
    assert binding >= 6  # the box changed the optimum for most points: the test exercises it


def test_study_pgd_keeps_ball_and_box_on_a_network_and_never_lowers_the_loss():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    x = torch.rand(30, 1, 6, 6, generator=seeded(9))
    x[x < 0.4] = 0.0  # many zero pixels, as in Fashion-MNIST: an unboxed ascent pushes them negative
    y = torch.randint(0, 5, (30,), generator=seeded(10))
    eps = 0.5
    schedule = {**STUDY_PGD, "steps": 200}
    boxed = pgd_perturbations(model, x, y, eps=eps, data_box=(0.0, 1.0), generator=seeded(11), **schedule)
    unboxed = pgd_perturbations(model, x, y, eps=eps, generator=seeded(11), **schedule)
    assert bool(((boxed - x).flatten(1).norm(dim=1) <= eps * (1 + 1e-6)).all())
    assert boxed.min() >= 0.0 and boxed.max() <= 1.0
    assert unboxed.min() < -0.01  # without the box the zero pixels do go negative
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        attacked = F.cross_entropy(model(boxed), y, reduction="none")
    assert bool((attacked >= clean - 1e-4).all()) and attacked.mean() > clean.mean() + 0.05
    assert all(p.grad is None for p in model.parameters())


def test_step_sizes_follow_the_decayed_schedule():
    """A two-class linear model pushes every point along the same direction: with a ball too large to bind, the
    point moves by exactly step_size * (1 + decay + decay^2)."""
    model = linear_two_class(1, dim=3)
    x, y = torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    moved = pgd_perturbations(model, x, y, eps=100.0, steps=3, step_size=2.0, decay=0.5)
    torch.testing.assert_close(moved.norm(dim=1), torch.full((4,), 2.0 * (1 + 0.5 + 0.25), dtype=torch.float64))


def test_start_noise_is_seeded_and_scaled():
    model = linear_two_class(2, dim=50)
    x, y = torch.full((200, 50), 0.5, dtype=torch.float64), torch.zeros(200, dtype=torch.long)
    start = pgd_perturbations(model, x, y, eps=1.0, steps=0, start_noise=1e-4, generator=seeded(3))
    assert torch.equal(start, pgd_perturbations(model, x, y, eps=1.0, steps=0, start_noise=1e-4, generator=seeded(3)))
    assert (start - x).std().item() == pytest.approx(1e-4, rel=0.05)


def test_points_outside_the_box_are_refused_in_one_line():
    model = linear_two_class(3, dim=2)
    with pytest.raises(ValueError, match="outside data_box") as error:
        pgd_perturbations(
            model,
            torch.tensor([[1.5, 0.2]], dtype=torch.float64),
            torch.zeros(1, dtype=torch.long),
            data_box=(0.0, 1.0),
        )
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="decay"):
        pgd_perturbations(model, torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, dtype=torch.long), decay=0.0)


def test_pgd_points_take_the_knobs():
    model = linear_two_class(4)
    x = torch.rand(8, 6, dtype=torch.float64, generator=seeded(12))
    y = torch.zeros(8, dtype=torch.long)
    schedule = {**STUDY_PGD, "steps": 60}
    point_set = PGDPoints(eps=0.5, data_box=[0.0, 1.0], name="pgd_study", **schedule)
    made = point_set.points(x, y, model, seeded(13))
    expected = pgd_perturbations(model, x, y, eps=0.5, data_box=(0.0, 1.0), generator=seeded(13), **schedule)
    torch.testing.assert_close(made, expected)
    for bad in ({"decay": 1.5}, {"step_size": 0.0}, {"start_noise": -1.0}, {"data_box": [1.0, 0.0]}, {"steps": 0}):
        with pytest.raises(ValueError, match="LipschitzCallback"):
            PGDPoints(**bad)


@pytest.mark.slow
def test_tol_skips_only_steps_that_cannot_move_a_point_further_than_tol():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double().eval()
    x = torch.rand(20, 8, dtype=torch.float64, generator=seeded(14))
    y = torch.randint(0, 4, (20,), generator=seeded(15))
    schedule = {**STUDY_PGD, "steps": 400}
    full = pgd_perturbations(model, x, y, eps=0.5, data_box=(0.0, 1.0), generator=seeded(16), **schedule)
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    early = pgd_perturbations(model, x, y, eps=0.5, data_box=(0.0, 1.0), generator=seeded(16), tol=1e-6, **schedule)
    # the first t with sum_{k=t}^{399} 10 * 0.95^k <= 1e-6 ends the ascent: t gradient steps, the start, the end
    stop = next(t for t in range(400) if sum(10 * 0.95**k for k in range(t, 400)) <= 1e-6)
    assert 300 < stop < 400 and len(calls) == stop + 2
    assert (early - full).flatten(1).norm(dim=1).max() <= 1e-6
