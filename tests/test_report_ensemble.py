"""The seed ensemble of the bias-variance report (lipschitz_dd/report/ensemble.py) from snapshot.npz files.

Snapshots are written by the real FunctionSnapshot; C_bar and V are checked against an explicit averaged
torch module (its Jacobians by torch.autograd.functional.jacobian, spectral norms by torch.linalg.svdvals) and,
for linear networks, against closed forms, where the paper's inequality V <= bound must hold.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from lipschitz_dd.callbacks.snapshot import FunctionSnapshot, IndexedInputs
from lipschitz_dd.cli import main
from lipschitz_dd.report import load_runs, variance_bound
from lipschitz_dd.report.bias_variance import FUNCTION_VARIANCE, PAPER_BOUND, bias_variance_table
from lipschitz_dd.report.build import build_report
from lipschitz_dd.report.ensemble import (
    SNAPSHOT_FILE,
    SnapshotMismatch,
    ensemble_from_snapshots,
    function_variance,
    spectral_norms,
    with_ensemble_quantities,
)

ROOT = Path(__file__).resolve().parents[1]
DIM, CLASSES, SEEDS = 4, 3, 3
AXES = ["model.width", "seed_everything"]


class Averaged(nn.Module):
    """f_bar(x) = mean_s f_s(x), written out as a module (the independent reference)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


def relu_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(DIM, 8), nn.ReLU(), nn.Linear(8, CLASSES)).eval()


def linear_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(DIM, CLASSES).eval()


def data(n_train: int = 20, n_test: int = 15) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(99)
    return torch.randn(n_train, DIM, generator=g), 2 + torch.randn(n_test, DIM, generator=g)


def write_snapshots(root: Path, nets: list[nn.Module], train_x: Tensor, test_x: Tensor, **options) -> list[Path]:
    """snapshot.npz of each net, made by the callback's own computation, in root/seed<s>/."""
    paths = []
    for seed, net in enumerate(nets):
        arrays = FunctionSnapshot(**options).snapshot(
            net, IndexedInputs.from_tensor(train_x), IndexedInputs.from_tensor(test_x), torch.device("cpu")
        )
        path = root / f"seed{seed}" / SNAPSHOT_FILE
        path.parent.mkdir(parents=True)
        np.savez_compressed(path, **arrays)
        paths.append(path)
    return paths


def indices(path: Path, key: str) -> Tensor:
    with np.load(path) as snapshot:
        return torch.as_tensor(snapshot[key])


# ---------------------------------------------------------------- the numerical pieces
def test_function_variance_is_the_mean_squared_deviation_from_the_seed_average():
    outputs = np.random.default_rng(0).normal(size=(3, 5, 4))
    expected = np.mean(
        [[np.sum((outputs[s, i] - outputs[:, i].mean(axis=0)) ** 2) for s in range(3)] for i in range(5)]
    )
    assert function_variance(outputs) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="S >= 2"):
        function_variance(outputs[:1])


def test_spectral_norms_match_dense_svd():
    jacobians = np.random.default_rng(1).normal(size=(6, 3, 7))
    expected = [np.linalg.svd(j, compute_uv=False)[0] for j in jacobians]
    np.testing.assert_allclose(spectral_norms(jacobians), expected, rtol=1e-12)


def test_ensemble_matches_an_explicit_averaged_module(tmp_path):
    nets = [relu_net(seed) for seed in range(SEEDS)]
    train_x, test_x = data()
    paths = write_snapshots(tmp_path, nets, train_x, test_x, test_points=10, train_points=12)
    ensemble = ensemble_from_snapshots(paths)

    averaged = Averaged(nets).eval()
    points = train_x[indices(paths[0], "train_indices")]
    jacobians = torch.stack([torch.autograd.functional.jacobian(averaged, x[None])[0, :, 0] for x in points])
    assert ensemble.c_bar == pytest.approx(float(torch.linalg.svdvals(jacobians)[:, 0].max()), rel=1e-5)
    assert ensemble.train_points == 12 and ensemble.test_points == 10 and ensemble.seeds == SEEDS

    x = test_x[indices(paths[0], "test_indices")]
    with torch.no_grad():
        deviations = torch.stack([net(x) - averaged(x) for net in nets])  # [S, m, K]
        zero = torch.zeros(1, DIM)
        f0_deviations = torch.stack([net(zero) - averaged(zero) for net in nets])
    assert ensemble.function_variance == pytest.approx(float(deviations.pow(2).sum(2).mean()), rel=1e-5)
    assert ensemble.var_f0 == pytest.approx(float(f0_deviations.pow(2).sum(-1).mean()), rel=1e-5)
    assert ensemble.mean_sq_norm == pytest.approx(float(test_x.pow(2).sum(1).mean()), rel=1e-6)


def test_linear_networks_closed_forms_and_the_paper_inequality(tmp_path):
    nets = [linear_net(seed) for seed in range(SEEDS)]
    train_x, test_x = data()
    paths = write_snapshots(tmp_path, nets, train_x, test_x)  # defaults: every test point is used
    ensemble = ensemble_from_snapshots(paths)

    weights = np.stack([net.weight.detach().double().numpy() for net in nets])  # [S, K, d]
    biases = np.stack([net.bias.detach().double().numpy() for net in nets])
    x = test_x.double().numpy()
    second_moment, mean_x = x.T @ x / len(x), x.mean(axis=0)
    d_w, d_b = weights - weights.mean(axis=0), biases - biases.mean(axis=0)
    variance = np.mean(
        [np.trace(dw @ second_moment @ dw.T) + 2 * db @ dw @ mean_x + db @ db for dw, db in zip(d_w, d_b, strict=False)]
    )
    assert ensemble.function_variance == pytest.approx(variance, rel=1e-5)
    assert ensemble.c_bar == pytest.approx(np.linalg.norm(weights.mean(axis=0), 2), rel=1e-5)
    assert ensemble.var_f0 == pytest.approx(np.mean(np.sum(d_b**2, axis=1)), rel=1e-5)
    lipschitz_sq = np.mean([np.linalg.norm(w, 2) ** 2 for w in weights])  # exact constants of linear maps
    bound = variance_bound(ensemble.c_bar, lipschitz_sq, ensemble.mean_sq_norm, ensemble.var_f0)
    assert ensemble.function_variance <= bound


def test_snapshots_at_other_points_or_damaged_are_refused(tmp_path):
    train_x, test_x = data()
    paths = write_snapshots(tmp_path / "a", [relu_net(0), relu_net(1)], train_x, test_x, test_points=5)
    other = write_snapshots(tmp_path / "b", [relu_net(2)], train_x, test_x, test_points=5, subset_seed=1)
    with pytest.raises(SnapshotMismatch, match="test_indices differ"):
        ensemble_from_snapshots([paths[0], other[0]])
    paths[1].write_bytes(b"not a zip file")
    with pytest.raises(SnapshotMismatch, match="unreadable snapshot"):
        ensemble_from_snapshots(paths)
    with pytest.raises(ValueError, match="at least two"):
        ensemble_from_snapshots(paths[:1])


def test_jacobian_free_snapshots_give_no_c_bar_but_the_variance(tmp_path):
    train_x, test_x = data()
    nets = [relu_net(0), relu_net(1)]
    paths = write_snapshots(tmp_path, nets, train_x, test_x, max_jacobian_numbers=CLASSES * DIM - 1)
    ensemble = ensemble_from_snapshots(paths)
    assert math.isnan(ensemble.c_bar) and ensemble.train_points == 0 and ensemble.function_variance > 0


# ---------------------------------------------------------------- end to end: CLI runs -> report
@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """2 widths x 2 seeds of the tiny CLI config, each run folder with its snapshot.npz."""
    root = tmp_path_factory.mktemp("ensemble_sweep")
    for width in (4, 12):
        for seed in (0, 1):
            args = [
                "fit",
                "--config",
                str(ROOT / "configs" / "test_tiny.yaml"),
                f"--model.width={width}",
                f"--seed_everything={seed}",
                "--trainer.max_epochs=2",
                "--lipschitz.points.max_samples=32",
                "--save_dir",
                str(root / "runs"),
                "--experiment",
                "tiny",
                "--run_name",
                f"w{width}_s{seed}",
                "--wandb=false",
            ]
            assert main(args) == 0
    return root / "runs"


@pytest.mark.e2e
def test_every_cli_run_writes_a_snapshot(sweep):
    for run in (sweep / "tiny").iterdir():
        with np.load(run / SNAPSHOT_FILE) as snapshot:
            assert snapshot["test_outputs"].shape == (128, 10)  # test_tiny: 128 test points, 10 classes
            assert snapshot["jacobians"].shape == (256, 10, 40)  # 256 training points, 40 inputs


@pytest.mark.e2e
def test_report_fills_the_paper_bound_and_the_function_variance(sweep, tmp_path):
    summary = build_report(sweep, out=tmp_path / "report")
    table = pd.read_csv(tmp_path / "report" / "bias_variance.csv")
    assert sorted(table["model.width"]) == [4, 12]
    assert table[FUNCTION_VARIANCE].gt(0).all() and table[PAPER_BOUND].gt(0).all()
    for _, row in table.iterrows():
        runs = sorted((sweep / "tiny").glob(f"w{int(row['model.width'])}_s*"))
        outputs = np.stack([np.load(run / SNAPSHOT_FILE)["test_outputs"] for run in runs]).astype(np.float64)
        direct = np.mean(np.sum((outputs - outputs.mean(axis=0)) ** 2, axis=2))
        assert row[FUNCTION_VARIANCE] == pytest.approx(direct, rel=1e-9)
        expected_bound = variance_bound(row["C_bar"], row["mean C_lower^2"], row["E||x||^2"], row["Var f(0)"])
        assert row[PAPER_BOUND] == pytest.approx(expected_bound, rel=1e-12)
    assert any("from snapshot.npz for 2 grid point(s)" in note for note in summary.notes)
    assert (tmp_path / "report" / "bias_variance.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.e2e
def test_grid_points_without_snapshots_stay_empty_and_are_named(sweep):
    records = load_runs(sweep)
    kept = [
        dataclasses.replace(r, path=r.path.parent / "elsewhere" / r.name) if r.name.startswith("w4_") else r
        for r in records
    ]  # the width-4 runs now point to folders without snapshot.npz
    updated, notes = with_ensemble_quantities(kept, AXES, "seed_everything")
    table, _ = bias_variance_table(updated, AXES, "seed_everything")
    by_width = table.set_index("model.width")
    assert math.isnan(by_width.loc[4, PAPER_BOUND]) and by_width.loc[12, PAPER_BOUND] > 0
    assert any("1 grid point(s) have seeds without snapshot.npz" in note for note in notes)
    assert all(FUNCTION_VARIANCE not in r.final for r in records)  # the inputs are not changed
