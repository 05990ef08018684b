"""The per-point state of the warm-started lower bound: r unit vectors in output space per point.

One job: remember, for each point x_i of a fixed point set (keyed by a stable point index), the block U_i
(r x K, orthonormal rows) of approximate top left singular vectors of its Jacobian J(x_i) (K x d), so the
next measurement starts its block iteration (see warm_iteration.py) from them. An iteration started
from a block U whose span is close to the top left singular space needs 1-2 iterations instead of 10-30:
the error shrinks by about (sigma_{r+1} / sigma_1)^2 per iteration from where it started. The store
holds numbers only (float32, host memory); nothing here computes a norm.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


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
