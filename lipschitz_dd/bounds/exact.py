"""The exact global L2 Lipschitz constant of a piecewise-linear MLP (ReLU / LeakyReLU), by enumerating regions.

A ReLU MLP f(x) = W_L s(W_{L-1} ... s(W_1 x + b_1) ... + b_{L-1}) + b_L is continuous and piecewise linear:
each activation pattern (the sign of every hidden pre-activation) defines a polyhedral region on which
f(x) = J x + const with J = W_L D_{L-1} W_{L-1} ... D_1 W_1 (D_k diagonal: the slope of each neuron's
piece). For a continuous piecewise-linear function

    Lip_2(f) = max over regions R with nonempty interior of ||J_R||_2:

any segment [x, y] crosses finitely many regions, on each f moves by at most ||J_R|| times the length, and
within a region with interior the constant is attained; regions of measure zero (lower-dimensional ones,
and patterns whose region is empty) do not matter. So the constant is exact once every region with
interior is found, and every ||J_R|| of such a region is a valid lower bound (it is ||J(x)||_2 at an
interior point x).

:func:`exact_lipschitz` finds it by branch and bound over activation patterns, neuron by neuron, layer by
layer, depth first. A node fixes the pattern of a prefix of neurons; its region is a polyhedron in the input
space, and whether it has an interior is decided by a linear program (scipy HiGHS): the Chebyshev-ball
problem max t s.t. each fixed neuron's signed, normalised pre-activation >= t, t <= 1, interior iff t > 0.
The LP's centre is kept as an interior witness, so the child that the witness itself falls into needs no LP.
Each node has a certified upper bound on every ||J_R|| below it: G_k ||D_hat A_k||_2, where A_k maps the
input to layer k's pre-activations (fixed by the decided layers), D_hat has the decided slopes and the
largest possible slope for undecided neurons (||D A|| grows with each |d_i|, as A^T D^2 A does in the PSD
order), and G_k bounds the rest of the network over all slope choices (the smaller of the product of norms
and ECLipsE-Fast, both certified). Sub-trees whose bound is at most the best exact value found are pruned.
Leaves (full patterns) are verified by a float64 forward pass at their interior point. With a time or LP
budget the search stops and returns the certified interval [lower, upper] (upper: the largest bound among
the unexplored nodes), instead of hanging.

For one hidden layer whose weight rows are linearly independent (h <= input dim), every one of the 2^h
patterns has a region with interior (x -> W_1 x + b_1 is onto R^h), so all are enumerated directly in
batches of spectral norms (no LP; practical to h ~ 20).

When the first layer has rank <= 2 (every net with 1- or 2-D input) the regions are cells of a planar
arrangement and :mod:`lipschitz_dd.bounds.exact_planar` builds them all directly (exact in seconds for the
study's 2-100-100-3 toy, far beyond the branch and bound's reach); ``method`` chooses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
import torch

from lipschitz_dd.bounds.eclipse import eclipse_fast_weights
from lipschitz_dd.bounds.mlp import MLP, mlp_from_module

MARGIN = 1e-9  # a region counts as having interior if it holds a ball of this radius (input units)
RTOL = 1e-9  # prune when bound <= best * (1 + RTOL)
ENUMERATE_MAX_HIDDEN = 22
SAMPLE_FLOPS = (
    2e8  # work cap for the starting points' Jacobians  # one-hidden-layer direct enumeration up to 2^22 patterns
)


@dataclass
class ExactLipschitz:
    """lower: max ||J_R||_2 over verified regions (a valid lower bound: a Jacobian norm at a real interior
    point, ``point``); upper: certified upper bound (== lower when ``exact``); exact: the search finished;
    regions: full patterns evaluated (the rest pruned or empty); lps: linear programs solved; pruned: nodes
    cut by their bound; seconds: wall time; method: "closed form", "enumeration" or "branch and bound". As a
    bound (`BoundResult`): value = lower, kind "exact" (errs "none") when exact else "lower" (errs "low"),
    certified."""

    lower: float
    upper: float
    exact: bool
    point: np.ndarray | None = None
    regions: int = 0
    lps: int = 0
    pruned: int = 0
    seconds: float = 0.0
    method: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def value(self) -> float:
        """The exact constant when the search finished, else the lower end of the interval (a lower bound)."""
        return self.lower

    # the common result protocol (lipschitz_dd.bounds.result)
    certified = True

    @property
    def kind(self) -> str:
        """ "exact" when the search finished, else "lower" (value = the lower end; `upper` bounds it above)."""
        return "exact" if self.exact else "lower"

    @property
    def errs(self) -> str:
        return "none" if self.exact else "low"


def _norm2(m: np.ndarray) -> float:
    if m.size == 0:
        return 0.0
    return float(np.linalg.norm(m, 2))


def _compress_input(mlp: MLP) -> tuple[list[np.ndarray], np.ndarray]:
    """W_1 = U S V^T: regions and Jacobian norms are unchanged if x is written as V y (+ null part), so
    W_1 becomes U S (fan_out x rank). Returns the new weights and V (x = V y)."""
    u, s, vt = np.linalg.svd(mlp.weights[0], full_matrices=False)
    keep = s > (s[0] if s.size else 0.0) * 1e-12
    return [u[:, keep] * s[keep], *mlp.weights[1:]], vt[keep].T


def _tail_bounds(weights: list[np.ndarray], mlp: MLP) -> list[float]:
    """G[k] (k = 1 .. L-1): certified bound on ||W_L D_{L-1} ... D_{k+1} W_{k+1}||_2 over all slope choices
    of layers k+1 .. L-1 (the map from layer k's activations to the output); G[0]: the same for the whole
    network (a global upper bound of the constant)."""
    L = len(weights)
    out = [0.0] * L
    for k in range(0, L):  # k = 0: the whole network
        tail_w = weights[k:]
        ranges = [a.slope_range for a in mlp.activations[k:]]
        prod = float(np.prod([_norm2(w) for w in tail_w])) * float(
            np.prod([max(abs(r[0]), abs(r[1])) for r in ranges] or [1.0])
        )
        try:
            ecl = eclipse_fast_weights(tail_w, ranges) if all(r[0] >= 0 for r in ranges) else prod
        except np.linalg.LinAlgError:
            ecl = prod
        out[k] = min(prod, ecl)
    return out


def _chebyshev(g: np.ndarray, h: np.ndarray) -> tuple[float, np.ndarray | None]:
    """max t s.t. g x + h >= t (rows of g unit norm), t <= 1. Returns (t, x) or (-inf, None)."""
    n = g.shape[1]
    c = np.zeros(n + 1)
    c[-1] = -1.0
    a_ub = np.hstack([-g, np.ones((g.shape[0], 1))])
    bounds = [(None, None)] * n + [(None, 1.0)]
    res = scipy.optimize.linprog(c, A_ub=a_ub, b_ub=h, bounds=bounds, method="highs")
    if res.status != 0 or res.x is None:
        return -np.inf, None
    return float(res.x[-1]), res.x[:-1]


def _pattern_ok(weights, biases, acts, y: np.ndarray, slopes: list[np.ndarray]) -> bool:
    """Forward pass at y (compressed input): every hidden pre-activation nonzero with the pattern's slope."""
    h = y
    for k, (w, b) in enumerate(zip(weights[:-1], biases[:-1], strict=True)):
        z = w @ h + b
        neg, pos = acts[k].pieces
        got = np.where(z > 0, pos, neg)
        if np.any(z == 0) or not np.array_equal(got, slopes[k]):
            return False
        h = got * z
    return True


def _jacobian_norms(weights, biases, acts, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """||J(y)||_2 for a batch y [B, n] (compressed input), and whether every pre-activation is nonzero."""
    h, jac = y, np.broadcast_to(np.eye(y.shape[1]), (y.shape[0], y.shape[1], y.shape[1]))
    clean = np.ones(y.shape[0], dtype=bool)
    for k, (w, b) in enumerate(zip(weights[:-1], biases[:-1], strict=True)):
        z = h @ w.T + b
        neg, pos = acts[k].pieces
        d = np.where(z > 0, pos, neg)
        clean &= np.all(z != 0, axis=1)
        h = d * z
        jac = d[:, :, None] * np.matmul(w, jac)
    jac = np.matmul(weights[-1], jac)
    return np.linalg.norm(jac, ord=2, axis=(1, 2)), clean


def _sampled_lower(weights, biases, acts, samples: int, seed: int) -> tuple[float, np.ndarray | None]:
    """A starting lower bound for the search: the max of ||J(y)||_2 over Gaussian points at scales spread
    around the first layer's kinks (|b_1| / ||W_1 rows||), each a real point (errs low)."""
    n = weights[0].shape[1]
    flops_per_point = n * sum(w.shape[0] * w.shape[1] for w in weights)
    samples = min(samples, int(SAMPLE_FLOPS // max(flops_per_point, 1)))  # wide nets: fewer points
    if samples <= 0:
        return 0.0, None
    rng = np.random.default_rng(seed)
    rows = np.linalg.norm(weights[0], axis=1)
    scale = float(np.median(np.abs(biases[0]) / np.maximum(rows, 1e-300))) or 1.0
    scales = scale * np.logspace(-1, 2, 4).repeat(-(-samples // 4))[:samples]
    y = rng.standard_normal((samples, n)) * scales[:, None]
    norms, clean = _jacobian_norms(weights, biases, acts, y)
    norms = np.where(clean, norms, 0.0)
    i = int(np.argmax(norms))
    return (float(norms[i]), y[i]) if norms[i] > 0 else (0.0, None)


def _enumerate_one_hidden(weights, biases, act, start) -> ExactLipschitz:
    w1, w2 = weights
    h = w1.shape[0]
    neg, pos = act.pieces
    best, best_bits = -1.0, None
    w1t, w2t = torch.from_numpy(w1), torch.from_numpy(w2)
    chunk = 1 << 14
    bits = torch.arange(h)
    for first in range(0, 1 << h, chunk):
        codes = torch.arange(first, min(first + chunk, 1 << h))
        on = ((codes[:, None] >> bits) & 1).to(torch.float64)
        d = neg + (pos - neg) * on
        jac = (w2t[None] * d[:, None, :]) @ w1t
        norms = torch.linalg.matrix_norm(jac, ord=2)
        i = int(torch.argmax(norms))
        if float(norms[i]) > best:
            best, best_bits = float(norms[i]), on[i].numpy()
    signs = np.where(best_bits > 0, 1.0, -1.0)
    y = np.linalg.lstsq(w1, signs - biases[0], rcond=None)[0]  # pre-activations exactly +-1 there
    return ExactLipschitz(
        best, best, True, y, regions=1 << h, seconds=time.perf_counter() - start, method="enumeration"
    )


def exact_lipschitz(
    model_or_mlp,
    *,
    time_limit: float = 30.0,
    max_lps: int | None = None,
    samples: int = 2048,
    seed: int = 0,
    method: str = "auto",
) -> ExactLipschitz:
    """The exact L2 Lipschitz constant (global, over all of R^n) of a ReLU / LeakyReLU MLP with biases:
    max over activation regions with nonempty interior of ||J_R||_2 (module docstring), by branch and bound
    with LP feasibility, or by direct enumeration for one hidden layer of linearly independent rows, or, when
    the first layer's weight has rank <= 2 (every net with 1- or 2-D input), by building the planar arrangement
    of its regions (:func:`~lipschitz_dd.bounds.exact_planar.exact_lipschitz_planar`, on the input compressed
    to that rank). ``method``: "auto" (that choice), "planar" (rank <= 2 only) or "branch and bound".

    ``model_or_mlp``: an nn.Sequential of Linear / ReLU / LeakyReLU (+ Flatten, Identity, Dropout), e.g.
    ``FCN(...).net``, or an :class:`MLP`. Stops after ``time_limit`` seconds or ``max_lps`` LPs and then
    returns a certified interval (the search starts from the best of ``samples`` random points, which only
    speeds up pruning): ``lower`` (a Jacobian norm at a verified interior point: errs low) and
    ``upper`` (a certified bound: errs high); ``exact`` is True when the search finished (then lower ==
    upper, up to a relative 1e-9 and the LP's tolerance on regions thinner than 1e-9 in input units, which
    are counted in ``upper`` but not in ``lower`` when their witness fails the float64 check)."""
    start = time.perf_counter()
    if method not in ("auto", "planar", "branch and bound"):
        raise ValueError(f"method={method!r} is invalid: choose 'auto', 'planar' or 'branch and bound'")
    mlp = model_or_mlp if isinstance(model_or_mlp, MLP) else mlp_from_module(model_or_mlp)
    if not mlp.piecewise_linear:
        names = sorted({a.name for a in mlp.activations if a.pieces is None})
        raise ValueError(f"exact_lipschitz needs ReLU / LeakyReLU activations, got {', '.join(names)}")
    weights, basis = _compress_input(mlp)
    if method == "planar" and weights[0].shape[1] > 2:
        raise ValueError(f"method='planar' needs a first layer of rank <= 2, got rank {weights[0].shape[1]}")
    if method != "branch and bound" and 1 <= weights[0].shape[1] <= 2 and len(weights) > 1:
        one_hidden = len(weights) == 2 and weights[0].shape[0] <= weights[0].shape[1]
        if method == "planar" or not one_hidden:  # planar arrangement of the regions (exact_planar.py)
            from lipschitz_dd.bounds.exact_planar import exact_lipschitz_planar

            result = exact_lipschitz_planar(MLP(weights, mlp.biases, mlp.activations), time_limit=time_limit)
            result.point = None if result.point is None else basis @ result.point
            result.jacobian = None if result.jacobian is None else result.jacobian @ basis.T
            if result.cell is not None and basis.shape[0] == basis.shape[1]:  # rank = input dim: rotate back
                r = basis.shape[0]
                result.cell[:, :r] = result.cell[:, :r] @ basis.T
            else:  # the cell lives in the compressed coordinates only
                result.cell = None
            result.seconds = time.perf_counter() - start
            return result
    biases, acts = mlp.biases, mlp.activations
    L = len(weights)
    if weights[0].shape[1] == 0:  # W_1 = 0: f is constant
        return ExactLipschitz(0.0, 0.0, True, np.zeros(mlp.input_dim), method="closed form")
    if L == 1:
        value = _norm2(weights[0])
        return ExactLipschitz(value, value, True, np.zeros(mlp.input_dim), method="closed form")
    if L == 2 and weights[0].shape[0] <= min(weights[0].shape[1], ENUMERATE_MAX_HIDDEN):
        result = _enumerate_one_hidden(weights, biases, acts[0], start)
        result.point = basis @ result.point
        return result

    tails = _tail_bounds(weights, mlp)
    max_slope = [max(abs(a.pieces[0]), abs(a.pieces[1])) for a in acts]
    n = weights[0].shape[1]
    best, best_point = _sampled_lower(weights, biases, acts, samples, seed)
    unverified = 0.0
    regions = lps = pruned = 0

    def bound(layer: int, a_mat: np.ndarray, slopes: np.ndarray, j: int) -> float:
        d_hat = slopes.copy()
        d_hat[j:] = max_slope[layer - 1]
        value = tails[layer] * _norm2(np.abs(d_hat)[:, None] * a_mat)
        if layer == L - 1:  # ||W_L D A|| <= ||W_L D_fixed A|| + ||W_L[:, undecided]|| max|slope| ||A[undecided]||
            fixed = weights[-1][:, :j] @ (slopes[:j, None] * a_mat[:j])
            rest = _norm2(weights[-1][:, j:]) * max_slope[layer - 1] * _norm2(a_mat[j:]) if j < len(slopes) else 0.0
            value = min(value, _norm2(fixed) + rest)
        return value

    # node: (bound, layer k (1-based), j, A_k, c_k, slopes of layer k so far, earlier slopes, G, h, witness,
    #        margin, needs_lp)
    a1, c1 = weights[0], biases[0].copy()
    root_slopes = np.zeros(a1.shape[0])
    stack = [
        (
            bound(1, a1, root_slopes, 0),
            1,
            0,
            a1,
            c1,
            root_slopes,
            [],
            np.zeros((0, n)),
            np.zeros(0),
            np.zeros(n),
            1.0,
            False,
        )
    ]
    finished = True
    while stack:
        if time.perf_counter() - start > time_limit or (max_lps is not None and lps >= max_lps):
            finished = False
            break
        node = stack.pop()
        ub, k, j, a_mat, c_vec, slopes, done, g, h, wit, margin, needs_lp = node
        if ub <= best * (1 + RTOL):
            pruned += 1
            continue
        if needs_lp:
            lps += 1
            margin, wit = _chebyshev(g, h)
            if wit is None or margin <= MARGIN:
                continue  # no interior: measure zero, does not count
        width = a_mat.shape[0]
        if j == width:  # layer k complete
            if k == L - 1:
                regions += 1
                jac = weights[-1] @ (slopes[:, None] * a_mat)
                value = _norm2(jac)
                if _pattern_ok(weights, biases, acts, wit, [*done, slopes]):
                    if value > best:
                        best, best_point = value, wit
                else:
                    unverified = max(unverified, value)
                continue
            w_next = weights[k]
            a_next = w_next @ (slopes[:, None] * a_mat)
            c_next = w_next @ (slopes * c_vec) + biases[k]
            s_next = np.zeros(a_next.shape[0])
            stack.append(
                (
                    bound(k + 1, a_next, s_next, 0),
                    k + 1,
                    0,
                    a_next,
                    c_next,
                    s_next,
                    [*done, slopes],
                    g,
                    h,
                    wit,
                    margin,
                    False,
                )
            )
            continue
        row, ci = a_mat[j], c_vec[j]
        norm = float(np.linalg.norm(row))
        neg, pos = acts[k - 1].pieces
        if norm <= 1e-12 * (1.0 + float(np.abs(a_mat).max())):  # constant pre-activation on this region
            child = slopes.copy()
            child[j] = pos if ci > 0 else neg
            stack.append((bound(k, a_mat, child, j + 1), k, j + 1, a_mat, c_vec, child, done, g, h, wit, margin, False))
            continue
        z = float(row @ wit + ci)
        children = []
        for sign in (1.0, -1.0):
            child = slopes.copy()
            child[j] = pos if sign > 0 else neg
            g2 = np.vstack([g, sign * row / norm])
            h2 = np.append(h, sign * ci / norm)
            distance = abs(z) / norm  # from the witness to the new hyperplane
            if sign * z > 0:  # the witness's own side: its ball shrinks to the hyperplane
                wit2, m2 = wit, min(margin, distance)
            else:  # the far side: step across, staying inside the witness's ball
                m2 = (margin - distance) / 2
                wit2 = wit + (sign * (distance + m2)) * row / norm
            ok = m2 > MARGIN
            children.append(
                (
                    bound(k, a_mat, child, j + 1),
                    k,
                    j + 1,
                    a_mat,
                    c_vec,
                    child,
                    done,
                    g2,
                    h2,
                    wit2 if ok else np.zeros(n),
                    m2,
                    not ok,
                )
            )
        children.sort(key=lambda c: (c[0], not c[-1]))  # the larger bound explored first (pushed last)
        stack.extend(children)
    upper = max(best, unverified)
    if not finished:
        upper = max(upper, max((node[0] for node in stack), default=0.0))
        upper = max(min(upper, tails[0]), best)  # tails[0]: a bound of the whole network
    notes = [] if unverified <= best else [f"unverified thin region with norm {unverified:.6g}"]
    return ExactLipschitz(
        lower=best,
        upper=upper,
        exact=finished and upper <= best * (1 + RTOL),
        point=None if best_point is None else basis @ best_point,
        regions=regions,
        lps=lps,
        pruned=pruned,
        seconds=time.perf_counter() - start,
        method="branch and bound",
        notes=notes,
    )
