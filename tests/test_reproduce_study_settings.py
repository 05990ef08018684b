"""The study's own settings (issue 22, section 3): the study's 2-D toy through the Lightning loop, the study's
MNIST-1D order, and the declared checks of study_toy2d, study_table3, study_evolution_window and
study_depth_init, each shown to hold on numbers like the study's and not to hold on numbers unlike them
(hand-made measurements and hand-made run folders)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lipschitz_dd.data import MNIST1DDataModule, StudyToy2DDataModule
from lipschitz_dd.data.mnist1d import study_order
from lipschitz_dd.data.synthetic import study_toy2d
from lipschitz_dd.reproduce import get_finding
from lipschitz_dd.reproduce.findings import study_depth_init, study_table3
from lipschitz_dd.reproduce.findings import study_toy2d as toy
from lipschitz_dd.reproduce.run import analyse_folder
from lipschitz_dd.reproduce.verdict import DOES_NOT_HOLD, HOLDS, decide


# ----------------------------------------------------------------------------------------------- data
def test_study_toy_module_repeats_the_full_batch_per_epoch():
    data = StudyToy2DDataModule(passes_per_epoch=4)
    data.setup("fit")
    x, y, x_test, y_test = study_toy2d()
    assert torch.equal(data.train_x, x) and torch.equal(data.test_y, y_test)
    loader = data.train_dataloader()
    assert len(loader) == 4
    batches = list(loader)
    assert len(batches) == 4 and all(torch.equal(b[0], x) and torch.equal(b[1], y) for b in batches)
    with pytest.raises(ValueError, match="passes_per_epoch=0"):
        StudyToy2DDataModule(passes_per_epoch=0)


def test_lightning_with_several_steps_per_epoch_trains_the_plain_loops_weights(tmp_path):
    """Seed 42, 3 epochs of 10 full-batch steps through the project's module and Trainer equal 30 steps of a
    plain loop on nn.Sequential(Linear(2,100), ReLU, Linear(100,100), ReLU, Linear(100,3)), bit for bit."""
    from lightning.pytorch import Trainer, seed_everything

    from lipschitz_dd.models import Toy2DFCN

    seed_everything(42, verbose=False)
    model = Toy2DFCN(width=100, lr=0.02, grad_clip_norm=None)
    data = StudyToy2DDataModule(passes_per_epoch=10)
    trainer = Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 30

    x, y, _, _ = study_toy2d()
    torch.manual_seed(42)
    net = nn.Sequential(nn.Linear(2, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.02)
    for _ in range(30):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    ours = list(model.net.parameters())
    assert len(ours) == 6
    assert all(torch.equal(a, b) for a, b in zip(ours, net.parameters(), strict=True))


def test_study_order_is_the_studys_numpy_draw_and_leaves_the_global_rng_alone(tmp_path):
    np.random.seed(7)
    state = np.random.get_state()[1].copy()
    order = study_order(50)
    assert np.array_equal(np.random.get_state()[1], state)
    np.random.seed(42)
    assert np.array_equal(order, np.random.choice(50, size=50, replace=False))
    assert sorted(order.tolist()) == list(range(50))

    stored = MNIST1DDataModule(num_samples=100, data_dir=str(tmp_path))
    studied = MNIST1DDataModule(num_samples=100, data_dir=str(tmp_path), order="study")
    stored.setup("fit"), studied.setup("fit")
    assert torch.equal(studied.train_x, stored.train_x[study_order(80)])
    assert torch.equal(studied.test_y, stored.test_y[study_order(20)])
    assert not torch.equal(studied.train_x, stored.train_x)
    with pytest.raises(ValueError, match="order='shuffled' is invalid"):
        MNIST1DDataModule(order="shuffled")


# ----------------------------------------------------------------------------------------------- study_toy2d
def test_toy_checks_hold_on_the_studys_numbers_and_fail_on_others():
    numbers = dict(toy.STUDY)
    assert decide(toy.toy_checks(numbers)).label == HOLDS
    within = {k: v * (1 + 0.8 * toy.REL_TOL) for k, v in numbers.items()}
    within["train accuracy"] = 1.0
    assert decide(toy.toy_checks(within)).label == HOLDS
    # an easier toy's numbers (the old 300-point variant: 94.7 % train accuracy, a much smaller constant)
    other = {
        "train accuracy": 0.947,
        "test accuracy": 0.9,
        "test loss": 0.2,
        "C_lower": 9.0,
        "C_upper": 60.0,
        "grid max": 20.0,
    }
    verdict = decide(toy.toy_checks(other))
    assert verdict.label == DOES_NOT_HOLD, verdict
    missing = decide(toy.toy_checks({k: v for k, v in numbers.items() if k != "grid max"}))
    assert missing.label == "undecided"


def _write_folder(folder, config: dict, sections: dict, metrics: pd.DataFrame, state=None, epochs=5, hparams=None):
    """A finished run folder as the CLI writes it: results.json, config.yaml, metrics.csv (index `step`), and
    a checkpoint holding `state` (a state_dict) when given."""
    import yaml

    folder.mkdir(parents=True)
    payload = {"status": "finished", "config": config, "final": {}, "max": {}, "epochs": epochs, "seconds": 1.0}
    (folder / "results.json").write_text(json.dumps(payload))
    (folder / "config.yaml").write_text(yaml.safe_dump(sections))
    metrics.to_csv(folder / "metrics.csv", index_label="step")
    if state is not None:
        (folder / "checkpoints").mkdir()
        torch.save(
            {"state_dict": state, "hyper_parameters": hparams or {}}, folder / "checkpoints" / f"epoch={epochs}.ckpt"
        )
    return folder


@pytest.mark.e2e
def test_toy_analysis_measures_a_hand_made_run_and_it_does_not_hold(tmp_path, monkeypatch):
    """An untrained toy network in a hand-made run folder: the analysis measures it (float64; C_lower <= grid max
    <= exact constant <= C_upper) and its verdict is not `holds`: the numbers are not the study's."""
    from lightning.pytorch import seed_everything

    from lipschitz_dd.models import Toy2DFCN

    monkeypatch.setattr(toy, "GRID", 60)
    seed_everything(42, verbose=False)
    model = Toy2DFCN(width=100, lr=0.02)
    sections = {
        "model": {"class_path": "lipschitz_dd.models.Toy2DFCN", "init_args": {"width": 100, "lr": 0.02}},
        "data": {"class_path": "lipschitz_dd.data.StudyToy2DDataModule", "init_args": {"passes_per_epoch": 2}},
    }
    metrics = pd.DataFrame({"train/loss": [1.1, 1.0]}, index=[0, 5])
    _write_folder(
        tmp_path / "runs" / "r0",
        {"data.passes_per_epoch": 2, "seed_everything": 42},
        sections,
        metrics,
        state=model.state_dict(),
        hparams=dict(model.hparams),
    )
    outcome = analyse_folder(get_finding("study_toy2d"), "cpu", tmp_path / "runs", tmp_path / "out")
    assert outcome.ok, outcome.problems()
    text = outcome.summary.read_text()
    assert "10 full-batch steps" in text and "not the study's 100,000" in text
    verdict = text.split("## Verdict\n\n")[1].splitlines()[0]
    assert not verdict.startswith(HOLDS), verdict
    rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines() if line.startswith("| ")}
    value = {k: float(v[3]) for k, v in rows.items() if k in ("C_lower", "grid max", "exact constant", "C_upper")}
    assert value["C_lower"] <= value["exact constant"] * (1 + 1e-3) <= value["C_upper"] * (1 + 1e-3)
    assert value["grid max"] <= value["exact constant"] * (1 + 1e-3)


# ----------------------------------------------------------------------------------------------- study_table3
def _table(lower_scale: float = 1.0, alt_ratio: float = 0.4) -> pd.DataFrame:
    epochs = [0, *study_table3.STUDY_EPOCHS]
    lower = [study_table3.STUDY_INIT["C_lower"], *study_table3.STUDY_EPOCHS.values()]
    lower = [v * lower_scale for v in lower]
    alt = [study_table3.STUDY_INIT["C_alt"] * lower_scale] + [v * alt_ratio for v in lower[1:]]
    return pd.DataFrame({"epoch": epochs, "C_lower": lower, "C_alt": alt})


def test_table3_checks_hold_on_the_studys_table_and_fail_on_another():
    assert decide(study_table3.table3_checks(_table())).label == HOLDS
    verdict = decide(study_table3.table3_checks(_table(lower_scale=1.5, alt_ratio=1.2)))
    assert verdict.label == DOES_NOT_HOLD, verdict
    # one checkpoint missing: that epoch's check is not measured, so the claim cannot be judged
    partial = _table().iloc[:-1]
    assert decide(study_table3.table3_checks(partial)).label == "undecided"


def test_table3_rows_rebuild_the_initial_network_and_measure_both_bounds(tmp_path):
    """A hand-made run folder (FCN 16 on 100 MNIST-1D samples, its checkpoint the network at initialisation):
    the network rebuilt under the run's seed equals it, so the epoch-0 and checkpoint rows agree; C_alt equals
    bounds.pairwise_lipschitz over all 80 training points computed here independently."""
    from lightning.pytorch import seed_everything

    from lipschitz_dd.bounds import pairwise_lipschitz
    from lipschitz_dd.models import FCN
    from lipschitz_dd.report.records import load_runs

    seed_everything(3, verbose=False)
    model = FCN(width=16, depth=1)
    data_args = {"num_samples": 100, "data_dir": str(tmp_path / "data"), "order": "study"}
    sections = {
        "model": {"class_path": "lipschitz_dd.models.FCN", "init_args": {"width": 16}},
        "data": {"class_path": "lipschitz_dd.data.MNIST1DDataModule", "init_args": data_args},
    }
    metrics = pd.DataFrame({"lipschitz/lower": [0.5, 0.6]}, index=[0, 5])
    _write_folder(
        tmp_path / "runs" / "r0",
        {"seed_everything": 3},
        sections,
        metrics,
        state=model.state_dict(),
        hparams=dict(model.hparams),
    )
    (record,) = load_runs(tmp_path / "runs")
    rows = study_table3.table3_rows(record)
    assert [r["epoch"] for r in rows] == [0, 5]
    assert rows[0]["C_lower"] == pytest.approx(rows[1]["C_lower"], rel=1e-6)
    assert rows[0]["C_alt"] == pytest.approx(rows[1]["C_alt"], rel=1e-6)
    assert rows[0]["C_lower logged"] == 0.5
    data = MNIST1DDataModule(**data_args)
    data.setup("fit")
    expected = float(pairwise_lipschitz(model.eval(), data.train_x, max_points=80))
    assert rows[1]["C_alt"] == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------------------------- slopes
def _bounds_history(slopes: dict[str, float], last: int = 5000, every: int = 25, scale: float = 1.0):
    epochs = np.arange(0, last + 1, every)
    t = np.maximum(epochs, 1).astype(float)
    return pd.DataFrame({metric: scale * t**slope for metric, slope in slopes.items()}, index=epochs)


def _evolution_runs(root, slopes):
    for seed in (42, 0, 1):
        _write_folder(
            root / f"s{seed}",
            {"seed_everything": seed},
            {"model": {}, "data": {}},
            _bounds_history(slopes, scale=1 + seed / 10),
            epochs=5000,
        )


def test_evolution_window_holds_on_the_studys_slopes_and_not_on_steeper_ones(tmp_path):
    finding = get_finding("study_evolution_window")
    _evolution_runs(tmp_path / "good", study_table3.STUDY_SLOPES)
    text = analyse_folder(finding, "cpu", tmp_path / "good", tmp_path / "o1").summary.read_text()
    assert text.split("## Verdict\n\n")[1].startswith(HOLDS)
    steep = {metric: 1.8 * slope for metric, slope in study_table3.STUDY_SLOPES.items()}
    _evolution_runs(tmp_path / "steep", steep)
    text = analyse_folder(finding, "cpu", tmp_path / "steep", tmp_path / "o2").summary.read_text()
    assert text.split("## Verdict\n\n")[1].startswith(DOES_NOT_HOLD)
    assert "| lipschitz/upper | 0.6 | 1.08 |" in text  # 1.8 x 0.6, fitted exactly


def _depth_runs(root, slopes):
    for seed in (42, 0, 1):
        for depth in (1, 2, 3, 4, 5):
            initial = {metric: (1 + seed / 10) * depth**slope for metric, slope in slopes.items()}
            history = pd.DataFrame([initial, {k: 2 * v for k, v in initial.items()}], index=[0, 1])
            _write_folder(
                root / f"s{seed}d{depth}",
                {"seed_everything": seed, "model.depth": depth},
                {"model": {}, "data": {}},
                history,
                epochs=1,
            )


def test_depth_init_holds_on_the_studys_slopes_and_not_on_reversed_ones(tmp_path):
    finding = get_finding("study_depth_init")
    _depth_runs(tmp_path / "good", study_depth_init.STUDY_SLOPES)
    text = analyse_folder(finding, "cpu", tmp_path / "good", tmp_path / "o1").summary.read_text()
    assert text.split("## Verdict\n\n")[1].startswith(HOLDS)
    reversed_ = {metric: -slope for metric, slope in study_depth_init.STUDY_SLOPES.items()}
    _depth_runs(tmp_path / "rev", reversed_)
    text = analyse_folder(finding, "cpu", tmp_path / "rev", tmp_path / "o2").summary.read_text()
    assert text.split("## Verdict\n\n")[1].startswith(DOES_NOT_HOLD)
