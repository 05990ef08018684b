"""ECLipsE-Fast: a closed-form compositional upper bound of an MLP's L2 Lipschitz constant.

After Xu & Sivaranjani (NeurIPS 2024), "ECLipsE: Efficient Compositional Lipschitz Constant Estimation for
Deep Neural Networks", derived here from the LipSDP-Neuron matrix inequality. For an MLP
f = W_L o s_{L-1} o W_{L-1} o ... o s_1 o W_1 (biases do not matter) whose activations have slopes in
[alpha_k, beta_k] with alpha_k >= 0, each neuron's incremental pair (dz, da) satisfies
(da - alpha dz)(beta dz - da) >= 0. With one multiplier lambda_k >= 0 per layer, the S-procedure certifies
||f(x) - f(y)|| <= sqrt(rho) ||x - y|| when the block-tridiagonal matrix

    [ I          -c_1 l_1 W_1^T                           ]
    [ -c_1 l_1 W_1   l_1 I      -c_2 l_2 W_2^T            ]      c_k = (alpha_k + beta_k) / 2
    [                 ...          ...                    ]
    [                     -c l W   l_{L-1} I - W_L^T W_L / rho ]

is positive semidefinite (the terms alpha_k beta_k l_k W_k^T W_k >= 0 are dropped: that only makes the
condition harder, so the bound stays valid). Eliminating the blocks one by one (Schur complements) gives

    X_0 = I,   M_k = W_k X_{k-1}^{-1} W_k^T,   X_k = l_k I - c_k^2 l_k^2 M_k   (k = 1 .. L-1),
    Lip(f) <= sqrt(lambda_max(W_L X_{L-1}^{-1} W_L^T)),

valid for every choice with X_k > 0. ECLipsE-Fast picks each l_k in closed form, greedily: the l_k that
maximises the smallest eigenvalue of X_k, l_k = 1 / (2 c_k^2 ||M_k||), so X_k >= I / (4 c_k^2 ||M_k||).
That gives ||M_{k+1}|| <= 4 c_k^2 ||M_k|| ||W_{k+1}||^2, hence the bound is never above the product bound
prod ||W_k|| prod beta_k. Cost: one Cholesky factorisation and one eigvalsh per layer (float64).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from lipschitz_dd.bounds.mlp import MLP, mlp_from_module
from lipschitz_dd.bounds.result import Bound


def _sandwich_norm(w: np.ndarray, chol: np.ndarray | None) -> np.ndarray:
    """W X^{-1} W^T for X = chol chol^T (chol lower-triangular), or W W^T when chol is None; symmetrised."""
    if chol is None:
        y = w.T
    else:
        y = scipy.linalg.solve_triangular(chol, w.T, lower=True)
    m = y.T @ y
    return (m + m.T) / 2


def eclipse_fast_weights(weights: list[np.ndarray], slope_ranges: list[tuple[float, float]]) -> float:
    """ECLipsE-Fast bound for weights W_1..W_L with activation slope ranges [alpha_k, beta_k] (k < L) between
    them: a certified upper bound of sup over diagonal D_k with entries in [alpha_k, beta_k] of
    ||W_L D_{L-1} ... D_1 W_1||_2, hence of the L2 Lipschitz constant of any such MLP (biases do not matter).
    Errs high (never low), and is never above prod ||W_k||_2 prod beta_k. Needs alpha_k >= 0."""
    if len(slope_ranges) != len(weights) - 1:
        raise ValueError(f"need one slope range per hidden layer: {len(weights)} weights, {len(slope_ranges)} ranges")
    for alpha, beta in slope_ranges:
        if not 0.0 <= alpha <= beta:
            raise ValueError(f"ECLipsE-Fast needs slopes 0 <= alpha <= beta, got [{alpha}, {beta}]")
    chol = None  # X_0 = I
    for w, (alpha, beta) in zip(weights[:-1], slope_ranges, strict=True):
        w = np.asarray(w, dtype=np.float64)
        c2 = ((alpha + beta) / 2) ** 2
        if c2 == 0.0:  # constant activation: the output does not depend on the input
            return 0.0
        m = _sandwich_norm(w, chol)
        top = float(scipy.linalg.eigvalsh(m, subset_by_index=[m.shape[0] - 1, m.shape[0] - 1])[0])
        if top <= 0.0:  # W_k = 0
            return 0.0
        lam = 1.0 / (2.0 * c2 * top)
        x = lam * np.eye(m.shape[0]) - (c2 * lam * lam) * m
        chol = np.linalg.cholesky((x + x.T) / 2)
    last = _sandwich_norm(np.asarray(weights[-1], dtype=np.float64), chol)
    top = float(scipy.linalg.eigvalsh(last, subset_by_index=[last.shape[0] - 1, last.shape[0] - 1])[0])
    return float(np.sqrt(max(top, 0.0)))


def eclipse_fast(model_or_mlp) -> Bound:
    """ECLipsE-Fast certified upper bound (L2, global, over all inputs) of the Lipschitz constant of an MLP
    (nn.Sequential of Linear / ReLU / LeakyReLU / Tanh / Sigmoid, or an :class:`MLP`); see the module
    docstring for the equations. Errs high; never above the product bound; milliseconds for widths ~1000.
    A `Bound` (a float): kind "upper", errs "high", certified."""
    mlp = model_or_mlp if isinstance(model_or_mlp, MLP) else mlp_from_module(model_or_mlp)
    value = eclipse_fast_weights(mlp.weights, [a.slope_range for a in mlp.activations])
    return Bound(value, "upper", certified=True, method="ECLipsE-Fast")
