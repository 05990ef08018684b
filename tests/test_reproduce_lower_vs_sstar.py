"""C_lower against the max over S* (lipschitz_dd/reproduce/findings/lower_vs_sstar.py): its rows and ratio recomputed
by hand on hand-made run folders, its verdict both ways, and its sweep at every scale."""

from __future__ import annotations

import math

import pytest
from reproduce_runs import verdict_of, write_run

from lipschitz_dd.reproduce import get_finding, scaled_sweep
from lipschitz_dd.reproduce.findings.lower_vs_sstar import CLOSE, CPU_POINTS, checks, interpolated_points, sstar_rows
from lipschitz_dd.reproduce.verdict import DOES_NOT_HOLD, HOLDS, UNDECIDED, Status

EPOCHS = (0, 250, 500, 750)
SEEDS = (0, 1, 2)
POINT_SETS = str(
    [
        {"class_path": "lipschitz_dd.callbacks.TestPoints"},
        {"class_path": "lipschitz_dd.callbacks.InterpolatedPoints", "init_args": {"num_points": 100000}},
    ]
)


def write_runs(root, interp_factor=1.1, test_factor=0.9, seeds=SEEDS, epochs=EPOCHS):
    """C_lower = 1 + e/100 + s/10 on the training points; the test maximum test_factor x it, the interpolated one
    interp_factor x it (except at epoch 0, where it is 0.5 x: there the training points attain the max)."""
    for s in seeds:
        history = []
        for e in epochs:
            lower = 1 + e / 100 + s / 10
            interp = (0.5 if e == 0 else interp_factor) * lower
            history.append(
                {
                    "step": e,
                    "lipschitz/lower": lower,
                    "lipschitz/lower_test": test_factor * lower,
                    "lipschitz/lower_interp": interp,
                    "lipschitz/upper": 20 * lower,
                    "train/loss": 1.0,  # a row the callback did not measure: no S* row
                }
            )
            history.append({"step": e + 1, "train/loss": 0.5})
        final = {k: v for k, v in history[-2].items() if k != "step"}
        config = {"model.width": 256, "seed_everything": s, "lipschitz.point_sets": POINT_SETS}
        write_run(root / f"s{s}", config, final, history=history, epochs=epochs[-1] + 1)
    return root


def test_rows_and_ratio_recomputed_by_hand(tmp_path):
    from lipschitz_dd.report.records import load_runs

    records = load_runs(write_runs(tmp_path / "r", interp_factor=1.1, test_factor=1.2))
    rows = sstar_rows(records)
    assert len(rows) == len(SEEDS) * len(EPOCHS)  # only the measured epochs
    at = rows[(rows["seed"] == 1) & (rows["epoch"] == 500)].iloc[0]
    lower = 1 + 5 + 0.1
    assert at["C_lower"] == pytest.approx(lower)
    assert at["max S*"] == pytest.approx(1.2 * lower)  # the test maximum is the largest here
    assert at["attained on"] == "test"
    assert at["max S* / C_lower"] == pytest.approx(1.2)
    assert at["C_upper"] == pytest.approx(20 * lower)
    assert interpolated_points(records[0]) == 100000
    (check,) = checks(rows)
    assert check.value == pytest.approx(1.2) and check.seeds == 3


def test_holds_when_the_training_points_find_nearly_the_max(tmp_path):
    assert verdict_of("lower_vs_sstar", write_runs(tmp_path / "r", interp_factor=1.1), tmp_path / "o").startswith(HOLDS)


def test_does_not_hold_when_the_interpolated_points_find_far_more(tmp_path):
    factor = CLOSE.bound * 1.2
    runs = write_runs(tmp_path / "r", interp_factor=factor)
    assert verdict_of("lower_vs_sstar", runs, tmp_path / "o").startswith(DOES_NOT_HOLD)
    summary = (tmp_path / "o" / "lower_vs_sstar" / "cpu" / "summary.md").read_text()
    assert "lower_vs_sstar.png" in summary and "100,000 interpolated points" in summary
    assert (tmp_path / "o" / "lower_vs_sstar" / "cpu" / "lower_vs_sstar.png").stat().st_size > 0


def test_too_few_epochs_or_seeds_leave_it_undecided(tmp_path):
    from lipschitz_dd.report.records import load_runs

    (check,) = checks(sstar_rows(load_runs(write_runs(tmp_path / "a", epochs=(0, 250)))))
    assert check.status is Status.NOT_MEASURED and math.isnan(check.measured)
    one_seed = write_runs(tmp_path / "b", seeds=(0,))
    assert verdict_of("lower_vs_sstar", one_seed, tmp_path / "o").startswith(UNDECIDED)


def test_without_the_point_sets_nothing_is_measured(tmp_path):
    root = tmp_path / "r"
    write_run(root / "s0", {"seed_everything": 0}, {"lipschitz/lower": 2.0}, initial={"lipschitz/lower": 1.0})
    assert verdict_of("lower_vs_sstar", root, tmp_path / "o").startswith(UNDECIDED)


def test_scales():
    finding = get_finding("lower_vs_sstar")
    cpu = scaled_sweep(finding, "cpu")["parameters"]
    assert cpu["seed_everything"] == {"values": [0, 1, 2]}
    (sets,) = cpu["lipschitz.point_sets"]["values"]  # one grid point: the whole list
    assert sets[1]["init_args"]["num_points"] == CPU_POINTS
    assert cpu["trainer.max_epochs"] == {"value": 2500}
    full = scaled_sweep(finding, "full")
    assert "lipschitz.point_sets" not in full["parameters"]  # the config's 10^6 points
    assert full["parameters"]["seed_everything"] == {"values": [0, 1, 2, 3]}
    assert full["command"][-2] == "fcn_mnist1d_sstar"
