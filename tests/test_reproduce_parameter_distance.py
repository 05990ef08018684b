"""The parameter distance over width (lipschitz_dd/reproduce/findings/parameter_distance.py): it analyses the
double_descent runs (same scaled sweep at every scale: trained once), its peak table recomputed by hand, and its
verdict both ways on hand-made run folders."""

from __future__ import annotations

import math

import pytest
from reproduce_runs import verdict_of, write_run

from lipschitz_dd.report.records import load_runs
from lipschitz_dd.reproduce import SCALES, get_finding, scaled_sweep
from lipschitz_dd.reproduce.findings.parameter_distance import (
    DIST,
    checks,
    correlation_rows,
    distance_table,
    peak_rows,
)
from lipschitz_dd.reproduce.run import sweep_name, training_key
from lipschitz_dd.reproduce.verdict import DOES_NOT_HOLD, HOLDS, UNDECIDED

WIDTHS = (4, 8, 16, 32, 64)
SEEDS = (0, 1, 2)
LOSS = (1, 2, 4, 2, 1)  # the test loss peaks at width 16


def write_runs(root, distance, noises=(0.0, 0.15), seeds=SEEDS, log_distance=True):
    """Runs over WIDTHS x `noises` x `seeds`: test loss LOSS, C_lower 10 x LOSS, final distance `distance`
    (a shape over WIDTHS) times 1 + 0.01 seed."""
    for noise in noises:
        for s in seeds:
            jitter = 1 + 0.01 * s
            for i, w in enumerate(WIDTHS):
                final = {"test/loss": LOSS[i] * jitter, "lipschitz/lower": 10 * LOSS[i] * jitter, "train/acc": 1.0}
                if log_distance:
                    final[DIST] = distance[i] * jitter
                config = {"model.width": w, "data.label_noise": noise, "seed_everything": s}
                initial = {**final, DIST: 0.0} if log_distance else final
                write_run(root / f"n{noise}w{w}s{s}", config, final, initial=initial)
    return root


def test_it_analyses_the_double_descent_runs_at_every_scale():
    dd, mine = get_finding("double_descent"), get_finding("parameter_distance")
    for scale in SCALES:
        assert sweep_name(mine, scale) == sweep_name(dd, scale)
        assert training_key(scaled_sweep(mine, scale)) == training_key(scaled_sweep(dd, scale))


def test_peak_rows_and_checks_recomputed_by_hand(tmp_path):
    table = distance_table(load_runs(write_runs(tmp_path / "r", (2, 5, 20, 8, 4))))
    assert len(table) == len(WIDTHS) * 2 * len(SEEDS)
    rows = peak_rows(table)
    assert list(rows["test-loss peak"]) == [16, 16] and list(rows["distance peak"]) == [16, 16]
    assert list(rows["seeds agreeing"]) == [1.0, 1.0] and list(rows["with test loss"]) == [1.0, 1.0]
    # min over seeds at width 16 (20) / max over seeds at width 64 (4 x 1.02)
    assert rows["falls after"].iloc[0] == pytest.approx(20 / (4 * 1.02))
    by_name = {c.name: c for c in checks(table)}
    assert by_name["||theta - theta_0|| peaks with the test loss"].measured == 1.0
    assert by_name["||theta - theta_0|| falls after its peak"].measured == pytest.approx(20 / 4.08)
    assert all(c.seeds == len(SEEDS) for c in by_name.values())
    # the distance is 2 x C_lower / LOSS ... : log distance against log C_lower, an independent numpy fit
    import numpy as np

    corr = correlation_rows(table)["corr(log distance, log C_lower)"].iloc[0]
    one = table[table["data.label_noise"] == 0.0]
    assert corr == pytest.approx(np.corrcoef(np.log(one[DIST]), np.log(one["lipschitz/lower"]))[0, 1])


def test_a_peak_at_the_largest_width_is_not_interior(tmp_path):
    rows = peak_rows(distance_table(load_runs(write_runs(tmp_path / "r", (1, 2, 3, 4, 5)))))
    assert list(rows["distance peak"]) == [64, 64] and list(rows["with test loss"]) == [0.0, 0.0]
    assert list(rows["falls after"]) == [0.0, 0.0]


@pytest.mark.e2e
def test_holds_when_the_distance_peaks_with_the_test_loss(tmp_path):
    root = write_runs(tmp_path / "r", (2, 5, 20, 8, 4))
    assert verdict_of("parameter_distance", root, tmp_path / "o").startswith(HOLDS)
    assert (tmp_path / "o" / "parameter_distance" / "cpu" / "parameter_distance.png").is_file()


@pytest.mark.e2e
def test_does_not_hold_when_the_distance_grows_with_width(tmp_path):
    root = write_runs(tmp_path / "r", (1, 2, 3, 4, 5))
    assert verdict_of("parameter_distance", root, tmp_path / "o").startswith(DOES_NOT_HOLD)


@pytest.mark.e2e
def test_undecided_without_the_distance_or_with_one_seed(tmp_path):
    root = write_runs(tmp_path / "r", (2, 5, 20, 8, 4), log_distance=False)
    text = verdict_of("parameter_distance", root, tmp_path / "o")
    assert text.startswith(UNDECIDED) and "not measured" in text
    one = write_runs(tmp_path / "one", (2, 5, 20, 8, 4), seeds=(0,))
    assert verdict_of("parameter_distance", one, tmp_path / "o1").startswith("undecided: 1 seed")
    assert math.isnan(checks(distance_table(load_runs(root)))[0].measured)
