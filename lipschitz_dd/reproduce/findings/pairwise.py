"""Table 3: C_lower (max ||J(x)||_2 over the training points) against the pairwise bound C_alt (max over pairs of
training points of ||f(x) - f(y)||_2 / ||x - y||_2) at every saved checkpoint of a run.

Both are lower bounds of Lip(f); the study finds C_alt < C_lower at every checkpoint (a secant slope is an
average of directional derivatives along the segment, and the data are far apart compared with the scale on
which ||J|| varies). The runs save a checkpoint every few epochs (a ModelCheckpoint with save_top_k=-1 added by
the sweep's parameters), and the analysis measures both bounds on each one.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from lipschitz_dd.reproduce.analysis import errorbar_min_max, markdown_table, save_figure
from lipschitz_dd.reproduce.checkpoints import checkpoint_epoch, checkpoint_files, load_trained
from lipschitz_dd.reproduce.measures import jacobian_norms
from lipschitz_dd.reproduce.registry import Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check, Threshold

MAX_PAIR_POINTS = 2000
"""C_alt uses a fixed random subset of this many training points (all pairs among them: ~2M ratios)."""


def bounds_at_checkpoints(record) -> list[dict]:
    """One row per checkpoint of `record`: epoch, C_lower over all training points, C_alt over the pairs of a
    fixed subset of MAX_PAIR_POINTS training points (the same subset at every checkpoint)."""
    import torch

    from lipschitz_dd.bounds import pairwise_lipschitz

    rows = []
    for index, path in enumerate(checkpoint_files(record)):
        model, x, _ = load_trained(record, checkpoint=path)
        c_lower = float(jacobian_norms(model, x).max())
        generator = torch.Generator().manual_seed(0)
        c_alt = pairwise_lipschitz(model, x, max_points=MAX_PAIR_POINTS, generator=generator).value
        epoch = checkpoint_epoch(path)
        rows.append(
            {
                "run": record.name,
                "width": record.config.get("model.width"),
                "seed": record.config.get("seed_everything", 0),
                "epoch": index if epoch is None else epoch,
                "C_lower": c_lower,
                "C_alt": c_alt,
                "C_alt / C_lower": c_alt / c_lower,
            }
        )
    return rows


#: C_alt < C_lower at every checkpoint: the largest C_alt / C_lower over runs and checkpoints is below 1.
BELOW = Threshold("<", 1.0)


def checks(table: pd.DataFrame) -> list[Check]:
    """C_alt below C_lower at every checkpoint of every seed (the ratio's largest value)."""
    seeds = table["seed"].nunique() if "seed" in table else 1
    worst = float(table["C_alt / C_lower"].max()) if len(table) else float("nan")
    return [
        Check(
            "C_alt below C_lower at every checkpoint",
            "largest C_alt / C_lower over seeds and checkpoints",
            worst,
            BELOW,
            seeds=seeds,
        )
    ]


def analyse_pairwise(records, out: Path) -> Analysis:
    """Per completed run and checkpoint: C_lower, C_alt and their ratio; the check: the largest ratio."""
    result, rows = Analysis(), []
    for record in [r for r in records if r.completed]:
        rows += bounds_at_checkpoints(record)
    if not rows:
        return result
    table = pd.DataFrame(rows).sort_values(["width", "seed", "epoch"])
    result.lines += markdown_table(table.drop(columns=["run"]))
    result.figures.append(_figure(table, out / "pairwise.png"))
    below = int((table["C_alt"] < table["C_lower"]).sum())
    result.note = f"C_alt < C_lower at {below} of {len(table)} checkpoints"
    result.checks += checks(table)
    return result


def _figure(table: pd.DataFrame, path: Path) -> Path:
    """C_lower (solid) and C_alt (dashed) against the checkpoint's epoch, one colour per width: mean over seeds
    with error bars min..max."""
    figure = Figure(figsize=(6.5, 4), layout="constrained")
    ax = figure.subplots()
    for i, (width, group) in enumerate(table.groupby("width")):
        colour = f"C{i}"
        for column, style in (("C_lower", "o-"), ("C_alt", "s--")):
            by_epoch = group.groupby("epoch")[column]
            errorbar_min_max(ax, by_epoch, f"{column}, width {width:g}", fmt=style, color=colour)
    ax.set(yscale="log", xlabel="epoch", ylabel="lower bound", title="Jacobian bound vs pairwise bound")
    ax.legend(fontsize="small")
    return save_figure(figure, path)


def checkpoints_every(epochs: int) -> dict:
    """Sweep parameters adding a ModelCheckpoint that keeps a checkpoint every `epochs` epochs."""
    return {
        "trainer.callbacks": "ModelCheckpoint",
        "trainer.callbacks.save_top_k": -1,
        "trainer.callbacks.every_n_epochs": epochs,
    }


register(
    Finding(
        name="pairwise",
        number="1.3",
        section="C_lower vs pairwise C_alt (Table 3)",
        claim="The pairwise bound max ||f(x)-f(y)||/||x-y|| over training pairs stays below C_lower at every "
        "checkpoint.",
        paper={"C_alt < C_lower": "at every checkpoint"},
        config="fcn_mnist1d_dd",
        parameters={"model.width": 256, **checkpoints_every(50)},
        scales={
            "quick": {
                "model.width": 16,
                "trainer.max_epochs": 2,
                "data.num_samples": 1000,
                **checkpoints_every(1),
            },
            "cpu": {"trainer.max_epochs": 300, "seed_everything": [0, 1, 2]},
            "full": {"trainer.max_epochs": 300, "model.width": [32, 256], "seed_everything": [0, 1, 2, 3]},
        },
        cost={
            "quick": "~15 s (1 run, 2 checkpoints)",
            "cpu": "~2 min (3 runs x 300 epochs, 6 checkpoints each, 2 workers; measured)",
            "full": "~1 h (8 runs)",
        },
        analyse=analyse_pairwise,
        setting="FCN 256 on MNIST-1D, noise 0.15, 300 epochs, a checkpoint every 50",
        compares=True,
        recorded=Recorded("holds", seeds=3, minutes=2, date="2026-12-06", shared=True),
    )
)
