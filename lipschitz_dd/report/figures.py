"""The report's figures (seaborn on matplotlib ``Figure`` objects: no pyplot, no global backend change).

Every function takes tables/records, writes one figure and returns its path, or raises :class:`SkipFigure`
with a one-line reason when the data cannot make that figure (e.g. no label-noise axis for a heat-map).
Figures show completed runs only; curves are means over seeds with a band from the min to the max seed.
Axes and legends use reader-facing names (:func:`label`: "$C_{lower}$", "test loss", "width", ...), not the
metric and config keys. The file formats and resolution come from :func:`output` (default: PNG at 130 dpi):
``with output(("png", "pdf"), dpi=300): plot_...(..., path)`` writes the figure once per format.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from lipschitz_dd.metric_names import (
    AVG,
    DIST_INIT,
    LOWER,
    PARAMS_COUNT,
    RMS,
    TEST_ACC,
    TEST_LOSS,
    TRAIN_ACC,
    TRAIN_LOSS,
    UPPER,
)
from lipschitz_dd.report.bias_variance import GUARANTEED_BOUND, PAPER_BOUND, PLOTTED_COLUMNS, PROXY_BOUND
from lipschitz_dd.report.power_law import BOUND_METRICS
from lipschitz_dd.report.records import COMPLETED_STATUSES, LoadedRun
from lipschitz_dd.report.threshold import Threshold

DPI = 130
FORMATS = ("png", "pdf", "svg")
#: Line styles of the threshold lines, one per threshold in turn (a colour alone does not tell them apart).
THRESHOLD_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
SEED_BAND = ("pi", 100)  # seaborn errorbar: the 0..100 percentile interval = min..max over seeds
_OUTPUT: contextvars.ContextVar[tuple[tuple[str, ...], int]] = contextvars.ContextVar("output", default=(("png",), DPI))

# What a reader sees instead of a metric or config key (label() falls back to the key's last dotted part).
LABELS = {
    LOWER: "$C_{lower}$",
    AVG: "$C_{avg}$",
    RMS: "$C_{rms}$",
    UPPER: "$C_{upper}$",
    TEST_LOSS: "test loss",
    TRAIN_LOSS: "train loss",
    TEST_ACC: "test accuracy",
    TRAIN_ACC: "train accuracy",
    "model.width": "width",
    "model.depth": "depth",
    "model.loss": "loss function",
    "model.optimizer": "optimizer",
    "model.lr": "learning rate",
    "model.logit_temperature": "logit temperature",
    "data.label_noise": "label noise",
    "data.train_subset": "training-set size",
    "seed_everything": "seed",
    "epoch": "epoch",
    PARAMS_COUNT: "parameters",
    DIST_INIT: "$\\|\\theta - \\theta_0\\|_2$",
    "ensemble/function_variance": "function variance over seeds",
}


def label(key: str | None) -> str:
    """The reader-facing name of a metric or config key: LABELS, else the last dotted part with spaces."""
    if key is None:
        return ""
    key = key.replace(".init_args.", ".")
    return LABELS.get(key, key.rsplit(".", 1)[-1].replace("_", " "))


def _readable(text: str) -> str:
    """``text`` with every metric or config key of LABELS in it replaced by its label ("data.label_noise=0.15"
    -> "label noise = 0.15")."""
    for key in sorted(LABELS, key=len, reverse=True):
        text = re.sub(re.escape(key) + r"\s*=\s*", LABELS[key] + " = ", text).replace(key, LABELS[key])
    return text


@contextlib.contextmanager
def output(formats: Sequence[str] = ("png",), dpi: int = DPI) -> Iterator[None]:
    """Within the block, every figure is written once per format in ``formats`` (of FORMATS) at ``dpi``."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"figure formats must be among {', '.join(FORMATS)}; got {', '.join(formats) or 'none'}")
    if dpi <= 0:
        raise ValueError(f"dpi must be positive, got {dpi}")
    token = _OUTPUT.set((tuple(dict.fromkeys(formats)), int(dpi)))
    try:
        yield
    finally:
        _OUTPUT.reset(token)


def output_paths(path: Path) -> list[Path]:
    """The files a figure saved as ``path`` becomes under the current :func:`output` formats."""
    return [Path(path).with_suffix(f".{fmt}") for fmt in _OUTPUT.get()[0]]


# (metric, panel title, log y-axis)
DOUBLE_DESCENT_PANELS = (
    (TEST_LOSS, "Test loss", False),
    (TRAIN_LOSS, "Train loss", False),
    (LOWER, "$C_{lower}$ = max over train of $\\|J(x)\\|_2$", True),
    (AVG, "$C_{avg}$ = mean over train of $\\|J(x)\\|_2$", True),
    (UPPER, "$C_{upper}$ = product of layer norms", True),
)
BOUND_TITLES = {
    LOWER: "$C_{lower}$",
    AVG: "$C_{avg}$",
    UPPER: "$C_{upper}$",
}
HEATMAP_METRICS = (LOWER, TEST_LOSS)


class SkipFigure(Exception):
    """The figure does not apply to these runs; the message says why (one line)."""


def plot_double_descent(
    table: pd.DataFrame, x: str, hue: str | None, thresholds: Sequence[Threshold], path: Path
) -> Path:
    """Final test loss, train loss (top row) and the three Lipschitz quantities (bottom row, log y)
    against ``x`` (log x when numeric), one line per ``hue`` level, band = min..max over seeds, dashed
    vertical lines at ``thresholds``. A metric no run recorded gets an empty panel saying so."""
    data = _completed(table, x)
    if not any(_has_values(data, metric) for metric, _, _ in DOUBLE_DESCENT_PANELS):
        raise SkipFigure("double descent: no completed run has test/train loss or Lipschitz bounds")
    hue_column, levels, colours = _hue_levels(data, hue)
    log_x = _positive_numeric(data[x])
    shown_thresholds = thresholds if log_x else ()
    figure = Figure(figsize=(13, 7.5), layout="constrained")
    with _style():
        grid = figure.subplots(2, 3)
        for ax, (metric, title, log_y) in zip([*grid[0, :2], *grid[1]], DOUBLE_DESCENT_PANELS, strict=False):
            ax.set(title=title, xlabel=label(x), ylabel=label(metric))
            if not _has_values(data, metric):
                ax.text(0.5, 0.5, f"{label(metric)}\nnot recorded", ha="center", va="center", transform=ax.transAxes)
                continue
            sns.lineplot(
                _plottable(data, metric, log_y),
                x=x,
                y=metric,
                hue=hue_column,
                hue_order=levels or None,
                palette=colours or None,
                errorbar=SEED_BAND,
                marker="o",
                ax=ax,
                legend=False,
            )
            _scales(ax, log_x, log_y)
            for i, threshold in enumerate(shown_thresholds):
                style = THRESHOLD_STYLES[i % len(THRESHOLD_STYLES)]
                ax.axvline(threshold.x, color=_colour(colours, threshold.hue_level), linestyle=style, linewidth=1.2)
        handles = [Line2D([], [], color=colours[level], marker="o", label=level) for level in levels]
        handles += [
            Line2D(
                [],
                [],
                color=_colour(colours, t.hue_level),
                linestyle=THRESHOLD_STYLES[i % len(THRESHOLD_STYLES)],
                label=_readable(t.label),
            )
            for i, t in enumerate(shown_thresholds)
        ]
        legend_cell = grid[0, 2]
        legend_cell.set_axis_off()
        if handles:
            legend_cell.legend(handles=handles, loc="center", title=label(hue) if levels else None)
        band = ", band = min..max over seeds" if _has_repeats(data, [x, hue_column]) else ""
        figure.suptitle(f"Final values against {label(x)}" + (", mean over seeds" + band if band else ""))
    return _save(figure, path)


def plot_bounds_vs_epoch(
    records: Sequence[LoadedRun], x: str, hue: str | None, slopes: pd.DataFrame, from_epoch: int, path: Path
) -> Path:
    """Lipschitz lower/avg/upper against the epoch on log-log axes: one row per ``hue`` level, one line
    per ``x`` value (mean over seeds, band min..max), dashed: the power law with the seeds' mean fitted
    exponent and geometric-mean prefactor (from ``slopes``), fitted from ``from_epoch`` (dotted line). The title
    names the dashed and dotted lines only when a fit was drawn."""
    curves, line_title = _bound_curves(records, x, hue)
    metrics = [m for m in BOUND_METRICS if m in curves.columns and curves[m].notna().any()]
    if curves.empty or not metrics:
        raise SkipFigure("bounds vs epoch: no completed run logged lipschitz/* per epoch in metrics.csv")
    levels = sorted(curves["_hue"].unique(), key=_sort_key)
    lines = sorted(curves["_line"].unique(), key=_sort_key)
    colours = dict(zip(lines, sns.color_palette("viridis", len(lines)), strict=False))
    figure = Figure(figsize=(4.6 * len(metrics), 3.8 * len(levels)), layout="constrained")
    fitted_any = False
    with _style():
        grid = figure.subplots(len(levels), len(metrics), squeeze=False)
        for row, level in enumerate(levels):
            for column, metric in enumerate(metrics):
                ax = grid[row, column]
                fitted_here = False
                for line in lines:
                    runs = curves[(curves["_hue"] == level) & (curves["_line"] == line)]
                    fitted_here |= _draw_epoch_curve(ax, runs, metric, slopes, from_epoch, colours[line], f"{line}")
                if fitted_here:
                    ax.axvline(max(from_epoch, 1), color="grey", linestyle=":", linewidth=1)
                fitted_any |= fitted_here
                ax.set(
                    xscale="log",
                    yscale="log",
                    xlabel=label("epoch"),
                    ylabel=label(metric),
                    title=BOUND_TITLES[metric] + ("" if level == "" else f", {label(hue)} = {level}"),
                )
                tidy_log_ticks(ax)
                if ax.get_legend_handles_labels()[0]:
                    line_name = label(line_title) if line_title != "run" else "run"
                    ax.legend(
                        title=f"{line_name}: fitted slope k" if fitted_here else line_name,
                        fontsize="x-small",
                        title_fontsize="x-small",
                        ncol=1 + len(lines) // 9,
                    )
        title = "Lipschitz bounds during training (log-log)"
        if fitted_any:
            title += f"; dashed: power law fitted from epoch {max(from_epoch, 1)} (dotted line)"
        figure.suptitle(title)
    return _save(figure, path)


def plot_heatmap(table: pd.DataFrame, x: str, hue: str | None, path: Path) -> Path:
    """Mean over seeds of C_lower and of the final test loss on the grid ``x`` (columns) by ``hue`` (rows)."""
    data = _completed(table, x)
    if hue is None:
        raise SkipFigure("heat-map: needs a second axis (--hue)")
    if hue not in data.columns or data[hue].nunique() < 2 or data[x].nunique() < 2:
        raise SkipFigure(f"heat-map: needs at least two values of both {x} and {hue} among completed runs")
    metrics = [metric for metric in HEATMAP_METRICS if _has_values(data, metric)]
    if not metrics:
        raise SkipFigure("heat-map: no completed run has lipschitz/lower or test/loss")
    figure = Figure(figsize=(0.75 * data[x].nunique() * len(metrics) + 3.5 * len(metrics), 4.2), layout="constrained")
    with _style():
        for ax, metric in zip(figure.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=False):
            grid = data.pivot_table(index=hue, columns=x, values=metric, aggfunc="mean")
            grid = grid.rename(index=_format, columns=_format)
            positive = bool((grid.to_numpy()[np.isfinite(grid.to_numpy())] > 0).all())
            log_colours = metric.startswith("lipschitz/") and positive
            sns.heatmap(
                grid,
                ax=ax,
                annot=grid.size <= 200,
                fmt=".3g",
                annot_kws={"fontsize": 7},
                cmap="viridis",
                norm=LogNorm() if log_colours else None,
                cbar_kws={"label": label(metric)},
            )
            ax.invert_yaxis()
            over = " (mean over seeds)" if _has_repeats(data, [x, hue]) else " (one seed)"
            ax.set(title=label(metric) + over, xlabel=label(x), ylabel=label(hue))
            if log_colours:
                tidy_log_ticks(ax.collections[0].colorbar.ax)
    return _save(figure, path)


def plot_bias_variance(table: pd.DataFrame, x: str, hue: str | None, path: Path) -> Path:
    """The columns of :func:`bias_variance.bias_variance_table` that could be computed, against ``x``
    (log-log), one panel per ``hue`` level."""
    bound_columns = [c for c in (PAPER_BOUND, PROXY_BOUND, GUARANTEED_BOUND) if _has_values(table, c)]
    if table.empty or x not in table.columns or not bound_columns:
        raise SkipFigure("bias-variance figure: no variance bound is computable from the records (see notes)")
    columns = [c for c in PLOTTED_COLUMNS if _has_values(table, c)]
    table = table.copy()
    hue_column, levels, _ = _hue_levels(table, hue)
    levels = levels or [None]
    figure = Figure(figsize=(5.2 * len(levels) + 2.5, 4.2), layout="constrained")
    styles = dict(zip(columns, ["o-", "s-", "^--", "v:", "d-."], strict=False))
    with _style():
        axes = figure.subplots(1, len(levels), squeeze=False, sharey=True)[0]
        for ax, level in zip(axes, levels, strict=False):
            rows = table if level is None else table[table[hue_column] == level]
            rows = rows.sort_values(x)
            for column in columns:
                values = rows[column].where(rows[column] > 0)
                ax.plot(rows[x], values, styles[column], label=LABELS.get(column, column))
            _scales(ax, _positive_numeric(rows[x]), True)
            ax.set(
                xlabel=label(x), ylabel="variance over seeds", title="" if level is None else f"{label(hue)} = {level}"
            )
            tidy_log_ticks(ax)
        handles, labels = axes[0].get_legend_handles_labels()
        # Below the panels: on the right, a five-entry legend reaches up into the suptitle.
        figure.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
        figure.suptitle(
            "Bias-variance: variance over seeds vs 3($\\bar{C}^2$ + mean $C_s^2$) E$\\|x\\|^2$ + 3 Var f(0)"
        )
    return _save(figure, path)


def _draw_epoch_curve(
    ax, runs: pd.DataFrame, metric: str, slopes: pd.DataFrame, from_epoch: int, colour, label: str
) -> bool:
    """Draws the mean curve, its band and (when ``slopes`` has a fit for these runs) the fitted power law;
    True when a fit was drawn."""
    values = runs[["epoch", metric]].dropna()
    values = values[(values["epoch"] >= 1) & (values[metric] > 0) & np.isfinite(values[metric])]
    if values.empty:
        return False
    by_epoch = values.groupby("epoch")[metric]
    mean = by_epoch.mean()
    ax.fill_between(mean.index, by_epoch.min(), by_epoch.max(), color=colour, alpha=0.2, linewidth=0)
    fits = pd.DataFrame()
    if len(slopes):
        fits = slopes[(slopes["metric"] == metric) & slopes["run"].isin(runs["_run"].unique())]
        fits = fits.dropna(subset=["exponent"])
    if len(fits):
        exponent = fits["exponent"].mean()
        prefactor = math.exp(np.log(fits["prefactor"]).mean())
        label += f": {exponent:.2f}" + (f" ± {fits['exponent'].std():.2f}" if len(fits) > 1 else "")
        fitted = mean.index[mean.index >= max(from_epoch, 1)].to_numpy(float)
        ax.plot(fitted, prefactor * fitted**exponent, color=colour, linestyle="--", linewidth=1)
    ax.plot(mean.index, mean.to_numpy(), color=colour, label=label, linewidth=1.5)
    return bool(len(fits))


def _bound_curves(records: Sequence[LoadedRun], x: str, hue: str | None) -> tuple[pd.DataFrame, str]:
    """Long frame (epoch, bound metrics, _run, _line, _hue) of the completed runs, and the legend title:
    lines are the ``x`` values when every completed run has ``x`` in its config, else the run names."""
    frames = []
    use_x = all(x in record.config for record in records if record.completed)
    for record in records:
        present = [m for m in BOUND_METRICS if m in record.metrics.columns]
        if not record.completed or not present:
            continue
        frame = record.metrics[present].reset_index().rename(columns={"step": "epoch"})
        frame["_run"] = record.name
        frame["_line"] = _format(record.config.get(x)) if use_x else record.name
        frame["_hue"] = _format(record.config.get(hue)) if hue and hue in record.config else ""
        frames.append(frame)
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return curves, (x if use_x else "run")


def _colour(colours: dict, level: str | None):
    return colours.get(level, "black") if colours else "black"


def _completed(table: pd.DataFrame, x: str) -> pd.DataFrame:
    if x not in table.columns:
        raise SkipFigure(f"no run has the config key {x!r} (choose the x axis with --x)")
    data = table[table["status"].isin(COMPLETED_STATUSES) & table[x].notna()].copy()
    if data.empty:
        raise SkipFigure(f"no completed run with a value for {x!r}")
    if _numeric(data[x]):
        data[x] = pd.to_numeric(data[x])
    return data


def _hue_levels(data: pd.DataFrame, hue: str | None) -> tuple[str | None, list[str], dict]:
    """A string column ``_hue`` for ``hue`` (levels sorted numerically when numeric) and their colours."""
    if hue is None or hue not in data.columns or data[hue].isna().all():
        return None, [], {}
    data["_hue"] = data[hue].map(_format)
    levels = sorted(data["_hue"].unique(), key=_sort_key)
    return "_hue", levels, dict(zip(levels, sns.color_palette("colorblind", len(levels)), strict=False))


def _plottable(data: pd.DataFrame, metric: str, log_y: bool) -> pd.DataFrame:
    values = pd.to_numeric(data[metric], errors="coerce")
    keep = np.isfinite(values) & ((values > 0) if log_y else True)
    return data[keep]


def _has_values(data: pd.DataFrame, column: str) -> bool:
    return column in data.columns and bool(np.isfinite(pd.to_numeric(data[column], errors="coerce")).any())


def _numeric(column: pd.Series) -> bool:
    return bool(pd.to_numeric(column, errors="coerce").notna().all())


def _positive_numeric(column: pd.Series) -> bool:
    return _numeric(column) and bool((pd.to_numeric(column) > 0).all())


def _scales(ax, log_x: bool, log_y: bool) -> None:
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    tidy_log_ticks(ax)


def _has_repeats(data: pd.DataFrame, keys: Sequence[str | None]) -> bool:
    """True when some combination of ``keys`` holds more than one run (then a band over seeds is drawn)."""
    keys = [k for k in keys if k and k in data.columns]
    return bool(len(data) and (data.groupby(keys).size() > 1).any()) if keys else len(data) > 1


def _plain_number(value: float, _position=None) -> str:
    """Tick label: "0.5", "200"; a power of ten outside 0.001..10^4 as $10^{k}$."""
    if value > 0 and not 1e-3 <= value < 1e5:
        exponent = math.log10(value)
        if abs(exponent - round(exponent)) < 1e-9:
            return f"$10^{{{round(exponent)}}}$"
    return f"{value:g}"


_PLAIN = FuncFormatter(_plain_number)


def tidy_log_ticks(ax) -> None:
    """Log axes without overlapping tick labels: labels only at major ticks, as plain numbers ("0.5", "200");
    majors at powers of ten when the axis spans two decades or more (at most 6 labels), at 1, 2 and 5 times a
    power of ten down to half a decade, else at up to 4 evenly spaced round numbers; minor ticks unlabelled."""
    for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log":
            continue
        low, high = sorted(limits)
        decades = math.log10(high / low) if low > 0 and high > 0 else 0.0
        if decades >= 2:
            axis.set_major_locator(LogLocator(base=10, numticks=6 if decades <= 6 else 4))
        elif decades >= 0.5:
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        else:  # a narrow range is almost linear: a few evenly spaced round numbers
            axis.set_major_locator(MaxNLocator(nbins=4))
        axis.set_major_formatter(_PLAIN)
        axis.set_minor_formatter(NullFormatter())


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _sort_key(label: str):
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, math.inf, label)


def _style():
    return sns.axes_style("whitegrid")


def _save(figure: Figure, path: Path) -> Path:
    """Writes the figure in every format of the current :func:`output`; returns the first file."""
    paths = output_paths(path)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    dpi = _OUTPUT.get()[1]
    for target in paths:
        figure.savefig(target, dpi=dpi)
    return paths[0]
