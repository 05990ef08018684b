"""Choosing between the exact per-sample Jacobian norm and the warm-started iteration, and the memory they need.

One job: decide, once per measurement, how the per-point norms sigma_i = ||J(x_i)||_2 are computed. The
exact method forms each point's K x d Jacobian (K vector-Jacobian products, K * d float32 numbers, then an
eigendecomposition); the warm method (warm_iteration.py) needs about 2 r t passes (block size r, t
iterations, each JVP costing about one VJP) plus the refinement of the candidates for the max. So exact
wins at small K (default threshold DEFAULT_EXACT_MAX_OUTPUTS = 16) when one Jacobian fits the memory
budget; ``exact_chunk`` = floor(budget / (4 K d)) capped at chunk_size is how many points it takes at once.
Both methods give lower estimates of the Lipschitz constant (the exact one up to float32 rounding).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

WARM_METHODS = ("auto", "exact", "warm")
DEFAULT_EXACT_MAX_OUTPUTS = 16
BYTES_PER_NUMBER = 4


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
