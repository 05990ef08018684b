"""The upper bound for very wide nets (lipschitz_dd/reproduce/findings/upper_wide.py): its ratios recomputed by hand on
hand-made run folders, its verdict both ways, and its sweep at every scale."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from reproduce_runs import verdict_of, write_run

from lipschitz_dd.reproduce import get_finding, scaled_sweep
from lipschitz_dd.reproduce.findings.upper_wide import checks, fall_ratio, rise_ratio
from lipschitz_dd.reproduce.verdict import DOES_NOT_HOLD, HOLDS, IN_PART, UNDECIDED

WIDTHS = (256, 512, 1024, 2048)
SEEDS = (0, 1, 2)
#: C_upper per width: down to 512, then up (the study's picture); C_lower falling all the way.
UPPER_UP = {256: 100.0, 512: 80.0, 1024: 90.0, 2048: 120.0}
UPPER_DOWN = {256: 100.0, 512: 80.0, 1024: 70.0, 2048: 60.0}
LOWER_DOWN = {256: 30.0, 512: 25.0, 1024: 20.0, 2048: 15.0}
LOWER_UP = {256: 15.0, 512: 20.0, 1024: 25.0, 2048: 30.0}


def write_runs(root, upper=UPPER_UP, lower=LOWER_DOWN, seeds=SEEDS, jitter=0.01):
    """One run per width and seed: the bounds of the dicts times (1 + jitter x seed); C_upper at epoch 0 is 2."""
    for w in WIDTHS:
        for s in seeds:
            f = 1 + jitter * s
            final = {
                "lipschitz/upper": upper[w] * f,
                "lipschitz/lower": lower[w] * f,
                "lipschitz/avg": lower[w] * f / 2,
                "test/loss": 1.0,
            }
            initial = {**final, "lipschitz/upper": 2.0}
            config = {"model.width": w, "data.label_noise": 0.15, "seed_everything": s}
            write_run(root / f"w{w}s{s}", config, final, initial=initial, epochs=20)
    return root


def test_ratios_recomputed_by_hand():
    rows = [
        {"model.width": w, "seed_everything": s, "lipschitz/upper": UPPER_UP[w] * (1 + 0.01 * s)}
        for w in WIDTHS
        for s in SEEDS
    ]
    group = pd.DataFrame(rows)
    # bottom of the descent below 2048: width 512 (80 .. 81.6); at 2048: 120 .. 122.4
    assert rise_ratio(group) == pytest.approx(120.0 / (80 * 1.02))
    group["lipschitz/lower"] = [LOWER_DOWN[w] * (1 + 0.01 * s) for w in WIDTHS for s in SEEDS]
    assert fall_ratio(group, "lipschitz/lower") == pytest.approx(30.0 / (15 * 1.02))
    assert math.isnan(rise_ratio(group[group["model.width"] == 256]))  # one width: nothing to compare


def test_holds_when_the_upper_bound_rises_and_the_lower_falls(tmp_path):
    assert verdict_of("upper_wide", write_runs(tmp_path / "r"), tmp_path / "o").startswith(HOLDS)
    folder = tmp_path / "o" / "upper_wide" / "cpu"
    assert (folder / "upper_wide.png").stat().st_size > 0
    assert "C_upper at epoch 0" in (folder / "summary.md").read_text()


def test_does_not_hold_when_the_upper_bound_keeps_falling_and_the_lower_rises(tmp_path):
    runs = write_runs(tmp_path / "r", upper=UPPER_DOWN, lower=LOWER_UP)
    assert verdict_of("upper_wide", runs, tmp_path / "o").startswith(DOES_NOT_HOLD)


def test_in_part_and_within_the_seed_spread(tmp_path):
    runs = write_runs(tmp_path / "a", upper=UPPER_DOWN, lower=LOWER_DOWN)
    assert verdict_of("upper_wide", runs, tmp_path / "o").startswith(IN_PART)
    # a 60 % seed spread swallows the rise 80 -> 120: not beyond the spread
    from lipschitz_dd.report.records import load_runs
    from lipschitz_dd.reproduce.analysis import completed_table

    table = completed_table(load_runs(write_runs(tmp_path / "b", jitter=0.3)), ["model.width", "seed_everything"])
    rise = checks(table)[0]
    assert rise.measured == pytest.approx(120.0 / (80 * 1.6)) and rise.measured < 1


def test_one_seed_is_undecided(tmp_path):
    assert verdict_of("upper_wide", write_runs(tmp_path / "r", seeds=(0,)), tmp_path / "o").startswith(UNDECIDED)


def test_scales():
    finding = get_finding("upper_wide")
    cpu = scaled_sweep(finding, "cpu")["parameters"]
    assert cpu["model.width"] == {"values": [256, 512, 1024, 2048]}
    assert cpu["seed_everything"] == {"values": [0, 1, 2]}
    assert cpu["data.label_noise"] == {"value": 0.15}
    full = scaled_sweep(finding, "full")
    assert full["command"][-2] == "fcn_mnist1d"  # the study's paper-protocol sweep
    assert max(full["parameters"]["model.width"]["values"]) >= 65536
