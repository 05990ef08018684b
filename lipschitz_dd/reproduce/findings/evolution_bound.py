"""The evolution bound: Bounds 1 and 2 (from the parameter path) against C_lower and C_upper during training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lipschitz_dd.reproduce.analysis import fmt, markdown_table, save_figure
from lipschitz_dd.reproduce.registry import Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check, Threshold

CURVES = ("lipschitz/lower", "lipschitz/upper", "evolution/bound1", "evolution/bound2")


#: Bound 1 lies above C_lower at every measured epoch (largest ratio over runs and epochs; a relative slack of 1e-6
#: for rounding). Not guaranteed by the study's derivation for what is computed here: C_x(theta_0) is C_lower at
#: initialisation (an estimate from below), C_theta the largest over the measured epochs only, and the derivation
#: bounds difference quotients of data pairs at distance >= r, not Jacobian norms: the check can fail.
VALID = Threshold("<=", 1.0 + 1e-6)
#: "Below C_upper early in training": the largest Bound / C_upper at the first measured epoch over the runs.
BELOW_UPPER_EARLY = Threshold("<", 1.0)
#: "Follows the empirical trend": the smallest over runs of the correlation of log Bound 1 and log C_lower over
#: the measured epochs.
TREND = Threshold(">=", 0.9)
LABELS = {
    "lipschitz/lower": "$C_{lower}$",
    "lipschitz/upper": "$C_{upper}$",
    "evolution/bound1": "Bound 1 (path length)",
    "evolution/bound2": "Bound 2 ($B \\eta t$)",
}


def bound_rows(done) -> pd.DataFrame:
    """Per run, at its first and last epochs with Bound 1: the four curves."""
    rows = []
    for record in done:
        measured = record.metrics.dropna(subset=["evolution/bound1"])
        for stage, epoch in (("first", measured.index.min()), ("last", measured.index.max())):
            row = {"seed": record.config.get("seed_everything"), "stage": stage, "epoch": int(epoch)}
            row.update({c: record.metrics.loc[epoch, c] for c in CURVES if c in record.metrics.columns})
            rows.append(row)
    return pd.DataFrame(rows)


def trend_correlation(record) -> float:
    """Pearson correlation of log Bound 1 and log C_lower over the epochs where both are logged and positive."""
    frame = record.metrics.reindex(columns=["evolution/bound1", "lipschitz/lower"]).dropna()
    frame = frame[(frame > 0).all(axis=1)]
    if len(frame) < 3:
        return float("nan")
    return float(np.corrcoef(np.log(frame.iloc[:, 0]), np.log(frame.iloc[:, 1]))[0, 1])


def checks(done, rows: pd.DataFrame) -> list[Check]:
    seeds = len(done)
    measured = rows.dropna(subset=["evolution/bound1", "lipschitz/lower"])
    valid = float((measured["lipschitz/lower"] / measured["evolution/bound1"]).max()) if len(measured) else np.nan
    first = rows[rows["stage"] == "first"]
    out = [
        Check("C_lower <= Bound 1", "largest C_lower / Bound 1 over runs and measured epochs", valid, VALID),
    ]
    for column, name in (("evolution/bound1", "Bound 1"), ("evolution/bound2", "Bound 2")):
        ratio = np.nan
        if column in first and "lipschitz/upper" in first:
            ratio = float((first[column] / first["lipschitz/upper"]).max())
        out.append(
            Check(
                f"{name} below C_upper early",
                f"largest {name} / C_upper at the first measured epoch over runs",
                ratio,
                BELOW_UPPER_EARLY,
                seeds=seeds,
            )
        )
    correlations = [trend_correlation(r) for r in done]
    out.append(
        Check(
            "Bound 1 follows C_lower's trend",
            "smallest over runs of corr(log Bound 1, log C_lower) over the measured epochs",
            min(correlations) if correlations and not any(np.isnan(correlations)) else np.nan,
            TREND,
            seeds=seeds,
        )
    )
    return out


def _figure(done, path: Path) -> Path:
    """The four curves against the epoch (log y): mean over seeds, the band min..max over seeds."""
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = figure.subplots()
    for i, column in enumerate(CURVES):
        series = [r.metrics[column].dropna() for r in done if column in r.metrics.columns]
        if not series:
            continue
        frame = pd.concat(series, axis=1)
        epochs = np.maximum(frame.index.to_numpy(), 1)
        ax.plot(epochs, frame.mean(axis=1), color=f"C{i}", label=LABELS[column])
        if frame.shape[1] > 1:
            ax.fill_between(epochs, frame.min(axis=1), frame.max(axis=1), color=f"C{i}", alpha=0.2, lw=0)
    title = f"mean over {len(done)} seeds, band min..max" if len(done) > 1 else "one seed"
    ax.set(xscale="log", yscale="log", xlabel="epoch", ylabel="constant / bound", title=title)
    ax.legend(fontsize="small")
    return save_figure(figure, path)


def analyse(records, out: Path) -> Analysis:
    """Per run: at the first and last measured epochs the four curves; checks: C_lower <= Bound 1, Bounds 1 and
    2 below C_upper early in training, Bound 1 following C_lower's trend."""
    result = Analysis()
    done = [r for r in records if r.completed and "evolution/bound1" in r.metrics.columns]
    if not done:
        result.lines.append("no completed run logged evolution/bound1 (the EvolutionBound callback)")
        return result
    rows = bound_rows(done)
    result.figures.append(_figure(done, out / "evolution_bound.png"))
    result.lines += [f"{fmt(len(done))} run(s).", "", *markdown_table(rows)]
    result.checks += checks(done, rows)
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
            "cpu": {"seed_everything": [0, 1, 2]},
            "full": {"seed_everything": [0, 1, 2, 3], "trainer.max_epochs": 10000},
        },
        cost={
            "quick": "~20 s (1 run)",
            "cpu": "~35 min (3 runs x 2,000 epochs, 2 workers: two in parallel ~19 min each, then the third)",
            "full": "hours",
        },
        analyse=analyse,
        setting="FCN on MNIST-1D with the EvolutionBound callback, 2,000 epochs",
        compares=True,
        recorded=Recorded("holds in part", seeds=3, minutes=34, date="2026-12-07", shared=True),
    )
)
