"""Refining the candidates for the max of the warm-started lower bound (the points that may hold it).

One job: make the measurement's max right. The warm estimates s_i err low (s_i <= sigma_i =
||J(x_i)||_2), each with ``rel_change`` c_i of its last iteration. While the points stream through, a pool
keeps the points that may hold the max: the refine_top largest s_i and every point whose optimistic value
s_i (1 + refine_slack c_i) reaches the running max (at most refine_limit of them, those with the largest
optimistic value; the best dropped one is remembered). At the end the pool is iterated in batched rounds
of refine_round iterations to refine_tol (refine_max_iter in all), dropping after each round those that
converged or whose optimistic value fell below the running max, and switching to the exact computation
(K VJPs + eigh) where a K x d Jacobian fits and that is cheaper than a round; finally the
refine_exact_top largest are computed exactly when K <= refine_exact_max_outputs. Every refined value is
the larger of two lower estimates, so still a lower estimate; the max equals the exact max whenever the
exact maximiser is in the pool (checked by the tests and benchmarks, not guaranteed: a point whose
estimate is far from converged and far below the max is not refined).

:class:`CandidateRefinement` is the part of :class:`~lipschitz_dd.bounds.warm_lower.WarmLowerBound` that
does this; it uses the estimator's options (``refine_*``), its per-point passes (``_warm``, ``_exact``),
its vector store and its method choice.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lipschitz_dd.bounds.warm_iteration import _orthonormal_rows


class CandidateRefinement:
    """The candidate pool and its refinement, mixed into :class:`WarmLowerBound` (see the module docstring)."""

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
