"""The MSE double descent (lipschitz_dd/reproduce/findings/mse_double_descent.py): it analyses the
bias_variance_mse runs (same scaled sweep at every scale: trained once), its declared threshold from the
parameter count, and its verdict both ways on hand-made run folders."""

from __future__ import annotations

import math

import pytest
from reproduce_runs import verdict_of, write_run

from lipschitz_dd.models import FCN
from lipschitz_dd.report.records import load_runs
from lipschitz_dd.reproduce import SCALES, get_finding, scaled_sweep
from lipschitz_dd.reproduce.analysis import completed_table
from lipschitz_dd.reproduce.findings.mse_double_descent import (
    BEYOND_CE,
    CE_WIDTH,
    MSE_WIDTH,
    fcn_parameters,
    location_checks,
    width_at,
)
from lipschitz_dd.reproduce.run import sweep_name, training_key
from lipschitz_dd.reproduce.verdict import DOES_NOT_HOLD, HOLDS, IN_PART, UNDECIDED

WIDTHS = (16, 32, 64, 128, 256, 512)
SEEDS = (0, 1, 2)


def write_runs(root, loss_shape, lower_shape, seeds=SEEDS):
    """MSE runs over WIDTHS x seeds at noise 0.15: test loss and the three bounds the given shapes over WIDTHS
    (times 1 + 0.01 seed; C_avg = C_lower / 2, C_upper = 10 C_lower), with the parameter count, n and K logged
    as the callback does."""
    for s in seeds:
        jitter = 1 + 0.01 * s
        for i, w in enumerate(WIDTHS):
            c = lower_shape[i] * jitter
            final = {
                "test/loss": loss_shape[i] * jitter,
                "lipschitz/lower": c,
                "lipschitz/avg": c / 2,
                "lipschitz/upper": 10 * c,
                "train/acc": 1.0 if w >= 256 else 0.8,
                "params/count": fcn_parameters(w),
                "data/train_size": 4000.0,
                "data/num_classes": 10.0,
            }
            config = {"model.width": w, "data.label_noise": 0.15, "seed_everything": s, "model.loss": "mse"}
            write_run(root / f"w{w}s{s}", config, final)
    return root


AT_256 = (1, 2, 3, 5, 9, 4)  # peaks at width 256, beyond p = n K's width 176
AT_64 = (1, 3, 9, 5, 3, 2)  # peaks at width 64, CE's peak


def test_it_analyses_the_bias_variance_mse_runs_at_every_scale():
    mse, mine = get_finding("bias_variance_mse"), get_finding("mse_double_descent")
    for scale in SCALES:
        assert sweep_name(mine, scale) == sweep_name(mse, scale)
        assert training_key(scaled_sweep(mine, scale)) == training_key(scaled_sweep(mse, scale))
        assert scaled_sweep(mine, scale)["parameters"]["model.loss"] == {"value": "mse"}


def test_the_threshold_comes_from_the_parameter_count():
    """p(w) = w^2 + 52 w + 10 for FCN 40-w-w-10 with biases (counted on the model itself); p = n = 4,000 at
    w ~ 42 and p = n K = 40,000 at w ~ 176; the declared bound is their geometric mean."""
    for width in (4, 42, 176, 512):
        model = FCN(input_dim=40, width=width, depth=2, bias=True, num_classes=10, output_activation="none")
        assert fcn_parameters(width) == sum(p.numel() for p in model.parameters()) == width**2 + 52 * width + 10
    assert fcn_parameters(width_at(12345.0)) == pytest.approx(12345.0)
    assert CE_WIDTH == pytest.approx(42.3, abs=0.05) and MSE_WIDTH == pytest.approx(175.7, abs=0.05)
    assert BEYOND_CE.op == ">" and BEYOND_CE.bound == pytest.approx(math.sqrt(CE_WIDTH * MSE_WIDTH), abs=0.05)
    assert not BEYOND_CE.passes(64) and BEYOND_CE.passes(96)  # CE's peak on the grid fails, the next width passes


def test_location_checks_read_the_majority_peak(tmp_path):
    table = completed_table(load_runs(write_runs(tmp_path / "r", AT_256, AT_64)), ["model.width", "data.label_noise"])
    by_name = {c.name: c for c in location_checks(table.assign(seed_everything=[0] * len(table)))}
    assert by_name["the test loss peak sits beyond CE's threshold"].measured == 256
    assert by_name["the C_lower peak sits beyond CE's threshold"].measured == 64


@pytest.mark.e2e
def test_holds_when_loss_and_bounds_peak_beyond_ces_threshold_and_fall(tmp_path):
    root = write_runs(tmp_path / "r", AT_256, AT_256)
    assert verdict_of("mse_double_descent", root, tmp_path / "o").startswith(HOLDS)
    summary = (tmp_path / "o" / "mse_double_descent" / "cpu" / "summary.md").read_text()
    assert "p = n at width 42.3, p = n K at width 175.7" in summary
    assert (tmp_path / "o" / "mse_double_descent" / "cpu" / "mse_double_descent.png").is_file()


@pytest.mark.e2e
def test_in_part_when_the_peaks_sit_where_ces_do(tmp_path):
    """A double descent at CE's width: the peak checks pass, the location checks fail."""
    root = write_runs(tmp_path / "r", AT_64, AT_64)
    text = verdict_of("mse_double_descent", root, tmp_path / "o")
    assert text.startswith(IN_PART) and "fails: the test loss peak sits beyond CE's threshold" in text


@pytest.mark.e2e
def test_does_not_hold_without_a_peak_beyond_ces_threshold(tmp_path):
    """The test loss peaks at 64, C_lower only rises: every check fails."""
    root = write_runs(tmp_path / "r", AT_64, (1, 2, 3, 4, 5, 6))
    assert verdict_of("mse_double_descent", root, tmp_path / "o").startswith(DOES_NOT_HOLD)


@pytest.mark.e2e
def test_two_seeds_are_undecided(tmp_path):
    root = write_runs(tmp_path / "r", AT_256, AT_256, seeds=(0, 1))
    assert verdict_of("mse_double_descent", root, tmp_path / "o").startswith(UNDECIDED)
