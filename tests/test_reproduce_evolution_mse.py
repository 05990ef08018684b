"""The evolution with MSE (lipschitz_dd/reproduce/findings/evolution_mse.py): the evolution finding's sweep with
only the loss changed, at every scale, and its verdict both ways on hand-made run folders."""

from __future__ import annotations

import math

import pytest
from reproduce_runs import verdict_of, write_run

from lipschitz_dd.reproduce import SCALES, get_finding, scaled_sweep
from lipschitz_dd.reproduce.run import training_key
from lipschitz_dd.reproduce.verdict import DOES_NOT_HOLD, HOLDS, IN_PART

SEEDS = (0, 1, 2)
BOUNDS = ("lipschitz/lower", "lipschitz/avg", "lipschitz/upper")


def test_the_evolution_sweep_with_the_squared_error_only():
    evolution, mine = get_finding("evolution"), get_finding("evolution_mse")
    for scale in SCALES:
        theirs, ours = scaled_sweep(evolution, scale), scaled_sweep(mine, scale)
        assert training_key(ours) != training_key(theirs)  # its own runs
        assert ours["parameters"].pop("model.loss") == {"value": "mse"}
        assert "model.loss" not in theirs["parameters"]
        assert ours["parameters"] == theirs["parameters"] and ours["command"] == theirs["command"]
    assert len(scaled_sweep(mine, "cpu")["parameters"]["seed_everything"]["values"]) >= 3


def write_runs(root, lower, upper):
    """Per seed a run measured every 10 epochs up to 400; each bound from 1 at epoch 0 as
    (1 + 0.01 seed) (e / 10)^slope, or a flat wobble when slope is None."""
    for s in SEEDS:
        history = [{"step": 0, **dict.fromkeys(BOUNDS, 1.0)}]
        for e in range(10, 401, 10):
            row = {"step": e}
            for metric, slope in (("lipschitz/lower", lower), ("lipschitz/avg", lower), ("lipschitz/upper", upper)):
                row[metric] = (1 + 0.01 * s) * (e / 10) ** slope if slope else 1.0 + 0.3 * math.sin(e)
            history.append(row)
        final = {k: v for k, v in history[-1].items() if k != "step"}
        config = {"model.width": 256, "model.loss": "mse", "seed_everything": s}
        write_run(root / f"s{s}", config, final, history=history, epochs=400)
    return root


@pytest.mark.e2e
def test_holds_on_power_law_growth_and_names_the_studys_slopes_as_ce(tmp_path):
    root = write_runs(tmp_path / "r", lower=1.0, upper=1.5)
    assert verdict_of("evolution_mse", root, tmp_path / "o").startswith(HOLDS)
    summary = (tmp_path / "o" / "evolution_mse" / "cpu" / "summary.md").read_text()
    assert "| study's CE slope |" in summary and "| study's slope |" not in summary


@pytest.mark.e2e
def test_in_part_and_does_not_hold(tmp_path):
    text = verdict_of("evolution_mse", write_runs(tmp_path / "p", lower=1.0, upper=None), tmp_path / "op")
    assert text.startswith(IN_PART) and "C_upper grows tens of times" in text
    assert verdict_of("evolution_mse", write_runs(tmp_path / "n", None, None), tmp_path / "on").startswith(
        DOES_NOT_HOLD
    )
