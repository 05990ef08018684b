"""Finding 3: the variance over seeds of the test loss is bounded by a Lipschitz term that drives the peak."""

from __future__ import annotations

from pathlib import Path

from lipschitz_dd.report import figures
from lipschitz_dd.report.bias_variance import bias_variance_table
from lipschitz_dd.report.ensemble import with_ensemble_quantities
from lipschitz_dd.reproduce.analysis import markdown_table
from lipschitz_dd.reproduce.registry import Analysis, Finding, register

WIDTH, SEED = "model.width", "seed_everything"


def analyse(records, out: Path) -> Analysis:
    """The report's bias-variance table (seed-ensemble C_bar from the runs' snapshot.npz) and figure; verdict:
    the bound is above the measured variance at every width, and the widths of their peaks."""
    result = Analysis()
    axes = [WIDTH, "data.label_noise", SEED]
    filled, notes = with_ensemble_quantities(records, axes, SEED)
    table, more = bias_variance_table(filled, axes, SEED)
    result.lines += [f"note: {n}" for n in notes + more]
    if table.empty:
        return result
    try:
        result.figures.append(figures.plot_bias_variance(table, WIDTH, "data.label_noise", out / "bias_variance.png"))
    except figures.SkipFigure as skipped:
        result.lines.append(f"figure skipped: {skipped}")
    result.lines += markdown_table(table)
    variance = "test loss variance over seeds"
    bound_columns = [c for c in table.columns if "bound" in c.lower() and table[c].notna().any()]
    if variance in table.columns and bound_columns:
        holds = (table[bound_columns[0]] >= table[variance]).all()
        result.verdict = (
            f"holds: {bound_columns[0]} is above the variance over seeds at every width"
            if holds
            else f"does not hold here: {bound_columns[0]} falls below the variance at some width"
        )
    return result


register(
    Finding(
        name="bias_variance",
        number="3",
        section="Finding 3 (bias-variance view)",
        claim="Var over seeds of the test loss <= 3(Cbar^2 + mean C_seed^2) E||x||^2 + 3 Var f(0); the variance "
        "term peaks with the double descent.",
        paper={"bound": "3(Cbar^2 + mean C_s^2) E||x||^2 + 3 Var f(0)"},
        sweep="fcn_mnist1d_dd",
        scales={
            "quick": {
                WIDTH: 16,
                "data.label_noise": 0.15,
                SEED: [0, 1],
                "trainer.max_epochs": 3,
                "data.num_samples": 1000,
            },
            "cpu": {"data.label_noise": 0.15, SEED: [0, 1, 2, 3]},
            "full": {"sweep": "fcn_mnist1d_ce_width_noise"},
        },
        cost={
            "quick": "~30 s (2 runs)",
            "cpu": "~30 min (48 runs x 300 epochs, 2 workers; measured 29 min, shared)",
            "full": "GPU days",
        },
        analyse=analyse,
    )
)
