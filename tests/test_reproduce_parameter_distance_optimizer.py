"""Adam travels further than SGD (lipschitz_dd/reproduce/findings/parameter_distance_optimizer.py): it analyses
the optimizer finding's runs (same scaled sweep at every scale: trained once), its reading at equal training
loss recomputed by hand, and its verdict both ways on hand-made run folders."""

from __future__ import annotations

import pytest
from reproduce_runs import verdict_of, write_run

from lipschitz_dd.report.records import load_runs
from lipschitz_dd.reproduce import SCALES, get_finding, scaled_sweep
from lipschitz_dd.reproduce.findings.parameter_distance import DIST
from lipschitz_dd.reproduce.findings.parameter_distance_optimizer import checks, comparison_rows
from lipschitz_dd.reproduce.run import sweep_name, training_key
from lipschitz_dd.reproduce.verdict import DOES_NOT_HOLD, HOLDS, IN_PART

WIDTHS = (16, 48)
SEEDS = (0, 1, 2)
EPOCHS = 10


def write_runs(root, adam_rate: float, sgd_rate: float, adam_loss_rate: float = 0.5, seeds=SEEDS):
    """Per width and seed one SGD and one Adam run of EPOCHS epochs. Distance at epoch e: rate x e x (1 + 0.01
    seed) (linear in the epoch); train loss at epoch e: 2 - 0.1 e for SGD (final 1.0), 2 - adam_loss_rate x e for
    Adam (floored at 0.01): with the default Adam reaches SGD's final loss 1.0 at epoch 2. C_lower: 3x larger for
    Adam."""
    for w in WIDTHS:
        for s in seeds:
            jitter = 1 + 0.01 * s
            for optimizer, rate, loss_rate in (("adam", adam_rate, adam_loss_rate), ("sgd", sgd_rate, 0.1)):
                history = [
                    {
                        "step": e,
                        DIST: rate * e * jitter,
                        "train/loss": max(0.01, 2 - loss_rate * e),
                        "lipschitz/lower": (3 if optimizer == "adam" else 1) * (1 + e) * jitter,
                    }
                    for e in range(EPOCHS + 1)
                ]
                final = {k: v for k, v in history[-1].items() if k != "step"}
                config = {"model.optimizer": optimizer, "model.width": w, "seed_everything": s, "model.momentum": 0.0}
                write_run(root / f"{optimizer}w{w}s{s}", config, final, history=history, epochs=EPOCHS)
    return root


def test_it_analyses_the_optimizer_runs_at_every_scale():
    optimizer, mine = get_finding("optimizer"), get_finding("parameter_distance_optimizer")
    for scale in SCALES:
        assert sweep_name(mine, scale) == sweep_name(optimizer, scale)
        assert training_key(scaled_sweep(mine, scale)) == training_key(scaled_sweep(optimizer, scale))


def test_rows_recomputed_by_hand(tmp_path):
    rows = comparison_rows(load_runs(write_runs(tmp_path / "r", adam_rate=3.0, sgd_rate=1.0)))
    assert list(rows["width"]) == list(WIDTHS)
    row = rows.iloc[0]
    # final distances: Adam 3 x 10 x (1, 1.01, 1.02), SGD 10 x (1, 1.01, 1.02)
    assert row["distance Adam (mean)"] == pytest.approx(30 * 1.01)
    assert row["Adam / SGD (means)"] == pytest.approx(3.0)
    assert row["Adam / SGD (min Adam / max SGD)"] == pytest.approx(30 / 10.2)
    assert row["C_lower Adam / SGD (means)"] == pytest.approx(3.0)
    # SGD ends at train loss 1.0 (behind); Adam first reaches it at epoch 2 (2 - 0.5 x 2), distance 6 x jitter
    assert row["behind"] == "sgd" and row["its final train loss"] == pytest.approx(1.0)
    assert row["runs of the other reaching it"] == "3/3" and row["their epoch there"] == 2
    assert row["at equal train loss: min Adam / max SGD"] == pytest.approx(6 / 10.2)
    by_name = {c.name: c for c in checks(rows, 3)}
    assert by_name["Adam travels further than SGD, beyond the seed spread"].measured == pytest.approx(30 / 10.2)
    assert by_name["also at equal training loss"].measured == pytest.approx(6 / 10.2)


@pytest.mark.e2e
def test_holds_when_adam_is_further_also_at_equal_loss(tmp_path):
    root = write_runs(tmp_path / "r", adam_rate=8.0, sgd_rate=1.0)  # at epoch 2: 16 > 10.2
    assert verdict_of("parameter_distance_optimizer", root, tmp_path / "o").startswith(HOLDS)
    assert (tmp_path / "o" / "parameter_distance_optimizer" / "cpu" / "parameter_distance_optimizer.png").is_file()


@pytest.mark.e2e
def test_in_part_when_the_lead_is_only_the_longer_training(tmp_path):
    root = write_runs(tmp_path / "r", adam_rate=3.0, sgd_rate=1.0)
    text = verdict_of("parameter_distance_optimizer", root, tmp_path / "o")
    assert text.startswith(IN_PART) and "fails: also at equal training loss" in text


@pytest.mark.e2e
def test_does_not_hold_when_sgd_is_further(tmp_path):
    root = write_runs(tmp_path / "r", adam_rate=0.5, sgd_rate=1.0)
    assert verdict_of("parameter_distance_optimizer", root, tmp_path / "o").startswith(DOES_NOT_HOLD)
