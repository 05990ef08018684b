"""Finding 1.4: C_lower stays close to the max of ||J(x)||_2 over S* = training points + test points + many convex
combinations of training pairs, during training (the study's main figure: its central fidelity argument).

Every value compared is the max of the exact spectral norm ||J(x)||_2 of the logits' input Jacobian (L2 on inputs
and outputs) over a set of real inputs, so each is a guaranteed lower bound of Lip(f): C_lower over the training
points (lipschitz/lower), over the test points (lipschitz/lower_test), over the interpolated points
(lipschitz/lower_interp). The max over S* is the largest of the three, so max S* / C_lower >= 1 by construction;
the claim is that it stays near 1 (the training points alone find nearly the largest norm the bigger set finds).
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pandas as pd

from lipschitz_dd.metric_names import LOWER, LOWER_INTERP, LOWER_TEST, UPPER
from lipschitz_dd.reproduce.analysis import fmt, markdown_table, save_figure
from lipschitz_dd.reproduce.measures import spread
from lipschitz_dd.reproduce.registry import Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check, Threshold

SETS = {"train": LOWER, "test": LOWER_TEST, "interp": LOWER_INTERP}

#: "Stays close": the largest over seeds and measured epochs of max over S* / C_lower (>= 1 by construction) is at
#: most this (the training points miss at most a fifth of the largest norm the bigger set finds).
CLOSE = Threshold("<=", 1.25)
#: The fewest measured epochs (every one with all three sets) for "during training" to be judged.
MIN_EPOCHS = 3


def _point_sets(num_points: int) -> list[list[dict]]:
    """The callback's point sets (test points and `num_points` interpolated points) as one sweep value: a list in
    a list, so that the sweep runs one grid point whose value is the whole list."""
    return [
        [
            {"class_path": "lipschitz_dd.callbacks.TestPoints"},
            {"class_path": "lipschitz_dd.callbacks.InterpolatedPoints", "init_args": {"num_points": num_points}},
        ]
    ]


#: The study's setting on the config: FCN 256, lr 0.005 (in the config), 10^6 interpolated points, 4 seeds.
PARAMETERS = {"seed_everything": [0, 1, 2, 3]}
CPU_POINTS = 100_000
SCALES = {
    "quick": {
        "model.width": 32,
        "trainer.max_epochs": 4,
        "seed_everything": 0,
        "data.num_samples": 1000,
        "lipschitz.every_n_epochs": 2,
        "lipschitz.point_sets": _point_sets(1000),
        "model.lr_schedule": "constant",  # a first look: the warm-up alone would last 2,500 epochs
        "model.lr": 0.05,
    },
    # 2,500 epochs: the end of the warm-up (20,000 updates of 8 per epoch); 10^5 interpolated points every 250.
    "cpu": {"trainer.max_epochs": 2500, "seed_everything": [0, 1, 2], "lipschitz.point_sets": _point_sets(CPU_POINTS)},
    "full": {},
}


def interpolated_points(record) -> int | None:
    """The number of interpolated points the run's InterpolatedPoints set asked for (its config; results.json keeps
    the list as its Python text, read with ast.literal_eval, never evaluated), None if not found (the class
    default of 10,000 when it names none)."""
    sets = record.config.get("lipschitz.point_sets")
    if isinstance(sets, str):
        try:
            sets = ast.literal_eval(sets)
        except (ValueError, SyntaxError):
            return None
    for entry in sets if isinstance(sets, list) else []:
        if isinstance(entry, dict) and str(entry.get("class_path", "")).endswith("InterpolatedPoints"):
            return int((entry.get("init_args") or {}).get("num_points", 10_000))
    return None


def sstar_rows(records) -> pd.DataFrame:
    """One row per completed run and measured epoch where all three sets were measured: C_lower (train), the test
    and interpolated maxima, max over S* (the largest of the three), which set attains it, the ratio
    max S* / C_lower, and C_upper where logged."""
    rows = []
    for record in records:
        if not record.completed or record.metrics.empty:
            continue
        frame = record.metrics.apply(pd.to_numeric, errors="coerce")
        if not set(SETS.values()) <= set(frame.columns):
            continue
        measured = frame.dropna(subset=list(SETS.values()))
        for epoch, row in measured.iterrows():
            values = {name: float(row[metric]) for name, metric in SETS.items()}
            top = max(values, key=values.get)
            rows.append(
                {
                    "seed": record.config.get("seed_everything", 0),
                    "epoch": int(epoch),
                    "C_lower": values["train"],
                    "max test": values["test"],
                    "max interp": values["interp"],
                    "max S*": values[top],
                    "attained on": top,
                    "max S* / C_lower": values[top] / values["train"] if values["train"] > 0 else math.nan,
                    "C_upper": float(row[UPPER]) if UPPER in frame.columns and pd.notna(row[UPPER]) else math.nan,
                }
            )
    return pd.DataFrame(rows)


def checks(rows: pd.DataFrame) -> list[Check]:
    """The largest ratio max S* / C_lower over seeds and measured epochs (not measured with fewer than MIN_EPOCHS
    measured epochs in some run); it compares epochs, so it carries the number of seeds."""
    if rows.empty or rows.groupby("seed")["epoch"].nunique().min() < MIN_EPOCHS:
        value, seeds = math.nan, int(rows["seed"].nunique()) if not rows.empty else 0
    else:
        value, seeds = float(rows["max S* / C_lower"].max()), int(rows["seed"].nunique())
    return [
        Check(
            "max over S* stays close to C_lower",
            "largest over seeds and measured epochs of max(train, test, interpolated) / C_lower",
            value,
            CLOSE,
            seeds=seeds,
        )
    ]


def _figure(rows: pd.DataFrame, path: Path) -> Path:
    """Left: C_lower, the test and interpolated maxima and C_upper against the epoch (mean over seeds, band
    min..max). Right: max S* / C_lower per seed, with the declared factor."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    left, right = figure.subplots(1, 2)
    grouped = rows.groupby("epoch")
    for column in ("C_lower", "max test", "max interp", "C_upper"):
        if rows[column].isna().all():
            continue
        mean = grouped[column].mean()
        line = left.plot(mean.index, mean.to_numpy(), marker=".", label=column)[0]
        left.fill_between(mean.index, grouped[column].min(), grouped[column].max(), color=line.get_color(), alpha=0.2)
    left.set(yscale="log", xlabel="epoch", ylabel="max ||J(x)||_2 over the set", title="C_lower and the sets of S*")
    left.legend(fontsize="small")
    for seed, group in rows.groupby("seed"):
        right.plot(group["epoch"], group["max S* / C_lower"], marker=".", label=f"seed {seed}")
    right.axhline(CLOSE.bound, color="grey", linestyle="--", label=f"declared factor {CLOSE.bound:g}")
    right.axhline(1.0, color="black", linewidth=0.8)
    right.set(xlabel="epoch", ylabel="max over S* / C_lower", title="the ratio over training")
    right.legend(fontsize="small")
    return save_figure(figure, path)


def analyse(records, out: Path) -> Analysis:
    """Per measured epoch: C_lower, the test and interpolated maxima and the ratio max S* / C_lower (mean and
    spread over seeds), which set attains the max, C_upper / max S* beside it; the check on the largest ratio."""
    result = Analysis()
    rows = sstar_rows(records)
    if rows.empty:
        result.lines.append("no completed run logged lipschitz/lower, lower_test and lower_interp together")
        result.checks += checks(rows)
        return result
    result.figures.append(_figure(rows, out / "lower_vs_sstar.png"))
    counts = sorted({n for n in (interpolated_points(r) for r in records if r.completed) if n is not None})
    table = []
    for epoch, group in rows.groupby("epoch"):
        ratio_mean, ratio_min, ratio_max = spread(group["max S* / C_lower"])
        table.append(
            {
                "epoch": epoch,
                "C_lower (mean)": group["C_lower"].mean(),
                "max test": group["max test"].mean(),
                "max interp": group["max interp"].mean(),
                "max S* / C_lower (mean)": ratio_mean,
                "min..max": f"{fmt(ratio_min)}..{fmt(ratio_max)}",
                "attained on": ", ".join(f"{k} {v}" for k, v in group["attained on"].value_counts().items()),
                "C_upper / max S* (mean)": (group["C_upper"] / group["max S*"]).mean(),
            }
        )
    points = ", ".join(f"{n:,}" for n in counts) if counts else "unknown"
    result.lines += [
        f"{rows['seed'].nunique()} run(s); {points} interpolated points per measurement; S* = training points + "
        "test points + interpolated points.",
        "",
        *markdown_table(pd.DataFrame(table)),
    ]
    result.checks += checks(rows)
    return result


register(
    Finding(
        name="lower_vs_sstar",
        number="1.4",
        section="Finding 1; 'Evolution' (main figure 2: C_lower against the max over S*)",
        claim="During training C_lower (max over the training points) stays close to the max of ||J(x)||_2 over "
        "S* = training points + test points + a large set of convex combinations of training pairs.",
        paper={"S*": "train + test + ~10^6 convex combinations (FCN 256, MNIST-1D)", "C_lower vs S*": "close"},
        config="fcn_mnist1d_sstar",
        parameters=PARAMETERS,
        scales=SCALES,
        cost={
            "quick": "~15 s (1 run)",
            "cpu": "~33 min on shared cores (3 runs x 2,500 epochs, 10^5 interpolated points every 250 epochs)",
            "full": "4 runs x hours (10^6 points: about a CPU minute per measurement)",
        },
        analyse=analyse,
        setting="FCN 256 on MNIST-1D, paper protocol (lr 0.005, warm-up), 2,500 epochs, 10^5 interpolated points",
        compares=True,
        recorded=Recorded(
            "holds", seeds=3, minutes=32.8, date="2026-12-06", shared=True, note="max S* / C_lower at most 1.10"
        ),
    )
)
