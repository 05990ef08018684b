"""Tests of lipschitz_dd.report on fake run folders written exactly as the training CLI writes them
(results.json + metrics.csv with several rows per step).

Synthetic double descent: the final test loss and C_lower peak at width 64 (log2 width = 6) and the peak
grows with label noise; every bound grows as c * epoch**EXPONENT from epoch FIT_FROM on (constant before).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lipschitz_dd.report import (
    aggregate_over_seeds,
    bias_variance_table,
    config_axes,
    fit_power_law,
    load_run,
    load_runs,
    output_at_zero_variance,
    read_metrics_csv,
    runs_table,
    variance_bound,
)
from lipschitz_dd.report.build import build_report
from lipschitz_dd.report.cli import main
from lipschitz_dd.report.threshold import empirical_thresholds, parameter_threshold

WIDTHS = (8, 16, 32, 64, 128, 256)
NOISES = (0.0, 0.15)
SEEDS = (0, 1)
EPOCHS = 40
EXPONENT = {"lipschitz/lower": 0.5, "lipschitz/avg": 0.25, "lipschitz/upper": 1.5}
FIT_FROM = 5


def peak(width: int, noise: float) -> float:
    return (1 + 4 * noise) * math.exp(-((math.log2(width) - 6) ** 2) / 2)


def final_values(width: int, noise: float, seed: int) -> dict[str, float]:
    """The final metrics of one fake run (the last epoch of its metrics.csv has these values)."""
    p = peak(width, noise)
    return {
        "test/loss": 1.0 + p + 0.01 * seed,
        "train/loss": 0.5 / width,
        "test/acc": 0.8 - 0.1 * p,
        "train/acc": 1.0 if width >= 64 else 0.8,
        "lipschitz/lower": 2.0 + 10 * p + 0.1 * seed,
        "lipschitz/avg": 1.0 + 5 * p,
        "lipschitz/upper": 100.0 * (1 + p),
    }


def bound_at(metric: str, final: float, epoch: int) -> float:
    """c * max(epoch, FIT_FROM)**k with c chosen so that the last epoch gives ``final``."""
    k = EXPONENT[metric]
    return final * (max(epoch, FIT_FROM) / EPOCHS) ** k


def write_run(
    folder: Path,
    config: dict,
    final: dict,
    status: str = "finished",
    epochs: int = EPOCHS,
    extra_final: dict | None = None,
    error: str | None = None,
) -> Path:
    """One run folder; metrics.csv has two rows per step (losses, then bounds) like CSVLogger writes."""
    folder.mkdir(parents=True)
    losses = ["test/loss", "train/loss", "test/acc", "train/acc"]
    bounds = list(EXPONENT)
    with open(folder / "metrics.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["epoch", "step", *losses, *bounds])
        for epoch in range(epochs + 1):
            scale = 1.0 + (epochs - epoch) / max(epochs, 1)  # losses fall to their final values
            writer.writerow([epoch, epoch, *[final[m] * scale for m in losses], *[""] * len(bounds)])
            writer.writerow([epoch, epoch, *[""] * len(losses), *[bound_at(m, final[m], epoch) for m in bounds]])
    results = {
        "status": status,
        "config": config,
        "final": {**final, **(extra_final or {})},
        "max": {},
        "epochs": epochs,
        "seconds": 1.5,
        "versions": {"torch": "x"},
    }
    if error:
        results["error"] = error
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def write_sweep(root: Path, with_bias_variance_records: bool = False) -> Path:
    """``root/sweeps_out/dd`` with runs/<experiment>/<run>/ for every width x noise x seed, one failed run,
    one diverged run and one run that never wrote results.json. Returns the sweep folder."""
    sweep = root / "sweeps_out" / "dd"
    runs = sweep / "runs" / "fcn_dd"
    for width in WIDTHS:
        for noise in NOISES:
            for seed in SEEDS:
                extra = {}
                if with_bias_variance_records:
                    extra = {
                        "data/mean_sq_norm": 4.0,
                        "f0/0": 0.1 * seed,
                        "f0/1": -0.2 * seed,
                        "params/count": 50 * width,
                        "data/train_size": 4000,
                    }
                config = {
                    "model.width": width,
                    "data.label_noise": noise,
                    "seed_everything": seed,
                    "trainer.max_epochs": EPOCHS,
                    "run_name": run_name(width, noise, seed),
                }
                write_run(
                    runs / run_name(width, noise, seed), config, final_values(width, noise, seed), extra_final=extra
                )
    failed_config = {"model.width": 512, "data.label_noise": 0.0, "seed_everything": 0, "trainer.max_epochs": EPOCHS}
    write_run(
        runs / "w512_failed",
        failed_config,
        final_values(512, 0.0, 0),
        status="failed",
        epochs=3,
        error="Traceback ...\nRuntimeError: CUDA out of memory",
    )
    diverged = {**final_values(512, 0.15, 0), "test/loss": float("nan")}
    write_run(
        runs / "w512_diverged", {**failed_config, "data.label_noise": 0.15}, diverged, status="diverged", epochs=7
    )
    partial = write_run(runs / "w512_partial", failed_config, final_values(512, 0.0, 1), epochs=2)
    (partial / "results.json").unlink()  # killed hard: only LightningCLI's config.yaml and metrics.csv
    (partial / "config.yaml").write_text(
        f"seed_everything: 1\ntrainer:\n  max_epochs: {EPOCHS}\nmodel:\n"
        "  init_args:\n    width: 512\ndata:\n  label_noise: 0.0\n"
    )
    (sweep / "sweep.db").write_bytes(b"")  # the sweep runner's state; the report ignores it
    return sweep


def run_name(width: int, noise: float, seed: int) -> str:
    return f"w{width}_n{noise}_s{seed}"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return write_sweep(tmp_path_factory.mktemp("records"), with_bias_variance_records=True)


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory) -> Path:
    """The report of the fake sweep, made through the CLI entry point."""
    out = tmp_path_factory.mktemp("report") / "out"
    main([str(sweep), "--out", str(out), "--power_law_from_epoch", str(FIT_FROM)])
    return out


# ---------------------------------------------------------------- records
def test_rows_of_the_same_step_are_merged(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,test/loss,lipschitz/lower\n0,0,2.0,\n0,0,,7.0\n1,1,1.5,\n1,1,,9.0\n,,,\n")
    metrics = read_metrics_csv(path)
    assert list(metrics.index) == [0, 1]
    assert metrics.loc[0, "test/loss"] == 2.0 and metrics.loc[0, "lipschitz/lower"] == 7.0
    assert metrics.loc[1, "test/loss"] == 1.5 and metrics.loc[1, "lipschitz/lower"] == 9.0


def test_load_runs_finds_every_run_and_tolerates_damaged_ones(sweep):
    records = {record.name: record for record in load_runs(sweep)}
    assert len(records) == len(WIDTHS) * len(NOISES) * len(SEEDS) + 3
    assert records["w512_failed"].status == "failed"
    assert any("CUDA out of memory" in problem for problem in records["w512_failed"].problems)
    assert records["w512_diverged"].status == "diverged"
    partial = records["w512_partial"]
    assert partial.status == "incomplete" and partial.epochs == 2 and not partial.completed
    assert any("no results.json" in problem for problem in partial.problems)
    run = records[run_name(64, 0.15, 1)]
    assert run.config["model.width"] == 64 and run.experiment == "fcn_dd" and run.completed
    assert run.final_value("lipschitz/lower") == final_values(64, 0.15, 1)["lipschitz/lower"]


def test_config_yaml_is_read_when_results_json_is_missing(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.csv").write_text("step,test/loss\n0,2.0\n1,1.25\n")
    (folder / "config.yaml").write_text(
        "seed_everything: 3\nmodel:\n  class_path: lipschitz_dd.models.FCN\n  init_args:\n    width: 32\n"
        "data:\n  init_args:\n    label_noise: 0.1\n"
    )
    record = load_run(folder)
    assert record.config == {
        "seed_everything": 3,
        "model.class_path": "lipschitz_dd.models.FCN",
        "model.width": 32,
        "data.label_noise": 0.1,
    }
    assert record.final_value("test/loss") == 1.25  # last logged value stands in for the missing final
    assert math.isnan(record.final_value("lipschitz/lower"))


def test_corrupt_results_json_is_reported_not_raised(tmp_path):
    folder = tmp_path / "exp" / "run"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text("{not json")
    record = load_run(folder)
    assert record.status == "unreadable" and any("results.json" in p for p in record.problems)


# ---------------------------------------------------------------- tables
def test_runs_table_and_means_hold_the_written_values(sweep):
    records = load_runs(sweep)
    axes = config_axes(records, always=["model.width", "data.label_noise", "seed_everything"])
    assert axes == ["model.width", "data.label_noise", "seed_everything"]
    table = runs_table(records, axes)
    row = table[table["run"] == run_name(32, 0.15, 1)].iloc[0]
    for metric, value in final_values(32, 0.15, 1).items():
        assert row[metric] == pytest.approx(value, rel=1e-12)
    means = aggregate_over_seeds(table, axes, "seed_everything")
    point = means[(means["model.width"] == 32) & (means["data.label_noise"] == 0.15)].iloc[0]
    expected = [final_values(32, 0.15, seed)["test/loss"] for seed in SEEDS]
    assert point["completed"] == 2
    assert point["test/loss mean"] == pytest.approx(np.mean(expected))
    assert point["test/loss std"] == pytest.approx(np.std(expected, ddof=1))
    failed_point = means[(means["model.width"] == 512) & (means["data.label_noise"] == 0.0)].iloc[0]
    assert failed_point["runs"] == 2 and failed_point["completed"] == 0


# ---------------------------------------------------------------- power law
@pytest.mark.parametrize("exponent,prefactor", [(0.5, 3.0), (-1.25, 0.2), (2.0, 1e-3)])
def test_power_law_fit_recovers_a_known_exponent(exponent, prefactor):
    epochs = np.arange(0, 200)
    values = prefactor * np.maximum(epochs, 1) ** exponent
    values[:10] = 123.0  # a warm-up that must not enter the fit
    fit = fit_power_law(epochs, values, from_epoch=10)
    assert fit.exponent == pytest.approx(exponent, rel=1e-10)
    assert fit.prefactor == pytest.approx(prefactor, rel=1e-8)
    assert fit.n_points == 190 and fit(np.array([50.0]))[0] == pytest.approx(prefactor * 50**exponent)


def test_power_law_fit_matches_least_squares_on_noisy_data():
    rng = np.random.default_rng(0)
    epochs = np.arange(1, 100, dtype=float)
    values = 2.0 * epochs**0.7 * np.exp(rng.normal(0, 0.1, epochs.size))
    design = np.stack([np.ones_like(epochs), np.log(epochs)], axis=1)
    (log_c, k), *_ = np.linalg.lstsq(design, np.log(values), rcond=None)
    fit = fit_power_law(epochs, values)
    assert fit.exponent == pytest.approx(k) and fit.prefactor == pytest.approx(math.exp(log_c))


def test_power_law_fit_needs_enough_positive_points():
    assert math.isnan(fit_power_law([1, 2, 3], [1.0, 0.0, -1.0]).exponent)
    with pytest.raises(ValueError, match="differ in shape"):
        fit_power_law([1, 2], [1.0])


# ---------------------------------------------------------------- interpolation threshold
def test_thresholds_by_parameter_count_and_by_train_accuracy(sweep):
    records = load_runs(sweep)
    # params = 50 w crosses n = 4000 at w = 80, between the grid points 64 and 128
    assert parameter_threshold(records, "model.width").x == pytest.approx(80.0)
    table = runs_table(records, ["model.width", "data.label_noise"])
    completed = table[table["status"] == "finished"]
    thresholds = empirical_thresholds(completed, "model.width", "data.label_noise", 0.99)
    assert [(t.x, t.hue_level) for t in thresholds] == [(64.0, "0.0"), (64.0, "0.15")]


# ---------------------------------------------------------------- bias-variance
def test_output_at_zero_variance_and_bound_closed_forms():
    f0 = np.array([[1.0, 0.0], [3.0, 2.0]])  # mean (2, 1): squared distances 2 and 2
    assert output_at_zero_variance(f0) == pytest.approx(2.0)
    assert variance_bound(2.0, 5.0, 4.0, 1.0) == pytest.approx(3 * (4 + 5) * 4 + 3)


def test_bias_variance_table_uses_what_is_recorded(sweep):
    records = load_runs(sweep)
    table, notes = bias_variance_table(
        records, ["model.width", "data.label_noise", "seed_everything"], "seed_everything"
    )
    assert len(table) == len(WIDTHS) * len(NOISES)  # w512 has no two completed seeds
    row = table[(table["model.width"] == 16) & (table["data.label_noise"] == 0.0)].iloc[0]
    lower = np.array([final_values(16, 0.0, s)["lipschitz/lower"] for s in SEEDS])
    upper = np.array([final_values(16, 0.0, s)["lipschitz/upper"] for s in SEEDS])
    f0 = np.array([[0.1 * s, -0.2 * s] for s in SEEDS])
    var_f0 = np.mean(np.sum((f0 - f0.mean(0)) ** 2, axis=1))
    assert row["Var f(0)"] == pytest.approx(var_f0)
    assert row["bound (proxy, C_bar = mean C_lower)"] == pytest.approx(
        3 * (lower.mean() ** 2 + np.mean(lower**2)) * 4.0 + 3 * var_f0
    )
    assert row["bound (guaranteed, C_upper)"] == pytest.approx(
        3 * (upper.mean() ** 2 + np.mean(upper**2)) * 4.0 + 3 * var_f0
    )
    assert math.isnan(row["bound (paper)"])  # C_bar needs the seed-averaged network: not recorded
    tests = [final_values(16, 0.0, s)["test/loss"] for s in SEEDS]
    assert row["test loss variance over seeds"] == pytest.approx(np.var(tests, ddof=1))
    assert len(notes) == 1 and "ensemble/lipschitz_lower" in notes[0]


def test_bias_variance_names_missing_records(tmp_path):
    sweep = write_sweep(tmp_path, with_bias_variance_records=False)
    axes = ["model.width", "data.label_noise", "seed_everything"]
    table, notes = bias_variance_table(load_runs(sweep), axes, "seed_everything")
    assert table["bound (proxy, C_bar = mean C_lower)"].isna().all()
    assert "data/mean_sq_norm" in notes[0] and "f0/<k>" in notes[0]


# ---------------------------------------------------------------- the whole report
@pytest.mark.e2e
def test_report_writes_figures_and_tables(report):
    for name in ("double_descent.png", "bounds_vs_epoch.png", "heatmap.png", "bias_variance.png"):
        data = (report / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, name
    runs = pd.read_csv(report / "runs.csv")
    row = runs[runs["run"] == run_name(64, 0.15, 1)].iloc[0]
    assert row["test/loss"] == pytest.approx(final_values(64, 0.15, 1)["test/loss"], rel=1e-12)
    assert row["status"] == "finished" and row["epochs"] == EPOCHS and row["seconds"] == 1.5
    statuses = dict(zip(runs["run"], runs["status"], strict=False))
    assert statuses["w512_failed"] == "failed" and statuses["w512_diverged"] == "diverged"
    assert statuses["w512_partial"] == "incomplete"
    markdown = (report / "report.md").read_text()
    assert "| w512_failed |" in markdown and "3 of 27 runs did not complete" in markdown
    assert f"{final_values(64, 0.15, 1)['test/loss']:.4g}" in markdown
    assert "![double_descent](double_descent.png)" in markdown


@pytest.mark.e2e
def test_report_slopes_recover_the_synthetic_exponents(report):
    slopes = pd.read_csv(report / "power_law_slopes.csv")
    assert len(slopes) == len(WIDTHS) * len(NOISES) * len(SEEDS) * len(EXPONENT)
    for metric, exponent in EXPONENT.items():
        fitted = slopes[slopes["metric"] == metric]["exponent"]
        assert np.allclose(fitted, exponent, rtol=1e-9), metric
    assert (slopes["from_epoch"] == FIT_FROM).all() and (slopes["n_points"] == EPOCHS - FIT_FROM + 1).all()


@pytest.mark.e2e
def test_report_without_noise_axis_and_with_a_categorical_x_axis(tmp_path, capsys):
    runs = tmp_path / "runs" / "optimisers"
    widths = {"sgd": 8, "adam": 64}
    for optimiser, width in widths.items():
        write_run(runs / optimiser, {"model.optimizer": optimiser, "seed_everything": 0}, final_values(width, 0.0, 0))
    main([str(tmp_path / "runs"), "--x", "model.optimizer"])
    out = tmp_path / "runs" / "report"
    assert (out / "double_descent.png").exists() and (out / "bounds_vs_epoch.png").exists()
    assert not (out / "heatmap.png").exists() and not (out / "bias_variance.png").exists()
    printed = capsys.readouterr().out
    assert "heatmap.png skipped" in printed and "no run has the config key 'data.label_noise'" in printed
    assert "at least two completed seeds" in printed and "model.optimizer is not numeric" in printed
    table = pd.read_csv(out / "runs.csv")
    for optimiser, lower in zip(table["model.optimizer"], table["lipschitz/lower"], strict=False):
        assert lower == pytest.approx(final_values(widths[optimiser], 0.0, 0)["lipschitz/lower"])


def test_report_survives_runs_without_any_metric(tmp_path):
    folder = tmp_path / "runs" / "exp" / "r1"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"status": "failed", "config": {"model.width": 4}}))
    summary = build_report(tmp_path / "runs")
    assert summary.statuses == {"failed": 1}
    assert any("double_descent.png skipped" in note for note in summary.notes)
    assert "failed" in (summary.out / "report.md").read_text()


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda root: root / "missing", "does not exist"),
        (lambda root: root, "no run folders"),
    ],
)
def test_bad_folder_gives_a_one_line_error(tmp_path, make, message):
    with pytest.raises(SystemExit) as exit_info:
        main([str(make(tmp_path))])
    text = str(exit_info.value.code)
    assert message in text and "\n" not in text and text.startswith("lipschitz-dd report: error:")


@pytest.mark.e2e
def test_report_with_list_valued_config_keys_that_differ_between_runs(tmp_path):
    """`--model.widths "[8,8]"` vs `"[16,4]"` (and a differing data.input_shape) used to crash the report
    with `TypeError: unhashable type: 'list'` when sorting/grouping the runs table."""
    runs = tmp_path / "runs" / "fcn_widths"
    for name, widths, shape in [("wide_last", [16, 4], [40, 1]), ("even", [8, 8], [40])]:
        config = {
            "model.width": 16,
            "model.widths": widths,
            "data.input_shape": shape,
            "data.label_noise": 0.0,
            "seed_everything": 0,
        }
        write_run(runs / name, config, final_values(16, 0.0, 0), epochs=5)
    # the same keys in a LightningCLI config.yaml (nested, with init_args) give the same values
    partial = write_run(runs / "from_yaml", {}, final_values(16, 0.0, 1), epochs=2)
    (partial / "results.json").unlink()
    (partial / "config.yaml").write_text(
        "seed_everything: 1\nmodel:\n  init_args:\n    width: 16\n"
        "    widths: [8, 8]\ndata:\n  label_noise: 0.0\n  input_shape: [40]\n"
    )

    records = load_runs(tmp_path / "runs")
    axes = config_axes(records)
    assert {"model.widths", "data.input_shape"} <= set(axes)
    table = runs_table(records, axes)
    assert list(table["run"]) == ["even", "from_yaml", "wide_last"]  # [40] < [40, 1], then seed 0 < 1

    summary = build_report(tmp_path / "runs")
    assert summary.runs == 3
    written = pd.read_csv(summary.out / "runs.csv")
    assert set(written["run"]) == {"even", "wide_last", "from_yaml"}
    shown = dict(zip(written["run"], written["model.widths"], strict=False))
    assert shown == {"even": "[8, 8]", "wide_last": "[16, 4]", "from_yaml": "[8, 8]"}
    means = pd.read_csv(summary.out / "runs_mean_over_seeds.csv")
    assert dict(zip(means["model.widths"], means["runs"], strict=False)) == {"[8, 8]": 2, "[16, 4]": 1}  # seeds merged
    markdown = (summary.out / "report.md").read_text()
    assert "| even |" in markdown and "| wide_last |" in markdown and "[16, 4]" in markdown
