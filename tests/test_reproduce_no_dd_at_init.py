"""No double descent at initialisation (lipschitz_dd/reproduce/findings/no_dd_at_init.py): it analyses the
double_descent runs (same scaled sweep at every scale: trained once), its hump measure against a hand
computation, and its verdict both ways on hand-made run folders whose epoch-0 rows are chosen."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from reproduce_runs import verdict_of, write_run

from lipschitz_dd.report.records import load_runs
from lipschitz_dd.reproduce import SCALES, get_finding, scaled_sweep
from lipschitz_dd.reproduce.findings.no_dd_at_init import NO_HUMP, checks, epoch0_table, hump
from lipschitz_dd.reproduce.run import sweep_name, training_key
from lipschitz_dd.reproduce.verdict import DOES_NOT_HOLD, HOLDS, IN_PART, Status

WIDTHS = (4, 8, 16, 32, 64)
SEEDS = (0, 1, 2)
DD = (1, 3, 9, 4, 2)  # a double descent over WIDTHS: rises 9x to width 16, falls 4.5x after


def write_runs(root, lower0, avg0=None, upper0=None, noises=(0.0, 0.15), log_upper_at_init=True):
    """Runs over WIDTHS x `noises` x SEEDS; the bounds at epoch 0 are the given shapes over WIDTHS (times
    1 + 0.01 seed), the final ones a double descent 10x larger (finding 2 after training)."""
    avg0 = avg0 or lower0
    upper0 = upper0 or lower0
    for noise in noises:
        for s in SEEDS:
            jitter = 1 + 0.01 * s
            for i, w in enumerate(WIDTHS):
                initial = {"lipschitz/lower": lower0[i] * jitter, "lipschitz/avg": avg0[i] * jitter / 2}
                if log_upper_at_init:
                    initial["lipschitz/upper"] = upper0[i] * jitter * 5
                final = {m: 10 * DD[i] * jitter for m in ("lipschitz/lower", "lipschitz/avg", "lipschitz/upper")}
                final["test/loss"] = DD[i] * jitter
                config = {"model.width": w, "data.label_noise": noise, "seed_everything": s}
                write_run(root / f"n{noise}w{w}s{s}", config, final, initial)
    return root


def test_it_analyses_the_double_descent_runs_at_every_scale():
    dd, mine = get_finding("double_descent"), get_finding("no_dd_at_init")
    for scale in SCALES:
        assert sweep_name(mine, scale) == sweep_name(dd, scale)
        assert training_key(scaled_sweep(mine, scale)) == training_key(scaled_sweep(dd, scale))


def test_hump_against_a_hand_computation():
    def table(values):  # {width: [seed values]}
        rows = [{"model.width": w, "seed_everything": s, "y": v} for w, vs in values.items() for s, v in enumerate(vs)]
        return pd.DataFrame(rows)

    # interior width 2: min 5 / max at width 1 (2) = 2.5, / max at width 3 (4) = 1.25 -> 1.25; width 3 is the end
    assert hump(table({1: [1, 2], 2: [5, 6], 3: [3, 4]}), "y") == pytest.approx(1.25)
    # two interior widths: 2 gives min(4/2, 4/3) = 4/3, 3 gives min(8/2, 8/3) = 8/3 -> the larger, 8/3
    assert hump(table({1: [1, 2], 2: [4, 5], 3: [8, 9], 4: [2, 3]}), "y") == pytest.approx(8 / 3)
    # monotone rising: the interior never tops the last width
    assert hump(table({1: [1, 1.1], 2: [2, 2.1], 3: [3, 3.1]}), "y") < 1
    # overlapping spreads: min at the middle 2 / max at width 1 (2.5) < 1 although the means rise then fall
    assert hump(table({1: [1, 2.5], 2: [2, 4], 3: [1, 1.5]}), "y") == pytest.approx(0.8)
    # fewer than three widths, or a missing value: not measured
    assert math.isnan(hump(table({1: [1], 2: [2]}), "y"))
    assert math.isnan(hump(table({1: [1], 2: [math.nan], 3: [1]}), "y"))


def test_epoch0_values_come_from_the_first_row_and_each_logged_bound_is_checked(tmp_path):
    root = write_runs(tmp_path / "r", lower0=(5, 4, 3, 2, 1), log_upper_at_init=False)
    table = epoch0_table(load_runs(root))
    row = table[(table["model.width"] == 4) & (table["seed_everything"] == 2) & (table["data.label_noise"] == 0.0)]
    assert row["lipschitz/lower"].item() == pytest.approx(5 * 1.02)
    assert row["lipschitz/lower final"].item() == pytest.approx(10 * 1.02)
    assert row["lipschitz/upper"].isna().all()  # not logged at epoch 0: no check for it
    by_name = {c.name: c for c in checks(table)}
    assert set(by_name) == {"C_lower at epoch 0 has no double descent", "C_avg at epoch 0 has no double descent"}
    assert by_name["C_lower at epoch 0 has no double descent"].essential
    assert all(c.seeds == len(SEEDS) and c.threshold == NO_HUMP for c in by_name.values())
    # falling monotonically: the hump is the largest interior value over the first width's: 4 x 1.02 / (5 x 1.02)
    assert by_name["C_lower at epoch 0 has no double descent"].measured == pytest.approx(4 * 1.0 / (5 * 1.02))


@pytest.mark.e2e
def test_holds_for_flat_falling_and_rising_curves(tmp_path):
    root = write_runs(tmp_path / "r", lower0=(1.0, 1.0, 1.0, 1.0, 1.0), avg0=(5, 4, 3, 2, 1), upper0=(1, 2, 3, 4, 5))
    assert verdict_of("no_dd_at_init", root, tmp_path / "o").startswith(HOLDS)
    summary = (tmp_path / "o" / "no_dd_at_init" / "cpu" / "summary.md").read_text()
    assert (
        "hump after training" in summary and (tmp_path / "o" / "no_dd_at_init" / "cpu" / "no_dd_at_init.png").is_file()
    )


@pytest.mark.e2e
def test_does_not_hold_for_a_double_descent_at_init(tmp_path):
    root = write_runs(tmp_path / "r", lower0=DD)
    assert verdict_of("no_dd_at_init", root, tmp_path / "o").startswith(DOES_NOT_HOLD)


@pytest.mark.e2e
def test_in_part_when_only_the_upper_bound_humps(tmp_path):
    root = write_runs(tmp_path / "r", lower0=(1, 1, 1, 1, 1), upper0=DD)
    text = verdict_of("no_dd_at_init", root, tmp_path / "o")
    assert text.startswith(IN_PART) and "fails: C_upper at epoch 0 has no double descent" in text


def test_the_final_values_show_the_hump_the_epoch0_values_lack(tmp_path):
    """The same measure on the trained values (the contrast the summary lists) finds the double descent."""
    table = epoch0_table(load_runs(write_runs(tmp_path / "r", lower0=(1, 1, 1, 1, 1))))
    group = table[table["data.label_noise"] == 0.0]
    assert hump(group, "lipschitz/lower final") > 1 >= hump(group, "lipschitz/lower")
    assert next(c for c in checks(table) if c.name.startswith("C_lower")).status is Status.PASS


def test_hump_at_names_the_interior_width():
    from lipschitz_dd.reproduce.findings.no_dd_at_init import hump_at

    rows = [{"model.width": w, "seed_everything": 0, "y": y} for w, y in ((1, 1.0), (2, 3.0), (3, 5.0), (4, 2.0))]
    # width 2: min(3/1, 3/2) = 1.5; width 3: min(5/1, 5/2) = 2.5
    assert hump_at(pd.DataFrame(rows), "y") == (3.0, pytest.approx(2.5))
