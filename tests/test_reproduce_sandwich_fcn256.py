"""The sandwich at the study's scale (lipschitz_dd/reproduce/findings/sandwich_fcn256.py): its analysis on hand-made
run folders (the order and the ratios recomputed by hand), its verdict both ways, and its sweep at every scale."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from reproduce_runs import verdict_of, write_run

from lipschitz_dd.reproduce import get_finding, scaled_sweep
from lipschitz_dd.reproduce.findings.sandwich_fcn256 import ORDER_TOL, checks, end_rows, sandwich_rows
from lipschitz_dd.reproduce.run import analyse_folder
from lipschitz_dd.reproduce.verdict import DOES_NOT_HOLD, HOLDS, IN_PART, UNDECIDED, Status, decide

EPOCHS = (0, 1, 2, 5, 100, 200)
SEEDS = (0, 1, 2)


def bounds_at(
    epoch: int, seed: int, sdp_factor: float = 0.6, eclipse_factor: float = 0.8, lower_factor: float = 0.5
) -> dict[str, float]:
    """Bounds growing with the epoch: product = 2 (1 + e/100)(1 + 0.01 s), ECLipsE-Fast = eclipse_factor x product,
    LipSDP = sdp_factor x product, C_lower = lower_factor x LipSDP (a factor above the next breaks the order)."""
    product = 2.0 * (1 + epoch / 100) * (1 + 0.01 * seed)
    eclipse = eclipse_factor * product
    sdp = sdp_factor * product
    return {
        "lipschitz/upper": product,
        "lipschitz/upper_eclipse": eclipse,
        "lipschitz/upper_sdp": sdp,
        "lipschitz/lower": lower_factor * sdp,
        "lipschitz/seconds": 2.0,
    }


def write_runs(root, seeds=SEEDS, sdp_epochs=EPOCHS, **factors):
    """One run per seed, measured at EPOCHS; LipSDP only at `sdp_epochs` (the others log no upper_sdp)."""
    for s in seeds:
        history = []
        for e in EPOCHS:
            row = {"step": e, **bounds_at(e, s, **factors)}
            if e not in sdp_epochs:
                del row["lipschitz/upper_sdp"]
            history.append(row)
        final = {k: v for k, v in history[-1].items() if k != "step"}
        config = {"model.width": 256, "model.depth": 2, "seed_everything": s}
        write_run(root / f"s{s}", config, final, history=history, epochs=EPOCHS[-1])
    return root


def test_rows_and_end_ratios_recomputed_by_hand(tmp_path):
    from lipschitz_dd.report.records import load_runs

    sdp_epochs = (0, 5, 200)
    records = load_runs(write_runs(tmp_path / "r", sdp_epochs=sdp_epochs, sdp_factor=0.25))
    rows = sandwich_rows(records)
    assert len(rows) == len(SEEDS) * len(sdp_epochs)  # only the epochs where all four were logged
    assert sorted(rows["epoch"].unique()) == list(sdp_epochs)
    ends = end_rows(rows)
    assert list(ends["seed"]) == list(SEEDS) and set(ends["epoch"]) == {200}
    for _, end in ends.iterrows():
        expected = bounds_at(200, int(end["seed"]), sdp_factor=0.25)
        assert end["product"] == pytest.approx(expected["lipschitz/upper"])
        assert end["LipSDP / product"] == pytest.approx(0.25)
        assert end["LipSDP / ECLipsE"] == pytest.approx(0.25 / 0.8)
        assert end["C_lower / LipSDP"] == pytest.approx(0.5)
    by_name = {c.name: c for c in checks(rows)}
    assert by_name["C_lower <= LipSDP"].measured == pytest.approx(-0.5)
    assert by_name["LipSDP <= ECLipsE-Fast"].measured == pytest.approx(0.25 / 0.8 - 1)
    assert by_name["ECLipsE-Fast <= product"].measured == pytest.approx(-0.2)
    assert by_name["measured over training"].measured == len(sdp_epochs)
    assert all(c.seeds == len(SEEDS) for c in by_name.values())


@pytest.mark.e2e
def test_holds_on_a_good_sandwich(tmp_path):
    write_runs(tmp_path / "good", sdp_factor=0.3)
    assert verdict_of("sandwich_fcn256", tmp_path / "good", tmp_path / "o").startswith(HOLDS)
    summary = (tmp_path / "o" / "sandwich_fcn256" / "cpu" / "summary.md").read_text()
    assert (tmp_path / "o" / "sandwich_fcn256" / "cpu" / "sandwich_fcn256.png").stat().st_size > 0
    assert "LipSDP is 3.333..3.333x below the product bound and 62.5..62.5 % below ECLipsE-Fast" in summary
    assert "median 2.00 s" in summary


@pytest.mark.e2e
def test_does_not_hold_when_the_order_breaks_and_lipsdp_is_loose(tmp_path):
    # C_lower above LipSDP above ECLipsE-Fast above the product bound: every pair fails, and LipSDP is not
    # tighter than either; only the coverage check passes
    write_runs(tmp_path / "bad", sdp_factor=2.5, eclipse_factor=1.2, lower_factor=1.1)
    assert verdict_of("sandwich_fcn256", tmp_path / "bad", tmp_path / "o").startswith(IN_PART)
    from lipschitz_dd.report.records import load_runs

    found = {c.name: c.status for c in checks(sandwich_rows(load_runs(tmp_path / "bad")))}
    assert found.pop("measured over training") is Status.PASS  # the runs were measured: only the claim fails
    assert set(found.values()) == {Status.FAIL}


@pytest.mark.e2e
def test_does_not_hold_when_every_check_fails(tmp_path):
    """Every check fails, the coverage one included: too few epochs with LipSDP, in the wrong order."""
    write_runs(tmp_path / "bad", sdp_epochs=(0, 200), sdp_factor=2.5, eclipse_factor=1.2, lower_factor=1.1)
    assert verdict_of("sandwich_fcn256", tmp_path / "bad", tmp_path / "o").startswith(DOES_NOT_HOLD)


def test_one_violation_at_one_epoch_of_one_seed_fails_the_order():
    rows = pd.DataFrame(
        [
            {"run": s, "seed": s, "epoch": e, "C_lower": 1.0, "LipSDP": 2.0, "ECLipsE-Fast": 3.0, "product": 6.0}
            for s in SEEDS
            for e in EPOCHS
        ]
    )
    assert decide(checks(rows)).label == HOLDS
    within = rows.copy()
    within.loc[7, "C_lower"] = 2.0 * (1 + ORDER_TOL / 2)  # float32 rounding: still in order
    assert decide(checks(within)).label == HOLDS
    broken = rows.copy()
    broken.loc[7, "C_lower"] = 2.0 * (1 + 10 * ORDER_TOL)
    assert {c.name: c.status for c in checks(broken)}["C_lower <= LipSDP"] is Status.FAIL


@pytest.mark.e2e
def test_two_seeds_or_no_lipsdp_is_undecided(tmp_path):
    write_runs(tmp_path / "two", seeds=(0, 1))
    assert verdict_of("sandwich_fcn256", tmp_path / "two", tmp_path / "o2").startswith(UNDECIDED)
    write_runs(tmp_path / "none", sdp_epochs=())
    outcome = analyse_folder(get_finding("sandwich_fcn256"), "cpu", tmp_path / "none", tmp_path / "o3")
    text = outcome.summary.read_text()
    assert "(no completed run logged all four bounds)" in text and "undecided: not measured" in text
    assert all(math.isnan(c.measured) for c in checks(sandwich_rows([])))


@pytest.mark.parametrize("scale", ["quick", "cpu", "full"])
def test_its_sweep_is_the_study_config_with_two_hidden_layers_and_every_bound(scale):
    parameters = scaled_sweep(get_finding("sandwich_fcn256"), scale)["parameters"]
    config = scaled_sweep(get_finding("sandwich_fcn256"), scale)["command"]
    assert config[config.index("--config") + 1] == "fcn_mnist1d"
    assert parameters["model.depth"] == {"value": 2}
    assert parameters["lipschitz.upper.certified"] == {"value": True}
    assert parameters["lipschitz.mlp_bounds.sdp_every"]["value"] >= 1
    if scale != "quick":
        assert parameters["model.width"] == {"value": 256}
        assert parameters["seed_everything"] == {"values": [0, 1, 2]}
        assert "model.lr" not in parameters and "model.lr_schedule" not in parameters  # the study's protocol
    if scale == "full":
        assert "trainer.max_epochs" not in parameters  # the config's 20,000 and its stopping rule
