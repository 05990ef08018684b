"""The seed-averaged network of a grid point, evaluated from its runs' ``snapshot.npz`` files (numpy only).

Each run of a sweep saves (callbacks/snapshot.py) its logits ``f_s(x)`` at the same fixed test inputs, its
input Jacobians ``J_s(x)`` (K x d, flattened) at the same fixed training inputs, ``f_s(0)`` and E||x||^2 over
the test set. For the average f_bar = mean_s f_s of S seeds, since averaging is linear:

    f_bar(x) = mean_s f_s(x),        J_bar(x) = mean_s J_s(x)                           (both exact)
    V        = mean_x mean_s ||f_s(x) - f_bar(x)||^2   over the saved test inputs        (exact there; an
               estimate of E_x over the whole test distribution)
    C_bar    = max_x ||J_bar(x)||_2                    over the saved training inputs   (spectral norm;
               a guaranteed lower bound of Lip(f_bar), up to float32 rounding of the saved Jacobians)

The bias-variance table (bias_variance.py) reads C_bar and V per run from ``final`` as
``ensemble/lipschitz_lower`` and ``ensemble/function_variance``: :func:`with_ensemble_quantities` puts them
there for every grid point whose seeds all have a snapshot taken at the same points, and fills
``data/mean_sq_norm`` and ``f0/<k>`` from the snapshots where the run did not record them.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipschitz_dd.report.bias_variance import (
    ENSEMBLE_LOWER,
    F0_PREFIX,
    FUNCTION_VARIANCE,
    MEAN_SQ_NORM,
    output_at_zero_variance,
    seed_groups,
)
from lipschitz_dd.report.records import LoadedRun
from lipschitz_dd.run_folder import SNAPSHOT_FILE  # written by callbacks.snapshot.FunctionSnapshot

_INDEX_KEYS = ("test_indices", "train_indices")


class SnapshotMismatch(ValueError):
    """Snapshots of one grid point cannot be combined (different points, shapes, or a damaged file)."""


@dataclass(frozen=True)
class EnsembleQuantities:
    """The seed-averaged network of S runs (see the module docstring). ``c_bar`` is NaN when the snapshots
    hold no Jacobians; ``mean_sq_norm`` is the mean over seeds of each snapshot's E||x||^2 (equal for equal
    data); ``var_f0`` = mean_s ||f_s(0) - f_bar(0)||^2."""

    seeds: int
    c_bar: float
    function_variance: float
    mean_sq_norm: float
    var_f0: float
    test_points: int
    train_points: int


def function_variance(outputs: np.ndarray) -> float:
    """V = mean over points x of mean_s ||f_s(x) - f_bar(x)||^2 for outputs [S, m, K] of S seeds at the same
    m points (population variance over seeds, summed over the K outputs, averaged over points). Exact."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim != 3 or outputs.shape[0] < 2 or outputs.shape[1] == 0:
        raise ValueError(f"expected outputs [S >= 2 seeds, m >= 1 points, K], got shape {outputs.shape}")
    deviations = outputs - outputs.mean(axis=0)
    return float((deviations**2).sum(axis=2).mean())


def spectral_norms(jacobians: np.ndarray) -> np.ndarray:
    """||J_i||_2 (largest singular value) of each matrix of a batch [m, K, d], batched SVD. Exact up to
    rounding."""
    jacobians = np.asarray(jacobians, dtype=np.float64)
    if jacobians.ndim != 3:
        raise ValueError(f"expected Jacobians [m, K, d], got shape {jacobians.shape}")
    if jacobians.shape[0] == 0:
        return np.zeros(0)
    return np.linalg.svd(jacobians, compute_uv=False)[:, 0]


def ensemble_from_snapshots(paths: Sequence[str | Path]) -> EnsembleQuantities:
    """C_bar, V, E||x||^2 and Var f(0) of the average of the S >= 2 networks whose snapshot.npz files are
    ``paths``. Raises SnapshotMismatch (one line) if the files were taken at different points or are damaged.
    Memory: the S x m_test x K outputs plus one running sum of the Jacobians (m_train x K x d)."""
    if len(paths) < 2:
        raise ValueError(f"an ensemble needs at least two seeds' snapshots, got {len(paths)}")
    reference: dict[str, np.ndarray] = {}
    outputs, f0, mean_sq_norms = [], [], []
    jacobian_sum = None
    for path in paths:
        try:
            with np.load(path) as snapshot:
                for key in _INDEX_KEYS:
                    indices = snapshot[key]
                    if key not in reference:
                        reference[key] = indices
                    elif not np.array_equal(indices, reference[key]):
                        raise SnapshotMismatch(
                            f"{path}: {key} differ from those of {paths[0]} (other data or "
                            f"subset seed); cannot average these seeds"
                        )
                outputs.append(snapshot["test_outputs"])
                f0.append(snapshot["f0"].reshape(-1))
                mean_sq_norms.append(float(snapshot["mean_sq_norm"]))
                jacobians = snapshot["jacobians"].astype(np.float64)
        except SnapshotMismatch:
            raise
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:  # not an npz, or truncated
            raise SnapshotMismatch(f"{path}: unreadable snapshot ({type(error).__name__}: {error})") from None
        if jacobian_sum is not None and jacobians.shape != jacobian_sum.shape:
            raise SnapshotMismatch(f"{path}: Jacobians of shape {jacobians.shape}, {paths[0]} has {jacobian_sum.shape}")
        jacobian_sum = jacobians if jacobian_sum is None else jacobian_sum + jacobians
    if len({o.shape for o in outputs}) > 1 or len({v.shape for v in f0}) > 1:
        raise SnapshotMismatch(f"snapshots of {paths[0]} and the other seeds have different output shapes")
    averaged_norms = spectral_norms(jacobian_sum / len(paths))
    return EnsembleQuantities(
        seeds=len(paths),
        c_bar=float(averaged_norms.max()) if len(averaged_norms) else float("nan"),
        function_variance=function_variance(np.stack(outputs)),
        mean_sq_norm=float(np.mean(mean_sq_norms)),
        var_f0=output_at_zero_variance(np.stack(f0)),
        test_points=outputs[0].shape[0],
        train_points=len(averaged_norms),
    )


def with_ensemble_quantities(
    records: Sequence[LoadedRun], axes: Sequence[str], seed_key: str
) -> tuple[list[LoadedRun], list[str]]:
    """Copies of ``records`` whose ``final`` also holds ``ensemble/lipschitz_lower`` (C_bar) and
    ``ensemble/function_variance`` (V) of their grid point (``axes`` without ``seed_key``, grouped exactly as
    :func:`bias_variance.bias_variance_table` does), and ``data/mean_sq_norm``, ``f0/<k>`` from the snapshot
    where the run did not record them. Only grid points whose completed seeds all have snapshot.npz are
    filled; the one-line notes say how many were and why the others were not. ``records`` are not changed."""
    filled: dict[Path, dict[str, float]] = {}
    without, problems, done = 0, [], 0
    for runs in seed_groups(records, axes, seed_key):
        paths = [run.path / SNAPSHOT_FILE for run in runs]
        if not all(path.is_file() for path in paths):
            without += 1
            continue
        try:
            ensemble = ensemble_from_snapshots(paths)
        except SnapshotMismatch as error:
            problems.append(str(error))
            continue
        done += 1
        for run, path in zip(runs, paths, strict=False):
            filled[run.path] = {
                ENSEMBLE_LOWER: ensemble.c_bar,
                FUNCTION_VARIANCE: ensemble.function_variance,
                **_missing_run_constants(run, path),
            }
    notes = []
    if done:
        notes.append(f"bias-variance: C_bar and function variance from {SNAPSHOT_FILE} for {done} grid point(s)")
    if without:
        notes.append(
            f"bias-variance: {without} grid point(s) have seeds without {SNAPSHOT_FILE} "
            "(C_bar and function variance not computed there)"
        )
    notes += [f"bias-variance: {problem}" for problem in problems]
    updated = [
        dataclasses.replace(record, final={**record.final, **filled[record.path]}) if record.path in filled else record
        for record in records
    ]
    return updated, notes


def _missing_run_constants(run: LoadedRun, path: Path) -> dict[str, float]:
    """E||x||^2 and the logits at zero from the snapshot, for the keys the run's ``final`` lacks."""
    with np.load(path) as snapshot:
        constants = {MEAN_SQ_NORM: float(snapshot["mean_sq_norm"])}
        constants.update({f"{F0_PREFIX}{k}": float(v) for k, v in enumerate(snapshot["f0"].reshape(-1))})
    if any(key.startswith(F0_PREFIX) for key in run.final):
        constants = {k: v for k, v in constants.items() if not k.startswith(F0_PREFIX)}
    return {k: v for k, v in constants.items() if k not in run.final}
