"""The sandwich at the study's scale: C_lower <= LipSDP <= ECLipsE-Fast <= product bound over training, FCN 256.

The runs: the study's paper-protocol config (configs/fcn_mnist1d.yaml: MNIST-1D, no bias, ReLU after every layer
including the output, SGD lr 0.01 with the Warmup20000Step25 schedule, batch 512, gradient clipping at 50) with two
hidden layers of 256 (FCN 40-256-256-10, the net of the first-order LipSDP solver's targets, issue 24), 3 seeds.
Every measurement logs, all global and in the Euclidean norm on the 40-dimensional input and the 10 outputs:

    C_lower       lipschitz/lower          max over the 4,000 training points of ||J(x)||_2: a lower bound
                                           (the exact Jacobian norm at each point; errs low)
    LipSDP        lipschitz/upper_sdp      LipSDP-Neuron by the first-order solver (lipsdp_first_order,
                                           warm-started, 10 s limit): certified in float64, errs high
    ECLipsE-Fast  lipschitz/upper_eclipse  closed form: a certified upper bound
    product       lipschitz/upper          product of the layers' spectral norms, certified (upper.certified)

so Lip(f) lies in [C_lower, LipSDP] at every measurement. The exact constant is out of reach (522 hidden
neurons). The bounds read the network in the MLP normal form of lipschitz_dd.bounds.mlp_from_module: the output
ReLU is a third hidden layer of 10 neurons followed by the identity (40-256-256-10-10), so LipSDP and ECLipsE-Fast
constrain it as a ReLU (slopes in [0, 1]); the product bound counts it as 1-Lipschitz and C_lower differentiates
through it (an output that is negative at x contributes a zero row of J(x)).

Checks (each compares epochs, so each needs 3 seeds): the order holds at every measured epoch of every seed
(three checks, one per adjacent pair, within ORDER_TOL relative: logged values are float32 after epoch 0), enough
epochs were measured with all four bounds (MIN_EPOCHS), and at the end LipSDP is at least 10 % below ECLipsE-Fast
and at most half the product bound (largest ratio over seeds).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lipschitz_dd.metric_names import LOWER, SECONDS, UPPER, UPPER_ECLIPSE, UPPER_SDP  # noqa: E402
from lipschitz_dd.reproduce.analysis import fmt, markdown_table, save_figure  # noqa: E402
from lipschitz_dd.reproduce.registry import Analysis, Finding, Recorded, register  # noqa: E402
from lipschitz_dd.reproduce.verdict import Check, Threshold  # noqa: E402

SEED = "seed_everything"
#: The four bounds from the bottom of the sandwich to the top: (label, metric, colour).
CHAIN = (
    ("C_lower", LOWER, "tab:blue"),
    ("LipSDP", UPPER_SDP, "tab:green"),
    ("ECLipsE-Fast", UPPER_ECLIPSE, "tab:orange"),
    ("product", UPPER, "tab:red"),
)
LABELS = [label for label, _, _ in CHAIN]
#: Relative tolerance of the order: each bound <= the next x (1 + ORDER_TOL); the metrics.csv values after epoch 0
#: are float32 (relative rounding 6e-8), the certificate's margin is ~1e-9.
ORDER_TOL = 1e-6
#: "Holds at every measured epoch of every seed": largest over seeds and epochs of lower / upper - 1.
ORDER = Threshold("<=", ORDER_TOL)
#: "Over training": each seed has at least this many epochs measured with all four bounds.
MIN_EPOCHS = Threshold(">=", 5)
#: "LipSDP is tighter than ECLipsE-Fast": largest over seeds of LipSDP / ECLipsE-Fast at the end (10 % tighter).
TIGHTER_THAN_ECLIPSE = Threshold("<=", 0.9)
#: "LipSDP is much tighter than the product bound": largest over seeds of LipSDP / product at the end (2x).
TIGHTER_THAN_PRODUCT = Threshold("<=", 0.5)

#: The study's paper-protocol config with two hidden layers of 256; every bound at every measurement.
PARAMETERS = {
    "model.width": 256,
    "model.depth": 2,
    "lipschitz.upper.certified": True,
    "lipschitz.mlp_bounds.upper_eclipse": True,
}
SCALES = {
    "quick": {
        "model.width": 16,
        "trainer.max_epochs": 3,
        "seed_everything": 0,
        "data.num_samples": 1000,
        "model.lr_schedule": "constant",  # a first look: the warm-up alone lasts 2,500 epochs
        "lipschitz.every_n_epochs": 1,
        "lipschitz.mlp_bounds.sdp_every": 1,
        "lipschitz.mlp_bounds.sdp_time_limit": 2.0,
    },
    # 2,000 epochs (16,000 updates, inside the study's 20,000-update warm-up); measured at epochs 0..5 and every
    # 100th, LipSDP at every measurement (26 per seed)
    "cpu": {
        "trainer.max_epochs": 2000,
        "seed_everything": [0, 1, 2],
        "lipschitz.dense_epochs": 5,
        "lipschitz.every_n_epochs": 100,
        "lipschitz.mlp_bounds.sdp_every": 1,
    },
    # the study's settings: up to 20,000 epochs, stop at full-batch gradient norm 0.01 (after epoch 1,000); bounds
    # every 10 epochs, LipSDP at every 10th measurement (every 100 epochs) and the last
    "full": {
        "seed_everything": [0, 1, 2],
        "lipschitz.dense_epochs": 10,
        "lipschitz.every_n_epochs": 10,
        "lipschitz.mlp_bounds.sdp_every": 10,
    },
}


def sandwich_rows(records) -> pd.DataFrame:
    """One row per (run, epoch) where all four bounds were logged: seed, epoch, the four bounds (columns LABELS),
    the measurement's seconds (lipschitz/seconds: all bounds, LipSDP the bulk) and the run's index."""
    rows = []
    for index, record in enumerate(records):
        frame = record.metrics
        if any(metric not in frame.columns for _, metric, _ in CHAIN):
            continue
        values = frame[[metric for _, metric, _ in CHAIN]].apply(pd.to_numeric, errors="coerce").dropna()
        seconds = pd.to_numeric(frame[SECONDS], errors="coerce") if SECONDS in frame.columns else None
        for epoch, row in values.iterrows():
            rows.append(
                {
                    "run": index,
                    "seed": record.config.get(SEED, 0),
                    "epoch": int(epoch),
                    **{label: float(row[metric]) for label, metric, _ in CHAIN},
                    "seconds": float(seconds.loc[epoch]) if seconds is not None else math.nan,
                }
            )
    return pd.DataFrame(rows, columns=["run", "seed", "epoch", *LABELS, "seconds"])


def end_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Per run: its last epoch with all four bounds, the bounds and the ratios LipSDP / product, LipSDP /
    ECLipsE-Fast and C_lower / LipSDP (the width of the interval that holds the exact constant)."""
    if rows.empty:
        return pd.DataFrame()
    ends = rows.sort_values("epoch").groupby("run", sort=True).tail(1).sort_values("seed")
    out = ends[["seed", "epoch", *LABELS]].copy()
    out["LipSDP / product"] = ends["LipSDP"] / ends["product"]
    out["LipSDP / ECLipsE"] = ends["LipSDP"] / ends["ECLipsE-Fast"]
    out["C_lower / LipSDP"] = ends["C_lower"] / ends["LipSDP"]
    return out.reset_index(drop=True)


def _largest(values) -> float:
    values = list(values)
    return float(max(values)) if values and not any(map(math.isnan, values)) else math.nan


def checks(rows: pd.DataFrame) -> list[Check]:
    """The order, pair by pair (largest over seeds and epochs of lower / upper - 1, <= ORDER_TOL); epochs measured
    per seed (smallest over seeds); LipSDP / ECLipsE-Fast and LipSDP / product at the end (largest over seeds)."""
    seeds = int(rows["seed"].nunique()) if len(rows) else 0
    out = []
    for (low, _, _), (high, _, _) in zip(CHAIN, CHAIN[1:], strict=False):
        excess = (rows[low] / rows[high] - 1.0) if len(rows) else []
        out.append(
            Check(
                f"{low} <= {high}",
                f"largest over seeds and measured epochs of {low} / {high} - 1",
                _largest(excess),
                ORDER,
                seeds=seeds,
            )
        )
    counts = rows.groupby("run")["epoch"].nunique() if len(rows) else []
    out.append(
        Check(
            "measured over training",
            "smallest over seeds of the epochs with all four bounds",
            float(min(counts)) if len(counts) else math.nan,
            MIN_EPOCHS,
            seeds=seeds,
        )
    )
    ends = end_rows(rows)
    for name, column, threshold in (
        ("LipSDP tighter than ECLipsE-Fast", "LipSDP / ECLipsE", TIGHTER_THAN_ECLIPSE),
        ("LipSDP tighter than the product", "LipSDP / product", TIGHTER_THAN_PRODUCT),
    ):
        out.append(
            Check(
                name,
                f"largest over seeds of {column} at the last measured epoch",
                _largest(ends[column]) if len(ends) else math.nan,
                threshold,
                seeds=seeds,
            )
        )
    return out


def epoch_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per measured epoch: the mean over seeds of each bound and of the three ratios, with the seeds counted."""
    if rows.empty:
        return pd.DataFrame()
    frame = rows.assign(
        **{
            "LipSDP / product": rows["LipSDP"] / rows["product"],
            "LipSDP / ECLipsE": rows["LipSDP"] / rows["ECLipsE-Fast"],
            "C_lower / LipSDP": rows["C_lower"] / rows["LipSDP"],
        }
    )
    columns = [*LABELS, "LipSDP / product", "LipSDP / ECLipsE", "C_lower / LipSDP"]
    table = frame.groupby("epoch")[columns].mean()
    table.insert(0, "seeds", frame.groupby("epoch")["seed"].nunique())
    return table.reset_index()


def timing_lines(records, rows: pd.DataFrame) -> list[str]:
    """Measurement seconds (all four bounds at one epoch; LipSDP is the bulk): median and largest, and their sum
    against each run's wall time."""
    if rows.empty or rows["seconds"].isna().all():
        return []
    total = sum(float(r.seconds or 0.0) for r in records)
    spent = float(rows["seconds"].sum())
    share = f", {100 * spent / total:.0f} % of the runs' {total:.0f} s" if total > 0 else ""
    return [
        f"Measurement time with LipSDP (all four bounds; `lipschitz/seconds`): median {rows['seconds'].median():.2f} s, "
        f"largest {rows['seconds'].max():.2f} s over {len(rows)} measurements; in all {spent:.0f} s{share}.",
        "",
    ]


def plot(rows: pd.DataFrame, path: Path) -> Path:
    """Left: the four bounds against the epoch (log y), the geometric mean over seeds as a line and the seeds'
    min..max as a band. Right: LipSDP / product, LipSDP / ECLipsE-Fast and C_lower / LipSDP the same way (linear
    y; 1 = touching). Linear epoch axis: the measurements after the first few are evenly spaced."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))

    def band(ax, values: pd.Series, label: str, colour: str) -> None:
        grouped = np.log(values).groupby(rows["epoch"])
        epochs = grouped.mean().index.to_numpy(dtype=float)
        ax.plot(epochs, np.exp(grouped.mean()), "-", marker=".", markersize=4, color=colour, label=label)
        ax.fill_between(epochs, np.exp(grouped.min()), np.exp(grouped.max()), color=colour, alpha=0.25)

    for label, _, colour in CHAIN:
        band(left, rows[label], label, colour)
    band(right, rows["LipSDP"] / rows["product"], "LipSDP / product", "tab:red")
    band(right, rows["LipSDP"] / rows["ECLipsE-Fast"], "LipSDP / ECLipsE-Fast", "tab:orange")
    band(right, rows["C_lower"] / rows["LipSDP"], "C_lower / LipSDP", "tab:blue")
    right.axhline(1.0, color="black", linewidth=0.8)
    seeds = rows["seed"].nunique()
    left.set_yscale("log")
    right.set_ylim(0.0, 1.05)
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    left.set_ylabel("Lipschitz bound (L2)")
    left.set_title(f"FCN 40-256-256-10, MNIST-1D: the sandwich ({seeds} seed{'s' if seeds != 1 else ''})")
    right.set_ylabel("ratio")
    right.set_title("ratios (line: geometric mean; band: seeds' min..max)")
    figure.tight_layout()
    return save_figure(figure, path)


def analyse(records, out: Path) -> Analysis:
    """The four bounds at every epoch where all were logged, per seed; the ratios at the end; the checks."""
    done = [r for r in records if r.completed and len(r.metrics)]
    result = Analysis()
    rows = sandwich_rows(done)
    result.checks += checks(rows)
    if rows.empty:
        result.lines.append("(no completed run logged all four bounds)")
        return result
    result.figures.append(plot(rows, out / "sandwich_fcn256.png"))
    ends = end_rows(rows)
    result.lines += [
        f"{len(ends)} run(s) (seeds {', '.join(str(s) for s in sorted(ends['seed']))}); epochs with all four bounds: "
        f"{', '.join(str(e) for e in sorted(rows['epoch'].unique()))}.",
        "",
        "At the last measured epoch, per seed:",
        "",
        *markdown_table(ends),
        "",
        "Over training (mean over seeds):",
        "",
        *markdown_table(epoch_table(rows)),
        "",
        *timing_lines(done, rows),
    ]
    ratio = ends["LipSDP / product"]
    result.note = (
        f"At the end LipSDP is {fmt(1 / ratio.max())}..{fmt(1 / ratio.min())}x below the product bound and "
        f"{fmt(100 * (1 - ends['LipSDP / ECLipsE'].max()))}..{fmt(100 * (1 - ends['LipSDP / ECLipsE'].min()))} % "
        "below ECLipsE-Fast."
    )
    return result


SANDWICH_FCN256 = register(
    Finding(
        name="sandwich_fcn256",
        number="6.5.1",
        section="How tight is the sandwich at the study's scale (FCN 256 on MNIST-1D, no exact constant)",
        claim="For the study's FCN with two hidden layers of 256 on MNIST-1D, over training: C_lower <= LipSDP <= "
        "ECLipsE-Fast <= product bound at every measured epoch, LipSDP at least 10 % below ECLipsE-Fast and at most "
        "half the product bound at the end.",
        paper={"C_upper": "the study only had the product bound (orders of magnitude loose for deep nets)"},
        config="fcn_mnist1d",
        parameters=PARAMETERS,
        scales=SCALES,
        cost={
            "quick": "~20 s (1 run, width 16, 3 epochs)",
            "cpu": "~30 min with 2 workers (3 seeds x 2,000 epochs, 26 LipSDP solves of up to 10 s each)",
            "full": "~3 seeds x hours (up to 20,000 epochs, ~200 LipSDP solves each)",
        },
        analyse=analyse,
        setting="FCN 40-256-256-10 on MNIST-1D, paper protocol, 2,000 epochs, LipSDP at 26 epochs",
        compares=True,
        recorded=Recorded("holds in part", seeds=3, minutes=27.3, date="2026-12-06", shared=True),
    )
)
