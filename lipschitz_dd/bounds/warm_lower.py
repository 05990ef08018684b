"""Warm-started per-sample Jacobian norms for large point sets and many outputs, with exact refinement.

For a model f with K flattened logits and a point x_i with d flattened input coordinates, J_i = J(x_i) is
the K x d Jacobian and sigma_i = ||J_i||_2 its largest singular value. The exact method needs K
vector-Jacobian products (VJPs) per point; this module needs about 2 r t passes, where r is a small block
size (1-3) and t the number of iterations (1-3 when warm-started), which pays off for K >= ~20 (at K = 10
the exact method is as fast; ``method="auto"`` picks it there).

Per point i the :class:`LeftVectorStore` keeps r orthonormal vectors U_i (r x K, float32, host memory) in
output space, indexed by a stable point index, from one measurement to the next. One iteration for a
batch of points:

    W = U J          (r VJPs, [r, d]: rows J^T u_j)
    V = orth(W)      (orthonormal, and orthogonal to the blocks of earlier iterations of this call)
    Y = V J^T        (r Jacobian-vector products (JVPs), rows J v_j)
    Rayleigh-Ritz over all blocks so far (B = [V_1; ...; V_t], JB = [Y_1; ...; Y_t]):
                     G = JB JB^T = B J^T J B^T, top eigenvector q; v* = B^T q, sigma_i ~ ||J v*||
    U <- the top r Ritz left vectors (rows of Q^T JB, normalised), stored for the next measurement.

This is block Krylov (block Lanczos-like) iteration on J^T J with Rayleigh-Ritz, restarted every 4
blocks. Points never measured before start exactly (K VJPs, keeping their top r left singular vectors)
where K is moderate, else from random vectors with more iterations. Which way each number errs:

* every returned per-point value is ||J v|| / ||v|| for an explicit vector v (computed as such, not taken
  from an eigenvalue), so it is <= sigma_i up to float32 rounding of that product: a certified lower
  estimate, and the max over points is a valid lower bound of the Lipschitz constant (L2 norms);
* avg and rms over the points are therefore biased low; ``rel_change`` per point, (s_b - s_a) / s_b with
  s_a = ||J^T u*|| of the best start vector of the last iteration and s_b the value returned, is >= 0 and
  measures how much the last iteration still moved (the error left is about rho / (1 - rho) times it,
  rho = (sigma_{r+1} / sigma_1)^2, so it underestimates the error where the top singular values are
  close);
* the refined points (the top ``refine_top`` and those whose estimate plus ``refine_slack`` x its change
  reaches the running max) are iterated to ``refine_tol`` and, where K is moderate and K x d numbers fit,
  the largest of them are recomputed exactly (K VJPs + eigh); so ``max`` equals the exact max whenever
  the exact maximiser is among them (checked by the tests and benchmarks, not guaranteed: a point whose
  estimate is far from converged and far below the max is not refined).

JVPs use forward-mode AD by default (``torch.func.jvp`` vmapped over the block: one batched dual forward
pass), faster on the CPU than the double-backward trick (two backward passes through a retained graph;
``jvp="double_backward"``, also the automatic fallback, with a warning, for models with an operation that
has no forward-mode rule); benchmarks/bench_warm_lower.py compares them.

All passes run in float32 with autocast off (see :func:`float32_measurement`). Randomness (start vectors of
points never seen) comes from the estimator's own ``torch.Generator``. Call ``model.eval()`` first.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from lipschitz_dd.bounds.jacobian import (
    _flat_logits,
    _input_leaf,
    check_autograd_available,
    float32_measurement,
    jacobian_rows,
    top_singular_from_jacobians,
)

WARM_METHODS = ("auto", "exact", "warm")
JVP_MODES = ("double_backward", "forward")
DEFAULT_EXACT_MAX_OUTPUTS = 16
KRYLOV_MAX_BLOCKS = 4  # basis of at most 4 r vectors per point, then restarted from the top r Ritz vectors
BYTES_PER_NUMBER = 4


# --------------------------------------------------------------------------------------------- the state


class LeftVectorStore:
    """Per-point blocks of r unit vectors in output space (R^K), keyed by a stable point index.

    Rows live in host memory as float32 (a numpy array, or a numpy memmap file of fixed ``capacity`` rows
    when ``path`` is given): 200,000 points x K = 1,000 x r = 1 is 0.8 GB. Only the points given to
    :meth:`put` get a row, so under DDP each rank holds the vectors of its own shard only. A lookup table
    from point index to row (8 bytes per index up to the largest one seen) makes get/put vectorised.
    """

    def __init__(self, n_outputs: int, block: int = 1, *, path: str | None = None, capacity: int | None = None):
        if n_outputs < 1 or block < 1:
            raise ValueError(f"n_outputs and block must be >= 1, got {n_outputs} and {block}")
        if path is not None and (capacity is None or capacity < 1):
            raise ValueError("a memmap store (path) needs a fixed capacity (number of points)")
        self.n_outputs = n_outputs
        self.block = block
        self.path = path
        self._row_of = np.full(0, -1, dtype=np.int64)
        self._size = 0
        if path is not None:
            self._rows = np.lib.format.open_memmap(
                path, mode="w+", dtype=np.float32, shape=(capacity, block, n_outputs)
            )
        else:
            self._rows = np.zeros((capacity or 0, block, n_outputs), dtype=np.float32)

    def __len__(self) -> int:
        return self._size

    def contains(self, indices: Tensor) -> Tensor:
        """[b] bool: whether each point has stored vectors."""
        idx = _as_index_array(indices)
        known = idx < self._row_of.shape[0]
        found = np.zeros(idx.shape[0], dtype=bool)
        found[known] = self._row_of[idx[known]] >= 0
        return torch.from_numpy(found)

    def get(self, indices: Tensor) -> Tensor:
        """[b, r, K] float32 CPU tensor of the stored vectors; zero rows for points never stored."""
        idx = _as_index_array(indices)
        out = np.zeros((idx.shape[0], self.block, self.n_outputs), dtype=np.float32)
        known = idx < self._row_of.shape[0]
        rows = np.full(idx.shape[0], -1, dtype=np.int64)
        rows[known] = self._row_of[idx[known]]
        have = rows >= 0
        out[have] = self._rows[rows[have]]
        return torch.from_numpy(out)

    def put(self, indices: Tensor, vectors: Tensor) -> None:
        """Store vectors [b, r, K] (any float dtype/device) for the points ``indices`` [b]."""
        idx = _as_index_array(indices)
        values = vectors.detach().to("cpu", torch.float32).reshape(idx.shape[0], self.block, self.n_outputs).numpy()
        if idx.size and idx.max() >= self._row_of.shape[0]:
            grown = np.full(max(int(idx.max()) + 1, 2 * self._row_of.shape[0]), -1, dtype=np.int64)
            grown[: self._row_of.shape[0]] = self._row_of
            self._row_of = grown
        rows = self._row_of[idx]
        new = np.flatnonzero(rows < 0)
        if new.size:
            unique_new, first = np.unique(idx[new], return_index=True)
            needed = self._size + unique_new.size
            if needed > self._rows.shape[0]:
                if self.path is not None:
                    raise ValueError(f"memmap store holds {self._rows.shape[0]} points; {needed} needed")
                grown = np.zeros((max(needed, 2 * self._rows.shape[0]), self.block, self.n_outputs), np.float32)
                grown[: self._size] = self._rows[: self._size]
                self._rows = grown
            self._row_of[unique_new] = np.arange(self._size, needed)
            self._size = needed
            rows = self._row_of[idx]
        self._rows[rows] = values

    def state_dict(self) -> dict:
        """Point indices and their vectors as CPU tensors (plus the shape), for torch.save / checkpoints."""
        indices = np.flatnonzero(self._row_of >= 0)
        vectors = np.asarray(self._rows[self._row_of[indices]])
        return {
            "n_outputs": self.n_outputs,
            "block": self.block,
            "indices": torch.from_numpy(indices),
            "vectors": torch.from_numpy(vectors),
        }

    def load_state_dict(self, state: dict) -> None:
        if (state["n_outputs"], state["block"]) != (self.n_outputs, self.block):
            raise ValueError(
                f"stored vectors have K={state['n_outputs']}, r={state['block']}; "
                f"this store has K={self.n_outputs}, r={self.block}"
            )
        self._row_of = np.full(0, -1, dtype=np.int64)
        self._size = 0
        if self.path is None:
            self._rows = np.zeros((0, self.block, self.n_outputs), dtype=np.float32)
        self.put(state["indices"], state["vectors"])


def _as_index_array(indices) -> np.ndarray:
    idx = torch.as_tensor(indices).detach().to("cpu").reshape(-1)
    if idx.is_floating_point() or (idx.numel() and int(idx.min()) < 0):
        raise ValueError("point indices must be non-negative integers")
    return idx.to(torch.int64).numpy()


# ------------------------------------------------------------------------------------- one batch of points


@dataclass
class WarmBatchResult:
    """Result of :func:`warm_spectral_norms` for a batch of B points.

    norms [B]: ||J v_i|| / ||v_i|| (certified low, see the module docstring); left [B, r, K]: the Ritz left
    vectors, best first (start of the next measurement); rel_change [B]: relative change in the last
    iteration (>= 0); iterations: how many were run.
    """

    norms: Tensor
    left: Tensor
    rel_change: Tensor
    iterations: int


def _orthonormal_rows(block: Tensor) -> Tensor:
    """Orthonormal rows spanning the rows of block [B, r, n] (QR; r <= n)."""
    q, _ = torch.linalg.qr(block.mT)
    return q.mT


def _start_block(start: Tensor | None, batch: int, block: int, n_out: int, like: Tensor, generator) -> Tensor:
    random = torch.randn(batch, block, n_out, generator=generator, dtype=torch.float32)
    if start is None:
        start = random
    else:
        start = start.detach().to("cpu", torch.float32).reshape(batch, -1, n_out)[:, :block]
        if start.shape[1] < block:
            start = torch.cat([start, random[:, start.shape[1] :]], dim=1)
        bad = (start.norm(dim=2) == 0) | ~torch.isfinite(start).all(dim=2)
        start = torch.where(bad[:, :, None], random, start)
    return _orthonormal_rows(start.to(like.device, like.dtype))


def warm_spectral_norms(
    model,
    x: Tensor,
    start: Tensor | None = None,
    *,
    block: int = 2,
    max_iter: int = 3,
    tol: float = 1e-4,
    jvp: str = "forward",
    krylov: bool = True,
    generator: torch.Generator | None = None,
) -> WarmBatchResult:
    """Block power iteration with Rayleigh-Ritz for ||J(x_i)||_2 on a batch x [B, ...], from start vectors.

    start: [B, r', K] left vectors (e.g. :meth:`LeftVectorStore.get`); zero or missing rows are drawn from
    N(0, I) with ``generator``. Each iteration costs r VJPs and r JVPs for the whole batch (see the module
    docstring); stops when every point's ``rel_change`` <= tol or after ``max_iter`` iterations. The
    returned norms err low (certified up to float32 rounding of the final product J v).

    krylov: Rayleigh-Ritz over all right-space blocks of this call (each new block orthogonalised against
    the previous ones before its JVP, so the basis stays orthonormal and its images exact): the block
    Krylov space of J^T J of dimension t r instead of the last block only (plain subspace iteration, with
    krylov=False); same passes, memory up to 4 r d numbers per point (the basis restarts from the top r
    Ritz vectors every 4 blocks).
    """
    check_autograd_available()
    if max_iter < 1 or block < 1 or tol < 0:
        raise ValueError(f"need max_iter >= 1, block >= 1, tol >= 0; got {max_iter}, {block}, {tol}")
    if jvp not in JVP_MODES:
        raise ValueError(f"jvp must be one of {JVP_MODES}, got {jvp!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    with torch.enable_grad(), float32_measurement():
        leaf = _input_leaf(x)
        out = _flat_logits(model, leaf)
        batch, n_out = out.shape
        n_in = leaf[0].numel()
        r = min(block, n_out, n_in)
        if not out.requires_grad:
            zeros = out.new_zeros(batch)
            return WarmBatchResult(zeros, out.new_zeros(batch, r, n_out), zeros, 0)
        jvp_fn = _forward_jvp(model, leaf) if jvp == "forward" else _double_backward_jvp(out, leaf)
        u = _start_block(start, batch, r, n_out, out, generator)
        vs: list[Tensor] = []  # right-space blocks so far (krylov)
        ys: list[Tensor] = []  # their images under J
        iteration = 0
        while iteration < max_iter:
            iteration += 1
            w = torch.stack(
                [torch.autograd.grad(out, leaf, u[:, j], retain_graph=True)[0].reshape(batch, n_in) for j in range(r)],
                dim=1,
            )  # [B, r, d] rows J^T u_j
            before = _top_ritz_norm(w, u)  # ||J^T u*|| / ||u*|| for the best start vector u*
            v = _orthonormal_rows(w)
            if krylov and vs:
                v = _extend_basis(torch.cat(vs, dim=1), v)
            try:
                y = jvp_fn(v).detach()  # [B, r, K] rows J v_j
            except (RuntimeError, NotImplementedError) as error:  # an op without a forward-mode rule
                if jvp != "forward":
                    raise
                warnings.warn(f"forward-mode JVP failed ({error}); using the double-backward trick", stacklevel=2)
                jvp, jvp_fn = "double_backward", _double_backward_jvp(out, leaf)
                y = jvp_fn(v).detach()
            if krylov:
                vs.append(v)
                ys.append(y)
                v, y = torch.cat(vs, dim=1), torch.cat(ys, dim=1)  # orthonormal basis [B, t r, d], images
            values, vectors = torch.linalg.eigh(y @ y.mT)  # ascending
            q = vectors.flip(-1)[:, :, :r]  # best first
            left = q.mT @ y  # [B, r, K] rows J (V^T q_j)
            norms = left[:, 0].norm(dim=1) / (q[:, :, 0:1] * v).sum(dim=1).norm(dim=1).clamp_min(1e-30)
            if krylov and (len(vs) >= KRYLOV_MAX_BLOCKS or (len(vs) + 1) * r > n_in):  # restart: keep the Ritz block
                vs, ys = [q.mT @ v], [left]
            left_norms = left.norm(dim=2, keepdim=True)
            u = torch.where(left_norms > 0, left / left_norms.clamp_min(1e-30), u)
            rel_change = ((norms - before) / norms.clamp_min(1e-30)).clamp_min(0)
            if bool((rel_change <= tol).all()):
                break
    return WarmBatchResult(norms.detach(), u.detach(), rel_change.detach(), iteration)


def _extend_basis(previous: Tensor, new: Tensor, threshold: float = 1e-5) -> Tensor:
    """Rows of new [B, r, d] (unit) made orthonormal to the orthonormal rows of previous [B, m, d] and to
    each other by Gram-Schmidt, twice per row; a row whose remainder is below threshold (it lies in the
    span already, e.g. once converged) becomes zero instead of amplified rounding noise."""
    basis = previous
    rows = []
    for j in range(new.shape[1]):
        row = new[:, j : j + 1]
        for _ in range(2):
            row = row - (row @ basis.mT) @ basis
        norm = row.norm(dim=2, keepdim=True)
        row = torch.where(norm > threshold, row / norm.clamp_min(1e-30), torch.zeros_like(row))
        rows.append(row)
        basis = torch.cat([basis, row], dim=1)
    return torch.cat(rows, dim=1)


def _top_ritz_norm(w: Tensor, u: Tensor) -> Tensor:
    """max over the span of the rows of u (orthonormal) of ||J^T u|| (from w = U J), per point."""
    return torch.linalg.eigvalsh(w @ w.mT)[:, -1].clamp_min(0).sqrt()


def _double_backward_jvp(out: Tensor, leaf: Tensor):
    """Block JVP [B, r, d] -> [B, r, K] via two backward passes per vector: g(c) = J^T c is linear in c,
    so d/dc <g(c), v> = J v (the graph of g is built once per batch)."""
    dummy = torch.zeros_like(out, requires_grad=True)
    (vjp_of_dummy,) = torch.autograd.grad(out, leaf, dummy, create_graph=True)

    def jvp(v: Tensor) -> Tensor:
        rows = [
            torch.autograd.grad(vjp_of_dummy, dummy, v[:, j].view_as(leaf), retain_graph=True)[0]
            for j in range(v.shape[1])
        ]
        return torch.stack(rows, dim=1)

    return jvp


def _forward_jvp(model, leaf: Tensor):
    """Block JVP [B, r, d] -> [B, r, K] by forward-mode AD: ``torch.func.jvp`` vmapped over the r vectors
    (one batched dual forward pass of r x B points)."""
    point = leaf.detach()
    batch = point.shape[0]

    def logits(z: Tensor) -> Tensor:
        return model(z).reshape(batch, -1)

    def one(tangent: Tensor) -> Tensor:
        return torch.func.jvp(logits, (point,), (tangent,))[1]

    def jvp(v: Tensor) -> Tensor:
        tangents = v.transpose(0, 1).reshape(v.shape[1], *point.shape)
        with torch.no_grad():
            return torch.func.vmap(one)(tangents).transpose(0, 1)

    return jvp


# ----------------------------------------------------------------------------------- choosing the method


@dataclass(frozen=True)
class MethodChoice:
    """Which method a measurement uses and why (for logging): method is "exact" or "warm";
    exact_chunk is how many points' K x d Jacobians fit in the memory budget at once (0: not even one)."""

    method: str
    reason: str
    n_outputs: int
    n_inputs: int
    exact_chunk: int


def free_memory_bytes(device: torch.device | str) -> int:
    """Free memory on the device: ``torch.cuda.mem_get_info`` on CUDA, available physical RAM on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def choose_method(
    n_outputs: int,
    n_inputs: int,
    *,
    method: str = "auto",
    exact_max_outputs: int = DEFAULT_EXACT_MAX_OUTPUTS,
    memory_budget_bytes: int,
    chunk_size: int,
) -> MethodChoice:
    """auto: "exact" when K <= exact_max_outputs and one point's K x d float32 Jacobian fits the memory
    budget, else "warm". Exact costs K VJPs per point; warm about 2 r t (r block, t iterations, each JVP
    costing about one VJP) plus the refinement, so exact wins at small K (default threshold 16)."""
    if method not in WARM_METHODS:
        raise ValueError(f"method must be one of {WARM_METHODS}, got {method!r}")
    per_point = n_outputs * n_inputs * BYTES_PER_NUMBER
    chunk = int(min(chunk_size, memory_budget_bytes // per_point))
    if method != "auto":
        return MethodChoice(method, "requested", n_outputs, n_inputs, chunk)
    if chunk < 1:
        reason = f"one point's K x d Jacobian ({per_point / 2**20:.0f} MiB) exceeds the budget"
        return MethodChoice("warm", reason, n_outputs, n_inputs, chunk)
    if n_outputs <= exact_max_outputs:
        return MethodChoice("exact", f"K={n_outputs} <= {exact_max_outputs}", n_outputs, n_inputs, chunk)
    return MethodChoice("warm", f"K={n_outputs} > {exact_max_outputs}", n_outputs, n_inputs, chunk)


# ------------------------------------------------------------------------------- the streamed estimator


def _float32(method):
    """Run a method with autocast off (see float32_measurement)."""

    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        with float32_measurement():
            return method(*args, **kwargs)

    return wrapped


@dataclass
class WarmLowerResult:
    """Statistics of one measurement over all points given to :meth:`WarmLowerBound.update`.

    max: the lower bound (refined points exact); argmax_index: point index of the maximiser, argmax_point
    its input (CPU); mean / rms of the per-point values (warm values err low, refined ones exact);
    avg_tol: mean over points of the relative change of their last iteration (0 for exact);
    iterations: mean iterations per point (refinement excluded); refined: how many points were refined,
    refine_iterations: the iterations of their (batched) refinement, refined_exactly: how many of them were
    then computed exactly; cold: how many points had no stored vectors (see ``cold_*`` of
    :class:`WarmLowerBound`); method: "exact" / "warm".
    """

    count: int
    sum: float
    sum_sq: float
    max: float
    argmax_index: int | None
    argmax_point: Tensor | None
    avg_tol: float
    iterations: float
    refined: int
    refine_iterations: int
    refined_exactly: int
    cold: int
    method: str

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    @property
    def rms(self) -> float:
        return math.sqrt(self.sum_sq / self.count) if self.count else math.nan


class WarmLowerBound:
    """Streamed, warm-started lower bound: call :meth:`update` per batch (with stable point indices), then
    :meth:`finish` once per measurement; the left vectors persist across measurements.

    method "auto" | "exact" | "warm" (see :func:`choose_method`; decided on the first batch of each
    measurement and exposed as :attr:`choice`). block r, max_iter, tol, jvp: see
    :func:`warm_spectral_norms`. refine_top: how many of the largest estimates are refined; also refined
    is every point whose estimate * (1 + refine_slack * rel_change) reaches the running max (at most
    refine_limit points, those with the largest such value). Refinement (:meth:`_refine`) iterates the
    candidates in batched rounds of refine_round iterations to refine_tol (refine_max_iter in all),
    dropping those that converged or fell below the running max, and switches to exact computation
    (K VJPs per point) where that is cheaper than a round; then computes exactly the refine_exact_top
    largest when K <= refine_exact_max_outputs (at K = 1,000 with a few dozen points one exact point
    would cost more than the whole warm pass). memory_budget_bytes: for the exact chunks (default: a
    quarter of the free memory of the model's device). chunk_size: points per exact chunk at most.
    Points without stored vectors (the first measurement) start cold: exactly, storing their top r left
    singular vectors, when K <= cold_exact_max_outputs and K x d fits (one exact measurement, after which
    1-2 iterations per measurement track the vectors), else with cold_max_iter iterations.
    store_path / store_capacity: keep the vectors in a numpy memmap file of that many points instead of
    RAM. seed: of the estimator's own generator (start vectors of cold points when iterated).

    Example (one estimator per process, kept across measurements; indices are the points' positions in
    the fixed point set, the same in every measurement)::

        estimator = WarmLowerBound()
        estimator.begin()
        for x, idx in this_ranks_batches:
            estimator.update(model, x, idx)
        result = estimator.finish(model)  # max, mean, rms, avg_tol, iterations, method; sums for DDP
    """

    def __init__(
        self,
        *,
        method: str = "auto",
        block: int = 2,
        max_iter: int = 3,
        tol: float = 1e-4,
        jvp: str = "forward",
        refine_top: int = 8,
        refine_slack: float = 10.0,
        refine_limit: int = 64,
        refine_tol: float = 1e-6,
        refine_max_iter: int = 100,
        refine_round: int = 5,
        refine_exact_top: int = 1,
        refine_exact_max_outputs: int = 128,
        cold_exact_max_outputs: int = 128,
        cold_max_iter: int = 30,
        exact_max_outputs: int = DEFAULT_EXACT_MAX_OUTPUTS,
        memory_budget_bytes: int | None = None,
        chunk_size: int = 256,
        store_path: str | None = None,
        store_capacity: int | None = None,
        seed: int = 0,
    ) -> None:
        if method not in WARM_METHODS:
            raise ValueError(f"method must be one of {WARM_METHODS}, got {method!r}")
        if jvp not in JVP_MODES:
            raise ValueError(f"jvp must be one of {JVP_MODES}, got {jvp!r}")
        self.method = method
        self.block = block
        self.max_iter = max_iter
        self.tol = tol
        self.jvp = jvp
        self.refine_top = refine_top
        self.refine_slack = refine_slack
        self.refine_limit = refine_limit
        self.refine_tol = refine_tol
        self.refine_max_iter = refine_max_iter
        self.refine_round = refine_round
        self.refine_exact_top = refine_exact_top
        self.refine_exact_max_outputs = refine_exact_max_outputs
        self.cold_exact_max_outputs = cold_exact_max_outputs
        self.cold_max_iter = cold_max_iter
        self.exact_max_outputs = exact_max_outputs
        self.memory_budget_bytes = memory_budget_bytes
        self.chunk_size = chunk_size
        self.store_path = store_path
        self.store_capacity = store_capacity
        self.generator = torch.Generator().manual_seed(seed)
        self.store: LeftVectorStore | None = None
        self.choice: MethodChoice | None = None  # of the measurement in progress
        self.last_choice: MethodChoice | None = None  # of the last finished measurement
        self.begin()

    # -- one measurement

    def begin(self) -> None:
        """Start a new measurement (forget the statistics, keep the vectors). :meth:`finish` calls it too."""
        self.choice = None
        self._count = 0
        self._sum = 0.0
        self._sum_sq = 0.0
        self._change_sum = 0.0
        self._iter_sum = 0.0
        self._best = (-math.inf, None)  # (value, index) among unrefined values
        self._pool: dict[str, Tensor] | None = None
        self._refine_iterations = 0
        self._refine_exact = 0
        self._refined_count = 0
        self._cold_count = 0

    @_float32
    def update(self, model, x: Tensor, indices: Tensor) -> Tensor:
        """Measure the batch x [b, ...] of points with stable indices [b] (same point -> same index in every
        measurement); returns the per-point values [b] (certified low; exact with method "exact")."""
        check_autograd_available()
        indices = torch.as_tensor(indices).reshape(-1).to("cpu", torch.int64)
        if indices.shape[0] != x.shape[0]:
            raise ValueError(f"got {indices.shape[0]} indices for {x.shape[0]} points")
        if x.shape[0] == 0:
            return x.new_zeros(0)
        if self.choice is None:
            self.choice = self._choose(model, x)
        if self.choice.method == "exact":
            norms = self._exact(model, x)
            change = torch.zeros_like(norms)
            iterations = 0
        elif self.store is None or not bool(self.store.contains(indices).all()):
            norms, change, iterations = self._cold(model, x, indices)
            self._cold_count += x.shape[0]
        else:
            result = self._warm(model, x, indices, block=self.block, max_iter=self.max_iter, tol=self.tol)
            norms, change, iterations = result.norms, result.rel_change, result.iterations
        norms_cpu = norms.detach().double().cpu()
        self._count += norms_cpu.numel()
        self._sum += float(norms_cpu.sum())
        self._sum_sq += float((norms_cpu * norms_cpu).sum())
        self._change_sum += float(change.double().sum())
        self._iter_sum += iterations * norms_cpu.numel()
        exact = torch.full_like(norms_cpu, iterations == 0, dtype=torch.bool)  # exact or cold-exact values
        self._add_candidates(x, indices, norms_cpu, change.detach().double().cpu(), exact)
        return norms.detach()

    @_float32
    def finish(self, model) -> WarmLowerResult:
        """Refine the candidates (warm method only), return the measurement's statistics, and reset."""
        if self._count == 0:
            raise ValueError("WarmLowerBound.finish: no points were measured (update was never called)")
        method = self.choice.method
        pool = self._pool
        best_value, best_index, best_point = -math.inf, None, None
        refined = 0
        if pool is not None and pool["index"].numel():
            values = pool["value"]
            if method == "warm":
                exact = self._refine(model, pool["point"], pool["index"])
                refined = self._refined_count
                exact = torch.maximum(exact.double().cpu(), values)  # both are lower estimates: keep the larger
                self._sum += float((exact - values).sum())
                self._sum_sq += float((exact * exact - values * values).sum())
                values = exact
            top = int(torch.argmax(values))
            best_value, best_index, best_point = float(values[top]), int(pool["index"][top]), pool["point"][top]
        if self._best[0] > best_value:  # an unrefined point beats them (only when the pool was pruned)
            best_value, best_index, best_point = self._best[0], self._best[1], None
        result = WarmLowerResult(
            count=self._count,
            sum=self._sum,
            sum_sq=self._sum_sq,
            max=best_value,
            argmax_index=best_index,
            argmax_point=best_point,
            avg_tol=self._change_sum / self._count,
            iterations=self._iter_sum / self._count,
            refined=refined,
            refine_iterations=self._refine_iterations,
            refined_exactly=self._refine_exact,
            cold=self._cold_count,
            method=method,
        )
        choice = self.choice
        self.begin()
        self.last_choice = choice
        return result

    def measure(self, model, batches) -> WarmLowerResult:
        """begin, update for each (x, indices) pair of ``batches``, finish."""
        self.begin()
        for x, indices in batches:
            self.update(model, x, indices)
        return self.finish(model)

    # -- state

    def state_dict(self) -> dict:
        """The per-point vectors (this rank's points only) and the generator state."""
        return {
            "store": None if self.store is None else self.store.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        if state["store"] is None:
            self.store = None
            return
        self.store = self._new_store(state["store"]["n_outputs"])
        self.store.load_state_dict(state["store"])

    # -- internals

    def _new_store(self, n_outputs: int) -> LeftVectorStore:
        return LeftVectorStore(n_outputs, self.block, path=self.store_path, capacity=self.store_capacity)

    def _choose(self, model, x: Tensor) -> MethodChoice:
        with torch.no_grad(), float32_measurement():
            n_out = _flat_logits(model, _input_leaf(x[:1]).detach()).shape[1]
        budget = self.memory_budget_bytes
        if budget is None:
            budget = free_memory_bytes(x.device) // 4
        return choose_method(
            n_out,
            x[0].numel(),
            method=self.method,
            exact_max_outputs=self.exact_max_outputs,
            memory_budget_bytes=budget,
            chunk_size=self.chunk_size,
        )

    def _exact(self, model, x: Tensor, *, vectors: bool = False):
        chunk = max(1, self.choice.exact_chunk)
        sigmas, lefts = [], []
        for part in x.split(chunk):
            triplets = top_singular_from_jacobians(jacobian_rows(model, part), vectors=vectors)
            sigmas.append(triplets.sigma.detach())
            lefts.append(triplets.u.detach())
        return (torch.cat(sigmas), torch.cat(lefts)) if vectors else torch.cat(sigmas)

    def _cold(self, model, x: Tensor, indices: Tensor) -> tuple[Tensor, Tensor, int]:
        """First measurement of points without stored vectors: exact, keeping the top r left singular
        vectors, when K <= cold_exact_max_outputs and K x d fits; else cold_max_iter iterations."""
        n_out, r = self.choice.n_outputs, self.block
        if self.choice.exact_chunk < 1 or n_out > self.cold_exact_max_outputs:
            result = self._warm(
                model, x, indices, block=r, max_iter=max(self.max_iter, self.cold_max_iter), tol=self.tol
            )
            return result.norms, result.rel_change, result.iterations
        if self.store is None:
            self.store = self._new_store(n_out)
        sigmas = []
        for part, part_indices in zip(
            x.split(self.choice.exact_chunk), indices.split(self.choice.exact_chunk), strict=True
        ):
            jac = jacobian_rows(model, part).detach()
            left, singular_values, _ = torch.linalg.svd(jac, full_matrices=False)
            left = left[:, :, :r].mT
            if left.shape[1] < r:
                left = torch.cat([left, left.new_zeros(left.shape[0], r - left.shape[1], n_out)], 1)
            self.store.put(part_indices, left)
            sigmas.append(singular_values[:, 0])
        norms = torch.cat(sigmas)
        return norms, torch.zeros_like(norms), 0

    def _warm(self, model, x: Tensor, indices: Tensor, **options) -> WarmBatchResult:
        start = None if self.store is None else self.store.get(indices)
        result = warm_spectral_norms(model, x, start, jvp=self.jvp, generator=self.generator, **options)
        if self.store is None:
            self.store = self._new_store(result.left.shape[2])
        left = result.left
        if left.shape[1] < self.block:  # K or d smaller than the block: pad with zeros
            left = torch.cat([left, left.new_zeros(left.shape[0], self.block - left.shape[1], left.shape[2])], 1)
        self.store.put(indices, left)
        return result

    def _refine(self, model, points: Tensor, indices: Tensor) -> Tensor:
        """Refine the candidates in rounds of refine_round iterations (batched, warm), dropping after each
        round those converged to refine_tol or whose optimistic value fell below the running max. When a
        K x d Jacobian fits and K <= 2 r refine_round (exact is cheaper than another round), the rest is
        computed exactly; finally the refine_exact_top largest are computed exactly if
        K <= refine_exact_max_outputs."""
        device = next(iter(model.parameters()), points).device if isinstance(model, nn.Module) else points.device
        points = points.to(device)
        values = self._pool["value"].clone()
        change = self._pool["change"].clone()
        exact_fits = self.choice.exact_chunk >= 1
        exact_cheaper = exact_fits and self.choice.n_outputs <= 2 * self.block * self.refine_round
        done = self._pool["exact"].clone()
        touched = torch.zeros(values.numel(), dtype=torch.bool)
        iterations = 0
        while True:
            optimistic = values * (1 + self.refine_slack * change)
            active = ~done & (change > self.refine_tol) & (optimistic >= values.max())
            if not bool(active.any()):
                break
            pick = active.nonzero().flatten()
            touched[pick] = True
            if exact_cheaper or iterations >= self.refine_max_iter:
                if exact_fits:
                    self._exact_refine(model, points, indices, values, change, done, pick)
                break
            result = self._warm(
                model,
                points[pick.to(device)],
                indices[pick],
                block=self.block,
                max_iter=self.refine_round,
                tol=self.refine_tol,
            )
            iterations += result.iterations
            values[pick] = torch.maximum(values[pick], result.norms.double().cpu())
            change[pick] = result.rel_change.double().cpu()
        self._refine_iterations = iterations
        self._refined_count = int(touched.sum())
        if exact_fits and self.choice.n_outputs <= self.refine_exact_max_outputs:
            top = torch.topk(values, min(self.refine_exact_top, values.numel())).indices
            top = top[~done[top]]
            touched[top] = True
            if top.numel():
                self._exact_refine(model, points, indices, values, change, done, top)
        return values

    def _exact_refine(self, model, points, indices, values, change, done, pick) -> None:
        """Exact sigma (and top left vector, stored) for the pool entries pick; updates values in place."""
        sigma, u = self._exact(model, points[pick.to(points.device)], vectors=True)
        values[pick] = torch.maximum(values[pick], sigma.double().cpu())
        change[pick] = 0.0
        done[pick] = True
        start = self.store.get(indices[pick]).to(u.device)
        start[:, 0] = u
        self.store.put(indices[pick], _orthonormal_rows(start) if start.shape[1] > 1 else start)
        self._refine_exact += int(pick.numel())

    def _add_candidates(self, x: Tensor, indices: Tensor, norms: Tensor, change: Tensor, exact: Tensor) -> None:
        """Keep the points that may hold the max: top refine_top values, and those whose optimistic value
        norm * (1 + refine_slack * change) reaches the running max; at most refine_limit of them."""
        optimistic = norms * (1 + self.refine_slack * change)
        running_max = max(float(norms.max()), -math.inf if self._pool is None else float(self._pool["value"].max()))
        select = optimistic >= running_max  # only these rows of the batch can enter the pool: copy only them
        select[torch.topk(norms, min(self.refine_top, norms.numel())).indices] = True
        select = select.nonzero().flatten()
        new = {
            "index": indices[select],
            "point": x.detach()[select.to(x.device)].cpu(),
            "value": norms[select],
            "change": change[select],
            "exact": exact[select],
            "optimistic": optimistic[select],
        }
        pool = new if self._pool is None else {key: torch.cat([self._pool[key], new[key]]) for key in new}
        running_max = float(pool["value"].max())
        keep = pool["optimistic"] >= running_max
        top = torch.topk(pool["value"], min(self.refine_top, pool["value"].numel())).indices
        keep[top] = True
        kept = keep.nonzero().flatten()
        if kept.numel() > self.refine_limit:
            order = torch.argsort(pool["optimistic"][kept], descending=True)
            dropped = kept[order[self.refine_limit :]]
            worst = int(torch.argmax(pool["value"][dropped]))
            if float(pool["value"][dropped[worst]]) > self._best[0]:
                self._best = (float(pool["value"][dropped[worst]]), int(pool["index"][dropped[worst]]))
            kept = kept[order[: self.refine_limit]]
        self._pool = {key: value[kept] for key, value in pool.items()}
