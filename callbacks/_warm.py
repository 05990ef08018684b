"""The training points' ||J(x_i)||_2 by a warm-started estimator kept across measurements (`TrainNorms`); it
returns the estimator's `WarmLowerResult`, a `LowerBoundStats` whose tol_sum / tol_count carry the convergence
of the estimates (reduced across ranks like every other set's statistics).

One `WarmLowerBound` per process lives as long as the run: at each measurement it gets this rank's training
points batch by batch with their stable indices (see `PointSource.indexed_batches`) and starts each point from
the vectors it kept for that point last time. Which way the numbers err:

* the max over the points (`lipschitz/lower`): every value is ||J v|| for an explicit v, so it is a guaranteed
  lower bound of the Lipschitz constant either way. The candidates for the max are refined and, for K <= 128
  outputs, the largest recomputed exactly (see `lipschitz_dd.bounds.warm_lower`): then it equals the exact
  method's max whenever the exact maximiser is among the candidates (checked by tests, not guaranteed); for
  K > 128 nothing is recomputed exactly and the max is a warm estimate erring low (`Measurement.lower_exact`
  and results.json's "measurement".lower_exact say which);
* the mean and rms (`lipschitz/avg`, `lipschitz/rms`) of warm estimates err low by about `avg_tol` (the
  mean relative change of the last iteration; 0 when the exact method ran).

`method` "auto" takes the exact method (K VJPs per point) for K <= `exact_max_outputs` (16) logits, where it
is as fast, and the warm one above; the choice is decided on the first batch of each measurement and kept in `choice`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lipschitz_dd.bounds import LowerBoundStats
from lipschitz_dd.bounds.warm_lower import DEFAULT_EXACT_MAX_OUTPUTS, MethodChoice, WarmLowerBound, WarmLowerResult

Warn = Callable[[str, str], None]


class TrainNorms:
    """||J(x_i)||_2 at this rank's training points with one `WarmLowerBound` kept across measurements.

    Call `begin` before a measurement, the object on each batch (x, indices), then `finish`. method:
    "auto" | "exact" | "warm" (see the module doc); chunk_size: points per exact Jacobian batch (the
    callback's batch_size); seed: of the estimator's own generator."""

    def __init__(
        self,
        method: str = "auto",
        *,
        chunk_size: int = 1024,
        seed: int = 0,
        warn: Warn | None = None,
        exact_max_outputs: int = DEFAULT_EXACT_MAX_OUTPUTS,
    ):
        self.estimator = WarmLowerBound(
            method=method, chunk_size=chunk_size, seed=seed, exact_max_outputs=exact_max_outputs
        )
        self.warn = warn or (lambda key, message: None)
        self.choice: MethodChoice | None = None  # of the last finished measurement
        self.result: WarmLowerResult | None = None  # of the last finished measurement
        self._failed = 0
        self._measured = 0

    @property
    def memory_budget_bytes(self) -> int | None:
        """Memory for the exact method's K x d Jacobians, which decides "auto" with K (None: a quarter of the
        device's free memory). Under DDP set it to the same value on every rank, so all choose the same method."""
        return self.estimator.memory_budget_bytes

    @memory_budget_bytes.setter
    def memory_budget_bytes(self, value: int | None) -> None:
        self.estimator.memory_budget_bytes = value

    def begin(self) -> None:
        """Start a measurement (the statistics restart, the per-point vectors stay)."""
        self.estimator.begin()
        self._failed = self._measured = 0

    def __call__(self, model: nn.Module, x: Tensor, indices: Tensor) -> Tensor:
        """Per-point values [b] of the batch x with stable indices [b] (certified low or exact); NaN for the
        batch (warned once) if a decomposition fails on non-finite values."""
        try:
            norms = self.estimator.update(model, x, indices)
        except torch.linalg.LinAlgError as error:
            self.warn("linalg", f"LipschitzCallback: Jacobian norms failed ({error}); logging NaN")
            self._failed += len(x)
            return torch.full((len(x),), float("nan"), device=x.device)
        self._measured += len(x)
        return norms

    def finish(self, model: nn.Module) -> LowerBoundStats:
        """This rank's statistics of the measurement (refined max, sums, tolerances: the estimator's
        `WarmLowerResult`); NaN if a batch failed."""
        stats = LowerBoundStats()
        if self._measured:
            stats = self.result = self.estimator.finish(model)
            self.choice = self.estimator.last_choice
        else:
            self.estimator.begin()
        if self._failed:
            nan = float("nan")
            stats = LowerBoundStats(stats.count + self._failed, nan, nan, nan, argmax_index=0, tol_sum=nan, tol_count=1)
        return stats

    def state_dict(self) -> dict[str, Any]:
        """The estimator's per-point vectors (this rank's points) and generator state."""
        return self.estimator.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.estimator.load_state_dict(state)
