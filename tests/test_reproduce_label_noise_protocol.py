"""Label noise x width in the study's protocol (lipschitz_dd/reproduce/findings/label_noise_protocol.py): the
matched-loss reading recomputed by hand, the verdict both ways on hand-made run folders, and the scaled sweeps."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from reproduce_runs import verdict_of, write_run

from lipschitz_dd.reproduce import get_finding, scaled_sweep
from lipschitz_dd.reproduce.findings.label_noise_protocol import (
    END,
    MATCHED_N,
    MATCHED_W,
    first_epoch_below,
    matched,
    run_table,
    value_at_epoch,
)
from lipschitz_dd.reproduce.verdict import DOES_NOT_HOLD, HOLDS, IN_PART

WIDTHS, NOISES, SEEDS = (16, 32, 64), (0.0, 0.5, 1.0), (0, 1, 2)
EPOCHS = 10


def write_grid(root, final_lower, final_loss=lambda w, n: 0.1, status=lambda w, n: "stopped_converged"):
    """One run per width, noise and seed. Training loss falls linearly from 2.3 at epoch 0 to final_loss(w, n) at
    epoch 10; C_lower rises linearly from 0.1 to final_lower(w, n) x (1 + 0.01 seed), measured every epoch."""
    for w in WIDTHS:
        for n in NOISES:
            for s in SEEDS:
                top, bottom = final_lower(w, n) * (1 + 0.01 * s), final_loss(w, n)
                history = [
                    {
                        "step": e,
                        "train/loss": 2.3 + (bottom - 2.3) * e / EPOCHS,
                        "lipschitz/lower": 0.1 + (top - 0.1) * e / EPOCHS,
                        "test/loss": 2.0,
                        "train/grad_norm": 0.01,
                    }
                    for e in range(EPOCHS + 1)
                ]
                final = {k: v for k, v in history[-1].items() if k != "step"}
                config = {"model.width": w, "data.label_noise": n, "seed_everything": s}
                write_run(root / f"w{w}_n{n}_s{s}", config, final, history=history, epochs=EPOCHS, status=status(w, n))
    return root


def study_like(w, n):
    """Peaks at noise 0.5 at every width; over width at 16 without noise, at 64 with full noise."""
    noise_factor = {0.0: 1.0, 0.5: 3.0, 1.0: 2.0}[n]
    width_factor = {
        0.0: {16: 1.5, 32: 1.2, 64: 1.0},
        0.5: {16: 1.0, 32: 1.5, 64: 1.2},
        1.0: {16: 1.0, 32: 1.2, 64: 1.5},
    }
    return 10 * noise_factor * width_factor[n][w]


def heatmap_like(w, n):
    """Falls with noise at every width; the peak over width stays at 32 (what the heat-map setting shows)."""
    return {16: 20.0, 32: 60.0, 64: 40.0}[w] * (1 - 0.5 * n)


def test_study_pattern_holds_at_the_end_and_at_matched_loss(tmp_path):
    line = verdict_of("label_noise_protocol", write_grid(tmp_path / "runs", study_like), tmp_path / "out")
    assert line == f"{HOLDS}: every check passes"


def test_heatmap_pattern_does_not_hold(tmp_path):
    runs = write_grid(tmp_path / "runs", heatmap_like)
    assert verdict_of("label_noise_protocol", runs, tmp_path / "out") == f"{DOES_NOT_HOLD}: every check fails"
    summary = (tmp_path / "out" / "label_noise_protocol" / "cpu" / "summary.md").read_text()
    assert "27 completed runs: 27 stopped at the full-batch gradient norm target" in summary
    assert (tmp_path / "out" / "label_noise_protocol" / "cpu" / "label_noise_protocol.png").is_file()


def test_matched_reading_can_differ_from_the_end(tmp_path):
    """The noiseless runs stop at a high loss (2.0), the noisy ones go on to 0.3: matched at a width, the noisy runs
    are read at epoch 2 (loss 1.9), where their C_lower is a fifth of its way up; the study's pattern at the end, a
    falling one at matched loss -> holds in part, failing only the matched rise-then-fall."""

    def loss(w, n):
        return {0.0: 2.0, 0.5: 0.3, 1.0: 0.3}[n]

    runs = write_grid(tmp_path / "runs", study_like, final_loss=loss, status=lambda w, n: "finished")
    line = verdict_of("label_noise_protocol", runs, tmp_path / "out")
    assert line == (
        f"{IN_PART}: fails: C_lower rises then falls with noise (at matched training loss); passes: C_lower rises "
        "then falls with noise (at the end), the C_lower peak over width moves right with noise (at the end), the "
        "C_lower peak over width moves right with noise (at matched training loss)"
    )
    summary = (tmp_path / "out" / "label_noise_protocol" / "cpu" / "summary.md").read_text()
    assert "0 stopped at the full-batch gradient norm target (0.01), 27 at the epoch cap" in summary


def test_runs_left_on_the_initial_plateau_get_no_matched_reading(tmp_path):
    """The fully noisy runs of widths 16 and 32 end at loss 2.25 (2 % below the first 2.3: on the plateau). At the
    end they count as they are; matched, they neither set the level nor get a reading, so only width 64 has a
    reading at every noise level (its study-like peak at 0.5 passes) and the peak over width at noise 1 is not
    located (not measured). Kept in, they would set every level near 2.3 and all runs would be read at epoch 0."""

    def loss(w, n):
        return 2.25 if n == 1.0 and w < 64 else 0.1

    runs = write_grid(tmp_path / "runs", study_like, final_loss=loss)
    line = verdict_of("label_noise_protocol", runs, tmp_path / "out")
    assert line == (
        "undecided: not measured: the C_lower peak over width moves right with noise (at matched training loss)"
    )
    summary = (tmp_path / "out" / "label_noise_protocol" / "cpu" / "summary.md").read_text()
    assert "6 run(s) never left the initial plateau (lowest training loss within 5% of the first)" in summary
    assert "| C_lower rises then falls with noise (at matched training loss) |" in summary
    assert summary.count("| 1 | >= 0.5 | 3 | pass |") == 2  # both rise-then-fall checks: every counted width
    from lipschitz_dd.report.records import load_runs

    table = matched(run_table(load_runs(runs)), "model.width", MATCHED_W)
    stuck = (table["data.label_noise"] == 1.0) & (table["model.width"] < 64)
    assert table.loc[stuck, MATCHED_W].isna().all() and table.loc[~stuck, MATCHED_W].notna().all()
    assert table.loc[~stuck, MATCHED_W + " level"].to_numpy() == pytest.approx(0.1)


def test_matched_level_epoch_and_interpolation_by_hand(tmp_path):
    from lipschitz_dd.report.records import load_runs

    root = tmp_path / "runs"
    # run A: loss 2.0, 1.0, 0.5, 0.2 at epochs 0..3, C_lower measured at epochs 0 and 3 only (1.0 and 4.0)
    write_run(
        root / "a",
        {"model.width": 8, "data.label_noise": 0.0, "seed_everything": 0},
        {"train/loss": 0.2, "lipschitz/lower": 4.0},
        history=[
            {"step": 0, "train/loss": 2.0, "lipschitz/lower": 1.0},
            {"step": 1, "train/loss": 1.0},
            {"step": 2, "train/loss": 0.5},
            {"step": 3, "train/loss": 0.2, "lipschitz/lower": 4.0},
        ],
        epochs=3,
    )
    # run B: lowest loss 0.8 -> the common level is 0.8; A is at or below it first at epoch 2
    write_run(
        root / "b",
        {"model.width": 8, "data.label_noise": 1.0, "seed_everything": 0},
        {"train/loss": 0.8, "lipschitz/lower": 7.0},
        history=[
            {"step": 0, "train/loss": 2.0, "lipschitz/lower": 1.0},
            {"step": 4, "train/loss": 0.8, "lipschitz/lower": 7.0},
        ],
        epochs=4,
    )
    table = matched(run_table(load_runs(root)), "model.width", MATCHED_W).set_index("data.label_noise")
    assert table.loc[0.0, MATCHED_W + " level"] == pytest.approx(0.8)
    assert table.loc[0.0, MATCHED_W + " epoch"] == 2
    assert table.loc[0.0, MATCHED_W] == pytest.approx(1.0 + (4.0 - 1.0) * 2 / 3)  # linear between epochs 0 and 3
    assert table.loc[1.0, MATCHED_W] == pytest.approx(7.0)
    assert table.loc[0.0, END] == pytest.approx(4.0)
    # matched within each noise level instead: each run alone, read where it first reaches its own lowest loss
    per_noise = matched(run_table(load_runs(root)), "data.label_noise", MATCHED_N).set_index("data.label_noise")
    assert per_noise.loc[0.0, MATCHED_N + " epoch"] == 3 and per_noise.loc[0.0, MATCHED_N] == pytest.approx(4.0)
    assert per_noise.loc[1.0, MATCHED_N + " level"] == pytest.approx(0.8)


def test_helpers_edge_cases():
    curve = pd.Series([2.0, 1.0, 0.5], index=[0, 5, 10])
    assert first_epoch_below(curve, 1.0) == 5
    assert math.isnan(first_epoch_below(curve, 0.1))
    assert math.isnan(value_at_epoch(pd.Series([math.nan, math.nan], index=[0, 1]), 0.0))
    assert value_at_epoch(pd.Series([1.0, math.nan, 3.0], index=[0, 1, 2]), 20.0) == 3.0


@pytest.mark.parametrize("name", ["label_noise_protocol", "label_noise_protocol_cnn"])
def test_sweeps_keep_the_protocol_and_reach_noise_one(name):
    finding = get_finding(name)
    assert finding.compares
    assert finding.recorded is None or finding.recorded.seeds >= 3
    for scale in ("quick", "cpu", "full"):
        parameters = scaled_sweep(finding, scale)["parameters"]
        noise = parameters["data.label_noise"]["values"]
        assert min(noise) == 0.0 and max(noise) == 1.0
    cpu = scaled_sweep(finding, "cpu")["parameters"]
    assert len(cpu["seed_everything"]["values"]) >= 3
    full = scaled_sweep(finding, "full")["parameters"]
    assert full["data.label_noise"]["values"] == [round(0.1 * i, 1) for i in range(11)]


def test_shipped_configs_are_the_study_protocol():
    import yaml

    from lipschitz_dd.shipped import resolve

    for name in ("fcn_mnist1d_noise_protocol", "cnn_fashion_mnist_noise_protocol"):
        config = yaml.safe_load(resolve(name, "configs").read_text())
        model, data = config["model"]["init_args"], config["data"]["init_args"]
        assert model["optimizer"] == "sgd" and model["momentum"] == 0.0 and model["lr_schedule"] == "cont100"
        assert model["lr_floor"] == 1e-5 and model["grad_clip_norm"] == 50.0
        assert data["noise_mode"] == "shuffle" and data["train_subset"] == 1000 and data["shuffle"] is False
        assert config["stopping"] == {"enabled": True, "target": 0.01, "min_epochs": 100}
