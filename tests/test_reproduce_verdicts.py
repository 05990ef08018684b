"""Verdicts from declared checks (lipschitz_dd/reproduce/verdict.py): the one rule, and every finding's verdict
both ways, `holds` and `does not hold`, on hand-made run folders (tests/reproduce_runs.py) or, for findings
measured on saved checkpoints, on hand-made measurement tables given to the finding's checks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from reproduce_runs import verdict_of, write_run

from lipschitz_dd.reproduce.measures import binomial_upper_tail, peak_by_majority, separated_ratio
from lipschitz_dd.reproduce.registry import all_findings, get_finding
from lipschitz_dd.reproduce.run import analyse_folder
from lipschitz_dd.reproduce.verdict import (
    DOES_NOT_HOLD,
    HOLDS,
    IN_PART,
    UNDECIDED,
    Check,
    Status,
    Threshold,
    decide,
)

BELOW_ONE = Threshold("<=", 1.0)


def check(value, essential=True, seeds=None, threshold=BELOW_ONE, name="c"):
    return Check(name, "a ratio", value, threshold, essential=essential, seeds=seeds)


# ---------------------------------------------------------------------------------------------- the rule


def test_the_rule_all_pass_all_fail_mixed():
    assert decide([check(0.5), check(0.9)]).label == HOLDS
    assert decide([check(1.5), check(2.0)]).label == DOES_NOT_HOLD
    mixed = decide([check(0.5, name="a"), check(1.5, name="b")])
    assert mixed.label == IN_PART and "fails: b" in mixed.reason and "passes: a" in mixed.reason


def test_a_failed_finite_difference_check_is_a_failure_not_in_part():
    """The old below_one([1.5, nan]) read "holds in part": now the largest finite ratio, 1.5, fails."""
    from lipschitz_dd.reproduce.measures import finite_max

    fd = check(finite_max([1.5, math.nan]))
    assert fd.status is Status.FAIL
    assert decide([fd]).label == DOES_NOT_HOLD


def test_not_measured_essential_is_undecided_non_essential_is_left_out():
    assert decide([check(0.5), check(math.nan)]).label == UNDECIDED
    assert decide([check(0.5), check(None)]).label == UNDECIDED
    assert "not measured: c" in decide([check(None)]).reason
    assert decide([check(0.5), check(math.nan, essential=False)]).label == HOLDS
    assert decide([]).label == UNDECIDED


def test_too_few_seeds_where_a_check_compares_is_undecided():
    one_seed = decide([check(0.5, seeds=1), check(0.5)])
    assert one_seed.label == UNDECIDED and one_seed.reason.startswith("1 seed; rerun with 3")
    assert decide([check(0.5, seeds=3), check(1.5, seeds=3)]).label == IN_PART
    assert decide([check(2.0, seeds=2)]).label == UNDECIDED  # even a failure is undecided on 2 seeds


def test_thresholds_compare_as_declared():
    assert Threshold(">", 1.0).passes(1.01) and not Threshold(">", 1.0).passes(1.0)
    assert Threshold(">=", 1.0).passes(1.0) and Threshold("<", 0.0).passes(-0.1)
    with pytest.raises(ValueError, match="operator"):
        Threshold("==", 1.0)


def test_seed_statistics():
    table = pd.DataFrame({"w": [1, 2, 3] * 3, "seed_everything": [0] * 3 + [1] * 3 + [2] * 3})
    table["y"] = [1, 5, 2, 1, 5, 2, 9, 1, 1]  # seeds 0 and 1 peak at 2, seed 2 at 1
    assert peak_by_majority(table, "w", "y") == (2, pytest.approx(2 / 3))
    assert separated_ratio([4, 5], [2, 3]) == pytest.approx(4 / 3)
    assert separated_ratio([2.5, 5], [2, 3]) < 1  # the spreads overlap
    # binomial tail against a direct sum
    n, k, p = 20, 7, 0.2
    direct = sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))
    assert binomial_upper_tail(k, n, p) == pytest.approx(direct)


def test_every_real_finding_has_an_analysis_and_a_setting():
    for finding in all_findings():
        if not finding.needs:
            assert finding.analyse is not None and finding.setting, finding.name


# -------------------------------------------------------------------------------- findings on run folders

SEEDS = (0, 1, 2)


def _dd_runs(root, hue_key, hue_values, good: bool):
    """Widths 4..64 x `hue_values` x 3 seeds: test loss peaks at 16; the bounds peak there and fall (good) or
    rise monotonically (not good)."""
    for h in hue_values:
        for s in SEEDS:
            for i, w in enumerate((4, 8, 16, 32, 64)):
                loss = (1, 2, 4, 2, 1)[i] + 0.1 * s
                c = ((1, 3, 9, 4, 2) if good else (1, 2, 3, 4, 5))[i] + 0.05 * s
                final = {"test/loss": loss, "lipschitz/lower": c, "lipschitz/avg": c / 2, "lipschitz/upper": 10 * c}
                write_run(root / f"h{h}w{w}s{s}", {"model.width": w, hue_key: h, "seed_everything": s}, final)


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["double_descent", "cnn_fashion_mnist_dd"])
def test_double_descent_both_ways(tmp_path, name):
    for good, expected in ((True, HOLDS), (False, DOES_NOT_HOLD)):
        runs = tmp_path / f"runs{good}"
        _dd_runs(runs, "data.label_noise", (0.0, 0.15), good)
        assert verdict_of(name, runs, tmp_path / f"out{good}").startswith(expected)


@pytest.mark.e2e
def test_double_descent_with_one_seed_is_undecided(tmp_path):
    _dd_runs(tmp_path / "runs", "data.label_noise", (0.15,), True)
    for folder in (tmp_path / "runs").iterdir():
        if not folder.name.endswith("s0"):
            import shutil

            shutil.rmtree(folder)
    assert verdict_of("double_descent", tmp_path / "runs", tmp_path / "out").startswith("undecided: 1 seed")


@pytest.mark.e2e
def test_constrained_both_ways(tmp_path):
    for damped, expected in ((True, HOLDS), (False, DOES_NOT_HOLD)):
        peaks = {1.0: 4.0, 10.0: 2.0, 40.0: 1.5} if damped else {1.0: 1.5, 10.0: 2.0, 40.0: 4.0}
        for t, peak in peaks.items():
            for s in SEEDS:
                for w in (2, 8, 32):
                    loss = (peak if w == 8 else 1.0) + 0.01 * s
                    final = {"test/loss": loss, "lipschitz/lower": 10 * loss, "lipschitz/upper": 100 * loss}
                    config = {"model.logit_temperature": t, "model.width": w, "seed_everything": s}
                    write_run(tmp_path / f"r{damped}" / f"t{t}w{w}s{s}", config, final)
        assert verdict_of("constrained", tmp_path / f"r{damped}", tmp_path / f"o{damped}").startswith(expected)


@pytest.mark.e2e
def test_heatmap_both_ways(tmp_path):
    """Holds: the C_lower peak moves from width 8 to 32 with noise, interior noise peaks at 2 of 3 widths. Does
    not hold: the peak moves left, and every width peaks at the largest noise."""
    good = {0.0: [5, 3, 1], 0.1: [6, 8, 2], 0.2: [4, 9, 7], 0.3: [2, 4, 8]}
    bad = {0.0: [1, 3, 5], 0.1: [2, 4, 6], 0.2: [7, 5, 3], 0.3: [9, 8, 7]}
    for grid, expected in ((good, HOLDS), (bad, DOES_NOT_HOLD)):
        runs = tmp_path / expected.replace(" ", "_")
        for noise, values in grid.items():
            for w, v in zip((8, 16, 32), values, strict=True):
                for s in SEEDS:
                    config = {"model.width": w, "data.label_noise": noise, "seed_everything": s}
                    # every run ends at the same training loss: the matched reading is the end's
                    final = {"lipschitz/lower": v + 0.01 * s, "test/loss": v, "train/loss": 0.1}
                    write_run(
                        runs / f"w{w}n{noise}s{s}", config, final, initial={"lipschitz/lower": 0.1, "train/loss": 2}
                    )
        assert verdict_of("heatmap", runs, tmp_path / f"out_{expected}").startswith(expected)


def test_heatmap_peak_that_stays_put_does_not_pass_monotonically(tmp_path):
    """The C_lower peak sits at width 16 at every noise level and C_lower falls with the noise at every width: no
    claim holds. "It moves monotonically" would pass vacuously on a peak that never moves; it is not measured."""
    grid = {0.0: [3, 9, 5], 0.1: [2, 8, 4], 0.2: [1, 7, 3]}  # noise -> C_lower at widths 8, 16, 32
    runs = tmp_path / "runs"
    for noise, values in grid.items():
        for w, v in zip((8, 16, 32), values, strict=True):
            for s in SEEDS:
                config = {"model.width": w, "data.label_noise": noise, "seed_everything": s}
                final = {"lipschitz/lower": v + 0.01 * s, "test/loss": v, "train/loss": 0.1}
                write_run(runs / f"w{w}n{noise}s{s}", config, final, initial={"lipschitz/lower": 0.1, "train/loss": 2})
    summary = analyse_folder(get_finding("heatmap"), "cpu", runs, tmp_path / "out").summary.read_text()
    assert "| it moves monotonically |" in summary and "| - | >= 1 | 3 | not measured (not essential) |" in summary
    assert verdict_of("heatmap", runs, tmp_path / "out2").startswith(DOES_NOT_HOLD)


def test_heatmap_reads_c_lower_at_matched_training_loss(tmp_path):
    """At width 16, the noise-0 runs reach the common level (train loss 0.5, the noisiest runs' lowest) at epoch 2
    with C_lower 3 and end at 10; noise 0.1 reaches it at its end (C_lower 6), noise 0.2 too (C_lower 4). At the
    end C_lower peaks at noise 0 (the edge); at matched loss at noise 0.1 (interior). The peak over width sits at
    width 16 at both noise ends at matched loss (width 8 ends lower everywhere): it does not move."""
    histories = {
        0.0: [(0, 2.0, 0.1), (2, 0.5, 3.0), (5, 0.1, 10.0)],  # epoch, train/loss, C_lower
        0.1: [(0, 2.0, 0.1), (2, 1.0, 2.0), (5, 0.5, 6.0)],
        0.2: [(0, 2.0, 0.1), (2, 1.0, 2.0), (5, 0.5, 4.0)],
    }
    runs = tmp_path / "runs"
    for noise, history in histories.items():
        for s in SEEDS:
            for w, scale in ((8, 0.5), (16, 1.0)):
                rows = [{"step": e, "train/loss": loss, "lipschitz/lower": c * scale} for e, loss, c in history]
                final = {k: v for k, v in rows[-1].items() if k != "step"} | {"test/loss": 1.0}
                config = {"model.width": w, "data.label_noise": noise, "seed_everything": s}
                write_run(runs / f"w{w}n{noise}s{s}", config, final, history=rows)
    summary = analyse_folder(get_finding("heatmap"), "cpu", runs, tmp_path / "out").summary.read_text()
    checks = {line.split(" | ")[0].lstrip("| "): line for line in summary.splitlines() if line.startswith("| ")}
    assert checks["at a fixed width C_lower peaks at an interior noise"].endswith("| 0 | >= 0.5 | 3 | fail |")
    assert checks["at matched training loss: C_lower peaks at an interior noise"].endswith("| 1 | >= 0.5 | 3 | pass |")
    assert checks["at matched training loss: the C_lower peak moves to larger widths"].endswith(
        "| 1 | > 1 | 3 | fail |"
    )
    assert "| 16 | 0 | 3 |" in summary  # width 16, noise 0: C_lower 3 at matched loss (per width)


def _two_settings(root, key, a, b, values, matched_metric=None):
    """Runs of `key` = a and b at widths 16 / 64, 3 seeds: final C_lower values[a] / values[b] (+ seed jitter).
    With `matched_metric`, both train to the same final value of it, so the matched ratio equals the final one."""
    for level in (a, b):
        for w in (16, 64):
            for s in SEEDS:
                c = values[level] * (1 + 0.01 * s)
                final = {"lipschitz/lower": c, "lipschitz/avg": c / 2, "lipschitz/upper": 10 * c}
                if matched_metric:
                    final[matched_metric] = 0.5
                write_run(root / f"{level}w{w}s{s}", {key: level, "model.width": w, "seed_everything": s}, final)


@pytest.mark.e2e
def test_optimizer_both_ways(tmp_path):
    _two_settings(tmp_path / "h", "model.optimizer", "adam", "sgd", {"adam": 30.0, "sgd": 10.0}, "train/loss")
    assert verdict_of("optimizer", tmp_path / "h", tmp_path / "oh").startswith(HOLDS)
    _two_settings(tmp_path / "n", "model.optimizer", "adam", "sgd", {"adam": 5.0, "sgd": 10.0}, "train/loss")
    assert verdict_of("optimizer", tmp_path / "n", tmp_path / "on").startswith(DOES_NOT_HOLD)


@pytest.mark.e2e
def test_loss_both_ways(tmp_path):
    """Holds: MSE 0.8x CE (smaller, within 2x, also at equal accuracy). In part: MSE 0.1x CE (smaller, not
    slightly). Does not hold: MSE 3x CE (not smaller, not within 2x)."""
    _two_settings(tmp_path / "h", "model.loss", "mse", "ce", {"mse": 8.0, "ce": 10.0}, "train/acc")
    assert verdict_of("loss", tmp_path / "h", tmp_path / "oh").startswith(HOLDS)
    _two_settings(tmp_path / "p", "model.loss", "mse", "ce", {"mse": 1.0, "ce": 10.0}, "train/acc")
    text = verdict_of("loss", tmp_path / "p", tmp_path / "op")
    assert text.startswith(IN_PART) and "fails: MSE's C_lower within 2x of CE's" in text
    _two_settings(tmp_path / "n", "model.loss", "mse", "ce", {"mse": 30.0, "ce": 10.0}, "train/acc")
    assert verdict_of("loss", tmp_path / "n", tmp_path / "on").startswith(DOES_NOT_HOLD)


def _slope_runs(root, key, exponents_init, exponents_final, xs=(1, 2, 4, 8), extra=None):
    for x in xs:
        for s in SEEDS:
            jitter = 1 + 0.01 * s
            initial = {m: jitter * x**e for m, e in exponents_init.items()}
            final = {m: jitter * x**e for m, e in exponents_final.items()}
            config = {key: x, "seed_everything": s, **(extra(x) if extra else {})}
            write_run(root / f"x{x}s{s}", config, final, initial)


@pytest.mark.e2e
def test_depth_both_ways(tmp_path):
    up, down = {"lipschitz/lower": 2.0, "lipschitz/avg": 1.2, "lipschitz/upper": 3.3}, {}
    init_good = {"lipschitz/lower": -1.0, "lipschitz/avg": -0.5, "lipschitz/upper": 0.1}
    _slope_runs(tmp_path / "h", "model.depth", init_good, up)
    assert verdict_of("depth", tmp_path / "h", tmp_path / "oh").startswith(HOLDS)
    down = {m: -e for m, e in up.items()}
    init_bad = {m: -e for m, e in init_good.items()}
    _slope_runs(tmp_path / "n", "model.depth", init_bad, down)
    assert verdict_of("depth", tmp_path / "n", tmp_path / "on").startswith(DOES_NOT_HOLD)


def _train_size_runs(root, exponent, equal_update_exponent, matched_exponent):
    """Sets of 100..800 points, batch 100 (1..8 updates per epoch), 16 epochs, 3 seeds. C_lower at the end is
    (n/100)^matched_exponent (C_avg, C_upper: ^exponent); at epoch 16 / (n / 100) (equal updates: 16 each)
    (n/100)^equal_update_exponent; the training loss reaches its common final value 0.1 only at the end, so the
    equal-loss reading is the end."""
    for n in (100, 200, 400, 800):
        for s in SEEDS:
            jitter, size = 1 + 0.01 * s, n / 100
            equal_epoch = 16 // (n // 100)
            history = []
            for epoch in range(0, 17):
                row = {"step": epoch, "train/loss": 2.0 if epoch < 16 else 0.1}
                if epoch == equal_epoch:
                    row["lipschitz/lower"] = jitter * size**equal_update_exponent
                if epoch == 16:
                    row["lipschitz/lower"] = jitter * size**matched_exponent
                    row.update({"lipschitz/avg": jitter * size**exponent, "lipschitz/upper": jitter * size**exponent})
                history.append(row)
            final = {k: v for k, v in history[-1].items() if k != "step"}
            config = {"data.train_subset": n, "data.batch_size": 100, "seed_everything": s}
            write_run(root / f"n{n}s{s}", config, final, history=history, epochs=16)


@pytest.mark.e2e
def test_train_size_compares_at_equal_updates_and_equal_loss(tmp_path):
    _train_size_runs(tmp_path / "h", 0.5, 0.3, 0.5)
    assert verdict_of("train_size", tmp_path / "h", tmp_path / "oh").startswith(HOLDS)
    # the trend at a fixed number of epochs, reversed at equal updates: in part, and it says which
    _train_size_runs(tmp_path / "p", 0.5, -0.3, 0.5)
    text = verdict_of("train_size", tmp_path / "p", tmp_path / "op")
    assert text.startswith(IN_PART) and "fails: C_lower at equal updates rises with the set size" in text
    _train_size_runs(tmp_path / "s", 1.5, 0.3, 1.5)  # rises, but faster than linearly
    text = verdict_of("train_size", tmp_path / "s", tmp_path / "os")
    assert text.startswith(IN_PART) and "fails: $C_{lower}$ rises sub-linearly" in text
    _train_size_runs(tmp_path / "n", -0.5, -0.3, -0.5)
    assert verdict_of("train_size", tmp_path / "n", tmp_path / "on").startswith(DOES_NOT_HOLD)


@pytest.mark.e2e
def test_evolution_both_ways(tmp_path):
    for growth, expected in ((2.0, HOLDS), (0.0, DOES_NOT_HOLD)):
        for s in SEEDS:
            history = [{"step": 0, "lipschitz/lower": 1.0, "lipschitz/avg": 1.0, "lipschitz/upper": 1.0}]
            for e in range(10, 401, 10):
                value = (1 + 0.01 * s) * (e / 10) ** growth if growth else 1.0 + 0.3 * math.sin(e)
                history.append({"step": e, "lipschitz/lower": value, "lipschitz/avg": value, "lipschitz/upper": value})
            final = {k: v for k, v in history[-1].items() if k != "step"}
            write_run(tmp_path / expected / f"s{s}", {"model.width": 32, "seed_everything": s}, final, history=history)
        assert verdict_of("evolution", tmp_path / expected, tmp_path / f"o{expected}").startswith(expected)


def test_evolution_bound_both_ways(tmp_path):
    for good, expected in ((True, HOLDS), (False, DOES_NOT_HOLD)):
        for s in SEEDS:
            history = []
            for e in range(0, 101, 10):
                lower = 1 + e * (1 + 0.01 * s)
                bound1 = 2 * lower if good else 0.5 * lower  # below C_lower: not a bound
                bound2 = 3 * lower if good else 1e4 - e * e  # far above C_upper, falling
                upper = 10 * lower if good else 1.0
                history.append(
                    {
                        "step": e,
                        "lipschitz/lower": lower,
                        "lipschitz/upper": upper,
                        "evolution/bound1": bound1 if good else (1e4 - e * e),
                        "evolution/bound2": bound2,
                    }
                )
            final = {k: v for k, v in history[-1].items() if k != "step"}
            write_run(tmp_path / expected / f"s{s}", {"seed_everything": s}, final, history=history, epochs=100)
        assert verdict_of("evolution_bound", tmp_path / expected, tmp_path / f"o{expected}").startswith(expected)


@pytest.mark.e2e
def test_regulariser_both_ways(tmp_path):
    for good, expected in ((True, HOLDS), (False, DOES_NOT_HOLD)):
        for lam in (0.0, 0.01, 0.1):
            for s in SEEDS:
                loss = (1.0 if lam == 0 else (0.8 if good else 1.2)) + 0.01 * s
                upper = 100.0 if (good or lam == 0) else 30.0
                final = {"test/loss": loss, "test/acc": 0.5, "lipschitz/lower": 5.0, "lipschitz/avg": 2.0}
                final["lipschitz/upper"] = upper
                config = {"model.jacobian_penalty": lam, "seed_everything": s}
                write_run(tmp_path / expected / f"l{lam}s{s}", config, final)
        assert verdict_of("regulariser", tmp_path / expected, tmp_path / f"o{expected}").startswith(expected)


# --------------------------------------------------------------- findings on checkpoints: their checks


def test_bias_variance_split_is_exact():
    from lipschitz_dd.reproduce.findings.bias_variance import bias_variance_split

    rng = np.random.default_rng(0)
    outputs, targets = rng.normal(size=(4, 30, 3)), rng.integers(0, 3, size=30)
    bias2, variance, expected = bias_variance_split(outputs, targets)
    one_hot = np.eye(3)[targets]
    direct = np.mean([np.mean(np.sum((o - one_hot) ** 2, axis=1)) for o in outputs])
    assert expected == pytest.approx(direct) and bias2 + variance == pytest.approx(direct)
    assert variance == pytest.approx(np.mean(np.sum(outputs.var(axis=0), axis=1)))


def _bv_tables(bound_factor: float, variance_peak_width: int):
    from lipschitz_dd.report.bias_variance import FUNCTION_VARIANCE, PAPER_BOUND

    widths = [4, 8, 16, 32, 64]
    v = [1.0 if w != variance_peak_width else 5.0 for w in widths]
    table = pd.DataFrame({"model.width": widths, FUNCTION_VARIANCE: v, PAPER_BOUND: [bound_factor * x for x in v]})
    runs = pd.DataFrame(
        [{"model.width": w, "seed_everything": s, "test/loss": 5.0 if w == 16 else 1.0} for w in widths for s in SEEDS]
    )
    return table, runs


def test_bias_variance_compares_the_bound_with_the_function_variance():
    from lipschitz_dd.reproduce.findings.bias_variance import bound_checks

    assert decide(bound_checks(*_bv_tables(3.0, 16))).label == HOLDS
    assert decide(bound_checks(*_bv_tables(0.5, 64))).label == DOES_NOT_HOLD  # bound below V, V peaks at the edge
    table, runs = _bv_tables(3.0, 16)
    assert decide(bound_checks(table.drop(columns=table.columns[1]), runs)).label == UNDECIDED  # no V: no verdict


def test_bias_variance_mse_split_checks_both_ways():
    from lipschitz_dd.reproduce.findings.bias_variance import split_checks

    widths = [4, 8, 16, 32, 64]
    variance = [0.2, 0.6, 2.0, 0.8, 0.3]
    flat = pd.DataFrame({"width": widths, "seeds": 3, "variance": variance, "bias^2": [0.5, 0.45, 0.45, 0.42, 0.4]})
    flat["expected"] = flat["variance"] + flat["bias^2"]
    assert decide(split_checks(flat)).label == HOLDS
    bias_driven = flat.assign(variance=[0.3, 0.31, 0.32, 0.31, 0.3], **{"bias^2": [0.5, 1.0, 3.0, 1.2, 0.6]})
    bias_driven["expected"] = bias_driven["variance"] + bias_driven["bias^2"] + np.arange(5) * 0.01
    assert decide(split_checks(bias_driven)).label == DOES_NOT_HOLD


def test_softmax_far_below_is_what_can_fail():
    """At most 1/2 of the logits' holds by construction; the check is 'far below' (<= 1/4)."""
    from lipschitz_dd.reproduce.findings.checkpoint_measures import softmax_checks

    table = pd.DataFrame({"width": [16, 16, 256], "softmax / logits": [0.2, 0.22, 0.01]})
    assert decide(softmax_checks(table)).label == HOLDS
    assert decide(softmax_checks(table.assign(**{"softmax / logits": [0.4, 0.45, 0.3]}))).label == DOES_NOT_HOLD
    partly = decide(softmax_checks(table.assign(**{"softmax / logits": [0.2, 0.26, 0.01]})))
    assert partly.label == IN_PART and "width 16" in partly.reason


def test_lower_bound_diagnostics_both_ways():
    from lipschitz_dd.reproduce.findings.checkpoint_measures import diagnostics_checks

    good = pd.DataFrame(
        {
            "% below, n/8": [7.5, 9.4],
            "midpoints max / C_lower": [1.07, 1.1],
            "max FD ratio at PGD / C_lower": [0.87, math.nan],  # a run where PGD did not move: left out
            "corr(loss, norm)": [-0.048, -0.009],
        }
    )
    assert decide(diagnostics_checks(good)).label == HOLDS
    bad = good.assign(
        **{
            "% below, n/8": [40.0, 50.0],
            "midpoints max / C_lower": [3.0, 2.5],
            "max FD ratio at PGD / C_lower": [1.5, math.nan],
            "corr(loss, norm)": [0.5, -0.3],
        }
    )
    assert decide(diagnostics_checks(bad)).label == DOES_NOT_HOLD
    unmeasured = good.assign(**{"max FD ratio at PGD / C_lower": [math.nan, math.nan]})
    assert decide(diagnostics_checks(unmeasured)).label == UNDECIDED


def test_jacobian_distributions_both_ways():
    from lipschitz_dd.reproduce.findings.checkpoint_measures import distribution_checks

    assert decide(distribution_checks(pd.DataFrame({"max / median": [1.8, 1.5]}))).label == HOLDS
    assert decide(distribution_checks(pd.DataFrame({"max / median": [30.0, 1.5]}))).label == DOES_NOT_HOLD


def test_toy2d_both_ways():
    from lipschitz_dd.reproduce.findings.toy2d import checks

    assert decide(checks(pd.DataFrame({"C_lower / grid max": [0.95]}))).label == HOLDS
    assert decide(checks(pd.DataFrame({"C_lower / grid max": [0.5]}))).label == DOES_NOT_HOLD


def test_pairwise_both_ways():
    from lipschitz_dd.reproduce.findings.pairwise import checks

    table = pd.DataFrame({"seed": [0, 1, 2] * 2, "C_alt / C_lower": [0.4, 0.38, 0.41, 0.36, 0.39, 0.4]})
    assert decide(checks(table)).label == HOLDS
    assert decide(checks(table.assign(**{"C_alt / C_lower": [0.4, 1.2, 0.4, 0.4, 0.4, 0.4]}))).label == DOES_NOT_HOLD
    assert decide(checks(table.iloc[:1])).label == UNDECIDED  # one seed


def test_linearisation_both_ways():
    from lipschitz_dd.reproduce.findings.linearisation import checks

    table = pd.DataFrame({"growth": [14.0, 12.0, 15.0], "sup ||M|| init": [3.0, 4.0, 2.5], "consistent": True})
    assert decide(checks(table)).label == HOLDS
    assert decide(checks(table.assign(growth=[1.1, 1.2, 1.0], **{"sup ||M|| init": 50.0}))).label == DOES_NOT_HOLD
    assert decide(checks(table.assign(consistent=[True, False, True]))).label == UNDECIDED


def test_out_of_distribution_both_ways():
    from lipschitz_dd.reproduce.findings.robustness import RADII, ood_checks

    rows = []
    for w in (8, 32):
        for s in SEEDS:
            row = {"width": w, "seed": s, "test loss": 1.0}
            row.update({f"C_lower(r={r}) / C_lower": 1.05 for r in RADII})
            row.update({f"test loss (r={r})": 1.0 + r for r in RADII})
            rows.append(row)
    good = pd.DataFrame(rows)
    assert decide(ood_checks(good)).label == HOLDS
    bad = good.assign(**{f"C_lower(r={r}) / C_lower": 2.0 for r in RADII}, **{f"test loss (r={max(RADII)})": 0.9})
    assert decide(ood_checks(bad)).label == DOES_NOT_HOLD


def test_adversarial_both_ways():
    from lipschitz_dd.reproduce.findings.robustness import EPS, adversarial_checks

    rows = []
    for w in (1, 4):
        for s in SEEDS:
            row = {"width": w, "seed": s, "C_lower(PGD 0.5) / C_lower": 1.04}
            row.update({f"max FD({eps}) / C_lower": 0.9 if eps != 1.0 else math.nan for eps in EPS})
            rows.append(row)
    good = pd.DataFrame(rows)
    assert decide(adversarial_checks(good)).label == HOLDS
    bad = good.assign(**{"C_lower(PGD 0.5) / C_lower": 1.3, "max FD(0.1) / C_lower": 1.14})
    assert decide(adversarial_checks(bad)).label == DOES_NOT_HOLD


def _correctness_table(key, lowers, wrong_top):
    rows = []
    for level, lower in lowers.items():
        for s in SEEDS:
            rows.append(
                {
                    key: level,
                    "seed_everything": s,
                    "lipschitz/lower": lower * (1 + 0.01 * s),
                    "corr(loss, norm)": 0.02,
                    "points": 1000,
                    "wrong": 100 if level > 0 else 0,
                    "top points": 100,
                    "wrong in top": wrong_top,
                }
            )
    return pd.DataFrame(rows)


def test_dropout_over_representation_is_a_binomial_test_both_ways():
    """10 % of points wrong; among the 100 highest norms 25 wrong (p-value ~1e-5) against 12 (p ~0.3, within
    binomial noise: the old 'over-represented at every p > 0' reading of 0.14 vs 0.077 was of this kind)."""
    from lipschitz_dd.reproduce.findings.dropout_weight_decay import checks

    key = "model.dropout"
    good = _correctness_table(key, {0.0: 100.0, 0.2: 50.0, 0.4: 14.0}, wrong_top=25)
    assert decide(checks(good, key, over_represented=True)).label == HOLDS
    noise = _correctness_table(key, {0.0: 100.0, 0.2: 50.0, 0.4: 14.0}, wrong_top=12)
    verdict = decide(checks(noise, key, over_represented=True))
    assert verdict.label == IN_PART and "fails: wrong points over-represented" in verdict.reason
    bad = _correctness_table(key, {0.0: 14.0, 0.2: 50.0, 0.4: 100.0}, wrong_top=8).assign(**{"corr(loss, norm)": 0.6})
    assert decide(checks(bad, key, over_represented=True)).label == DOES_NOT_HOLD


def test_weight_decay_both_ways():
    from lipschitz_dd.reproduce.findings.dropout_weight_decay import checks

    key = "model.weight_decay"
    good = _correctness_table(key, {0.0: 195.0, 0.001: 130.0, 0.0025: 73.6}, wrong_top=0)
    assert decide(checks(good, key, over_represented=False)).label == HOLDS
    bad = good.assign(**{"corr(loss, norm)": 0.5})
    bad["lipschitz/lower"] = bad["lipschitz/lower"][::-1].to_numpy()
    assert decide(checks(bad, key, over_represented=False)).label == DOES_NOT_HOLD


def test_sandwich_both_ways():
    from lipschitz_dd.reproduce.findings.sandwich import checks

    good = pd.DataFrame({"seed": [0, 1, 2], "C_lower / exact": [0.95, 0.9, 0.97], "C_upper / exact": [3.0, 5.0, 2.0]})
    assert decide(checks(good)).label == HOLDS
    bad = good.assign(**{"C_lower / exact": [0.3, 0.2, 0.4], "C_upper / exact": [1.05, 1.02, 1.01]})
    assert decide(checks(bad)).label == DOES_NOT_HOLD


def test_imagenet_both_ways():
    from lipschitz_dd.reproduce.findings.imagenet import checks

    assert decide(checks(pd.DataFrame({"orders (init)": [38.0]}))).label == HOLDS
    assert decide(checks(pd.DataFrame({"orders (init)": [3.0]}))).label == DOES_NOT_HOLD


def test_quick_scale_summary_carries_no_verdict(tmp_path):
    from lipschitz_dd.reproduce.registry import Analysis
    from lipschitz_dd.reproduce.run import SMOKE_TEST, write_summary

    analysis = Analysis(checks=[check(0.5)])
    quick = write_summary(get_finding("double_descent"), "quick", tmp_path, analysis).read_text()
    assert SMOKE_TEST in quick and "holds" not in quick.split("## Verdict")[1]
    assert "| c | a ratio | 0.5 | <= 1 | - | pass |" in quick  # the checks are still listed
    cpu = write_summary(get_finding("double_descent"), "cpu", tmp_path, analysis).read_text()
    assert "## Verdict\n\nholds: every check passes" in cpu
