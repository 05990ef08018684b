"""Finding 1: the bounds grow during training, far from their initial values, as a power law in the epoch."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from lipschitz_dd.report import figures
from lipschitz_dd.report.power_law import power_law_table
from lipschitz_dd.reproduce.analysis import BOUNDS, fmt, growth_since_init, loglog_fit, markdown_table
from lipschitz_dd.reproduce.measures import spread
from lipschitz_dd.reproduce.registry import Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check, Threshold

#: The power law is fitted from this fraction of the last epoch on (the study: from epoch 2,500 of ~20,000).
FIT_FROM_FRACTION = 0.125


#: The study's setting on the paper-protocol config: FCN 256, lr 0.005, 4 seeds, bounds every 10 epochs.
PARAMETERS = {
    "model.width": 256,
    "model.lr": 0.005,
    "trainer.max_epochs": 30000,
    "lipschitz.every_n_epochs": 10,
    "seed_everything": [0, 1, 2, 3],
}
SCALES = {
    "quick": {
        "model.width": 32,
        "trainer.max_epochs": 4,
        "seed_everything": 0,
        "data.num_samples": 1000,
        "lipschitz.every_n_epochs": 1,
        "model.lr_schedule": "constant",  # a first look: the warm-up alone would last 2,500 epochs
        "model.lr": 0.05,
    },
    "cpu": {"trainer.max_epochs": 5000, "seed_everything": [0, 1, 2], "lipschitz.every_n_epochs": 25},
    "full": {},
}


def fit_from_epoch(records) -> int:
    """The first epoch of the power-law fits: FIT_FROM_FRACTION of the longest run's last epoch, at least 1."""
    return max(1, round(FIT_FROM_FRACTION * max(int(r.metrics.index.max()) for r in records)))


#: "Tens of times their initial value": the smallest growth final / epoch 0 over the seeds.
GROWTH = Threshold(">=", 10.0)
#: "Roughly as a power law": R^2 of the log-log fit from the fit start, the smallest over seeds.
POWER_LAW_R2 = Threshold(">=", 0.9)
GROWING = (("C_lower", "lipschitz/lower"), ("C_upper", "lipschitz/upper"))


def power_law_r2(record, metric: str, from_epoch: int) -> float:
    """R^2 of log(metric) against log(epoch) over the epochs >= from_epoch where it was logged."""
    if metric not in record.metrics.columns:
        return float("nan")
    series = pd.to_numeric(record.metrics[metric], errors="coerce").dropna()
    series = series[series.index >= from_epoch]
    return loglog_fit(series.index.to_numpy(), series.to_numpy()).r2


def growth_checks(done, from_epoch: int) -> list[Check]:
    """Per bound of GROWING: the smallest growth over seeds, and the smallest power-law R^2 over seeds; each
    compares epochs (seeds = the runs)."""
    seeds, checks = len(done), []
    for name, metric in GROWING:
        growth = [growth_since_init(r, metric) for r in done]
        r2 = [power_law_r2(r, metric, from_epoch) for r in done]
        checks.append(
            Check(
                f"{name} grows tens of times",
                f"smallest over seeds of {name} final / epoch 0",
                min(growth) if growth and not any(map(math.isnan, growth)) else math.nan,
                GROWTH,
                seeds=seeds,
            )
        )
        checks.append(
            Check(
                f"{name} follows a power law",
                f"smallest over seeds of the log-log R^2 against the epoch from epoch {from_epoch}",
                min(r2) if r2 and not any(map(math.isnan, r2)) else math.nan,
                POWER_LAW_R2,
                seeds=seeds,
            )
        )
    return checks


def analyse(records, out: Path) -> Analysis:
    """Growth final/initial of each bound and its log-log slope against the epoch from FIT_FROM_FRACTION of the
    run on (mean over seeds, with the spread min..max), beside the study's 0.6 / 0.46 / 0.44 (upper / lower /
    avg); checks: C_lower and C_upper grow tens of times and follow a power law, in every seed."""
    done = [r for r in records if r.completed and len(r.metrics)]
    result = Analysis()
    if not done:
        return result
    last = max(int(r.metrics.index.max()) for r in done)
    from_epoch = fit_from_epoch(done)
    slopes = power_law_table(done, ["seed_everything"], from_epoch, BOUNDS)
    try:
        result.figures.append(
            figures.plot_bounds_vs_epoch(done, "model.width", None, slopes, from_epoch, out / "bounds_vs_epoch.png")
        )
    except figures.SkipFigure as skipped:
        result.lines.append(f"figure skipped: {skipped}")
    paper = {"lipschitz/upper": 0.6, "lipschitz/lower": 0.46, "lipschitz/avg": 0.44}
    rows = []
    for metric in BOUNDS:
        growth = [growth_since_init(r, metric) for r in done]
        fitted = slopes[slopes["metric"] == metric]["exponent"] if not slopes.empty else pd.Series(dtype=float)
        g_mean, g_min, g_max = spread(growth)
        s_mean, s_min, s_max = spread(list(fitted))
        rows.append(
            {
                "bound": metric,
                "final / epoch 0 (mean)": g_mean,
                "min..max": f"{fmt(g_min)}..{fmt(g_max)}",
                f"log-log slope from epoch {from_epoch} (mean)": s_mean,
                "slope min..max": f"{fmt(s_min)}..{fmt(s_max)}",
                "study's slope": paper[metric],
            }
        )
    result.lines += [f"{len(done)} run(s), {last} epochs.", "", *markdown_table(pd.DataFrame(rows))]
    result.checks += growth_checks(done, from_epoch)
    return result


register(
    Finding(
        name="evolution",
        number="1",
        section="Finding 1; 'Evolution' (main figure 2)",
        claim="Both bounds grow during training to tens of times their initial value, roughly as a power law in "
        "the epoch after a warm-up.",
        paper={"slopes upper / lower / avg": "0.6 / 0.46 / 0.44 (from epoch 2,500)", "growth": "tens of times"},
        config="fcn_mnist1d",
        parameters=PARAMETERS,
        scales=SCALES,
        cost={
            "quick": "~15 s (1 run)",
            "cpu": "~10 min (3 runs, 5,000 epochs, 2 workers; measured)",
            "full": "~4 runs x hours (GPU/CPU)",
        },
        analyse=analyse,
        setting="FCN 256 on MNIST-1D, paper protocol (lr 0.005, warm-up), 5,000 epochs",
        compares=True,
        recorded=Recorded("holds", seeds=3, minutes=10, date="2026-12-06", shared=True),
    )
)
