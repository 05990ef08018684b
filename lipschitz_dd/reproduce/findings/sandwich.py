"""How tight is the sandwich: C_lower <= exact constant <= LipSDP <= ECLipsE-Fast <= C_upper during training.

Two small ReLU nets whose exact Lipschitz constant is computable (configs/sandwich_toy2d.yaml: the 2-D toy at
width 10; configs/sandwich_fcn_mnist1d.yaml: FCN 40-16-10 on MNIST-1D), every bound logged by the Lipschitz
callback at every measurement (the configs' `lipschitz.mlp_bounds` options; sweeps/sandwich.yaml). The analysis
is lipschitz_dd.report.sandwich.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lipschitz_dd.report.sandwich import exact_coverage, plot_sandwich, ratio_table, run_label
from lipschitz_dd.reproduce.analysis import markdown_table
from lipschitz_dd.reproduce.registry import Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check, Threshold

#: "Close to the true constant": C_lower / exact at the end of every run (smallest over runs).
LOWER_CLOSE = Threshold(">=", 0.8)
#: "The product bound is loose": C_upper / exact at the end of every run (smallest over runs).
UPPER_LOOSE = Threshold(">=", 1.1)
#: "Much closer to C_lower": (C_upper / exact) x (C_lower / exact) > 1, i.e. the exact constant is closer to
#: C_lower than to C_upper on a log scale (smallest over runs).
CLOSER_TO_LOWER = Threshold(">", 1.0)


def end_ratios(records) -> pd.DataFrame:
    """Per run with an exact constant: C_lower / exact and C_upper / exact at the last exact epoch."""
    rows = []
    for record in records:
        table = ratio_table(record)
        if table.empty:
            continue
        by_bound = table.set_index("bound")[table.columns[2]]
        rows.append(
            {
                "run": run_label(record),
                "seed": record.config.get("seed_everything", 0),
                "C_lower / exact": float(by_bound.get("lipschitz/lower", float("nan"))),
                "C_upper / exact": float(by_bound.get("lipschitz/upper", float("nan"))),
            }
        )
    return pd.DataFrame(rows)


def checks(ends: pd.DataFrame) -> list[Check]:
    seeds = int(ends["seed"].nunique()) if len(ends) else 0

    def smallest(values: pd.Series) -> float:
        return float(values.min()) if len(values) and values.notna().all() else float("nan")

    return [
        Check(
            "C_lower close to exact",
            "smallest over runs of C_lower / exact at the end",
            smallest(ends.get("C_lower / exact", pd.Series(dtype=float))),
            LOWER_CLOSE,
            seeds=seeds,
        ),
        Check(
            "C_upper loose",
            "smallest over runs of C_upper / exact at the end",
            smallest(ends.get("C_upper / exact", pd.Series(dtype=float))),
            UPPER_LOOSE,
            seeds=seeds,
        ),
        Check(
            "exact much closer to C_lower",
            "smallest over runs of (C_upper / exact) x (C_lower / exact)",
            smallest(ends["C_upper / exact"] * ends["C_lower / exact"]) if len(ends) else float("nan"),
            CLOSER_TO_LOWER,
            seeds=seeds,
        ),
    ]


def analyse(records, out: Path) -> Analysis:
    """Per run: each bound's ratio to the exact constant (first and last exact epoch, min and max over training);
    checks at the end of every run: C_lower close to exact, C_upper loose, exact closer to C_lower."""
    done = [r for r in records if r.completed and len(r.metrics)]
    result = Analysis()
    if not done:
        return result
    result.figures.append(plot_sandwich(done, out / "sandwich.png"))
    for record in done:
        table = ratio_table(record)
        exact, tried = exact_coverage(record)
        result.lines += [f"### {run_label(record)}", "", f"exact constant found at {exact} of {tried} measurements", ""]
        result.lines += (
            [*markdown_table(table), ""] if not table.empty else ["(no measurement with the exact constant)", ""]
        )
    ends = end_ratios(done)
    if len(ends):
        result.lines += ["At the end of training:", "", *markdown_table(ends)]
    result.checks += checks(ends)
    return result


SANDWICH = register(
    Finding(
        name="sandwich",
        number="6.5",
        section="How tight is the sandwich (exact constant vs bounds, small ReLU nets)",
        claim="For small ReLU MLPs the exact Lipschitz constant lies between C_lower and the certified upper bounds, "
        "much closer to C_lower: C_lower is a faithful proxy, the product bound C_upper is loose.",
        paper={
            "C_lower": "close to the true constant (the 2-D toy)",
            "C_upper": "orders of magnitude loose (deep nets)",
        },
        sweep="sandwich",
        scales={
            "quick": {"trainer.max_epochs": 3, "seed_everything": 0},
            "cpu": {"seed_everything": [0, 1, 2]},
            "full": {},
        },
        cost={
            "quick": "~1 min (2 runs)",
            "cpu": "~1 min (6 runs: 2 nets x 3 seeds, 2 workers; measured 1.1 min idle)",
            "full": "~20-30 min (10 runs: 5 seeds)",
        },
        analyse=analyse,
        setting="2-D toy at width 10 and FCN 40-16-10 on MNIST-1D, exact constant at every measurement",
        compares=True,
        recorded=Recorded("holds in part", seeds=3, minutes=1.1, date="2026-12-06"),
    )
)
