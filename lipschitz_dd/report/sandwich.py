"""How tight is the sandwich: every logged bound of an MLP run against the epoch, and its ratio to the exact constant.

Reads the per-epoch metrics of runs that logged the MLP bounds of `LipschitzCallback` (lipschitz/exact or the
certified interval lipschitz/exact_lower / _upper, lipschitz/upper_sdp, lipschitz/upper_eclipse) beside the data
bounds (lipschitz/lower = max of ||J(x)||_2 over the training points, lipschitz/avg = their mean) and the product
bound lipschitz/upper. Ratios are to the exact constant at the epochs where the exact search finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from lipschitz_dd.metric_names import AVG, EXACT, EXACT_LOWER, EXACT_UPPER, LOWER, UPPER, UPPER_ECLIPSE, UPPER_SDP
from lipschitz_dd.report.records import LoadedRun  # noqa: E402

EXACT, EXACT_LOWER, EXACT_UPPER = EXACT, EXACT_LOWER, EXACT_UPPER
#: (metric, label, colour), from the bottom of the sandwich to the top.
BOUNDS = (
    (AVG, "avg over train (not a bound)", "tab:gray"),
    (LOWER, "C_lower (max over train)", "tab:blue"),
    (EXACT, "exact", "black"),
    (UPPER_SDP, "LipSDP", "tab:green"),
    (UPPER_ECLIPSE, "ECLipsE-Fast", "tab:orange"),
    (UPPER, "C_upper (product)", "tab:red"),
)
RATIO_METRICS = tuple(m for m, _, _ in BOUNDS if m != EXACT)


def run_label(record: LoadedRun) -> str:
    """'<model class> <widths>' from the run's config, e.g. 'FCN [16]', 'Toy2DFCN 10'."""
    model = str(record.config.get("model.class_path", record.name)).rsplit(".", 1)[-1]
    widths = record.config.get("model.widths") or record.config.get("model.width")
    return f"{model} {widths}" if widths is not None else model


def bound_curves(record: LoadedRun) -> pd.DataFrame:
    """Rows: measured epochs; columns: the metrics of BOUNDS and the exact interval present in the run."""
    frame = record.metrics
    columns = [m for m in (*[b[0] for b in BOUNDS], EXACT_LOWER, EXACT_UPPER) if m in frame.columns]
    return frame[columns].dropna(how="all")


def ratio_table(record: LoadedRun) -> pd.DataFrame:
    """Per bound: its ratio to the exact constant at the first and last epoch where the exact value is known,
    and the smallest and largest ratio over training; plus how many measurements had an exact value."""
    curves = bound_curves(record)
    if EXACT not in curves.columns or curves[EXACT].dropna().empty:
        return pd.DataFrame()
    known = curves[curves[EXACT].notna()]
    rows = []
    for metric in RATIO_METRICS:
        if metric not in known.columns or known[metric].dropna().empty:
            continue
        ratio = (known[metric] / known[EXACT]).dropna()
        rows.append(
            {
                "bound": metric,
                f"/ exact at epoch {int(ratio.index[0])}": float(ratio.iloc[0]),
                f"/ exact at epoch {int(ratio.index[-1])}": float(ratio.iloc[-1]),
                "min over training": float(ratio.min()),
                "max over training": float(ratio.max()),
            }
        )
    return pd.DataFrame(rows)


def plot_sandwich(records: Sequence[LoadedRun], path: Path) -> Path:
    """One row per run: (left) every bound against the epoch on one log axis, the exact constant as a black line
    where the search finished and as a grey band [exact_lower, exact_upper] where the time limit cut it; (right)
    each bound divided by the exact constant (log axis; 1 = exact). Epoch 0 is drawn at 0.5 on the log x axis."""
    runs = [(r, bound_curves(r)) for r in records]
    runs = [(r, c) for r, c in runs if len(c)]
    if not runs:
        raise ValueError("sandwich figure: no run logged lipschitz/* per epoch")
    figure, axes = plt.subplots(len(runs), 2, figsize=(11, 3.6 * len(runs)), squeeze=False, sharex="row")
    for (record, curves), (left, right) in zip(runs, axes, strict=True):
        epochs = pd.Series(curves.index, index=curves.index).clip(lower=0.5)
        if EXACT_LOWER in curves.columns:
            cut = curves[EXACT_LOWER].notna()
            left.fill_between(
                epochs[cut], curves[EXACT_LOWER][cut], curves[EXACT_UPPER][cut], color="0.8", label="exact: interval"
            )
        for metric, label, colour in BOUNDS:
            if metric in curves.columns and curves[metric].notna().any():
                values = curves[metric].dropna()
                style = "-" if metric != AVG else "--"
                front = {"zorder": 5, "linewidth": 2.0} if metric == EXACT else {}  # LipSDP is often on top of it
                left.plot(
                    epochs[values.index], values, style, color=colour, label=label, marker=".", markersize=4, **front
                )
                if metric != EXACT and EXACT in curves.columns:
                    ratio = (curves[metric] / curves[EXACT]).dropna()
                    right.plot(epochs[ratio.index], ratio, style, color=colour, label=label, marker=".", markersize=4)
        right.axhline(1.0, color="black", linewidth=0.8)
        for ax in (left, right):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("epoch (0 drawn at 0.5)")
            ax.grid(True, which="both", alpha=0.3)
        left.set_ylabel("Lipschitz bound")
        left.set_title(f"{run_label(record)}: bounds")
        right.set_ylabel("bound / exact constant")
        right.set_title(f"{run_label(record)}: ratio to the exact constant")
    axes[0, 0].legend(fontsize=7, loc="best")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def exact_coverage(record: LoadedRun) -> tuple[int, int]:
    """(measurements with the exact constant, measurements with the exact search switched on)."""
    curves = bound_curves(record)
    exact = int(curves[EXACT].notna().sum()) if EXACT in curves.columns else 0
    cut = int(curves[EXACT_LOWER].notna().sum()) if EXACT_LOWER in curves.columns else 0
    return exact, exact + cut
