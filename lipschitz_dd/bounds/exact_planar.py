"""The exact L2 Lipschitz constant of a ReLU / LeakyReLU MLP on a plane (2-D inputs; 1-D as a special case),
by building its activation regions as the cells of a planar arrangement, layer by layer.

Math. f(x) = W_L s(W_{L-1} ... s(W_1 x + b_1) ... + b_{L-1}) + b_L is continuous and piecewise affine; on each
activation region (a convex polygon in the plane) f(x) = J_R x + const, and (see :mod:`exact`)

    Lip_2(f over a convex domain X) = max over regions R whose interior meets X of ||J_R||_2,

because a segment [x, y] in X crosses finitely many regions and f moves by at most ||J_R|| times the length in
each, while inside a region with interior the value ||J_R|| is attained. Here X is all of R^2 (default) or a
given box.

Construction. Layer 1's pre-activations are affine in x, so their zero sets are lines and the regions of the
first layer are the cells of a line arrangement. Inside one such cell the first layer's slopes are fixed, so
layer 2's pre-activations are again affine there (A_2 x + c_2 with A_2 = W_2 D_1 W_1) and each layer-2 neuron's
zero set cuts the cell along a line; and so on. The cells are refined neuron by neuron (all cells at once,
vectorised with numpy): a cell whose vertices all lie on one side of the neuron's line takes that side's slope,
a cell with vertices strictly on both sides is split in two (Sutherland-Hodgman clipping of a convex polygon by
a half-plane, both halves at once). After the last hidden layer each cell R has its constant Jacobian
J_R = W_L D_{L-1} A_{L-1}, whose spectral norm (an m x 2 matrix: the top eigenvalue of a 2 x 2 Gram matrix) is
computed in closed form; the constant is the max over the cells.

All of R^2 without a bounding box. Unbounded cells are represented exactly in homogeneous coordinates
(x, y, w) with w >= 0, normalised to unit length (the oriented projective plane, i.e. the closed upper
hemisphere): a finite vertex (x, y) is (x, y, 1) / ||(x, y, 1)||, a point at infinity in direction d is (d, 0).
A line a . x + c = 0 is the great circle a . (x, y) + c w = 0, and clipping works unchanged on the hemisphere
(the crossing of an edge P -> Q is |s_Q| P + |s_P| Q: a positive combination, so it stays on the edge; edges
join vertices less than 180 degrees apart because every cell lies in one quadrant). The plane starts as its
four closed quadrants (each a triangle: the origin and two directions at infinity), which keeps every cell
strictly inside a hemisphere; the quadrant boundaries add cuts that only split regions into pieces with the
same Jacobian. So every cell of the arrangement, bounded or not, is found with all its vertices, and no box
size has to be guessed (a finite box large enough to hold every vertex would do the same in exact arithmetic,
but its size is unknown before the arrangement is built and far vertices cost precision near the origin).
With ``box`` the start is that rectangle instead, and the result is the constant of f restricted to it.

Numerics and what "exact" means. Everything is float64. A vertex whose signed value |a . v| is below
``tol`` times the line's scale (|a| + |c| on unit vectors) counts as lying on the line, so slivers thinner
than about tol (relative) are not split off: the same convention as the branch and bound, which ignores regions
that hold no ball of radius 1e-9. Every cell's Jacobian norm is checked a posteriori: a forward pass in float64
at an interior point of the cell (a positive combination of its vertices) must give the same ||J(x)||_2 (to a
relative 1e-9), from the steepest cell down until one is confirmed. ``lower`` is that cell's value (a Jacobian norm at a real point, returned in ``point``,
errs low), ``upper`` the largest over all cells (checked or not; equal to ``lower`` unless a thin cell failed
its check, which is then named in ``notes``). With a time budget or a cell cap the construction stops and
returns a certified interval instead: ``lower`` from the cells built so far, ``upper`` the largest bound
G_k ||D_hat A_k||_2 over the unfinished cells (undecided slopes at their largest magnitude, G_k the certified
bound on the rest of the network that the branch and bound uses).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from lipschitz_dd.bounds.exact import RTOL, ExactLipschitz, _jacobian_norms, _tail_bounds
from lipschitz_dd.bounds.mlp import MLP, mlp_from_module

TOL = 1e-10  # a vertex within TOL x (|a| + |c|) of a line counts as on it (homogeneous, unit-length vertices)
CHECK_RTOL = 1e-9  # a cell's norm is confirmed when a forward pass at its interior point agrees to this
MAX_CELLS = 3_000_000
_CHUNK = 1 << 15


@dataclass
class PlanarLipschitz(ExactLipschitz):
    """:class:`ExactLipschitz` plus the cell where the maximum is attained: ``cell`` holds its vertices in
    counter-clockwise order as homogeneous unit vectors (x, y, w) in the input plane (w = 0: a direction to
    infinity, else the point (x / w, y / w)); ``cells``: cells of the final arrangement (regions, split further
    by the four quadrants when the domain is the whole plane); ``jacobian``: J_R of that cell (m x n)."""

    cell: np.ndarray | None = None
    cells: int = 0
    jacobian: np.ndarray | None = None
    layer_cells: list[int] = field(default_factory=list)


@dataclass
class _Cells:
    """Convex polygons as ragged arrays: ``verts`` [T, 3] (unit homogeneous, cell by cell, counter-clockwise),
    ``counts`` [N] vertices per cell, ``group`` [N] row of the layer's affine maps, ``on`` [N, width] the
    decided neurons' sides (True: pre-activation > 0)."""

    verts: np.ndarray
    counts: np.ndarray
    group: np.ndarray
    on: np.ndarray

    @property
    def n(self) -> int:
        return int(self.counts.shape[0])

    @property
    def starts(self) -> np.ndarray:
        return np.cumsum(self.counts) - self.counts


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _start_polygons(box) -> tuple[np.ndarray, np.ndarray]:
    """The four quadrants of the plane (origin and two directions at infinity each), or the box's rectangle."""
    if box is None:
        o, e1, e2 = np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
        verts = np.stack([o, e1, e2, o, e2, -e1, o, -e1, -e2, o, -e2, e1])
        return verts, np.full(4, 3)
    (x0, x1), (y0, y1) = box
    corners = np.array([[x0, y0, 1.0], [x1, y0, 1.0], [x1, y1, 1.0], [x0, y1, 1.0]])
    return _unit(corners), np.array([4])


def _split(cells: _Cells, a: np.ndarray, c: np.ndarray, j: int, tol: float) -> _Cells:
    """Refine every cell by neuron j, whose pre-activation on cells of group g is a[g] . x + c[g]."""
    cell_of = np.repeat(np.arange(cells.n), cells.counts)
    g = cells.group[cell_of]
    v = cells.verts
    ag = a[g]
    s = v[:, 0] * ag[:, 0] + v[:, 1] * ag[:, 1] + v[:, 2] * c[g]
    scale = np.abs(ag[:, 0]) + np.abs(ag[:, 1]) + np.abs(c[g])
    s[np.abs(s) <= tol * scale] = 0.0
    starts = cells.starts
    has_pos = np.logical_or.reduceat(s > 0, starts)
    has_neg = np.logical_or.reduceat(s < 0, starts)
    split = has_pos & has_neg
    on = cells.on
    if not split.any():
        on[:, j] = ~has_neg
        return cells
    keep = ~split
    on[keep, j] = ~has_neg[keep]
    vmask = split[cell_of]
    vs, ss = v[vmask], s[vmask]
    cs = cells.counts[split]
    ends = np.cumsum(cs)
    nxt = np.arange(1, vs.shape[0] + 1)
    nxt[ends - 1] = ends - cs  # the last vertex of a cell wraps to its first
    sn = ss[nxt]
    cross = ((ss > 0) & (sn < 0)) | ((ss < 0) & (sn > 0))
    crossing = _unit(np.abs(ss)[:, None] * vs[nxt] + np.abs(sn)[:, None] * vs)  # on the edge, on the line
    slots = np.empty((2 * vs.shape[0], 3))
    slots[0::2], slots[1::2] = vs, crossing
    local_starts = ends - cs
    pieces_v, pieces_n = [], []
    for keep_vertex in (ss >= 0, ss <= 0):  # the positive piece, then the negative one
        mask = np.empty(2 * vs.shape[0], dtype=bool)
        mask[0::2], mask[1::2] = keep_vertex, cross
        pieces_v.append(slots[mask])
        pieces_n.append(np.add.reduceat(keep_vertex.astype(np.int64) + cross, local_starts))
    on_pos, on_neg = on[split].copy(), on[split].copy()
    on_pos[:, j], on_neg[:, j] = True, False
    return _Cells(
        verts=np.concatenate([v[~vmask], *pieces_v]),
        counts=np.concatenate([cells.counts[keep], *pieces_n]),
        group=np.concatenate([cells.group[keep], cells.group[split], cells.group[split]]),
        on=np.concatenate([on[keep], on_pos, on_neg]),
    )


def _spectral_norms(m: np.ndarray) -> np.ndarray:
    """||M_i||_2 of a batch [N, r, 2]: sqrt of the top eigenvalue of the 2 x 2 Gram matrix, in closed form."""
    g00 = np.einsum("nr,nr->n", m[:, :, 0], m[:, :, 0])
    g11 = np.einsum("nr,nr->n", m[:, :, 1], m[:, :, 1])
    g01 = np.einsum("nr,nr->n", m[:, :, 0], m[:, :, 1])
    top = 0.5 * (g00 + g11) + np.sqrt((0.5 * (g00 - g11)) ** 2 + g01**2)
    return np.sqrt(top)


def _slopes(on: np.ndarray, pieces: tuple[float, float]) -> np.ndarray:
    neg, pos = pieces
    return np.where(on, pos, neg)


def _next_maps(a: np.ndarray, c: np.ndarray, cells: _Cells, w: np.ndarray, b: np.ndarray, pieces) -> tuple:
    """Per cell: the next layer's pre-activation map W (D A[group]) x + W (D c[group]) + b, in chunks."""
    n = cells.n
    a_next = np.empty((n, w.shape[0], 2))
    c_next = np.empty((n, w.shape[0]))
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        d = _slopes(cells.on[lo:hi], pieces)
        grp = cells.group[lo:hi]
        a_next[lo:hi] = np.einsum("ij,njk->nik", w, d[:, :, None] * a[grp])
        c_next[lo:hi] = (d * c[grp]) @ w.T + b
    return a_next, c_next


def _interior_points(cells: _Cells) -> tuple[np.ndarray, np.ndarray]:
    """A point inside each cell: the mean of its finite vertices plus a positive multiple of its directions
    to infinity (a positive combination of all vertices on the hemisphere, so it is interior). Returns the
    points [N, 2] and whether the cell had a finite vertex."""
    v = cells.verts
    cell_of = np.repeat(np.arange(cells.n), cells.counts)
    finite = v[:, 2] > 0
    p = np.where(finite[:, None], v[:, :2] / np.where(finite, v[:, 2], 1.0)[:, None], 0.0)
    n_fin = np.bincount(cell_of, weights=finite, minlength=cells.n)
    mean = np.stack([np.bincount(cell_of, weights=p[:, i], minlength=cells.n) for i in (0, 1)], 1)
    mean /= np.maximum(n_fin, 1)[:, None]
    spread = np.zeros(cells.n)
    np.maximum.at(spread, cell_of, np.where(finite, np.linalg.norm(p - mean[cell_of], axis=1), 0.0))
    dirs = np.where(finite[:, None], 0.0, v[:, :2])
    push = np.stack([np.bincount(cell_of, weights=dirs[:, i], minlength=cells.n) for i in (0, 1)], 1)
    return mean + (1.0 + spread)[:, None] * push, n_fin > 0


def _cell_bounds(a: np.ndarray, cells: _Cells, j: int, pieces, max_slope: float, tail: float) -> np.ndarray:
    """Certified bound on ||J_R|| over every region inside each unfinished cell: G_k ||D_hat A_k||, with the
    decided slopes' magnitudes for neurons < j and the largest slope magnitude for the rest."""
    out = np.empty(cells.n)
    for lo in range(0, cells.n, _CHUNK):
        hi = min(lo + _CHUNK, cells.n)
        d = np.abs(_slopes(cells.on[lo:hi], pieces))
        d[:, j:] = max_slope
        out[lo:hi] = tail * _spectral_norms(d[:, :, None] * a[cells.group[lo:hi]])
    return out


def _pad_to_plane(mlp: MLP) -> MLP:
    if mlp.input_dim == 2:
        return mlp
    w1 = np.hstack([mlp.weights[0], np.zeros((mlp.weights[0].shape[0], 2 - mlp.input_dim))])
    return MLP([w1, *mlp.weights[1:]], list(mlp.biases), list(mlp.activations))


def _check_box(box) -> tuple[tuple[float, float], tuple[float, float]] | None:
    if box is None:
        return None
    try:
        (x0, x1), (y0, y1) = ((float(lo), float(hi)) for lo, hi in box)
    except (TypeError, ValueError):
        raise ValueError(f"box={box!r} is invalid: give ((x_min, x_max), (y_min, y_max))") from None
    if not (np.isfinite([x0, x1, y0, y1]).all() and x0 < x1 and y0 < y1):
        raise ValueError(f"box={box!r} is invalid: need finite x_min < x_max and y_min < y_max")
    return (x0, x1), (y0, y1)


@dataclass
class PlanarRegions:
    """The final cells of the arrangement: cell i has vertices ``verts[starts[i] : starts[i] + counts[i]]``
    (homogeneous unit vectors (x, y, w), counter-clockwise, w = 0: a direction to infinity) and the constant
    Jacobian ``jacobians[i]`` (m x 2) of f on it; ``points[i]`` is an interior point of cell i. In the input
    plane (for 1-D input the second coordinate is a dummy on which f does not depend)."""

    verts: np.ndarray
    counts: np.ndarray
    jacobians: np.ndarray
    points: np.ndarray
    layer_cells: list[int]

    @property
    def starts(self) -> np.ndarray:
        return np.cumsum(self.counts) - self.counts

    def cell(self, i: int) -> np.ndarray:
        first = int(self.starts[i])
        return self.verts[first : first + int(self.counts[i])].copy()


@dataclass
class _Build:
    cells: _Cells
    a: np.ndarray  # per group: the current layer's pre-activation map (or, finished, J per cell)
    layer: int = 0  # where it stopped (0: finished)
    neuron: int = 0
    stopped: str = ""
    layer_cells: list[int] = field(default_factory=list)


def _prepare(model_or_mlp, box, who: str) -> tuple[MLP, MLP, tuple | None]:
    mlp = model_or_mlp if isinstance(model_or_mlp, MLP) else mlp_from_module(model_or_mlp)
    if not mlp.piecewise_linear:
        names = sorted({a.name for a in mlp.activations if a.pieces is None})
        raise ValueError(f"{who} needs ReLU / LeakyReLU activations, got {', '.join(names)}")
    if mlp.input_dim > 2:
        raise ValueError(
            f"{who} needs an input of dimension 1 or 2, got {mlp.input_dim} "
            "(use exact_lipschitz, which compresses the input to the rank of the first layer)"
        )
    return mlp, _pad_to_plane(mlp), _check_box(box)


def _build(plane: MLP, box, start: float, time_limit: float, max_cells: int, tol: float) -> _Build:
    """Refine the start polygons layer by layer, neuron by neuron (module docstring)."""
    weights, biases, acts = plane.weights, plane.biases, plane.activations
    L = len(weights)
    verts, counts = _start_polygons(box)
    hidden = weights[0].shape[0] if L > 1 else 0
    cells = _Cells(verts, counts, np.zeros(counts.shape[0], dtype=np.int64), np.zeros((counts.shape[0], hidden), bool))
    a, c = weights[0][None], biases[0][None]  # one affine map shared by every cell (group 0)
    layer_cells: list[int] = []
    for k in range(1, L):  # hidden layer k (1-based), between weights[k - 1] and weights[k]
        pieces = acts[k - 1].pieces
        for j in range(a.shape[1]):
            stopped = ""
            if time.perf_counter() - start > time_limit:
                stopped = f"time limit of {time_limit:g} s"
            elif cells.n > max_cells:
                stopped = f"cell cap of {max_cells}"
            if stopped:
                return _Build(cells, a, k, j, stopped, layer_cells)
            cells = _split(cells, a[:, j], c[:, j], j, tol)
        layer_cells.append(cells.n)
        a, c = _next_maps(a, c, cells, weights[k], biases[k], pieces)
        cells.group = np.arange(cells.n)
        cells.on = np.zeros((cells.n, weights[k].shape[0] if k < L - 1 else 0), bool)
    return _Build(cells, a, layer_cells=layer_cells)  # a[i]: the Jacobian of cell i (m x 2)


def planar_regions(model_or_mlp, *, box=None, tol: float = TOL) -> PlanarRegions:
    """Every cell of the activation arrangement of a ReLU / LeakyReLU MLP with 1- or 2-D input (over all of
    R^2, or over ``box``) with its Jacobian, without a time limit: for checks and figures."""
    _mlp, plane, box = _prepare(model_or_mlp, box, "planar_regions")
    built = _build(plane, box, time.perf_counter(), np.inf, np.iinfo(np.int64).max, tol)
    points, _ = _interior_points(built.cells)
    return PlanarRegions(built.cells.verts, built.cells.counts, built.a, points, built.layer_cells)


def exact_lipschitz_planar(
    model_or_mlp,
    *,
    box=None,
    time_limit: float = 120.0,
    max_cells: int = MAX_CELLS,
    tol: float = TOL,
) -> PlanarLipschitz:
    """The exact L2 Lipschitz constant of a ReLU / LeakyReLU MLP with 1- or 2-D input: the max of ||J_R||_2
    over all cells of its activation arrangement (module docstring), over all of R^2 (``box=None``: the global
    constant, as :func:`~lipschitz_dd.bounds.exact_lipschitz`) or over ``box = ((x_min, x_max), (y_min, y_max))``
    (the constant of f restricted to the box; for 1-D input give ``((x_min, x_max), (0, 1))``).

    ``model_or_mlp``: an nn.Sequential of Linear / ReLU / LeakyReLU (+ Flatten, Identity, Dropout), or an
    :class:`MLP`. Returns a :class:`PlanarLipschitz`: ``lower`` (a checked Jacobian norm at ``point``, errs
    low), ``upper`` (errs high), ``exact`` when they agree and the arrangement was finished; ``cell`` and
    ``jacobian`` where the maximum is attained. Stops after ``time_limit`` seconds or ``max_cells`` cells with a
    certified interval (module docstring)."""
    start = time.perf_counter()
    mlp, plane, box = _prepare(model_or_mlp, box, "exact_lipschitz_planar")
    input_dim = mlp.input_dim
    weights, biases, acts = plane.weights, plane.biases, plane.activations
    built = _build(plane, box, start, time_limit, max_cells, tol)
    if built.stopped:
        return _interrupted(plane, built, start, input_dim)
    cells, jac = built.cells, built.a
    norms = _spectral_norms(jac)
    points, has_finite = _interior_points(cells)
    order = np.argsort(-norms, kind="stable")
    lower, best = 0.0, -1
    notes: list[str] = []
    # check cells from the steepest down until one is confirmed by a float64 forward pass at its interior point
    for lo in range(0, cells.n, 256):
        idx = order[lo : lo + 256]
        idx = idx[has_finite[idx]]
        if idx.size == 0:
            continue
        fwd, _ = _jacobian_norms(weights, biases, acts, points[idx])  # a neuron may be 0 on the whole cell
        ok = np.abs(fwd - norms[idx]) <= CHECK_RTOL * np.maximum(norms[idx], 1e-300)
        if ok.any():
            best = int(idx[np.argmax(ok)])
            lower = float(norms[best])
            break
    upper = float(norms.max()) if cells.n else 0.0
    if upper > lower * (1 + RTOL):
        notes.append(f"thin cell(s) with norm up to {upper:.10g} failed the forward check; lower {lower:.10g}")
    cell = None
    if best >= 0:
        first = int(np.cumsum(cells.counts)[best] - cells.counts[best])
        cell = cells.verts[first : first + int(cells.counts[best])].copy()
    return PlanarLipschitz(
        lower=lower,
        upper=max(upper, lower),
        exact=upper <= lower * (1 + RTOL),
        point=None if best < 0 else points[best][:input_dim].copy(),
        regions=cells.n,
        seconds=time.perf_counter() - start,
        method="planar arrangement",
        notes=notes,
        cell=cell,
        cells=cells.n,
        jacobian=None if best < 0 else jac[best][:, :input_dim].copy(),
        layer_cells=built.layer_cells,
    )


def _interrupted(plane: MLP, built: _Build, start: float, input_dim: int) -> PlanarLipschitz:
    """The certified interval when the construction stopped in hidden layer k before neuron j: lower, the
    largest ||J(x)||_2 at the interior points of the cells built so far (real points: errs low); upper, the
    largest bound G_k ||D_hat A_k||_2 over those cells (every region lies in one of them: errs high)."""
    weights, biases, acts = plane.weights, plane.biases, plane.activations
    cells, a, k, j = built.cells, built.a, built.layer, built.neuron
    tails = _tail_bounds(weights, plane)
    pieces = acts[k - 1].pieces
    max_slope = max(abs(pieces[0]), abs(pieces[1]))
    upper = min(float(_cell_bounds(a, cells, j, pieces, max_slope, tails[k]).max()), tails[0])
    points, has_finite = _interior_points(cells)
    lower, point = 0.0, None
    pts = points[has_finite]
    for lo in range(0, pts.shape[0], _CHUNK):
        fwd, clean = _jacobian_norms(weights, biases, acts, pts[lo : lo + _CHUNK])
        fwd = np.where(clean, fwd, 0.0)
        i = int(np.argmax(fwd)) if fwd.size else 0
        if fwd.size and fwd[i] > lower:
            lower, point = float(fwd[i]), pts[lo + i][:input_dim].copy()
    return PlanarLipschitz(
        lower=lower,
        upper=max(upper, lower),
        exact=False,
        point=point,
        regions=cells.n,
        seconds=time.perf_counter() - start,
        method="planar arrangement",
        notes=[f"stopped at the {built.stopped} in hidden layer {k}, neuron {j}: certified interval"],
        cells=cells.n,
        layer_cells=built.layer_cells,
    )
