"""Softmax wrapper, hard midpoints, sub-sampling error, finite differences and the correctness split, each
against an independent computation."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from lipschitz_dd.bounds.diagnostics import correctness_split, finite_difference_ratio, subsample_error
from lipschitz_dd.bounds.hard_points import top_pair_midpoints
from lipschitz_dd.bounds.jacobian import jacobian_spectral_norms
from lipschitz_dd.bounds.outputs import SoftmaxOutput


def test_softmax_output_jacobian_is_the_softmax_chain_rule():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    wrapped = SoftmaxOutput(model)
    want = []
    for xi in x:
        p = model(xi).softmax(-1)
        jac = (torch.diag(p) - torch.outer(p, p)) @ torch.autograd.functional.jacobian(model, xi)
        want.append(torch.linalg.matrix_norm(jac, ord=2))
    got = jacobian_spectral_norms(wrapped, x, method="exact")
    assert torch.allclose(got, torch.stack(want), rtol=1e-10)
    assert (got <= 0.5 * jacobian_spectral_norms(model, x, method="exact") + 1e-12).all()


def test_top_pair_midpoints_are_the_pairs_of_the_top_m():
    x = torch.arange(12.0).reshape(6, 2)
    norms = torch.tensor([0.1, 5.0, 0.2, 4.0, 3.0, float("nan")])
    got = top_pair_midpoints(x, norms, m=3)
    top = [1, 3, 4]
    want = torch.stack([(x[i] + x[j]) / 2 for i, j in itertools.combinations(top, 2)])
    assert torch.equal(got, want)


def test_subsample_error_against_numpy_brute_force():
    values = torch.tensor([1.0, 2.0, 3.0, 10.0])
    (full_size,) = subsample_error(values, [4], repeats=3)
    assert full_size.mean_ratio == 1.0 and full_size.mean_below_pct == 0.0 and full_size.share_below == 0.0
    # subsets of 2 of 4 points miss the maximum with probability 1/2: ratio -> (1/2 * 1 + 1/2 * E[max others]/10)
    (pairs,) = subsample_error(values, [2], repeats=20000, generator=torch.Generator().manual_seed(1))
    others = [max(a, b) for a, b in itertools.combinations([1.0, 2.0, 3.0], 2)]
    exact = 0.5 + 0.5 * np.mean(others) / 10
    assert abs(pairs.mean_ratio - exact) < 0.01
    assert 0 < pairs.std_ratio < 1
    assert abs(pairs.share_below - 0.5) < 0.02  # P(the maximum is not among 2 of 4 points) = 1/2


def test_finite_difference_ratio_is_below_the_exact_constant_of_a_1d_relu_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    w, b = model[0].weight.detach().flatten(), model[0].bias.detach()
    # the exact constant: the largest |slope| over the linear pieces between the breakpoints -b/w
    cuts = torch.sort(-b / w).values
    mids = torch.cat([cuts[:1] - 1, (cuts[1:] + cuts[:-1]) / 2, cuts[-1:] + 1]).unsqueeze(1)
    exact = float(jacobian_spectral_norms(model, mids, method="exact").max())
    x = torch.randn(500, 1, dtype=torch.float64) * 3
    other = x + torch.randn(500, 1, dtype=torch.float64)
    ratios = finite_difference_ratio(model, x, other)
    assert (ratios <= exact + 1e-10).all()
    assert ratios.max() > 0.5 * exact  # not trivially small: some pairs lie on the steepest piece


def test_correctness_split_against_numpy():
    torch.manual_seed(0)
    logits = torch.randn(50, 4)
    labels = torch.randint(0, 4, (50,))
    norms = torch.rand(50)
    split = correctness_split(norms, logits, labels)
    right = (logits.argmax(1) == labels).numpy()
    assert np.allclose(split.correct.numpy(), norms.numpy()[right])
    assert np.allclose(split.wrong.numpy(), norms.numpy()[~right])
    losses = nn.functional.cross_entropy(logits, labels, reduction="none").numpy()
    assert abs(split.loss_norm_correlation - np.corrcoef(losses, norms.numpy())[0, 1]) < 1e-6
