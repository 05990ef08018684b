"""Finding 1: the bounds grow during training, far from their initial values, as a power law in the epoch."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lipschitz_dd.report import figures
from lipschitz_dd.report.power_law import power_law_table
from lipschitz_dd.reproduce.analysis import BOUNDS, fmt, growth_since_init, markdown_table
from lipschitz_dd.reproduce.registry import Analysis, Finding, register

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
    "cpu": {"trainer.max_epochs": 5000, "seed_everything": 0, "lipschitz.every_n_epochs": 25},
    "full": {},
}


def fit_from_epoch(records) -> int:
    """The first epoch of the power-law fits: FIT_FROM_FRACTION of the longest run's last epoch, at least 1."""
    return max(1, round(FIT_FROM_FRACTION * max(int(r.metrics.index.max()) for r in records)))


def analyse(records, out: Path) -> Analysis:
    """Growth final/initial of each bound and its log-log slope against the epoch from FIT_FROM_FRACTION of the
    run on (mean over seeds), beside the study's 0.6 / 0.46 / 0.44 (upper / lower / avg)."""
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
    rows, grows = [], []
    for metric in BOUNDS:
        growth = [growth_since_init(r, metric) for r in done]
        fitted = slopes[slopes["metric"] == metric]["exponent"] if not slopes.empty else pd.Series(dtype=float)
        mean_growth = float(pd.Series(growth).mean())
        rows.append(
            {
                "bound": metric,
                "final / epoch 0 (mean over seeds)": mean_growth,
                f"log-log slope from epoch {from_epoch}": float(fitted.mean()) if len(fitted) else float("nan"),
                "study's slope": paper[metric],
            }
        )
        grows.append(mean_growth)
    result.lines += [f"{len(done)} run(s), {last} epochs.", "", *markdown_table(pd.DataFrame(rows))]
    lower_growth = grows[BOUNDS.index("lipschitz/lower")]
    if lower_growth >= 10:
        result.verdict = f"holds: C_lower grew {fmt(lower_growth)}x from initialisation"
    elif lower_growth > 1.5:
        result.verdict = f"holds in part: C_lower grew {fmt(lower_growth)}x (the study: tens of times)"
    else:
        result.verdict = f"does not hold at this scale: C_lower grew only {fmt(lower_growth)}x"
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
            "cpu": "~5 min (1 run, 5,000 epochs; measured 4.6 min)",
            "full": "~4 runs x hours (GPU/CPU)",
        },
        analyse=analyse,
    )
)
