"""The sandwich analysis (lipschitz_dd.report.sandwich): ratios to the exact constant and the figure, on run
records written by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from lipschitz_dd.report.records import LoadedRun
from lipschitz_dd.report.sandwich import bound_curves, exact_coverage, plot_sandwich, ratio_table, run_label


def record(tmp_path: Path) -> LoadedRun:
    nan = math.nan
    metrics = pd.DataFrame(
        {
            "lipschitz/avg": [0.3, 1.0, 2.0],
            "lipschitz/lower": [0.5, 1.8, 3.6],
            "lipschitz/exact": [nan, 2.0, 4.0],
            "lipschitz/exact_lower": [0.55, nan, nan],
            "lipschitz/exact_upper": [0.7, nan, nan],
            "lipschitz/upper_sdp": [0.6, 2.2, 4.2],
            "lipschitz/upper_eclipse": [0.7, 2.6, 4.4],
            "lipschitz/upper": [1.0, 3.0, 6.0],
            "train/loss": [2.3, 1.0, 0.5],
        },
        index=pd.Index([0, 1, 5], name="step"),
    )
    config = {"model.class_path": "lipschitz_dd.models.FCN", "model.widths": [8, 8]}
    return LoadedRun(tmp_path, "r", "sandwich", "finished", config=config, metrics=metrics)


def test_ratios_are_to_the_exact_constant_where_it_is_known(tmp_path):
    table = ratio_table(record(tmp_path)).set_index("bound")
    assert list(table.columns) == ["/ exact at epoch 1", "/ exact at epoch 5", "min over training", "max over training"]
    assert table.loc["lipschitz/lower", "/ exact at epoch 1"] == pytest.approx(0.9)
    assert table.loc["lipschitz/lower", "/ exact at epoch 5"] == pytest.approx(0.9)
    assert table.loc["lipschitz/upper", "/ exact at epoch 1"] == pytest.approx(1.5)
    assert table.loc["lipschitz/upper", "max over training"] == pytest.approx(1.5)
    assert table.loc["lipschitz/upper_eclipse", "min over training"] == pytest.approx(1.1)
    assert "lipschitz/exact" not in table.index
    assert exact_coverage(record(tmp_path)) == (2, 3)
    assert run_label(record(tmp_path)) == "FCN [8, 8]"
    assert "train/loss" not in bound_curves(record(tmp_path)).columns


@pytest.mark.e2e
def test_figure_is_written(tmp_path):
    path = plot_sandwich([record(tmp_path), record(tmp_path)], tmp_path / "fig" / "sandwich.png")
    assert path.exists() and path.stat().st_size > 10_000


def test_no_exact_value_gives_an_empty_table(tmp_path):
    run = record(tmp_path)
    run.metrics = run.metrics.drop(columns=["lipschitz/exact"])
    assert ratio_table(run).empty
