"""`FunctionSnapshot`: what the report needs to evaluate an ensemble of seeds after training, saved at fit end.

The bias-variance bound of the study (docs/study.md, finding 3) needs the seed-averaged network f_bar = mean_s f_s, which no
single run can evaluate. Its outputs and input Jacobians at fixed points are linear in the seeds' ones:

    f_bar(x) = mean_s f_s(x)          J_bar(x) = mean_s J_s(x)     (both exact)

so each run saves its own logits and Jacobians at the same fixed points, and the report averages them across
seeds with numpy alone (lipschitz_dd/report/ensemble.py). `<run_dir>/snapshot.npz` (float32, compressed):

    test_outputs   [m_test, K]      logits f(x) at a fixed subset of the test inputs
    test_indices   [m_test]         their row indices in the test set (sorted)
    jacobians      [m_train, K, d]  input Jacobians J(x) (flattened logits w.r.t. the flattened input),
                                    exact (K batched backward passes), at a fixed subset of training inputs
    train_indices  [m_train]        their row indices in the training set (sorted)
    f0             [K]              logits at the all-zero input
    mean_sq_norm   []               E||x||^2 over all test inputs (Euclidean norm of the flattened input)
    seconds        []               wall time of taking the snapshot

The subsets are drawn from `torch.Generator().manual_seed(subset_seed)`, independent of the training seed, so
every run of a sweep on the same data saves the same points. Everything is computed with the model in eval
mode, parameters frozen and the global RNG streams restored afterwards (training is not disturbed), on rank 0
only. If m_train * K * d would exceed `max_jacobian_numbers`, m_train is reduced (with a warning) to fit.

Points: the datamodule's in-memory `train_x` / `test_x` tensors if it has them (lipschitz_dd's datamodules do),
else the map-style datasets of `datamodule.train_dataloader()` (else `trainer.train_dataloader`) and of the
first validation loader (else the test loader), read by index and collated with the loader's `collate_fn`
(input = element 0 of a tuple batch, or `input_key`).

A failure while taking the snapshot is a warning, never a failed run: the training result is worth more.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lipschitz_dd.bounds.jacobian import jacobian_rows
from lipschitz_dd.callbacks._base import PackageCallback
from lipschitz_dd.callbacks._points import IndexedInputs, Key, seeded_subset
from lipschitz_dd.run_folder import SNAPSHOT_FILE, write_atomic

__all__ = ["SNAPSHOT_FILE", "FunctionSnapshot", "IndexedInputs"]


class FunctionSnapshot(PackageCallback):
    """At the end of `fit`, writes `<run_dir>/snapshot.npz`: logits at fixed test inputs, input Jacobians at
    fixed training inputs, the logits at zero and E||x||^2 over the test inputs (see the module docstring).

    Args:
        run_dir: folder of the file; default `trainer.log_dir`.
        test_points: m_test, the number of test inputs whose logits are saved (all if the test set is smaller).
        train_points: m_train, the number of training inputs whose Jacobians are saved (before the size cap).
        max_jacobian_numbers: cap on m_train * K * d (default 2^22 floats = 16 MB: all 256 points for MNIST-1D and
            28x28 images with 10 classes, about 136 for CIFAR-sized inputs).
        subset_seed: seed of the fixed subsets (keep it the same across a sweep).
        batch_size: inputs per forward / backward pass.
        input_key: where the input is in a loader's batch (default element 0 / "x"); unused for `train_x`.

    After fit, `path` is the file written (None if none) and `seconds` the time it took (no state across a
    checkpoint: the snapshot is taken once, at the end of the fit).
    """

    def __init__(
        self,
        run_dir: str | None = None,
        test_points: int = 1000,
        train_points: int = 256,
        max_jacobian_numbers: int = 4_194_304,
        subset_seed: int = 0,
        batch_size: int = 256,
        input_key: Key | None = None,
    ) -> None:
        for name, value in (
            ("test_points", test_points),
            ("train_points", train_points),
            ("max_jacobian_numbers", max_jacobian_numbers),
            ("batch_size", batch_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"FunctionSnapshot: {name} must be a positive integer, got {value!r}")
        self.run_dir = run_dir
        self.test_points = test_points
        self.train_points = train_points
        self.max_jacobian_numbers = max_jacobian_numbers
        self.subset_seed = subset_seed
        self.batch_size = batch_size
        self.input_key = input_key
        self.path: str | None = None
        self.seconds: float | None = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        run_dir = self.run_dir or trainer.log_dir
        if run_dir is None:
            rank_zero_warn("FunctionSnapshot: no run directory (no logger and no run_dir); snapshot not written")
            return
        start = time.perf_counter()
        try:
            with self.isolated(pl_module):
                arrays = self.snapshot(
                    pl_module,
                    self.indexed_inputs(trainer, "train", self.input_key),
                    self.indexed_inputs(trainer, "test", self.input_key),
                    pl_module.device,
                )
            arrays["seconds"] = np.float32(time.perf_counter() - start)
            self.path = _save_atomic(os.path.join(run_dir, SNAPSHOT_FILE), arrays)
        except Exception as error:  # any failure: the training result is worth more than the snapshot
            rank_zero_warn(f"FunctionSnapshot: snapshot not written ({type(error).__name__}: {error})")
            return
        self.seconds = float(arrays["seconds"])

    def snapshot(
        self, model: nn.Module, train: IndexedInputs, test: IndexedInputs, device: torch.device
    ) -> dict[str, np.ndarray]:
        """The arrays of snapshot.npz (without `seconds`) for `model`, which must already be in eval mode with
        autograd on: exact logits and exact input Jacobians (K batched backward passes) at the fixed subsets."""
        test_indices = _sorted_subset(len(test), self.test_points, self.subset_seed)
        test_x = test.rows(test_indices)
        test_outputs = self._outputs(model, test_x, device)
        n_out, n_in = test_outputs.shape[1], test_x[0].numel()
        affordable = self.max_jacobian_numbers // (n_out * n_in)
        train_points = min(self.train_points, len(train))
        if affordable < train_points:
            rank_zero_warn(
                f"FunctionSnapshot: Jacobians at {train_points} training points would hold "
                f"{train_points * n_out * n_in:,} numbers (> max_jacobian_numbers="
                f"{self.max_jacobian_numbers:,}); saving {affordable} points instead"
            )
            train_points = affordable
        train_indices = _sorted_subset(len(train), train_points, self.subset_seed)
        jacobians = self._jacobians(model, train, train_indices, device, n_out, n_in)
        with torch.no_grad():
            f0 = _logits(model, torch.zeros_like(test_x[:1], device=device)).reshape(-1)
        return {
            "test_outputs": test_outputs.numpy().astype(np.float32),
            "test_indices": test_indices.numpy(),
            "jacobians": jacobians.numpy().astype(np.float32),
            "train_indices": train_indices.numpy(),
            "f0": f0.cpu().numpy().astype(np.float32),
            "mean_sq_norm": np.float32(test.mean_sq_norm(self.batch_size)),
        }

    def _outputs(self, model: nn.Module, x: Tensor, device: torch.device) -> Tensor:
        with torch.no_grad():
            chunks = [
                _logits(model, chunk.to(device)).reshape(len(chunk), -1).cpu() for chunk in x.split(self.batch_size)
            ]
        return torch.cat(chunks)

    def _jacobians(
        self, model: nn.Module, train: IndexedInputs, indices: Tensor, device: torch.device, n_out: int, n_in: int
    ) -> Tensor:
        if len(indices) == 0:
            return torch.zeros(0, n_out, n_in)
        return torch.cat(
            [jacobian_rows(model, train.rows(chunk).to(device)).cpu() for chunk in indices.split(self.batch_size)]
        )


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    """model(x), which must be one Tensor (the logits); a TypeError naming what it is otherwise."""
    out = model(x)
    if not isinstance(out, Tensor):
        raise TypeError(
            f"the model output is a {type(out).__name__}, not a Tensor: FunctionSnapshot needs "
            f"forward(x) to return the logits as one Tensor"
        )
    return out


def _save_atomic(path: str, arrays: dict[str, np.ndarray]) -> str:
    """np.savez_compressed to a temporary file beside `path`, then rename it over `path` (atomic on POSIX)."""
    write_atomic(path, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")  # savez adds ".npz" otherwise
    return path


def _sorted_subset(n: int, size: int, seed: int) -> Tensor:
    """Sorted indices of the fixed random subset of range(n) of size min(n, size) drawn with `seed`."""
    return seeded_subset(n, size, seed).sort().values
