"""LipSDP-Neuron by a first-order method in PyTorch, certified a posteriori in float64.

The bound is the one of :mod:`lipschitz_dd.bounds.lipsdp` (Fazlyab et al. 2019): Lip(f) <= sqrt(rho) when
F(rho, T) >= 0 for diagonal multipliers T_k >= 0 (one per neuron), F block-tridiagonal in (dx, da_1, ...,
da_{L-1}). Instead of an interior-point solver (whose cvxpy formulation needs over 100 GB at 512 neurons) the
problem is rewritten as an unconstrained minimisation over the multipliers alone, after ECLipsE (Xu &
Sivaranjani 2024): divide F by rho and write T = rho T'. Then F / rho is affine in (T', sigma = 1 / rho),

    block (0, 0)       = I + a_1 b_1 W_1^T T'_1 W_1
    block (k, k)       = T'_k + a_{k+1} b_{k+1} W_{k+1}^T T'_{k+1} W_{k+1}      (0 < k < L-1)
    block (L-1, L-1)   = T'_{L-1} - sigma W_L^T W_L
    block (k, k-1)     = -c_k T'_k W_k,     c_k = (a_k + b_k) / 2,

and eliminating the blocks from the front (Schur complements) gives, whenever every X_k is positive definite,

    X_0 = block (0, 0),   X_k = block (k, k) - c_k^2 T'_k W_k X_{k-1}^{-1} W_k^T T'_k   (k = 1 .. L-1,
                                                                                 without sigma's term),
    rho(T') = lambda_max(W_L X_{L-1}^{-1} W_L^T),

the least rho for which F(rho, rho T') >= 0. Since F / rho is affine in (T', sigma), sigma(T') = 1 / rho(T') is
concave and log rho(T') is convex on its (convex) domain {X_k > 0 for all k}; it grows without bound at the
domain's edge. Every point of the domain gives a valid bound, so the solver is an ordinary descent, using
gradients only: L-BFGS (memory 20, Armijo backtracking) on u = log T' (one variable per neuron), with the
top eigenvalue of the small d_out x d_out matrix (the only non-smooth part) replaced by the smooth upper
approximation top + m log sum_j exp((eig_j - top) / m), m = mu rho, in stages mu = 1e-2 .. 1e-5, each
starting from the best point so far. The gradient is written out by hand (:class:`_Problem`: rank-d_out
adjoints through the Cholesky factors, float64), so one evaluation costs about one forward elimination
(a Cholesky factorisation, a triangular solve and a product per layer). A step that leaves the domain (a
Cholesky factorisation fails) counts as an infinite value and is halved, and the best point seen (by the
exact top eigenvalue, not the smoothed one) is kept. ECLipsE-Fast's multipliers,
T'_k = 1 / (2 c_k^2 ||W_k X_{k-1}^{-1} W_k^T||) I, lie in the domain and give exactly its bound (the solver's
first point), so the iterations never end above ECLipsE-Fast; a previous result (``init=``) is another start,
used when it is better (warm start during training), and then the first two smoothing stages are skipped.

The result is then certified exactly as :func:`lipschitz_dd.bounds.lipsdp.lipsdp_neuron`'s: with T = rho T'
the multipliers go through the same float64 certificate (clip to >= 0, raise T_k where a trailing Schur
complement is not safely positive definite, rho = the top eigenvalue of the Schur complement onto block 0
with a margin, then F(rho, T) checked by a dense eigvalsh with an eigenvalue-error margin, rho raised until
it passes). So the reported value is a guaranteed upper bound of the L2 Lipschitz constant (global, over all
inputs) whatever the iterations did: a stopped or inaccurate run errs high, never low. If the certified value
were above ECLipsE-Fast's (only by the certificate's margins), ECLipsE-Fast's value is returned instead and the
result says so (``source="eclipse"``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lipschitz_dd.bounds.eclipse import eclipse_fast_weights
from lipschitz_dd.bounds.lipsdp import _certify, _prepare
from lipschitz_dd.bounds.mlp import MLP, mlp_from_module


@dataclass
class FirstOrderLipSDPResult:
    """value: certified upper bound of the L2 Lipschitz constant (errs high, never low); solver_value: the
    best sqrt(rho(T')) the iterations reached (before certification; the certificate can only lower it or add
    a margin of ~1e-9); eclipse_value: ECLipsE-Fast's bound (the start); iterations: evaluations of rho and its
    gradient; seconds: wall time including the certificate; multipliers: T'_k (one array per hidden layer of
    the MLP normal form) such that F(rho, rho T') >= 0 (the matrix of :mod:`lipschitz_dd.bounds.lipsdp`) for
    the network's own weights W_k, with rho = value^2 when source is "first-order" (the certificate checked it
    after input compression and scaling); ``init=`` of the next call takes them; source: "first-order", or
    "eclipse" when the certified first-order value was not below ECLipsE-Fast's, which is then the value (and
    rho above is the certified first-order one, slightly larger); kind "upper", errs "high", certified True
    (:class:`lipschitz_dd.bounds.result.BoundResult`);
    warm_started: whether ``init`` was used as the start; stopped_by: "tolerance", "max_iter" or
    "time_limit"; lmi_size: dimension of F after input compression; history: the best rho(T') after each
    evaluation (normalised weights: sqrt(h) * solver_value / sqrt(history[-1]) is on the network's scale)."""

    value: float
    solver_value: float
    eclipse_value: float
    iterations: int
    seconds: float
    multipliers: list[np.ndarray]
    source: str
    stopped_by: str
    warm_started: bool
    lmi_size: int
    history: list[float] = field(default_factory=list, repr=False)
    kind: str = "upper"  # the BoundResult protocol (lipschitz_dd.bounds.result): a certified upper bound
    errs: str = "high"
    certified: bool = True


# relative smoothing of the top eigenvalue, stage by stage (each stage starts where the last one ended);
# a warm start (init=) begins at WARM_STAGE
SMOOTHING = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
WARM_STAGE = 2
WARM_RESCALE = (1.1, 1.03, 1.0, 0.97, 0.93, 0.85, 0.7, 0.5)  # factors tried on a warm start's T'
ARMIJO = 1e-4


class _Problem:
    """rho(T') of the module docstring and its gradient for normalised, compressed weights (float64 torch).

    Hidden layer k = 1 .. n has multipliers t[k-1]; W_k = w[k-1], W_L = w[n]. The gradient is written out by
    hand (no autograd): with S = W_L X_n^{-1} W_L^T = V diag(eig) V^T and an objective phi(eig) whose
    derivative in eig is omega >= 0, dphi/dX_n = -P_n P_n^T with P_n = X_n^{-1} W_L^T V diag(sqrt(omega)),
    and going backwards every dphi/dX_k stays of that form, P_{k-1} = c_k X_{k-1}^{-1} W_k^T (t_k o P_k), of
    rank <= d_out; so the gradient costs O(n_k^2 d_out) per layer on top of the forward pass."""

    def __init__(self, weights: list[np.ndarray], ranges: list[tuple[float, float]], device=None) -> None:
        self.w = [torch.as_tensor(np.ascontiguousarray(w, dtype=np.float64), device=device) for w in weights]
        self.depth = len(weights) - 1
        self.c2 = [((a + b) / 2) ** 2 for a, b in ranges]
        self.ab = [a * b for a, b in ranges]
        self.sizes = [w.shape[0] for w in weights[:-1]]
        w1 = self.w[0]
        self.m1 = w1 @ w1.T if self.ab[0] == 0 else None  # X_0 = I: M_1 = W_1 W_1^T, fixed

    def forward(self, t: list[torch.Tensor]):
        """(eig, V, chol, m) for multipliers t: eigenvalues (ascending) and eigenvectors of
        W_L X_n^{-1} W_L^T (eig[-1] = rho(T')), the Cholesky factors of X_0 (None when X_0 = I) .. X_n and
        the M_k; None outside the domain (some X_k not positive definite)."""
        chols: list[torch.Tensor | None] = []
        ms = []
        w1 = self.w[0]
        if self.m1 is None:
            x0 = torch.eye(w1.shape[1], dtype=w1.dtype, device=w1.device) + self.ab[0] * (w1.T * t[0]) @ w1
            chol, info = torch.linalg.cholesky_ex((x0 + x0.T) / 2)
            if int(info) != 0:
                return None
            chols.append(chol)
        else:
            chols.append(None)
        for k in range(self.depth):
            w, tk = self.w[k], t[k]
            if chols[-1] is None:
                m = self.m1
            else:
                z = torch.linalg.solve_triangular(chols[-1], w.T, upper=False)
                m = z.T @ z
            ms.append(m)
            x = -self.c2[k] * (tk[:, None] * m * tk[None, :])
            x.diagonal().add_(tk)
            if k + 1 < self.depth and self.ab[k + 1] != 0:
                wn = self.w[k + 1]
                x = x + self.ab[k + 1] * (wn.T * t[k + 1]) @ wn
            chol, info = torch.linalg.cholesky_ex((x + x.T) / 2)
            if int(info) != 0:
                return None
            chols.append(chol)
        z = torch.linalg.solve_triangular(chols[-1], self.w[-1].T, upper=False)
        eig, vec = torch.linalg.eigh(z.T @ z)
        if not (bool(eig[-1] > 0) and bool(torch.isfinite(eig).all())):
            return None
        return eig, vec, chols, ms

    def gradient(self, t: list[torch.Tensor], state, omega: torch.Tensor) -> list[torch.Tensor]:
        """d phi / d t_k for phi with d phi / d eig = omega >= 0 (class docstring), at the point of ``state``."""
        _, vec, chols, ms = state
        keep = omega > 0
        p = torch.cholesky_solve(self.w[-1].T @ (vec[:, keep] * omega[keep].sqrt()), chols[-1])
        grads = [torch.zeros_like(tk) for tk in t]
        for k in range(self.depth - 1, -1, -1):  # hidden layer k + 1
            tk, m = t[k], ms[k]
            tp = tk[:, None] * p
            grads[k] += -(p * p).sum(1) + 2 * self.c2[k] * (p * (m @ tp)).sum(1)
            if k + 1 < self.depth and self.ab[k + 1] != 0:
                grads[k + 1] -= self.ab[k + 1] * ((self.w[k + 1] @ p) ** 2).sum(1)
            if k == 0 and chols[0] is None:
                break
            rhs = math.sqrt(self.c2[k]) * (self.w[k].T @ tp)
            p = torch.cholesky_solve(rhs, chols[k])  # P for X_k of the previous layer (X_0 when k == 0)
            if k == 0:
                grads[0] -= self.ab[0] * ((self.w[0] @ p) ** 2).sum(1)
        return grads

    def eclipse_start(self) -> list[torch.Tensor]:
        """ECLipsE-Fast's multipliers as T' (module docstring); dropping the a b W^T T' W terms (>= 0) as
        ECLipsE-Fast does gives its bound; keeping them can only lower rho."""
        out, chol = [], None
        for k in range(self.depth):
            w = self.w[k]
            if chol is None:
                m = w @ w.T
            else:
                z = torch.linalg.solve_triangular(chol, w.T, upper=False)
                m = z.T @ z
            m = (m + m.T) / 2
            top = float(torch.linalg.eigvalsh(m)[-1])
            lam = 1.0 / (2.0 * self.c2[k] * top)
            out.append(torch.full((w.shape[0],), lam, dtype=w.dtype, device=w.device))
            x = lam * torch.eye(w.shape[0], dtype=w.dtype, device=w.device) - self.c2[k] * lam * lam * m
            chol = torch.linalg.cholesky((x + x.T) / 2)
        return out


def lipsdp_first_order(
    model_or_mlp,
    *,
    init: FirstOrderLipSDPResult | None = None,
    max_iter: int = 2000,
    time_limit: float | None = 10.0,
    memory: int = 20,
    tol: float = 1e-6,
    patience: int = 10,
    device: str | torch.device | None = None,
) -> FirstOrderLipSDPResult:
    """Certified LipSDP-Neuron upper bound of the L2 Lipschitz constant (global, all inputs) of an MLP
    (nn.Sequential of Linear / ReLU / LeakyReLU / Tanh / Sigmoid, or an :class:`MLP`) by first-order descent
    (L-BFGS) on log rho(T') (module docstring), started from ECLipsE-Fast's multipliers or from ``init`` (a
    previous result for a network of the same shape, e.g. the last measurement during training) when that is
    better.

    Stops after ``max_iter`` evaluations of rho and its gradient, after ``time_limit`` seconds (None: no limit;
    the certificate comes on top), or when every smoothing stage has converged (the smoothed log rho fell by
    less than ``tol`` over ``patience`` L-BFGS steps). ``device``: where the iterations run (e.g. "cuda"; the
    certificate always runs in numpy float64 on the CPU). Whatever stops it, the value is certified in float64
    and errs high: exact constant <= LipSDP optimum <= value <= ECLipsE-Fast (if the certificate's ~1e-9
    relative margin would put it above, ECLipsE-Fast's value is returned) <= product bound. Needs activation
    slopes 0 <= alpha <= beta (ReLU, LeakyReLU with a slope in [0, 1], Tanh, Sigmoid)."""
    start_time = time.perf_counter()
    mlp = model_or_mlp if isinstance(model_or_mlp, MLP) else mlp_from_module(model_or_mlp)
    ranges = [a.slope_range for a in mlp.activations]
    for alpha, beta in ranges:
        if not 0.0 <= alpha <= beta:
            raise ValueError(f"lipsdp_first_order needs slopes 0 <= alpha <= beta, got [{alpha}, {beta}]")
    if init is not None and not isinstance(init, FirstOrderLipSDPResult):
        raise ValueError(f"lipsdp_first_order: init must be a FirstOrderLipSDPResult, got {type(init).__name__}")
    if not (max_iter >= 0 and memory >= 1 and tol >= 0 and patience >= 1):
        raise ValueError("lipsdp_first_order: needs max_iter >= 0, memory >= 1, tol >= 0, patience >= 1")
    prepared = _prepare(mlp)
    if prepared.status is None and any((a + b) == 0 for a, b in ranges):
        prepared.factor, prepared.status = 0.0, "constant activation"
    if prepared.status is not None:  # no LMI: the constant in closed form
        value = prepared.factor
        return FirstOrderLipSDPResult(
            value, value, value, 0, time.perf_counter() - start_time, [], prepared.status, "closed form", False, 0
        )
    eclipse_value = eclipse_fast_weights(mlp.weights, ranges)  # the same number as eclipse_fast(mlp)
    if eclipse_value == 0.0:  # a zero layer: the network is constant (ECLipsE-Fast is certified)
        return FirstOrderLipSDPResult(
            0.0, 0.0, 0.0, 0, time.perf_counter() - start_time, [], "zero layer", "closed form", False, 0
        )
    weights, factor = prepared.weights, prepared.factor
    sizes = [weights[0].shape[1], *[w.shape[0] for w in weights[:-1]]]
    problem = _Problem(weights, ranges, device=device)
    # T' of the normalised weights = T' of the network's own weights * scales (docstring of the result)
    scales = [float(np.prod(prepared.norms[: k + 1])) ** 2 for k in range(len(weights) - 1)]

    def split(u: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(torch.exp(u), problem.sizes))

    with torch.no_grad():
        u = torch.log(torch.cat(problem.eclipse_start()))
        state = problem.forward(split(u))
        if state is None:  # cannot happen in exact arithmetic: ECLipsE-Fast's point is interior
            raise RuntimeError("lipsdp_first_order: ECLipsE-Fast's multipliers are outside the domain")
        warm = False
        if init is not None and init.multipliers and [len(t) for t in init.multipliers] == problem.sizes:
            raw = [np.asarray(t, np.float64) * s for t, s in zip(init.multipliers, scales, strict=True)]
            t_init = np.maximum(np.concatenate(raw), 1e-300)
            u_init = torch.log(torch.as_tensor(t_init, device=u.device))
            # T' ~ T / rho moves against the constant as the weights change (a larger constant: smaller T',
            # and the old T' may lie outside the domain): try it rescaled, keep the best (log rho is convex
            # along the ray)
            for gamma in WARM_RESCALE:
                state_init = problem.forward(split(u_init + math.log(gamma)))
                if state_init is not None and float(state_init[0][-1]) < float(state[0][-1]):
                    u, state, warm = u_init + math.log(gamma), state_init, True
        best_rho, best_u = float(state[0][-1]), u.clone()
        history = [best_rho]
        iterations, stopped_by = 0, "tolerance"

        def objective(u: torch.Tensor, m: float):
            """log(top + m log sum exp((eig - top) / m)) (>= log rho, smooth) and its gradient in u, or
            (inf, None) outside the domain."""
            nonlocal iterations, best_rho, best_u
            iterations += 1
            t = split(u)
            state = problem.forward(t)
            if state is None:
                return math.inf, None
            eig = state[0]
            top = float(eig[-1])
            if top < best_rho:
                best_rho, best_u = top, u.clone()
            history.append(best_rho)
            z = (eig - eig[-1]) / m
            smooth = top + m * float(torch.logsumexp(z, 0))
            grad = torch.cat(problem.gradient(t, state, torch.softmax(z, 0) / smooth)) * torch.exp(u)
            return math.log(smooth), grad

        def out_of_budget() -> str | None:
            if iterations >= max_iter:
                return "max_iter"
            if time_limit is not None and time.perf_counter() - start_time > time_limit:
                return "time_limit"
            return None

        for mu in SMOOTHING[WARM_STAGE if warm else 0 :]:
            if (stop := out_of_budget()) is not None:
                stopped_by = stop
                break
            m = mu * best_rho  # fixed within a stage: one smooth function per stage
            u = best_u.clone()
            f, grad = objective(u, m)
            pairs: list[tuple[torch.Tensor, torch.Tensor, float]] = []  # L-BFGS memory (s, y, 1 / y.s)
            recent = [f]
            while (stop := out_of_budget()) is None:
                # L-BFGS direction (two-loop recursion); the first step is scaled to move u by ~1 %
                q = grad.clone()
                alphas = []
                for s_k, y_k, r_k in reversed(pairs):
                    alpha = r_k * float(s_k @ q)
                    alphas.append(alpha)
                    q -= alpha * y_k
                if pairs:
                    q *= float(pairs[-1][0] @ pairs[-1][1]) / float(pairs[-1][1] @ pairs[-1][1])
                else:
                    q *= 1e-2 / max(float(grad.abs().max()), 1e-300)
                for (s_k, y_k, r_k), alpha in zip(pairs, reversed(alphas), strict=True):
                    q += s_k * (alpha - r_k * float(y_k @ q))
                direction = -q
                slope = float(direction @ grad)
                if not slope < 0:  # not a descent direction: forget the curvature pairs
                    pairs.clear()
                    direction = -grad * (1e-2 / max(float(grad.abs().max()), 1e-300))
                    slope = float(direction @ grad)
                # backtracking (Armijo); steps leaving the domain count as infinite
                step = 1.0
                while True:
                    candidate = u + step * direction
                    f_new, grad_new = objective(candidate, m)
                    if f_new <= f + ARMIJO * step * slope or step < 1e-10 or out_of_budget() is not None:
                        break
                    step /= 2
                if grad_new is None or not f_new <= f + ARMIJO * step * slope:
                    break  # no progress possible at this smoothing
                s_k, y_k = candidate - u, grad_new - grad
                sy = float(s_k @ y_k)
                if sy > 1e-12 * float(s_k.norm()) * float(y_k.norm()):
                    pairs.append((s_k, y_k, 1.0 / sy))
                    if len(pairs) > memory:
                        pairs.pop(0)
                u, f, grad = candidate, f_new, grad_new
                recent.append(f)
                if len(recent) > patience and recent[-patience - 1] - f < tol:
                    break  # this stage has converged
            if stop is not None:
                stopped_by = stop
                break
    mults_scaled = [t.cpu().numpy() for t in split(best_u)]
    # certify: T = rho T' in F(rho, T) of lipsdp.py (the same compressed, normalised weights)
    cert_rho, cert_mults = _certify(weights, ranges, [best_rho * t for t in mults_scaled], best_rho)
    value = math.sqrt(cert_rho) * factor
    source = "first-order"
    if value >= eclipse_value:
        value, source = eclipse_value, "eclipse"
    return FirstOrderLipSDPResult(
        value=value,
        solver_value=math.sqrt(best_rho) * factor,
        eclipse_value=eclipse_value,
        iterations=iterations,
        seconds=time.perf_counter() - start_time,
        multipliers=[t / cert_rho / s for t, s in zip(cert_mults, scales, strict=True)],
        source=source,
        stopped_by=stopped_by,
        warm_started=warm,
        lmi_size=int(sum(sizes)),
        history=history,
    )
