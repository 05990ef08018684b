"""How tight is the sandwich: C_lower <= exact constant <= LipSDP <= ECLipsE-Fast <= C_upper during training.

Two small ReLU nets whose exact Lipschitz constant is computable (configs/sandwich_toy2d.yaml: the 2-D toy at
width 10; configs/sandwich_fcn_mnist1d.yaml: FCN 40-16-10 on MNIST-1D), every bound logged by the Lipschitz
callback at every measurement (the configs' `lipschitz.mlp_bounds` options; sweeps/sandwich.yaml). The analysis
is lipschitz_dd.report.sandwich.
"""

from __future__ import annotations

from pathlib import Path

from lipschitz_dd.report.sandwich import exact_coverage, plot_sandwich, ratio_table, run_label
from lipschitz_dd.reproduce.analysis import fmt, markdown_table
from lipschitz_dd.reproduce.registry import Analysis, Finding, register


def analyse(records, out: Path) -> Analysis:
    """Per run: each bound's ratio to the exact constant (first and last exact epoch, min and max over training);
    the verdict: C_lower within 20 % of the exact constant at the end of every run while C_upper is >= 1.1x."""
    done = [r for r in records if r.completed and len(r.metrics)]
    result = Analysis()
    if not done:
        return result
    result.figures.append(plot_sandwich(done, out / "sandwich.png"))
    lower_end, upper_end = [], []
    for record in done:
        table = ratio_table(record)
        exact, tried = exact_coverage(record)
        result.lines += [f"### {run_label(record)}", "", f"exact constant found at {exact} of {tried} measurements", ""]
        if table.empty:
            result.lines += ["(no measurement with the exact constant)", ""]
            continue
        result.lines += [*markdown_table(table), ""]
        last = table.columns[2]
        by_bound = table.set_index("bound")[last]
        lower_end.append(float(by_bound.get("lipschitz/lower", float("nan"))))
        upper_end.append(float(by_bound.get("lipschitz/upper", float("nan"))))
    if lower_end:
        worst_lower, best_upper = min(lower_end), min(upper_end)
        if worst_lower >= 0.8 and best_upper >= 1.1:
            result.verdict = (
                f"holds: at the end of training C_lower is >= {fmt(worst_lower)} of the exact constant, "
                f"C_upper >= {fmt(best_upper)}x it"
            )
        elif worst_lower >= 0.8:
            result.verdict = (
                f"holds in part: C_lower is >= {fmt(worst_lower)} of the exact constant, but C_upper is tight too"
            )
        else:
            result.verdict = f"does not hold here: C_lower is only {fmt(worst_lower)} of the exact constant"
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
            "cpu": {"seed_everything": 0},
            "full": {},
        },
        cost={
            "quick": "~1 min (2 runs)",
            "cpu": "~4-10 min (2 runs; ~5 min of CPU)",
            "full": "~20-30 min (10 runs: 5 seeds)",
        },
        analyse=analyse,
    )
)
