"""LipSDP-Neuron: the semidefinite-programming upper bound of an MLP's L2 Lipschitz constant, certified.

Fazlyab, Robey, Hassani, Morari, Pappas (NeurIPS 2019). For an MLP f = W_L o s_{L-1} o ... o s_1 o W_1
(biases do not matter) with activation slopes in [alpha_k, beta_k], each neuron's incremental pair
(dz, da) satisfies (da - alpha dz)(beta dz - da) >= 0; with one multiplier per neuron (diagonal
T_k >= 0) the S-procedure certifies Lip(f) <= sqrt(rho) when the block-tridiagonal matrix F(rho, T) in the
variables (dx, da_1, ..., da_{L-1}),

    block (0, 0)         = rho I + a_1 b_1 W_1^T T_1 W_1
    block (k, k)         = T_k + a_{k+1} b_{k+1} W_{k+1}^T T_{k+1} W_{k+1}       (0 < k < L-1)
    block (L-1, L-1)     = T_{L-1} - W_L^T W_L
    block (k, k-1)       = -(a_k + b_k)/2 T_k W_k,

is positive semidefinite (for one hidden layer this is the paper's LMI). It is solved with cvxpy + Clarabel
(the optional ``sdp`` extra). Two steps keep it small and exact:

* Input compression: with the thin SVD W_1 = U S V^T, ||J V^T|| = ||J|| for any J, so W_1 is replaced by
  U S (rank x rank instead of fan_in); the constant and the LMI's feasible set do not change.
* A-posteriori certificate: the solver's answer is only approximately feasible, so the reported number is
  recomputed in float64 from its multipliers: T_k is clipped to >= 0; going backwards from the last block,
  the Schur complements Y_k of the trailing blocks are formed (solves, eigvalsh) and T_k is raised by a
  multiple of I wherever Y_k is not safely positive definite; then rho is the smallest value that makes
  F PSD for these T (the top eigenvalue of the Schur complement onto block 0), raised by a relative margin,
  and F(rho, T) is checked with eigvalsh: its smallest eigenvalue must exceed 10 n eps ||F||_F, an upper
  estimate of eigvalsh's backward error, so F is PSD by Weyl's inequality; otherwise rho is raised further.
  The result is therefore a guaranteed upper bound whatever the solver's accuracy (to the float64 rounding
  of that check), at most slightly above the SDP's optimum.

Weights are rescaled to unit spectral norm first (the constant of the sup over slope choices scales by
the product of the scales) for conditioning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from lipschitz_dd.bounds.mlp import MLP, mlp_from_module

MAX_FIX_ROUNDS = 60


@dataclass
class LipSDPResult:
    """value: certified upper bound of the L2 Lipschitz constant; solver_value: sqrt(rho) as the solver
    reported it (not certified); status: the solver's status; lmi_size: dimension of F after compression."""

    value: float
    solver_value: float
    status: str
    lmi_size: int
    multipliers: list[np.ndarray]


def _blocks(weights, ranges, rho, mults):
    """F(rho, T) as a dense float64 matrix."""
    sizes = [weights[0].shape[1], *[w.shape[0] for w in weights[:-1]]]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    f = np.zeros((offsets[-1], offsets[-1]))

    def sl(k):
        return slice(offsets[k], offsets[k + 1])

    f[sl(0), sl(0)] = rho * np.eye(sizes[0])
    depth = len(weights) - 1
    for k in range(1, depth + 1):
        w, t = weights[k - 1], mults[k - 1]
        alpha, beta = ranges[k - 1]
        f[sl(k), sl(k)] += np.diag(t)
        f[sl(k - 1), sl(k - 1)] += alpha * beta * (w.T * t) @ w
        off = -(alpha + beta) / 2 * (t[:, None] * w)
        f[sl(k), sl(k - 1)] = off
        f[sl(k - 1), sl(k)] = off.T
    f[sl(depth), sl(depth)] -= weights[-1].T @ weights[-1]
    return (f + f.T) / 2


def _certify(weights, ranges, mults, rho_hint: float) -> tuple[float, list[np.ndarray]]:
    """Smallest rho (with margin) making F(rho, T) PSD for the given multipliers T, raising T where needed;
    verified by eigvalsh with an eigenvalue-error margin. Returns (rho, multipliers used)."""
    mults = [np.maximum(np.asarray(t, dtype=np.float64), 0.0) for t in mults]
    depth = len(weights) - 1
    scale = max(1.0, rho_hint)
    # backward elimination: Y_{depth} = T - W_L^T W_L (+0), Y_k = D_k - C_{k+1}^T Y_{k+1}^{-1} C_{k+1}
    for _ in range(MAX_FIX_ROUNDS):
        ok = True
        y = None
        for k in range(depth, 0, -1):
            w_next = weights[k] if k < depth else None
            d = np.diag(mults[k - 1]).astype(np.float64)
            if k < depth:
                alpha, beta = ranges[k]
                d = d + alpha * beta * (weights[k].T * mults[k]) @ weights[k]
            else:
                d = d - weights[-1].T @ weights[-1]
            if y is not None:
                alpha, beta = ranges[k]
                c = -(alpha + beta) / 2 * (mults[k][:, None] * w_next)
                d = d - c.T @ scipy.linalg.cho_solve(y, c)
            d = (d + d.T) / 2
            low = float(scipy.linalg.eigvalsh(d, subset_by_index=[0, 0])[0])
            floor = 1e-9 * max(1.0, float(np.abs(d).max()))
            if low <= floor:
                mults[k - 1] = mults[k - 1] + (floor - low) * 2 + 1e-12 * scale
                ok = False
                break
            y = scipy.linalg.cho_factor(d, lower=True)
        if ok:
            break
    else:
        raise RuntimeError("LipSDP certificate: could not make the multipliers feasible")
    # rho from the Schur complement onto block 0
    alpha, beta = ranges[0]
    w1 = weights[0]
    c = -(alpha + beta) / 2 * (mults[0][:, None] * w1)
    s = c.T @ scipy.linalg.cho_solve(y, c) - alpha * beta * (w1.T * mults[0]) @ w1
    s = (s + s.T) / 2
    rho = max(float(scipy.linalg.eigvalsh(s, subset_by_index=[s.shape[0] - 1, s.shape[0] - 1])[0]), 0.0)
    rho = rho * (1 + 1e-9) + 1e-12 * scale
    for _ in range(MAX_FIX_ROUNDS):
        f = _blocks(weights, ranges, rho, mults)
        low = float(scipy.linalg.eigvalsh(f, subset_by_index=[0, 0])[0])
        err = 10 * f.shape[0] * np.finfo(np.float64).eps * float(np.linalg.norm(f))
        if low > err:
            return rho, mults
        rho = rho + 2 * (err - low) + 1e-9 * rho
    raise RuntimeError("LipSDP certificate: could not certify F >= 0")


@dataclass
class _Prepared:
    """The LMI's data: compressed (W_1 -> U S) weights normalised to unit spectral norm, the activations'
    slope ranges, the norms and factor = their product (Lip = factor * sqrt(rho)). When status is set
    ("closed form": no hidden layer; "zero first layer") there is no LMI and factor is the constant itself."""

    weights: list[np.ndarray]
    ranges: list[tuple[float, float]]
    factor: float
    status: str | None = None
    norms: list[float] | None = None


def _prepare(mlp: MLP) -> _Prepared:
    """Input compression and normalisation (module docstring), shared by every LipSDP solver here."""
    ranges = [a.slope_range for a in mlp.activations]
    if not ranges:
        return _Prepared([], [], float(np.linalg.norm(mlp.weights[0], 2)), "closed form")
    u, s, _ = np.linalg.svd(mlp.weights[0], full_matrices=False)
    keep = s > s[0] * 1e-13 if s.size and s[0] > 0 else np.zeros_like(s, dtype=bool)
    if not keep.any():
        return _Prepared([], ranges, 0.0, "zero first layer")
    weights = [u[:, keep] * s[keep], *mlp.weights[1:]]
    norms = [float(np.linalg.norm(w, 2)) or 1.0 for w in weights]
    weights = [w / n for w, n in zip(weights, norms, strict=True)]
    return _Prepared(weights, ranges, float(np.prod(norms)), norms=norms)


def lipsdp_neuron(model_or_mlp, *, solver: str = "CLARABEL", verbose: bool = False) -> LipSDPResult:
    """LipSDP-Neuron certified upper bound of the L2 Lipschitz constant (global, all inputs) of an MLP
    (nn.Sequential of Linear / ReLU / LeakyReLU / Tanh / Sigmoid, or an :class:`MLP`): sqrt of the least rho
    with F(rho, T) >= 0 (module docstring), re-certified in float64 so the value errs high, never low.
    Theory: exact constant <= LipSDP <= ECLipsE-Fast (whose multipliers are one feasible point) <= product.
    Needs cvxpy (``pip install lipschitz_dd[sdp]``). Cost grows steeply with the hidden neurons: with
    Clarabel on one CPU thread, 96 neurons took 2-24 s and the toy net's 200 over 150 s; keep it to ~100."""
    try:
        import cvxpy as cp
    except ImportError as err:
        raise ImportError("lipsdp_neuron needs cvxpy and clarabel: pip install 'lipschitz_dd[sdp]'") from err
    mlp = model_or_mlp if isinstance(model_or_mlp, MLP) else mlp_from_module(model_or_mlp)
    prepared = _prepare(mlp)
    if prepared.status is not None:
        return LipSDPResult(prepared.factor, prepared.factor, prepared.status, 0, [])
    weights, ranges, factor = prepared.weights, prepared.ranges, prepared.factor

    sizes = [weights[0].shape[1], *[w.shape[0] for w in weights[:-1]]]
    rho = cp.Variable(nonneg=True)
    mult_vars = [cp.Variable(n, nonneg=True) for n in sizes[1:]]
    depth = len(weights) - 1
    grid = [[None] * (depth + 1) for _ in range(depth + 1)]
    for i in range(depth + 1):
        for j in range(depth + 1):
            grid[i][j] = np.zeros((sizes[i], sizes[j]))
    grid[0][0] = rho * np.eye(sizes[0])
    for k in range(1, depth + 1):
        w, t = weights[k - 1], mult_vars[k - 1]
        alpha, beta = ranges[k - 1]
        diag_t = cp.diag(t)
        grid[k][k] = diag_t if isinstance(grid[k][k], np.ndarray) else grid[k][k] + diag_t
        if alpha * beta != 0:
            grid[k - 1][k - 1] = grid[k - 1][k - 1] + alpha * beta * (w.T @ diag_t @ w)
        grid[k][k - 1] = -(alpha + beta) / 2 * (diag_t @ w)
        grid[k - 1][k] = -(alpha + beta) / 2 * (w.T @ diag_t)
    grid[depth][depth] = grid[depth][depth] - weights[-1].T @ weights[-1]
    f = cp.bmat(grid)
    problem = cp.Problem(cp.Minimize(rho), [(f + f.T) / 2 >> 0])
    problem.solve(solver=solver, verbose=verbose)
    if rho.value is None or any(t.value is None for t in mult_vars):
        raise RuntimeError(f"LipSDP: solver {solver} returned no solution (status {problem.status})")
    solver_rho = float(rho.value)
    cert_rho, mults = _certify(weights, ranges, [t.value for t in mult_vars], solver_rho)
    return LipSDPResult(
        value=float(np.sqrt(cert_rho)) * factor,
        solver_value=float(np.sqrt(max(solver_rho, 0.0))) * factor,
        status=str(problem.status),
        lmi_size=int(sum(sizes)),
        multipliers=mults,
    )
