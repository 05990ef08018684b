"""Report figures a reader would print: names not keys, honest titles, readable log ticks, formats, report.html."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from test_report import FIT_FROM, write_sweep

from lipschitz_dd.report import figures
from lipschitz_dd.report.build import build_report
from lipschitz_dd.report.cli import main
from lipschitz_dd.report.power_law import power_law_table
from lipschitz_dd.report.records import load_runs

RAW_KEY = re.compile(r"(lipschitz|test|train|model|data)[/.]\w")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return write_sweep(tmp_path_factory.mktemp("records"))


@pytest.fixture
def drawn(monkeypatch):
    """The Figure objects the plot functions save, to read their labels."""
    saved = []
    original = figures._save

    def keep(figure, path):
        saved.append(figure)
        return original(figure, path)

    monkeypatch.setattr(figures, "_save", keep)
    return saved


def _texts(figure: Figure) -> list[str]:
    texts = [figure.get_suptitle()] if hasattr(figure, "get_suptitle") else []
    for ax in figure.axes:
        texts += [ax.get_xlabel(), ax.get_ylabel(), ax.get_title()]
        legend = ax.get_legend()
        if legend is not None:
            texts += [legend.get_title().get_text()] + [t.get_text() for t in legend.get_texts()]
    return [t for t in texts if t]


def test_labels_name_what_a_reader_knows():
    assert figures.label("lipschitz/lower") == "$C_{lower}$" and figures.label("test/loss") == "test loss"
    assert figures.label("model.width") == "width" and figures.label("data.label_noise") == "label noise"
    assert figures.label("model.init_args.width") == "width"
    assert figures.label("model.hidden_dim") == "hidden dim"  # unknown keys: last part, readable


@pytest.mark.slow  # draws a whole report (10-30 s)
def test_every_figure_uses_names_not_keys(sweep, tmp_path, drawn):
    build_report(sweep, out=tmp_path / "report", power_law_from_epoch=FIT_FROM)
    assert len(drawn) == 3  # double descent, bounds vs epoch, heat-map (no bias-variance records here)
    for figure in drawn:
        texts = _texts(figure)
        assert texts and not [t for t in texts if RAW_KEY.search(t)], texts
    double_descent = _texts(drawn[0])
    assert "width" in double_descent and "label noise" in double_descent and "test loss" in double_descent


@pytest.mark.slow  # draws a whole report (10-30 s)
def test_bounds_vs_epoch_title_claims_a_fit_only_when_one_is_drawn(sweep, tmp_path, drawn):
    records = load_runs(sweep)
    slopes = power_law_table(records, ["model.width", "data.label_noise"], FIT_FROM)
    figures.plot_bounds_vs_epoch(records, "model.width", "data.label_noise", slopes, FIT_FROM, tmp_path / "a.png")
    figures.plot_bounds_vs_epoch(records, "model.width", "data.label_noise", pd.DataFrame(), FIT_FROM, tmp_path / "b")
    with_fit, without_fit = (figure.get_suptitle() for figure in drawn)
    assert "power law fitted" in with_fit
    assert "fitted" not in without_fit and "dashed" not in without_fit
    dashed = [line for ax in drawn[1].axes for line in ax.get_lines() if line.get_linestyle() in ("--", ":")]
    assert not dashed  # nothing drawn that the title would have to explain


@pytest.mark.parametrize("low, high", [(1.5, 3.0), (0.9, 4.0), (2.0, 60.0), (0.01, 3e3), (1e-4, 1e9), (95, 260)])
def test_log_tick_labels_never_overlap_and_are_enough(low, high):
    figure = Figure(figsize=(3.2, 2.6), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    ax.plot(np.geomspace(low, high, 20), np.geomspace(low, high, 20))
    ax.set(xscale="log", yscale="log")
    figures.tidy_log_ticks(ax)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for axis in (ax.xaxis, ax.yaxis):
        lo, hi = sorted(axis.get_view_interval())
        shown = [
            t
            for t, loc in zip(axis.get_ticklabels(), axis.get_ticklocs(), strict=False)
            if t.get_text() and lo <= loc <= hi
        ]
        assert len(shown) >= 2, [t.get_text() for t in shown]
        boxes = [t.get_window_extent(renderer) for t in shown]
        assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2)), [t.get_text() for t in shown]
        assert not [t.get_text() for t in axis.get_ticklabels(minor=True) if t.get_text()]


@pytest.mark.slow  # draws a whole report (10-30 s)
def test_formats_dpi_and_one_page_html(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    main([str(sweep), "--out", str(out), "--format", "png,pdf,svg", "--dpi", "50"])
    for stem in ("double_descent", "bounds_vs_epoch", "heatmap"):
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        assert b"<svg" in (out / f"{stem}.svg").read_bytes()[:2000]
    from PIL import Image

    with Image.open(out / "heatmap.png") as image:
        small = image.size
    main([str(sweep), "--out", str(tmp_path / "big"), "--dpi", "100"])
    with Image.open(tmp_path / "big" / "heatmap.png") as image:
        assert image.size[0] == pytest.approx(2 * small[0], abs=2)
    assert not (tmp_path / "big" / "heatmap.pdf").exists()
    html = (out / "report.html").read_text()
    for stem in ("double_descent", "bounds_vs_epoch", "heatmap"):
        assert f'<img src="{stem}.png"' in html
    tables = sorted(p.name for p in out.glob("*.csv"))
    assert {"runs.csv", "runs_mean_over_seeds.csv", "power_law_slopes.csv"} <= set(tables)
    assert all(f'href="{table}"' in html for table in tables)
    assert html.count("<table") == len(tables) and "w512_failed" in html
    capsys.readouterr()


@pytest.mark.slow  # draws a whole report (10-30 s)
def test_pdf_only_report_still_shows_every_figure(sweep, tmp_path):
    main([str(sweep), "--out", str(tmp_path), "--format", "pdf"])
    assert not list(tmp_path.glob("*.png"))
    html = (tmp_path / "report.html").read_text()
    assert html.count('type="application/pdf"') == 3


@pytest.mark.parametrize("args", [["--format", "png,gif"], ["--format", ""], ["--dpi", "0"]])
def test_bad_format_or_dpi_is_one_line(sweep, tmp_path, args):
    with pytest.raises(SystemExit, match="--format takes png, pdf, svg") as exit_info:
        main([str(sweep), "--out", str(tmp_path), *args])
    assert "\n" not in str(exit_info.value)
    assert not (tmp_path / "report.md").exists()
