"""Streaming Jacobian lower bound: max, mean and RMS of ||J(x)||_2 over a point set, in constant memory.

C_lower = max_i ||J(x_i)||_2 is a valid lower bound of the Lipschitz constant (L2 norms) of the model;
C_avg (mean) and the RMS are not bounds, they describe the distribution. Statistics are kept as raw sums
(count, sum, sum of squares, max, and the warm estimator's tolerance sum), so partial results from chunks,
data sets or DDP ranks combine exactly (`LowerBoundStats.merge`; `state_vector` / `from_state_vector` carry
them across processes). `LowerBoundStats` is the one statistic type of the package: the warm-started
estimator's result (`WarmLowerResult`) is a subclass that only adds diagnostics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lipschitz_dd.bounds.jacobian import DEFAULT_MAX_EXACT_OUTPUTS, check_autograd_available, jacobian_spectral_norms

DEFAULT_BATCH_SIZE = 256


@dataclass
class LowerBoundStats:
    """Running statistics of per-sample norms n_i = ||J(x_i)||_2 over a stream of points.

    count, sum (sum n_i), sum_sq (sum n_i^2), max (max n_i: the lower bound C_lower; 0.0 when empty),
    argmax_index (position of the maximiser in the stream, first one on ties; the warm estimator gives the
    stable point index), argmax_point (that input, detached, on the CPU), norms (all n_i in stream order when
    created with keep_norms=True, else None). tol_sum / tol_count: for estimates that carry a convergence
    measure (the warm estimator), the sum over tol_count points of the relative change of their last
    iteration (0 for exact values); both 0 for plain norms (then `avg_tol` is nan and `has_tol` False).
    Reduce across processes (`merge`): count, sum, sum_sq, tol_sum, tol_count add; max -> max. A NaN norm
    (diverged model) propagates: max, mean and rms become NaN. As a bound (`BoundResult`): value = max,
    kind "lower", errs "low", certified (each n_i is ||J v|| for an explicit unit v at a real point, or exact).
    """

    count: int = 0
    sum: float = 0.0
    sum_sq: float = 0.0
    max: float = 0.0
    argmax_index: int | None = None
    argmax_point: Tensor | None = None
    keep_norms: bool = False
    _norm_chunks: list = field(default_factory=list, repr=False)
    tol_sum: float = 0.0
    tol_count: int = 0

    STATE = ("count", "sum", "sum_sq", "max", "tol_sum", "tol_count")
    """The fields that cross processes, in `state_vector` order; all add except max (the max)."""

    @property
    def mean(self) -> float:
        """C_avg = sum / count (an average, not a bound); nan when empty."""
        return self.sum / self.count if self.count else math.nan

    @property
    def rms(self) -> float:
        """sqrt(sum_sq / count); nan when empty."""
        return math.sqrt(self.sum_sq / self.count) if self.count else math.nan

    # the common result protocol (lipschitz_dd.bounds.result): value = max, a certified lower bound
    kind = "lower"
    errs = "low"
    certified = True

    @property
    def value(self) -> float:
        """The lower bound C_lower = max n_i (the same as `max`; 0.0 when empty)."""
        return self.max

    @property
    def avg_tol(self) -> float:
        """Mean relative change of the last iteration over the points with a tolerance (0 = exact values; nan
        when no point carries one)."""
        return self.tol_sum / self.tol_count if self.tol_count else math.nan

    @property
    def has_tol(self) -> bool:
        """Whether some point carries a convergence measure (the norms came from the warm estimator)."""
        return self.tol_count > 0

    @property
    def norms(self) -> Tensor | None:
        """All per-sample norms in stream order (CPU), or None unless keep_norms."""
        if not self.keep_norms:
            return None
        return torch.cat(self._norm_chunks) if self._norm_chunks else torch.zeros(0)

    def update(self, norms: Tensor, points: Tensor | None = None) -> None:
        """Add the next chunk: norms [b] of the points [b, ...] that follow those seen so far (in place)."""
        norms = norms.detach().reshape(-1)
        if points is not None and points.shape[0] != norms.shape[0]:
            raise ValueError(f"got {norms.shape[0]} norms for {points.shape[0]} points")
        if norms.numel() == 0:
            return
        values = norms.double()
        best = int(torch.argmax(values))
        best_value = float(values[best])
        if self.argmax_index is None or _beats(best_value, self.max):
            self.max = best_value
            self.argmax_index = self.count + best
            self.argmax_point = None if points is None else points[best].detach().cpu().clone()
        self.count += norms.numel()
        self.sum += float(values.sum())
        self.sum_sq += float((values * values).sum())
        if self.keep_norms:
            self._norm_chunks.append(norms.cpu().clone())

    def merge(self, other: LowerBoundStats) -> LowerBoundStats:
        """Statistics of self's points followed by other's points (a new object; indices of other shift by
        self.count). Norms are kept only if both sides kept them."""
        merged = LowerBoundStats(
            count=self.count + other.count,
            sum=self.sum + other.sum,
            sum_sq=self.sum_sq + other.sum_sq,
            max=self.max,
            argmax_index=self.argmax_index,
            argmax_point=self.argmax_point,
            keep_norms=self.keep_norms and other.keep_norms,
            tol_sum=self.tol_sum + other.tol_sum,
            tol_count=self.tol_count + other.tol_count,
        )
        if other.argmax_index is not None and (self.argmax_index is None or _beats(other.max, self.max)):
            merged.max = other.max
            merged.argmax_index = self.count + other.argmax_index
            merged.argmax_point = other.argmax_point
        if merged.keep_norms:
            merged._norm_chunks = self._norm_chunks + other._norm_chunks
        return merged

    def state_vector(self) -> list[float]:
        """The fields of `STATE` as floats (to gather across processes; argmax point and norms stay local)."""
        return [float(getattr(self, name)) for name in self.STATE]

    @classmethod
    def from_state_vector(cls, values) -> LowerBoundStats:
        """Statistics from a `state_vector` (e.g. another rank's); argmax_index is 0 when it has points (its
        position among that rank's points is not carried), argmax_point None."""
        count, sum_, sum_sq, max_, tol_sum, tol_count = (float(v) for v in values)
        return LowerBoundStats(
            count=int(count),
            sum=sum_,
            sum_sq=sum_sq,
            max=max_,
            argmax_index=0 if count else None,
            tol_sum=tol_sum,
            tol_count=int(tol_count),
        )

    @staticmethod
    def merge_all(parts: Iterable[LowerBoundStats]) -> LowerBoundStats:
        """`merge` of the parts in order (empty statistics when there are none)."""
        total = LowerBoundStats()
        for part in parts:
            total = total.merge(part)
        return total


def _beats(value: float, best: float) -> bool:
    """value replaces best as the maximum: larger, or NaN over a number (NaN propagates)."""
    return value > best or (math.isnan(value) and not math.isnan(best))


def iterate_batches(points, batch_size: int) -> Iterator[Tensor]:
    """Chunks of at most batch_size inputs from a Tensor [N, ...] or an iterable of Tensors (e.g. a
    DataLoader; from a tuple/list item such as (x, y) the first element is taken)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(points, Tensor):
        yield from _split(points, batch_size)
        return
    if not isinstance(points, Iterable):
        raise ValueError(f"points must be a Tensor or an iterable of Tensors, got {type(points).__name__}")
    for item in points:
        if isinstance(item, (tuple, list)) and item:
            item = item[0]
        if not isinstance(item, Tensor):
            raise ValueError(f"points yielded a {type(item).__name__}, expected a Tensor of inputs")
        yield from _split(item, batch_size)


def _split(x: Tensor, batch_size: int) -> Iterator[Tensor]:
    if x.dim() < 1:
        raise ValueError(f"a batch of points needs a leading batch dimension, got a scalar of shape {tuple(x.shape)}")
    yield from x.split(batch_size)


def model_device(model, default: torch.device | None = None) -> torch.device | None:
    """Device of the model's first parameter or buffer (None for a plain function without either)."""
    if isinstance(model, torch.nn.Module):
        for tensor in model.parameters():
            return tensor.device
        for tensor in model.buffers():
            return tensor.device
    return default


def lower_bound(
    model,
    points,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    keep_norms: bool = False,
    method: str = "auto",
    max_exact_outputs: int = DEFAULT_MAX_EXACT_OUTPUTS,
    **power_kwargs,
) -> LowerBoundStats:
    """Stream ||J(x)||_2 over ``points`` (a Tensor or an iterable of input Tensors) in chunks of
    ``batch_size`` and return their :class:`LowerBoundStats`.

    ``stats.max`` = max_x ||J(x)||_2 over the points: a valid lower bound of the Lipschitz constant
    (exact with method "exact"; with "iterative" each norm errs low, so still a valid lower bound).
    Memory is O(batch_size * K * d) whatever the number of points (plus the norms if keep_norms).
    Chunks are moved to the model's device. The model should be in eval mode.
    """
    check_autograd_available()
    device = model_device(model)
    stats = LowerBoundStats(keep_norms=keep_norms)
    for chunk in iterate_batches(points, batch_size):
        if chunk.shape[0] == 0:
            continue
        if device is not None:
            chunk = chunk.to(device)
        norms = jacobian_spectral_norms(
            model, chunk, method=method, max_exact_outputs=max_exact_outputs, **power_kwargs
        )
        stats.update(norms, chunk)
    if stats.count == 0:
        raise ValueError("lower_bound got no points (empty tensor or iterable)")
    return stats
