"""The wide net's evolution (lipschitz_dd/reproduce/findings/wide_evolution.py): growth recomputed by hand on
hand-made run folders, its verdict both ways, and its config at every scale."""

from __future__ import annotations

import pytest
from reproduce_runs import verdict_of, write_run

from lipschitz_dd.reproduce import get_finding, scaled_sweep
from lipschitz_dd.reproduce.findings.wide_evolution import FAR, checks, growth_rows
from lipschitz_dd.reproduce.verdict import DOES_NOT_HOLD, HOLDS, UNDECIDED

SEEDS = (0, 1, 2)


def write_runs(root, growth=20.0, seeds=SEEDS, width=2048, narrow_growth=None):
    """Per seed: C_lower 0.5 at epoch 0, 0.5 x growth x (1 + s/10) at epoch 400 (a row at 200 between); with
    `narrow_growth`, one more run at width 256 growing that much."""
    runs = [(width, s, growth) for s in seeds] + ([(256, 0, narrow_growth)] if narrow_growth else [])
    for w, s, g in runs:
        end = 0.5 * g * (1 + s / 10)
        history = [
            {"step": 0, "lipschitz/lower": 0.5, "lipschitz/avg": 0.3, "lipschitz/upper": 2.0, "params/dist_init": 0.0},
            {"step": 200, "lipschitz/lower": end / 2, "lipschitz/avg": 0.6, "lipschitz/upper": 4.0},
            {
                "step": 400,
                "lipschitz/lower": end,
                "lipschitz/avg": 0.9,
                "lipschitz/upper": 8.0,
                "params/dist_init": 3.0,
            },
        ]
        final = {k: v for k, v in history[-1].items() if k != "step"}
        write_run(root / f"w{w}s{s}", {"model.width": w, "seed_everything": s}, final, history=history, epochs=400)
    return root


def test_growth_recomputed_by_hand(tmp_path):
    from lipschitz_dd.report.records import load_runs

    rows = growth_rows(load_runs(write_runs(tmp_path / "r", growth=4.0, narrow_growth=50.0)))
    row = rows[(rows["width"] == 2048) & (rows["seed"] == 2)].iloc[0]
    assert row["C_lower epoch 0"] == 0.5
    assert row["C_lower end / epoch 0"] == pytest.approx(4.0 * 1.2)
    assert row["C_upper end / epoch 0"] == pytest.approx(4.0)
    assert row["||theta - theta_0||"] == 3.0 and row["epochs"] == 400
    (check,) = checks(rows)
    assert check.measured == pytest.approx(4.0)  # the widest runs only: the narrow run's 50x is not counted
    assert check.seeds == 3


def test_holds_when_the_wide_net_moves_far(tmp_path):
    growth = FAR.bound * 1.5
    assert verdict_of("wide_evolution", write_runs(tmp_path / "r", growth=growth), tmp_path / "o").startswith(HOLDS)
    assert (tmp_path / "o" / "wide_evolution" / "cpu" / "wide_evolution.png").stat().st_size > 0


def test_does_not_hold_when_it_stays_near_its_initial_constant(tmp_path):
    runs = write_runs(tmp_path / "r", growth=1.05)
    assert verdict_of("wide_evolution", runs, tmp_path / "o").startswith(DOES_NOT_HOLD)


def test_one_seed_is_undecided(tmp_path):
    runs = write_runs(tmp_path / "r", growth=50.0, seeds=(0,))
    assert verdict_of("wide_evolution", runs, tmp_path / "o").startswith(UNDECIDED)


def test_scales():
    finding = get_finding("wide_evolution")
    full = scaled_sweep(finding, "full")["parameters"]
    assert full["model.width"] == {"value": 65536}  # the study's width
    cpu = scaled_sweep(finding, "cpu")["parameters"]
    assert cpu["model.width"] == {"value": 2048} and cpu["seed_everything"] == {"values": [0, 1, 2]}
    assert scaled_sweep(finding, "cpu")["command"][-2] == "fcn_mnist1d"  # the paper's protocol
