"""LipschitzCallback's warm-started estimator at the training points (method="auto" picks it for more than 16
logits): every logged value is checked against explicit per-sample Jacobians and a dense SVD
(conftest.dense_jacobian_norms), at every measurement, across a checkpoint and resume, and under mixed precision."""

from __future__ import annotations

import json
import math

import lightning.pytorch as pl
import pytest
import torch
from conftest import dense_jacobian_norms, make_trainer, read_rows
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lipschitz_dd.callbacks import ResultsWriter
from lipschitz_dd.callbacks._points import PointSource
from lipschitz_dd.callbacks.lipschitz import LipschitzCallback

N_POINTS, DIM, OUTPUTS = 40, 8, 24  # K = 24 > 16: "auto" takes the warm estimator


def arrays(seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N_POINTS, DIM, generator=g), torch.randint(OUTPUTS, (N_POINTS,), generator=g)


class WideNet(pl.LightningModule):
    """Linear -> Tanh -> Linear -> ReLU -> Linear with 24 logits (smooth and piecewise-linear parts), SGD."""

    def __init__(self, outputs: int = OUTPUTS, hidden: int = 32, lr: float = 0.2):
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(DIM, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, outputs)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class WideData(pl.LightningDataModule):
    """The 40 points through a map-style loader (the callback reads them by dataset index)."""

    def __init__(self):
        super().__init__()
        self.x, self.y = arrays()

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=16, shuffle=False)


def connected(model: pl.LightningModule) -> pl.Trainer:
    trainer = make_trainer(".", [], logger=False)
    trainer.strategy.connect(model)
    return trainer


def assert_matches_dense(metrics: dict[str, float], model: nn.Module, x: Tensor, avg_rel: float) -> None:
    norms = dense_jacobian_norms(model, x)
    assert metrics["lipschitz/lower"] == pytest.approx(float(norms.max()), rel=1e-5)
    assert metrics["lipschitz/avg"] == pytest.approx(float(norms.mean()), rel=avg_rel)
    assert metrics["lipschitz/rms"] == pytest.approx(float(norms.square().mean().sqrt()), rel=avg_rel)
    assert metrics["lipschitz/avg"] <= float(norms.mean()) * (1 + 1e-5)  # warm values err low


def test_auto_picks_warm_and_logs_the_exact_max_at_every_measurement():
    torch.manual_seed(0)
    model, (x, _) = WideNet(), arrays()
    trainer = connected(model)
    callback = LipschitzCallback(train_points=x, batch_size=16, upper=False, progress_bar=False)
    g = torch.Generator().manual_seed(1)
    colds, iterations = [], []
    for epoch in range(4):
        metrics = callback.measure(trainer, model, epoch=epoch, record_trajectory=True)
        assert callback.last_method.method == "warm" and "K=24 > 16" in callback.last_method.reason
        assert_matches_dense(metrics, model, x, avg_rel=1e-3)
        assert 0.0 <= metrics["lipschitz/avg_tol"] < 1e-2
        result = callback._train_norms.result
        colds.append(result.cold)
        iterations.append(result.iterations)
        with torch.no_grad():  # a training step's worth of change
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    assert colds == [N_POINTS, 0, 0, 0]  # first measurement cold, then every point starts from its vectors
    assert all(0 < it <= 3 for it in iterations[1:])
    assert callback.results_extra()["measurement"]["method"] == "warm"


def test_method_exact_and_small_outputs_give_the_exact_values():
    torch.manual_seed(0)
    x, _ = arrays()
    for outputs, method in ((OUTPUTS, "exact"), (10, "auto")):
        model = WideNet(outputs=outputs)
        callback = LipschitzCallback(train_points=x, batch_size=16, upper=False, method=method, progress_bar=False)
        metrics = callback.measure(connected(model), model, epoch=0)
        assert callback.last_method.method == "exact"
        assert callback.last_method.reason == ("requested" if method == "exact" else "K=10 <= 16")
        assert_matches_dense(metrics, model, x, avg_rel=1e-5)
        assert metrics["lipschitz/avg_tol"] == 0.0


def test_method_is_checked_and_set_from_a_cli_config():
    from jsonargparse import ArgumentParser

    with pytest.raises(ValueError, match="method must be one of"):
        LipschitzCallback(method="fast")
    parser = ArgumentParser()
    parser.add_argument("--lipschitz", type=LipschitzCallback)
    path = "lipschitz_dd.callbacks.lipschitz.LipschitzCallback"
    config = parser.parse_args(["--lipschitz", json.dumps({"class_path": path, "init_args": {"method": "warm"}})])
    assert parser.instantiate(config).lipschitz.method == "warm"
    with pytest.raises(SystemExit):  # jsonargparse checks the Literal
        parser.parse_args(["--lipschitz", json.dumps({"class_path": path, "init_args": {"method": "fast"}})])


def fit(tmp_path, epochs: int, resume_from: str | None = None, **trainer_kwargs):
    torch.manual_seed(3)
    model = WideNet()
    callback = LipschitzCallback(every_n_epochs=1, upper=False, batch_size=16, progress_bar=False)
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, save_top_k=0)
    writer = ResultsWriter(run_dir=str(tmp_path / "run"))
    trainer = make_trainer(
        tmp_path, [callback, checkpoint, writer], max_epochs=epochs, enable_checkpointing=True, **trainer_kwargs
    )
    trainer.fit(model, datamodule=WideData(), ckpt_path=resume_from)
    return model, callback, trainer


def test_fit_logs_avg_tol_records_the_method_and_resume_keeps_the_vectors(tmp_path):
    full_model, full, _ = fit(tmp_path / "full", 3)
    _, part, _ = fit(tmp_path / "part", 1)
    assert part._train_norms.result.cold == 0  # epoch 1 already started from the vectors of epoch 0
    model, resumed, trainer = fit(tmp_path / "resumed", 3, resume_from=str(tmp_path / "part/ckpt/last.ckpt"))
    # the measurement after the resume (epoch 2) started every point from the checkpoint's vectors
    assert [h["epoch"] for h in resumed.history] == [0.0, 1.0, 2.0, 3.0]
    assert len(resumed._train_norms.estimator.store) == N_POINTS
    rows = [r for r in read_rows(trainer) if "lipschitz/lower" in r]
    assert [r["epoch"] for r in rows] == [1.0, 2.0] and all("lipschitz/avg_tol" in r for r in rows)
    assert resumed._train_norms.result.cold == 0
    for epoch in (2, 3):  # the same numbers as the uninterrupted run
        for key in ("lipschitz/lower", "lipschitz/avg", "lipschitz/rms", "lipschitz/avg_tol"):
            assert resumed.history[epoch][key] == pytest.approx(full.history[epoch][key], rel=1e-6, abs=1e-12)
    assert_matches_dense(resumed.last_metrics, model.eval(), WideData().x, avg_rel=1e-3)
    record = json.loads((tmp_path / "resumed/run/results.json").read_text())
    assert record["measurement"]["method"] == "warm" and record["measurement"]["requested"] == "auto"
    assert record["measurement"]["n_outputs"] == OUTPUTS and "final" in record and "config" in record


def test_a_checkpoint_of_another_rank_is_not_loaded():
    torch.manual_seed(0)
    model, (x, _) = WideNet(), arrays()
    callback = LipschitzCallback(train_points=x, upper=False, progress_bar=False)
    callback.measure(connected(model), model, epoch=0)
    state = callback.state_dict()
    other = LipschitzCallback(train_points=x, upper=False, progress_bar=False)
    other._rank = 1  # as set in setup() of rank 1
    other.load_state_dict(state)
    assert other._train_norms.estimator.store is None  # rank 1 rebuilds its own points cold
    same = LipschitzCallback(train_points=x, upper=False, progress_bar=False)
    same.load_state_dict(state)
    assert len(same._train_norms.estimator.store) == N_POINTS


@pytest.mark.parametrize("precision", ["bf16-mixed"])
def test_mixed_precision_training_measures_the_float32_model(tmp_path, precision):
    torch.manual_seed(4)
    model = WideNet()
    callback = LipschitzCallback(every_n_epochs=1, upper=True, batch_size=16, progress_bar=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=2, precision=precision)
    trainer.fit(model, datamodule=WideData())
    x = WideData().x
    model.eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert_matches_dense(callback.last_metrics, model, x, avg_rel=1e-3)
    # the same weights measured by a fresh callback, in float32 without autocast and inside a bf16 autocast
    fresh = LipschitzCallback(train_points=x, batch_size=16, progress_bar=False, track_params=False)
    plain = fresh.measure(connected(model), model, epoch=0)
    fresh = LipschitzCallback(train_points=x, batch_size=16, progress_bar=False, track_params=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = fresh.measure(connected(model), model, epoch=0)
    for key in ("lipschitz/lower", "lipschitz/avg", "lipschitz/rms", "lipschitz/upper"):
        assert autocast[key] == pytest.approx(plain[key], rel=1e-6)
    assert callback.last_metrics["lipschitz/lower"] == pytest.approx(plain["lipschitz/lower"], rel=1e-5)
    assert callback.last_metrics["lipschitz/upper"] == pytest.approx(plain["lipschitz/upper"], rel=1e-4)


def test_point_sources_give_stable_indices():
    x, y = arrays()
    tensors = PointSource.from_tensors(x, y, max_samples=30, seed=2, batch_size=7, rank=1, world_size=2)
    subset = torch.randperm(N_POINTS, generator=torch.Generator().manual_seed(2))[:30][1::2]
    batches = list(tensors.indexed_batches(torch.device("cpu")))
    assert torch.equal(torch.cat([i for _, _, i in batches]), subset)
    assert all(torch.equal(b, x[i]) for b, _, i in batches)
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    mapped = PointSource.from_loader(loader, max_samples=12, seed=2, batch_size=5)
    for xb, _, i in mapped.indexed_batches(torch.device("cpu")):
        assert torch.equal(xb, x[i])
    stream = PointSource.from_loader(list(loader), max_samples=12, seed=2, batch_size=5)  # no dataset: streamed
    indices = torch.cat([i for _, _, i in stream.indexed_batches(torch.device("cpu"))])
    assert torch.equal(indices, torch.arange(12))  # running positions
    assert math.isclose(sum(len(b) for b, _ in stream.batches(torch.device("cpu"))), 12)


def test_a_non_finite_point_logs_nan_with_a_warning_and_does_not_stop_the_run():
    torch.manual_seed(0)
    model, (x, _) = WideNet(), arrays()
    x[3] = float("nan")
    trainer = connected(model)
    callback = LipschitzCallback(train_points=x, batch_size=16, upper=False, progress_bar=False)
    with pytest.warns(RuntimeWarning, match="Jacobian norms failed"):
        first = callback.measure(trainer, model, epoch=0)
    second = callback.measure(trainer, model, epoch=1)
    for metrics in (first, second):
        assert math.isnan(metrics["lipschitz/lower"]) and math.isnan(metrics["lipschitz/avg"])
    store = callback._train_norms.estimator.store  # the other batches keep their vectors, the failed one has none
    assert N_POINTS - 16 <= len(store) < N_POINTS and not bool(store.contains(torch.tensor([3])))
