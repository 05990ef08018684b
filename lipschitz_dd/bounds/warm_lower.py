"""Warm-started per-sample Jacobian norms for large point sets and many outputs, with exact refinement.

For a model f with K flattened logits and a point x_i with d flattened input coordinates, J_i = J(x_i) is
the K x d Jacobian and sigma_i = ||J_i||_2 its largest singular value. The exact method needs K
vector-Jacobian products (VJPs) per point; the warm method needs about 2 r t passes, where r is a small
block size (1-3) and t the number of iterations (1-3 when warm-started), which pays off for K >= ~20 (at
K = 10 the exact method is as fast; ``method="auto"`` picks it there).

This module is the estimator, :class:`WarmLowerBound`: one streamed measurement over a fixed point set
(``update`` per batch, ``finish`` once), its statistics (:class:`WarmLowerResult`) and its state across
measurements. Its parts, one job each:

* method_choice.py  exact or warm, and how many points' Jacobians fit in memory at once;
* warm_store.py     per point, r orthonormal vectors U_i (r x K) in output space kept from one
                    measurement to the next (the warm start);
* warm_iteration.py block Krylov iteration with Rayleigh-Ritz on J^T J for a batch, from those vectors;
* warm_refine.py    the pool of candidates for the max and their refinement.

Points never measured before start exactly (K VJPs, keeping their top r left singular vectors) where K is
moderate, else from random vectors with more iterations. Which way each number errs:

* every returned per-point value is ||J v|| / ||v|| for an explicit vector v (or the exact sigma_i), so it
  is <= sigma_i up to float32 rounding: a certified lower estimate, and the max over points is a valid
  lower bound of the Lipschitz constant (L2 norms);
* avg and rms over the points are therefore biased low; ``avg_tol`` is the mean relative change of the
  last iteration (see warm_iteration.py; it underestimates the error where the top singular values are
  close);
* the refined points are iterated to ``refine_tol`` and, where K is moderate and K x d numbers fit, the
  largest of them are recomputed exactly; so ``max`` equals the exact max whenever the exact maximiser is
  among them (checked by the tests and benchmarks, not guaranteed: see warm_refine.py).

All passes run in float32 with autocast off (see :func:`float32_measurement`). Randomness (start vectors of
points never seen) comes from the estimator's own ``torch.Generator``. Call ``model.eval()`` first. The
names of the parts stay importable from here.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lipschitz_dd.bounds.jacobian import (
    _flat_logits,
    _input_leaf,
    check_autograd_available,
    float32_measurement,
    jacobian_rows,
    top_singular_from_jacobians,
)
from lipschitz_dd.bounds.lower import LowerBoundStats
from lipschitz_dd.bounds.method_choice import (
    BYTES_PER_NUMBER,
    DEFAULT_EXACT_MAX_OUTPUTS,
    WARM_METHODS,
    MethodChoice,
    choose_method,
    free_memory_bytes,
)
from lipschitz_dd.bounds.warm_iteration import (
    JVP_MODES,
    KRYLOV_MAX_BLOCKS,
    WarmBatchResult,
    _double_backward_jvp,
    _extend_basis,
    _forward_jvp,
    _orthonormal_rows,
    _start_block,
    _top_ritz_norm,
    warm_spectral_norms,
)
from lipschitz_dd.bounds.warm_refine import CandidateRefinement
from lipschitz_dd.bounds.warm_store import LeftVectorStore, _as_index_array

__all__ = [
    "BYTES_PER_NUMBER",
    "DEFAULT_EXACT_MAX_OUTPUTS",
    "JVP_MODES",
    "KRYLOV_MAX_BLOCKS",
    "WARM_METHODS",
    "LeftVectorStore",
    "MethodChoice",
    "WarmBatchResult",
    "WarmLowerBound",
    "WarmLowerResult",
    "choose_method",
    "free_memory_bytes",
    "warm_spectral_norms",
]
# The parts' private helpers stay importable from here as before the split (a test and the benchmark use
# some); naming them here marks the imports as re-exports.
_REEXPORTED_HELPERS = (
    _as_index_array,
    _double_backward_jvp,
    _extend_basis,
    _flat_logits,
    _forward_jvp,
    _orthonormal_rows,
    _start_block,
    _top_ritz_norm,
)


# ------------------------------------------------------------------------------- the streamed estimator


def _float32(method):
    """Run a method with autocast off (see float32_measurement)."""

    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        with float32_measurement():
            return method(*args, **kwargs)

    return wrapped


@dataclass
class WarmLowerResult(LowerBoundStats):
    """Statistics of one measurement over all points given to :meth:`WarmLowerBound.update`: a
    :class:`LowerBoundStats` (merged and reduced across processes like any other) plus diagnostics.

    max: the lower bound (refined points exact); argmax_index: point index of the maximiser, argmax_point
    its input (CPU); mean / rms of the per-point values (warm values err low, refined ones exact);
    tol_sum / tol_count: the relative changes of the points' last iteration (0 for exact) summed over all
    count points, so avg_tol is their mean. Diagnostics (not merged): iterations: mean iterations per point
    (refinement excluded); refined: how many points were refined, refine_iterations: the iterations of their
    (batched) refinement, refined_exactly: how many of them were then computed exactly; cold: how many points
    had no stored vectors (see ``cold_*`` of :class:`WarmLowerBound`); method: "exact" / "warm".
    """

    iterations: float = 0.0
    refined: int = 0
    refine_iterations: int = 0
    refined_exactly: int = 0
    cold: int = 0
    method: str = ""


class WarmLowerBound(CandidateRefinement):
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
            tol_sum=self._change_sum,
            tol_count=self._count,
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
