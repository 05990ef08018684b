"""The evolution bound: Bounds 1 and 2 (from the parameter path) against C_lower and C_upper during training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lipschitz_dd.reproduce.analysis import fmt, markdown_table, save_figure
from lipschitz_dd.reproduce.registry import Analysis, Finding, register

CURVES = ("lipschitz/lower", "lipschitz/upper", "evolution/bound1", "evolution/bound2")


def analyse(records, out: Path) -> Analysis:
    """Per run: the four curves against the epoch (log y), and at the first and last measured epochs whether
    C_lower <= Bound 1 <= Bound 2 and where the bounds sit against C_upper."""
    result = Analysis()
    done = [r for r in records if r.completed and "evolution/bound1" in r.metrics.columns]
    if not done:
        result.lines.append("no completed run logged evolution/bound1 (the EvolutionBound callback)")
        return result
    rows, valid, below_upper_early = [], True, []
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = figure.subplots()
    for record in done:
        frame = record.metrics[[c for c in CURVES if c in record.metrics.columns]].dropna(how="all")
        for column in frame.columns:
            series = frame[column].dropna()
            ax.plot(np.maximum(series.index.to_numpy(), 1), series.to_numpy(), label=f"{column} ({record.name})")
        measured = frame.dropna(subset=["evolution/bound1"])
        for stage, epoch in (("first", measured.index.min()), ("last", measured.index.max())):
            row = {"run": record.name, "stage": stage, "epoch": int(epoch)}
            row.update({c: record.metrics.loc[epoch, c] for c in CURVES if c in record.metrics.columns})
            rows.append(row)
            valid &= row["lipschitz/lower"] <= row["evolution/bound1"] * (1 + 1e-6)
            if stage == "first" and "lipschitz/upper" in row:
                below_upper_early.append(row["evolution/bound1"] < row["lipschitz/upper"])
    ax.set(xscale="log", yscale="log", xlabel="epoch", ylabel="constant / bound")
    ax.legend(fontsize="x-small")
    result.figures.append(save_figure(figure, out / "evolution_bound.png"))
    result.lines += markdown_table(pd.DataFrame(rows))
    early = all(below_upper_early) if below_upper_early else False
    result.verdict = (
        ("holds" if valid and early else "holds in part")
        + f": C_lower <= Bound 1 at the measured epochs: {valid}; Bound 1 below C_upper early in training: {early}"
        + f" ({fmt(len(done))} run(s))"
    )
    return result


register(
    Finding(
        name="evolution_bound",
        number="1.1",
        section="Evolution bound (Bounds 1 and 2)",
        claim="(2/r) C_theta sum ||theta_{t+1} - theta_t|| + C_x(theta_0) and (2/r) C_theta B eta T + C_x(theta_0) "
        "follow the empirical trend and lie below C_upper early in training.",
        paper={"early in training": "both bounds below C_upper", "trend": "both follow C_lower's growth"},
        config="fcn_mnist1d_evolution_bound",
        parameters={"trainer.max_epochs": 2000, "seed_everything": [0]},
        scales={
            "quick": {"trainer.max_epochs": 3, "data.num_samples": 1000, "lipschitz.every_n_epochs": 1},
            "cpu": {},
            "full": {"seed_everything": [0, 1, 2, 3], "trainer.max_epochs": 10000},
        },
        cost={
            "quick": "~20 s (1 run)",
            "cpu": "~20 min (1 run, 2,000 epochs; measured 22 min, shared)",
            "full": "hours",
        },
        analyse=analyse,
    )
)
