"""The 2-D toy's picture: the local Lipschitz constant ||J(x)||_2 over the plane, the decision regions and the
training points. Plain arrays in, a PNG out (no training code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure


def plot_local_lipschitz_map(
    xs: np.ndarray,
    ys: np.ndarray,
    norms: np.ndarray,
    classes: np.ndarray,
    train_x: np.ndarray,
    train_y: np.ndarray,
    path: Path,
    title: str = "",
) -> Path:
    """Left: ||J(x)||_2 on the grid xs x ys (norms and classes of shape [len(xs), len(ys)], log colour scale)
    with the decision boundaries; right: the decision regions. Training points on both, coloured by label."""
    figure = Figure(figsize=(11, 4.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    positive = norms[norms > 0]
    scale = LogNorm(vmin=float(positive.min()), vmax=float(positive.max())) if positive.size else None
    mesh = left.pcolormesh(xs, ys, norms.T, norm=scale, cmap="magma", shading="auto")
    figure.colorbar(mesh, ax=left, label="||J(x)||_2")
    n_classes = int(max(classes.max(), train_y.max())) + 1
    levels = np.arange(n_classes + 1) - 0.5
    colours = ListedColormap([f"C{k % 10}" for k in range(n_classes)])  # the same colour per class in both
    left.contour(xs, ys, classes.T, levels=levels, colors="white", linewidths=0.8)
    right.contourf(xs, ys, classes.T, levels=levels, cmap=colours, alpha=0.3)
    for ax in (left, right):
        ax.scatter(
            train_x[:, 0],
            train_x[:, 1],
            c=train_y,
            cmap=colours,
            vmin=-0.5,
            vmax=n_classes - 0.5,
            s=8,
            edgecolors="black",
            linewidths=0.3,
        )
        ax.set(xlabel="x1", ylabel="x2", aspect="equal")
    left.set_title("local Lipschitz constant, decision boundaries")
    right.set_title("decision regions, training points")
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=120)
    return path
