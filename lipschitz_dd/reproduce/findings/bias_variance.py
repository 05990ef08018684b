"""Finding 3: the variance of the function over seeds is bounded by a Lipschitz term, and the variance drives the
double descent while the bias stays flat (the study's decomposition is for MSE).

The bound (report/bias_variance.py) is about the function variance V = E_x mean_s ||f_s(x) - f_bar(x)||^2 of
the networks f_s of S seeds, not about the variance of their test losses: the check compares the bound with V
(from the seeds' snapshot.npz: logits at shared test points), and the test-loss variance is shown on its own
axis, for reference only.

For the squared error to one-hot targets y (summed over the K outputs: the project's "mse" loss), averaged over
the seeds and the snapshot's test points, the split is exact:

    mean_s E_x ||f_s(x) - y||^2  =  E_x ||f_bar(x) - y||^2  +  E_x mean_s ||f_s(x) - f_bar(x)||^2
       (expected test error)          (bias^2)                    (variance V)

(the cross term vanishes because mean_s (f_s - f_bar) = 0). `bias_variance_mse` runs the MSE setting and checks
the study's reading: from the width of the error peak to the largest width, the fall of the error is mostly
the fall of V, and the bias^2 moves less than V over the widths.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lipschitz_dd.report.bias_variance import FUNCTION_VARIANCE, PAPER_BOUND, TEST_LOSS_VARIANCE, bias_variance_table
from lipschitz_dd.report.ensemble import with_ensemble_quantities
from lipschitz_dd.reproduce.analysis import completed_table, markdown_table, save_figure
from lipschitz_dd.reproduce.findings.double_descent import PEAK_STEPS
from lipschitz_dd.reproduce.measures import fewest_seeds, peak_by_majority
from lipschitz_dd.reproduce.registry import Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check, Threshold
from lipschitz_dd.run_folder import SNAPSHOT_FILE

WIDTH, NOISE, SEED, LOSS = "model.width", "data.label_noise", "seed_everything", "model.loss"

#: The bound (paper: C_bar and the seeds' C_lower, an estimate that may err low) at or above V at every width.
BOUND_ABOVE = Threshold(">=", 1.0)
#: V peaks interior and within PEAK_STEPS grid steps of the width where most seeds' test loss peaks.
PEAKS_TOGETHER = Threshold(">=", 1.0)
#: MSE: share of the expected error's fall (from its peak width to the largest width) that V's fall carries.
VARIANCE_SHARE = Threshold(">=", 0.5)
#: MSE: range of bias^2 over widths / range of V over widths ("the bias stays flat").
BIAS_FLAT = Threshold("<=", 0.5)


def bias_variance_split(outputs: np.ndarray, targets: np.ndarray) -> tuple[float, float, float]:
    """(bias^2, variance, expected error) of the squared error to one-hot targets, summed over outputs and
    averaged over points and seeds (module docstring). outputs: [S, m, K] logits of S seeds at m points;
    targets: [m] integer labels. Exact: expected = bias^2 + variance up to rounding."""
    outputs = np.asarray(outputs, dtype=float)
    one_hot = np.eye(outputs.shape[-1])[np.asarray(targets, dtype=int)]
    mean = outputs.mean(axis=0)
    bias2 = float(((mean - one_hot) ** 2).sum(-1).mean())
    variance = float(((outputs - mean) ** 2).sum(-1).mean())
    expected = float(((outputs - one_hot) ** 2).sum(-1).mean())
    return bias2, variance, expected


def mse_split_table(records) -> pd.DataFrame:
    """Per width (MSE runs with a snapshot, at least two seeds): bias^2, variance V and the expected error at the
    snapshot's test points (labels rebuilt from the runs' config.yaml by their trusted data class)."""
    from lipschitz_dd.reproduce.checkpoints import load_data

    groups: dict[float, list] = {}
    for record in records:
        if record.completed and record.config.get(LOSS) == "mse" and (record.path / SNAPSHOT_FILE).is_file():
            groups.setdefault(float(record.config.get(WIDTH, math.nan)), []).append(record)
    rows = []
    for width, runs in sorted(groups.items()):
        if len(runs) < 2:
            continue
        outputs, indices = [], None
        for record in runs:
            with np.load(record.path / SNAPSHOT_FILE) as snapshot:
                outputs.append(snapshot["test_outputs"])
                indices = snapshot["test_indices"]
        _, labels = load_data(runs[0], "test")
        bias2, variance, expected = bias_variance_split(np.stack(outputs), labels.numpy()[indices])
        rows.append({"width": width, "seeds": len(runs), "bias^2": bias2, "variance": variance, "expected": expected})
    return pd.DataFrame(rows)


def bound_checks(table: pd.DataFrame, runs: pd.DataFrame) -> list[Check]:
    """The bound against V at every width, and V's peak against the test-loss peak (located by most seeds in
    `runs`, one row per run with width, seed and test/loss)."""
    seeds = fewest_seeds(runs, [WIDTH]) if not runs.empty else 0
    ratio = math.nan
    if {PAPER_BOUND, FUNCTION_VARIANCE} <= set(table.columns) and table[FUNCTION_VARIANCE].notna().all():
        ratio = float((table[PAPER_BOUND] / table[FUNCTION_VARIANCE]).min())
    together = math.nan
    loss_peak, agree = peak_by_majority(runs, WIDTH, "test/loss") if not runs.empty else (None, math.nan)
    if FUNCTION_VARIANCE in table.columns and table[FUNCTION_VARIANCE].notna().any() and agree > 0.5:
        widths = sorted(table[WIDTH])
        peak = table.loc[table[FUNCTION_VARIANCE].idxmax(), WIDTH]
        if loss_peak in widths:
            i, j = widths.index(peak), widths.index(loss_peak)
            together = float(abs(i - j) <= PEAK_STEPS and 0 < i < len(widths) - 1)
    return [
        Check(
            "bound above the function variance",
            "smallest over widths of bound (paper) / function variance V over seeds",
            ratio,
            BOUND_ABOVE,
            seeds=seeds,
        ),
        Check(
            "V peaks with the test loss",
            f"V's peak width interior and within {PEAK_STEPS} grid step of most seeds' test-loss peak (1 = yes)",
            together,
            PEAKS_TOGETHER,
            seeds=seeds,
        ),
    ]


def split_checks(split: pd.DataFrame) -> list[Check]:
    """MSE: the share of the expected error's fall after its peak carried by V, and how flat bias^2 stays."""
    share = flat = math.nan
    seeds = int(split["seeds"].min()) if not split.empty else None
    if len(split) >= 3:
        split = split.sort_values("width").reset_index(drop=True)
        peak = int(split["expected"].idxmax())
        fall = split["expected"].iloc[peak] - split["expected"].iloc[-1]
        if peak < len(split) - 1 and fall > 0:
            share = float((split["variance"].iloc[peak] - split["variance"].iloc[-1]) / fall)
        elif peak == len(split) - 1:
            share = 0.0  # no fall after the peak: nothing for the variance to carry
        v_range = split["variance"].max() - split["variance"].min()
        if v_range > 0:
            flat = float((split["bias^2"].max() - split["bias^2"].min()) / v_range)
    return [
        Check(
            "the variance carries the second descent",
            "fall of V / fall of the expected error, from the error's peak width to the largest width",
            share,
            VARIANCE_SHARE,
            seeds=seeds,
        ),
        Check("the bias stays flat", "range of bias^2 / range of V over widths", flat, BIAS_FLAT, seeds=seeds),
    ]


def _figure(table: pd.DataFrame, split: pd.DataFrame, path: Path) -> Path:
    """Left: V and the bound (paper) against width; middle: the test-loss variance over seeds (its own axis: a
    different quantity); right (MSE): bias^2, V and the expected error."""
    panels = 3 if not split.empty else 2
    figure = Figure(figsize=(4.4 * panels, 3.8), layout="constrained")
    axes = figure.subplots(1, panels)
    widths = table[WIDTH]
    for column, style in ((FUNCTION_VARIANCE, "o-"), (PAPER_BOUND, "s--")):
        if column in table and table[column].notna().any():
            axes[0].plot(
                widths,
                table[column],
                style,
                label="V (function variance over seeds)" if column == FUNCTION_VARIANCE else "the study's bound on V",
            )
    axes[0].set(xscale="log", yscale="log", xlabel="width", ylabel="squared distance", title="V and its bound")
    axes[0].legend(fontsize="small")
    axes[1].plot(widths, table[TEST_LOSS_VARIANCE], "o-", color="grey")
    axes[1].set(xscale="log", yscale="log", xlabel="width", ylabel="variance", title="test-loss variance (reference)")
    if not split.empty:
        for column, style in (("expected", "ko-"), ("bias^2", "s--"), ("variance", "^-")):
            axes[2].plot(split["width"], split[column], style, label=column.replace("^2", "$^2$"))
        axes[2].set(xscale="log", xlabel="width", ylabel="squared error at test points", title="MSE: bias$^2$ + V")
        axes[2].legend(fontsize="small")
    return save_figure(figure, path)


def analyse(records, out: Path) -> Analysis:
    """The report's bias-variance table (seed-ensemble C_bar and V from the runs' snapshot.npz), the bound against
    V, V's peak against the test-loss peak and, for MSE runs, the bias/variance split."""
    result = Analysis()
    axes = [WIDTH, NOISE, SEED]
    filled, notes = with_ensemble_quantities(records, axes, SEED)
    table, more = bias_variance_table(filled, axes, SEED)
    result.lines += [f"note: {n}" for n in notes + more]
    if table.empty:
        return result
    table = table.sort_values(WIDTH).reset_index(drop=True)
    runs = completed_table(records, [WIDTH, SEED])
    split = mse_split_table(records) if any(r.config.get(LOSS) == "mse" for r in records) else pd.DataFrame()
    result.figures.append(_figure(table, split, out / "bias_variance.png"))
    result.lines += markdown_table(table)
    result.checks += bound_checks(table, runs)
    if not split.empty or any(r.config.get(LOSS) == "mse" for r in records):
        result.lines += ["", "MSE split at the snapshot's test points (expected = bias^2 + variance):", ""]
        result.lines += markdown_table(split) if not split.empty else ["(no MSE run with a snapshot)"]
        result.checks += split_checks(split)
    return result


QUICK = {WIDTH: [8, 16, 32], NOISE: 0.15, SEED: [0, 1], "trainer.max_epochs": 3, "data.num_samples": 1000}
#: bias_variance_mse's sweep and scales (mse_double_descent analyses the same runs: trained once).
MSE_SWEEP = "fcn_mnist1d_dd"
MSE_SCALES = {
    "quick": {**QUICK, LOSS: "mse"},
    "cpu": {LOSS: "mse", NOISE: 0.15, SEED: [0, 1, 2, 3]},
    "full": {"sweep": "fcn_mnist1d_dd", LOSS: "mse", NOISE: [0.0, 0.15], SEED: [0, 1, 2, 3]},
}

register(
    Finding(
        name="bias_variance",
        number="3",
        section="Finding 3 (bias-variance view), cross-entropy",
        claim="The function variance over seeds V <= 3(Cbar^2 + mean C_seed^2) E||x||^2 + 3 Var f(0), and V peaks "
        "with the test loss.",
        paper={"bound": "3(Cbar^2 + mean C_s^2) E||x||^2 + 3 Var f(0)"},
        sweep="fcn_mnist1d_dd",
        scales={
            "quick": {**QUICK, WIDTH: 16},
            "cpu": {NOISE: 0.15, SEED: [0, 1, 2, 3]},
            "full": {"sweep": "fcn_mnist1d_ce_width_noise"},
        },
        cost={
            "quick": "~30 s (2 runs)",
            "cpu": "~16 min (48 runs x 300 epochs, 2 workers; measured 16 min idle, 29 min shared)",
            "full": "GPU days",
        },
        analyse=analyse,
        setting="FCN widths 4..512 on MNIST-1D, noise 0.15, CE, 300 epochs",
        compares=True,
        recorded=Recorded("holds", seeds=4, minutes=16, date="2026-12-06"),
    )
)
register(
    Finding(
        name="bias_variance_mse",
        number="3.1",
        section="Finding 3 (bias-variance view), the study's MSE decomposition",
        claim="With the squared error the variance over seeds drives the double descent while the bias stays flat; "
        "V stays below the Lipschitz bound.",
        paper={"variance": "peaks with the test error", "bias": "flat"},
        sweep=MSE_SWEEP,
        scales=MSE_SCALES,
        cost={
            "quick": "~45 s (6 runs)",
            "cpu": "~18 min (48 runs x 300 epochs, 2 workers; measured 17.6 min, a few test runs beside it)",
            "full": "~1 h",
        },
        analyse=analyse,
        setting="FCN widths 4..512 on MNIST-1D, noise 0.15, MSE, 300 epochs",
        compares=True,
        recorded=Recorded("holds in part", seeds=4, minutes=17.6, date="2026-12-06", shared=True),
    )
)
