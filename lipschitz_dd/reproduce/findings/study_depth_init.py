"""Depth at initialisation in the study's setting: FCN 64 with 1..5 hidden layers on MNIST-1D, log-log slopes.

The runs (configs/fcn_mnist1d.yaml, the paper's FCN: no bias, ReLU after every layer including the last; the
mnist1d defaults, 4,000 training points in the study's loader order) are measured at epoch 0, before the first
update (one epoch is trained only so that the run is a run); 5 seeds. Per seed, the log-log slope of each bound
against the number of hidden layers (1..5): C_upper (product of the layers' spectral norms, an upper bound),
C_lower (max ||J(x)||_2 over the training points, a lower bound) and C_avg (their mean, an estimate). The study
reports +0.30 / -2.52 / -2.84 (upper / lower / avg): the data bounds fall steeply with depth, the product bound
rises slightly.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from lipschitz_dd.reproduce.analysis import initial_value, loglog_fit, markdown_table, save_figure
from lipschitz_dd.reproduce.registry import Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check, Threshold

#: The study's log-log slopes against depth at initialisation.
STUDY_SLOPES = {"lipschitz/upper": 0.30, "lipschitz/lower": -2.52, "lipschitz/avg": -2.84}
#: Declared tolerance: the mean slope over seeds within this fraction of the study's (relative).
SLOPE_TOL = 0.2
DEPTH, SEED = "model.depth", "seed_everything"
LABELS = {"lipschitz/upper": "C_upper", "lipschitz/lower": "C_lower", "lipschitz/avg": "C_avg"}


def init_table(records) -> pd.DataFrame:
    """One row per completed run: seed, depth, and each bound at epoch 0."""
    rows = [
        {
            "seed": r.config.get(SEED),
            "depth": r.config.get(DEPTH),
            **{metric: initial_value(r, metric) for metric in STUDY_SLOPES},
        }
        for r in records
        if r.completed
    ]
    return pd.DataFrame(rows, columns=["seed", "depth", *STUDY_SLOPES])


def slopes_per_seed(table: pd.DataFrame) -> pd.DataFrame:
    """Per seed: the log-log slope of each bound against depth (NaN with fewer than two depths)."""
    rows = []
    for seed, group in table.groupby("seed", sort=True):
        row = {"seed": seed, "depths": int(group["depth"].nunique())}
        for metric in STUDY_SLOPES:
            row[metric] = loglog_fit(group["depth"], group[metric]).slope
        rows.append(row)
    return pd.DataFrame(rows, columns=["seed", "depths", *STUDY_SLOPES])


def depth_checks(slopes: pd.DataFrame) -> list[Check]:
    """Per bound: |mean slope over seeds / the study's - 1| <= SLOPE_TOL."""
    checks = []
    for metric, study in STUDY_SLOPES.items():
        mean = float(slopes[metric].mean()) if len(slopes) else math.nan
        checks.append(
            Check(
                f"{LABELS[metric]} slope",
                f"abs(ours / study - 1), log-log slope of {LABELS[metric]} against depth at init (study {study:+g}; "
                "mean over seeds)",
                abs(mean / study - 1.0) if mean == mean else math.nan,
                Threshold("<=", SLOPE_TOL),
            )
        )
    return checks


def analyse(records, out: Path) -> Analysis:
    result = Analysis()
    table = init_table(records)
    if table.empty:
        result.lines.append("(no completed run)")
        return result
    slopes = slopes_per_seed(table)
    summary = pd.DataFrame(
        [
            {
                "bound": LABELS[metric],
                "study": study,
                "mean here": float(slopes[metric].mean()),
                "min": float(slopes[metric].min()),
                "max": float(slopes[metric].max()),
            }
            for metric, study in STUDY_SLOPES.items()
        ]
    )
    means = table.groupby("depth")[list(STUDY_SLOPES)].mean().reset_index()
    result.lines += [
        f"{len(slopes)} seed(s), depths {sorted(table['depth'].unique().tolist())}; bounds at epoch 0.",
        "",
        "Log-log slope against depth (per seed, then mean and range over seeds):",
        "",
        *markdown_table(slopes),
        "",
        *markdown_table(summary),
        "",
        "Mean bounds at initialisation per depth:",
        "",
        *markdown_table(means),
    ]
    result.figures.append(_figure(table, out / "study_depth_init.png"))
    result.checks = depth_checks(slopes)
    return result


def _figure(table: pd.DataFrame, path: Path) -> Path:
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = figure.subplots()
    for i, (metric, name) in enumerate(LABELS.items()):
        grouped = table.groupby("depth")[metric]
        mean, low, high = grouped.mean(), grouped.min(), grouped.max()
        ax.plot(mean.index, mean.values, "o-", color=f"C{i}", label=f"{name} (study slope {STUDY_SLOPES[metric]:+g})")
        ax.fill_between(mean.index, low.values, high.values, color=f"C{i}", alpha=0.2)
    ax.set(xscale="log", yscale="log", xlabel="hidden layers", ylabel="bound at initialisation")
    ax.set_title("FCN 64 at initialisation: mean and range over seeds")
    ax.legend(fontsize="small")
    return save_figure(figure, path)


register(
    Finding(
        name="study_depth_init",
        number="5.4.1",
        section="Finding 5: depth at initialisation (FCN 64, 1..5 hidden layers), the study's setting",
        claim="At initialisation C_lower and C_avg fall with depth (log-log slopes -2.52 / -2.84) while the product "
        "bound rises slightly (+0.30).",
        paper={"slopes upper / lower / avg at init": "+0.30 / -2.52 / -2.84"},
        config="fcn_mnist1d",
        parameters={
            "model.width": 64,
            DEPTH: [1, 2, 3, 4, 5],
            SEED: [42, 0, 1, 2, 3],
            "data.order": "study",
            "trainer.max_epochs": 1,
            "stopping.enabled": False,
            "lipschitz.dense_epochs": 1,
        },
        scales={"quick": {DEPTH: [1, 3], SEED: [0]}, "cpu": {}, "full": {}},
        cost={"quick": "~25 s (2 runs)", "cpu": "~5 min (25 runs of one epoch)", "full": "~5 min"},
        analyse=analyse,
        setting="FCN 64, depths 1..5, 5 seeds, epoch 0",
        recorded=Recorded(verdict="holds in part", seeds=5, minutes=4.9, date="2026-12-06", shared=True),
    )
)
