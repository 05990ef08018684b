"""Build the whole report of a runs or sweep folder: tables (CSV, one Markdown file), figures (PNG, and PDF or
SVG on request) and report.html, one page showing every figure and table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lipschitz_dd.report import figures
from lipschitz_dd.report.bias_variance import bias_variance_table
from lipschitz_dd.report.ensemble import with_ensemble_quantities
from lipschitz_dd.report.power_law import power_law_table
from lipschitz_dd.report.records import COMPLETED_STATUSES, DAMAGED_STATUS, UNREADABLE_STATUS, load_runs
from lipschitz_dd.report.tables import (
    DEFAULT_SEED_KEY,
    aggregate_over_seeds,
    config_axes,
    runs_table,
    to_markdown,
)
from lipschitz_dd.report.threshold import empirical_thresholds, parameter_threshold

RUNS_CSV = "runs.csv"
MEANS_CSV = "runs_mean_over_seeds.csv"
SLOPES_CSV = "power_law_slopes.csv"
BIAS_VARIANCE_CSV = "bias_variance.csv"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
DOUBLE_DESCENT_PNG = "double_descent.png"
BOUNDS_VS_EPOCH_PNG = "bounds_vs_epoch.png"
HEATMAP_PNG = "heatmap.png"
BIAS_VARIANCE_PNG = "bias_variance.png"


@dataclass
class ReportSummary:
    """What :func:`build_report` wrote: the output folder, the files, and one-line notes (skips, gaps)."""

    out: Path
    runs: int
    statuses: dict[str, int]
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def build_report(
    folder: str | Path,
    out: str | Path | None = None,
    x: str = "model.width",
    hue: str | None = "data.label_noise",
    seed_key: str = DEFAULT_SEED_KEY,
    power_law_from_epoch: int = 10,
    interpolation_train_acc: float = 0.99,
    records: list | None = None,
    formats: tuple[str, ...] = ("png",),
    dpi: int = figures.DPI,
) -> ReportSummary:
    """Read every run below ``folder`` and write the report into ``out`` (default ``<folder>/report``),
    each figure once per format in ``formats`` (png, pdf, svg) at ``dpi``.

    Raises ReportInputError (a ValueError, one line) if ``folder`` is missing or holds no run; never
    raises for missing metrics or failed runs: those become notes and table entries."""
    records = load_runs(folder) if records is None else records  # records: e.g. W&B runs read by the caller
    out = Path(out) if out is not None else Path(folder) / "report"
    out.mkdir(parents=True, exist_ok=True)
    statuses = dict(Counter(record.status for record in records))
    summary = ReportSummary(out=out, runs=len(records), statuses=statuses)
    if hue is not None and not any(hue in record.config for record in records):
        summary.notes.append(f"no run has the config key {hue!r}: one line per figure, no heat-map")
        hue = None
    for record in records:  # one line per damaged run, naming its folder
        if record.status in (DAMAGED_STATUS, UNREADABLE_STATUS):
            reason = next((p for p in record.problems if "damaged" in p or "unreadable" in p), record.status)
            summary.notes.append(f"damaged run {record.path}: {reason}")
    not_completed = {status: n for status, n in statuses.items() if status not in COMPLETED_STATUSES}
    if not_completed:
        listed = ", ".join(f"{status}: {n}" for status, n in sorted(not_completed.items()))
        summary.notes.append(
            f"{sum(not_completed.values())} of {len(records)} runs did not complete "
            f"({listed}); listed in {RUNS_CSV}, left out of figures and means"
        )

    axes = config_axes(records, always=[key for key in (x, hue, seed_key) if key])
    runs = runs_table(records, axes)
    means = aggregate_over_seeds(runs, axes, seed_key)
    slopes = power_law_table(records, axes, power_law_from_epoch)
    with_ensembles, ensemble_notes = with_ensemble_quantities(records, axes, seed_key)  # from snapshot.npz
    bias_variance, bias_variance_notes = bias_variance_table(with_ensembles, axes, seed_key)
    summary.notes.extend(ensemble_notes + bias_variance_notes)
    thresholds = _thresholds(records, runs, x, hue, interpolation_train_acc, summary.notes)

    tables = {RUNS_CSV: runs, MEANS_CSV: means, SLOPES_CSV: slopes, BIAS_VARIANCE_CSV: bias_variance}
    for name, table in tables.items():
        if not table.empty:
            table.to_csv(out / name, index=False)
            summary.files.append(out / name)

    drawings: dict[str, Callable[[Path], Path]] = {
        DOUBLE_DESCENT_PNG: lambda path: figures.plot_double_descent(runs, x, hue, thresholds, path),
        BOUNDS_VS_EPOCH_PNG: lambda path: figures.plot_bounds_vs_epoch(
            records, x, hue, slopes, power_law_from_epoch, path
        ),
        HEATMAP_PNG: lambda path: figures.plot_heatmap(runs, x, hue, path),
        BIAS_VARIANCE_PNG: lambda path: figures.plot_bias_variance(bias_variance, x, hue, path),
    }
    with figures.output(formats, dpi):
        for name, draw in drawings.items():
            try:
                draw(out / name)
                summary.files += figures.output_paths(out / name)
            except figures.SkipFigure as skipped:
                summary.notes.append(f"{name} skipped: {skipped}")

    (out / REPORT_MD).write_text(_markdown(folder, summary, tables, power_law_from_epoch))
    summary.files.append(out / REPORT_MD)
    (out / REPORT_HTML).write_text(_html(folder, summary, tables, power_law_from_epoch))
    summary.files.append(out / REPORT_HTML)
    return summary


def _thresholds(records, runs: pd.DataFrame, x: str, hue: str | None, min_train_acc: float, notes: list[str]) -> list:
    given = runs[x].dropna() if x in runs.columns else pd.Series(dtype=float)  # a run may not record x at all
    if given.empty or pd.to_numeric(given, errors="coerce").isna().any():
        notes.append(f"interpolation threshold not marked: {x} is not numeric")
        return []
    by_params = parameter_threshold(records, x)
    if by_params is not None:
        notes.append(f"interpolation threshold: {x} = {by_params.x:.3g} where {by_params.label}")
        return [by_params]
    completed = runs[runs["status"].isin(COMPLETED_STATUSES)]
    empirical = empirical_thresholds(completed, x, hue, min_train_acc)
    if empirical:
        notes.append(
            f"interpolation threshold: smallest {x} with mean final train/acc >= {min_train_acc:g} "
            "(parameter count or data/train_size not recorded)"
        )
    else:
        notes.append(
            f"interpolation threshold not marked: the parameter count (params/count, "
            f"data/train_size) is not recorded or does not cross n along {x}, "
            f"and no {x} reaches mean train/acc >= {min_train_acc:g}"
        )
    return empirical


def _titles(from_epoch: int) -> dict[str, str]:
    return {
        RUNS_CSV: "Runs (final values)",
        MEANS_CSV: "Mean and standard deviation over seeds (completed runs)",
        SLOPES_CSV: f"Power-law exponents of the bounds (least squares on log-log, epochs >= {max(from_epoch, 1)})",
        BIAS_VARIANCE_CSV: "Bias-variance (the study's finding 3)",
    }


def _markdown(folder, summary: ReportSummary, tables: dict[str, pd.DataFrame], from_epoch: int) -> str:
    titles = _titles(from_epoch)
    lines = [
        f"# Report of `{folder}`",
        "",
        f"{summary.runs} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items())),
        "",
    ]
    lines += [f"- {note}" for note in summary.notes] + [""]
    lines += [f"![{path.stem}]({path.name})" for path in summary.files if path.suffix == ".png"] + [""]
    for name, table in tables.items():
        if not table.empty:
            shown = table.drop(columns=["path"], errors="ignore")
            lines += [f"## {titles[name]}", "", f"CSV: `{name}`", "", to_markdown(shown)]
    return "\n".join(lines)


def _shown_figures(summary: ReportSummary) -> list[Path]:
    """One file per figure for a page: its PNG or SVG (what browsers show), else its PDF."""
    by_stem: dict[str, list[Path]] = {}
    for path in summary.files:
        if path.suffix in (".png", ".svg", ".pdf"):
            by_stem.setdefault(path.stem, []).append(path)
    rank = {".png": 0, ".svg": 1, ".pdf": 2}
    return [min(paths, key=lambda p: rank[p.suffix]) for paths in by_stem.values()]


def _html(folder, summary: ReportSummary, tables: dict[str, pd.DataFrame], from_epoch: int) -> str:
    """report.html: the counts and notes, every figure, every table, on one self-describing page."""
    from html import escape

    titles = _titles(from_epoch)
    counts = ", ".join(f"{n} {escape(s)}" for s, n in sorted(summary.statuses.items()))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Report of {escape(str(folder))}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}img,object{max-width:100%;"
        "border:1px solid #ddd;margin:.5em 0}table{border-collapse:collapse;font-size:12px;margin-bottom:2em}"
        "th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}"
        ".scroll{overflow-x:auto}</style></head><body>",
        f"<h1>Report of <code>{escape(str(folder))}</code></h1>",
        f"<p>{summary.runs} runs: {counts}</p>",
    ]
    if summary.notes:
        parts += ["<ul>"] + [f"<li>{escape(note)}</li>" for note in summary.notes] + ["</ul>"]
    parts.append("<h2>Figures</h2>")
    for path in _shown_figures(summary):
        if path.suffix == ".pdf":
            parts.append(f'<p><object data="{path.name}" type="application/pdf" width="100%" height="600">')
            parts.append(f'<a href="{path.name}">{path.name}</a></object></p>')
        else:
            parts.append(
                f'<figure><img src="{path.name}" alt="{path.stem}"><figcaption>{path.name}</figcaption></figure>'
            )
    for name, table in tables.items():
        if not table.empty:
            shown = table.drop(columns=["path"], errors="ignore")
            parts += [
                f"<h2>{escape(titles[name])}</h2>",
                f'<p>CSV: <a href="{name}">{name}</a></p>',
                '<div class="scroll">',
            ]
            parts += [shown.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0), "</div>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
