"""The parts LipschitzCallback is built from: point sets (built-in and a user's), the DDP reduction of
`LowerBoundStats`, `TopPoints`, and the epoch axis of every logged row (CSV and W&B).

Values are checked against explicit per-sample Jacobians and a dense SVD (`dense_jacobian_norms`), statistics
against direct sums over all the norms, top points against a full sort.
"""

from __future__ import annotations

import csv
import math
import os
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from conftest import ToyData, ToyNet, dense_jacobian_norms, make_trainer, toy_arrays, without_timing
from lightning.pytorch.callbacks import LearningRateMonitor

from lipschitz_dd.bounds import LowerBoundStats
from lipschitz_dd.bounds.optimised import TopPoints
from lipschitz_dd.callbacks import LipschitzCallback
from lipschitz_dd.callbacks._distributed import reduce_stats
from lipschitz_dd.callbacks.point_sets import NoisePoints, PointSet
from lipschitz_dd.epoch_axis import use_epoch_axis
from lipschitz_dd.loggers import EpochCSVLogger, EpochWandbLogger


class ShiftedPoints(PointSet):
    """x + delta (every coordinate): lipschitz/lower_shift. The module doc's example of a new point set."""

    def __init__(self, delta: float = 0.5) -> None:
        super().__init__(name="shift")
        self.delta = delta

    def points(self, x, y, model, generator):
        return x + self.delta


class FirstClassTestPoints(PointSet):
    """The test points whose label is 0 (labels needed, from the test source): lipschitz/lower_class0."""

    def __init__(self) -> None:
        super().__init__(name="class0", source="test", labels=True)

    def points(self, x, y, model, generator):
        return x[y == 0]


# ------------------------------------------------------------------------------------------ point sets


def test_a_custom_point_set_is_one_class(tmp_path):
    torch.manual_seed(0)
    model, data = ToyNet(), ToyData()
    callback = LipschitzCallback(
        every_n_epochs=1, upper=False, progress_bar=False, point_sets=[ShiftedPoints(0.5), FirstClassTestPoints()]
    )
    trainer = make_trainer(tmp_path, [callback], max_epochs=1, logger=False)
    trainer.fit(model, datamodule=data)
    shifted = dense_jacobian_norms(model, data.train_x + 0.5)
    assert callback.last_metrics["lipschitz/lower_shift"] == pytest.approx(float(shifted.max()), rel=1e-5)
    class0 = dense_jacobian_norms(model, data.test_x[data.test_y == 0])
    assert callback.last_metrics["lipschitz/lower_class0"] == pytest.approx(float(class0.max()), rel=1e-5)
    assert [h["epoch"] for h in callback.history] == [0.0, 1.0]
    assert all("lipschitz/lower_shift" in h for h in callback.history)


def test_flags_and_point_set_objects_measure_the_same():
    model = ToyNet()
    trainer = make_trainer(".", [], logger=False)
    trainer.strategy.connect(model)
    x = toy_arrays()[0]
    by_flag = LipschitzCallback(train_points=x, noise=True, noise_sigma=0.3, seed=2, progress_bar=False)
    by_object = LipschitzCallback(train_points=x, point_sets=[NoisePoints(0.3)], seed=2, progress_bar=False)
    a, b = by_flag.measure(trainer, model, epoch=1), by_object.measure(trainer, model, epoch=1)
    assert "lipschitz/lower_noise" in a and without_timing(a) == without_timing(b)


def test_point_set_names_must_be_unique():
    with pytest.raises(ValueError, match="LipschitzCallback: point set names"):
        LipschitzCallback(noise=True, point_sets=[NoisePoints()])
    with pytest.raises(ValueError, match="LipschitzCallback: point set names"):
        LipschitzCallback(point_sets=[ShiftedPoints(), ShiftedPoints(1.0)])
    with pytest.raises(ValueError, match="LipschitzCallback"):
        PointSet(name="a/b")
    with pytest.raises(NotImplementedError, match="points"):
        PointSet(name="a").points(torch.zeros(1), None, None, None)


def test_point_sets_from_a_lightning_cli_style_config():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--callback", type=LipschitzCallback)
    config = parser.parse_args(
        [
            "--callback",
            '{"class_path": "lipschitz_dd.callbacks.LipschitzCallback", "init_args": {"point_sets": ['
            '{"class_path": "lipschitz_dd.callbacks.point_sets.NoisePoints", "init_args": {"sigma": 0.2}}, '
            '{"class_path": "test_lipschitz_callback_parts.ShiftedPoints", "init_args": {"delta": 2.0}}]}}',
        ]
    )
    callback = parser.instantiate(config).callback
    noise, shifted = callback.point_sets
    assert isinstance(noise, NoisePoints) and noise.sigma == 0.2
    assert isinstance(shifted, ShiftedPoints) and shifted.delta == 2.0
    assert [s.name for s in callback.measured_point_sets()] == ["train", "noise", "shift"]


# ------------------------------------------------------------------------------------------ parts in bounds


def test_reduce_stats_equals_the_statistics_of_all_ranks_points():
    norms = torch.rand(23, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    shares = [norms[:10], norms[10:10], norms[10:]]  # rank 1 has no points
    nan_shares = [torch.tensor([1.0]), torch.tensor([float("nan")]), torch.tensor([2.0])]

    def stats_of(share):
        stats = LowerBoundStats()
        stats.update(share)
        return stats

    per_rank = [{"set": stats_of(s), "diverged": stats_of(n)} for s, n in zip(shares, nan_shares, strict=True)]
    sent = []  # first each rank's message (what all_gather receives), then the gathered tensor for rank 0
    record = SimpleNamespace(all_gather=lambda t: sent.append(t) or t.unsqueeze(0).expand(3, *t.shape))
    for stats in per_rank:
        reduce_stats(SimpleNamespace(world_size=3, strategy=SimpleNamespace(root_device="cpu", **vars(record))), stats)
    gather = SimpleNamespace(root_device="cpu", all_gather=lambda t: torch.stack(sent))
    merged = reduce_stats(SimpleNamespace(world_size=3, strategy=gather), per_rank[0])
    assert merged["set"].count == 23 and merged["set"].max == pytest.approx(float(norms.max()))
    assert merged["set"].sum == pytest.approx(float(norms.sum())) and merged["set"].mean == pytest.approx(
        float(norms.mean())
    )
    assert merged["set"].rms == pytest.approx(float(norms.square().mean().sqrt()))
    assert merged["diverged"].count == 3 and math.isnan(merged["diverged"].max)  # a diverged rank shows
    assert not merged["set"].has_tol and math.isnan(merged["set"].avg_tol)


def test_reduce_stats_averages_the_warm_tolerance_over_all_ranks_points():
    """One statistic type: a rank's warm result (tolerances) and a plain rank reduce to the mean tolerance over
    the points that carry one; the warm estimator's diagnostics stay on their rank."""
    from lipschitz_dd.bounds.warm_lower import WarmLowerResult

    warm = WarmLowerResult(count=4, sum=8.0, sum_sq=20.0, max=3.0, argmax_index=7, tol_sum=0.4, tol_count=4)
    warm.method, warm.refined = "warm", 2
    other = WarmLowerResult(count=6, sum=6.0, sum_sq=7.0, max=5.0, argmax_index=1, tol_sum=0.2, tol_count=6)
    ranks = [{"train": warm}, {"train": other}]
    sent = [torch.tensor([r["train"].state_vector()], dtype=torch.float64) for r in ranks]
    gather = SimpleNamespace(root_device="cpu", all_gather=lambda t: torch.stack(sent))
    merged = reduce_stats(SimpleNamespace(world_size=2, strategy=gather), ranks[0])["train"]
    assert type(merged) is LowerBoundStats and merged.has_tol
    assert (merged.count, merged.max, merged.sum, merged.sum_sq) == (10, 5.0, 14.0, 27.0)
    assert merged.avg_tol == pytest.approx(0.6 / 10)
    assert warm.merge(other).avg_tol == pytest.approx(merged.avg_tol)


def test_top_points_keeps_the_largest_norms_over_a_stream():
    g = torch.Generator().manual_seed(1)
    x, norms = torch.randn(40, 3, generator=g), torch.rand(40, generator=g)
    norms[5] = float("nan")  # a diverged batch never displaces a finite point
    top = TopPoints(6)
    for xs, ns in zip(x.split(7), norms.split(7), strict=True):
        top.add(xs, ns)
    expected = torch.nan_to_num(norms, nan=-1.0).argsort(descending=True)[:6]
    assert torch.equal(top.norms, norms[expected]) and torch.equal(top.points, x[expected])
    with pytest.raises(ValueError, match="norms for"):
        top.add(x[:2], norms[:3])


# ------------------------------------------------------------------------------------------ the epoch axis


def fit_project_model(tmp_path, loggers, clock: bool = True) -> pl.Trainer:
    """lipschitz_dd's FCN on synthetic data, 2 epochs of 4 updates, with a per-update LearningRateMonitor."""
    from lipschitz_dd.data import SyntheticDataModule
    from lipschitz_dd.models import FCN

    pl.seed_everything(0, verbose=False)
    data = SyntheticDataModule(input_shape=(6,), num_classes=3, num_train=32, num_test=16, batch_size=8)
    model = FCN(input_dim=6, width=8, depth=1, num_classes=3, lr=0.05)
    callback = LipschitzCallback(every_n_epochs=1, upper=False, progress_bar=False)
    trainer = make_trainer(tmp_path, [callback, LearningRateMonitor(logging_interval="step")], 2, logger=loggers)
    if clock:
        use_epoch_axis(trainer)
    trainer.fit(model, datamodule=data)
    return trainer


def csv_rows(logger: EpochCSVLogger) -> list[dict[str, float]]:
    with open(os.path.join(logger.log_dir, "metrics.csv"), newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def test_run_folder_csv_has_one_row_per_epoch_with_step_metrics_inside(tmp_path):
    logger = EpochCSVLogger(save_dir=str(tmp_path), name="run", version="epochs")
    fit_project_model(tmp_path, [logger])
    rows = csv_rows(logger)
    assert [r["step"] for r in rows] == [0.0, 1.0, 2.0]  # epoch 0 (module + callback) is one row
    assert {"test/loss", "lipschitz/lower", "params/count"} <= set(rows[0]) and "lr-SGD" not in rows[0]
    for row in rows[1:]:  # the per-update learning rate joins its epoch's row
        assert {"test/loss", "train/loss", "lipschitz/lower", "lr-SGD"} <= set(row)
    assert "f0/0" in rows[-1]
    # without the clock the learning rate's rows (at update counts 0..7) interleave with the epoch rows
    plain = EpochCSVLogger(save_dir=str(tmp_path), name="run", version="steps")
    fit_project_model(tmp_path, [plain], clock=False)
    assert len(csv_rows(plain)) > 3


class RecordingRun:
    """Stands in for a wandb Run: records `log` and `define_metric` calls."""

    def __init__(self) -> None:
        self.logged: list[dict] = []
        self.defined: list[tuple[tuple, dict]] = []
        self.config = SimpleNamespace(update=lambda *a, **k: None)
        self.name, self.id, self.dir = "recorded", "recorded", None

    def log(self, row: dict) -> None:
        self.logged.append(dict(row))

    def define_metric(self, *args, **kwargs) -> None:
        self.defined.append((args, kwargs))


def test_wandb_rows_are_plotted_against_the_epoch(tmp_path):
    run = RecordingRun()
    wandb_logger = EpochWandbLogger(experiment=run, save_dir=str(tmp_path))
    csv_logger = EpochCSVLogger(save_dir=str(tmp_path), name="run", version="wandb")
    fit_project_model(tmp_path, [csv_logger, wandb_logger])
    assert (("*",), {"step_metric": "epoch", "step_sync": True}) in run.defined
    assert [row["epoch"] for row in run.logged] == [0, 1, 2]  # one W&B row per epoch, epoch 0 included
    assert {"test/loss", "lipschitz/lower", "params/count"} <= set(run.logged[0])
    assert all({"lr-SGD", "test/loss", "lipschitz/lower"} <= set(row) for row in run.logged[1:])
    csv_by_step = {r["step"]: r for r in csv_rows(csv_logger)}
    for row in run.logged:  # the same values as the CSV rows of the same epoch
        assert row["lipschitz/lower"] == pytest.approx(csv_by_step[row["epoch"]]["lipschitz/lower"])


def test_checkpoint_name_and_results_count_the_same_epochs(tmp_path):
    import json

    from lipschitz_dd.callbacks import ResultsWriter

    for validate in (True, False):  # the step comes from the validation row, or from the training epoch's end
        folder = tmp_path / f"validate_{validate}"
        callback = LipschitzCallback(every_n_epochs=5, dense_epochs=0, upper=False, progress_bar=False)
        record = ResultsWriter(run_dir=str(folder))
        options = {} if validate else {"limit_val_batches": 0}
        trainer = make_trainer(folder, [callback, record], max_epochs=3, enable_checkpointing=True, **options)
        use_epoch_axis(trainer)
        trainer.fit(ToyNet(), datamodule=ToyData())
        names = sorted(p.name for p in (folder / "run" / "version_0" / "checkpoints").iterdir())
        results = json.loads((folder / "results.json").read_text())
        assert names == ["epoch=3.ckpt"] and results["epochs"] == 3  # Lightning's default: epoch=2-step=11.ckpt
        assert [h["epoch"] for h in callback.history] == [0.0, 3.0]  # epochs 1, 2 unmeasured, still stepped


class WarmPowerPoints(PointSet):
    """The training points with ||J|| from 2 power iterations warm-started from the previous measurement's
    vectors of the same batch (the source yields the same batches every time): an estimate that errs low, with
    state that travels in the checkpoint."""

    def __init__(self, iterations: int = 2) -> None:
        super().__init__(name="warm")
        self.iterations, self.vectors, self._batch = iterations, [], 0

    def start(self, num_points):
        self._batch = 0

    def points(self, x, y, model, generator):
        return x

    def norms(self, model, points, jacobian_norms):
        from lipschitz_dd.bounds.jacobian import power_iteration_spectral_norms

        init = self.vectors[self._batch] if self._batch < len(self.vectors) else None
        result = power_iteration_spectral_norms(model, points, init=init, max_iter=self.iterations, tol=0.0)
        self.vectors[self._batch : self._batch + 1] = [result.vectors.detach()]
        self._batch += 1
        return result.norms

    def state_dict(self):
        return {"vectors": list(self.vectors)}

    def load_state_dict(self, state):
        self.vectors = list(state["vectors"])


def test_a_point_set_may_bring_its_own_warm_started_estimator_and_state():
    model = ToyNet()
    trainer = make_trainer(".", [], logger=False)
    trainer.strategy.connect(model)
    x = toy_arrays()[0]
    callback = LipschitzCallback(train_points=x, batch_size=8, point_sets=[WarmPowerPoints()], progress_bar=False)
    exact = float(dense_jacobian_norms(model, x).max())
    first = callback.measure(trainer, model, epoch=0)["lipschitz/lower_warm"]
    second = callback.measure(trainer, model, epoch=1)["lipschitz/lower_warm"]
    assert first <= second <= exact * (1 + 1e-5)  # warm start only climbs, and never above the true max
    assert callback.measure(trainer, model, epoch=2)["lipschitz/lower"] == pytest.approx(exact, rel=1e-5)
    assert len(callback.point_sets[0].vectors) == 4  # 30 points in batches of 8
    clone = LipschitzCallback(train_points=x, point_sets=[WarmPowerPoints()], progress_bar=False)
    clone.load_state_dict(callback.state_dict())
    restored, saved = clone.point_sets[0].vectors, callback.point_sets[0].vectors
    assert len(restored) == len(saved) and all(torch.equal(a, b) for a, b in zip(restored, saved, strict=True))


def test_datamodule_measure_dataloader_is_the_training_measurement_set(tmp_path):
    """A datamodule with `measure_dataloader()` (the ImageFolder one: a fixed subset with eval transforms)
    names the points of lipschitz/lower itself, ahead of its in-memory tensors and its training loader."""

    class MeasuredData(ToyData):
        def measure_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(3 * self.train_x[:5]), batch_size=2)

    data = MeasuredData()
    callback = LipschitzCallback(every_n_epochs=1, upper=False, progress_bar=False)
    model = ToyNet()
    make_trainer(tmp_path, [callback], max_epochs=1, logger=False).fit(model, datamodule=data)
    norms = dense_jacobian_norms(model, 3 * data.train_x[:5])
    assert callback.last_metrics["lipschitz/lower"] == pytest.approx(float(norms.max()), rel=1e-5)
    assert callback.last_metrics["lipschitz/avg"] == pytest.approx(float(norms.mean()), rel=1e-5)
