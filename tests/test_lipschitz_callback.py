"""LipschitzCallback on tiny models and data written as a user would (not lipschitz_dd.models/data).

The toy model, data and trainer helpers shared with the other test files live in conftest.py. Every value is checked
against an independent computation: explicit per-sample Jacobians (torch.autograd.functional.jacobian, one
sample at a time) and a dense SVD; explicit weight matrices for the upper bound.
"""

from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
from conftest import (
    CLASSES,
    DIM,
    DictDataset,
    ToyData,
    ToyNet,
    dense_jacobian_norms,
    make_trainer,
    read_rows,
    toy_arrays,
    without_timing,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lipschitz_dd.callbacks._points import PointSource, batch_input, batch_label, seeded_subset
from lipschitz_dd.callbacks.lipschitz import LipschitzCallback


def product_of_linear_norms(model: nn.Module) -> float:
    """prod ||W||_2 over the Linear layers (dense SVD): the AutoLip upper bound of Linear/ReLU/Dropout nets."""
    return math.prod(
        float(torch.linalg.svdvals(m.weight.detach().double())[0]) for m in model.modules() if isinstance(m, nn.Linear)
    )


def assert_close_dicts(a: dict[str, float], b: dict[str, float], rel: float = 1e-6, keys: set | None = None):
    keys = keys if keys is not None else set(a) | set(b)
    assert set(a) >= keys and set(b) >= keys, (sorted(a), sorted(b))
    for k in keys:
        assert math.isclose(a[k], b[k], rel_tol=rel, abs_tol=1e-9), (k, a[k], b[k])


# ---------------------------------------------------------------------------------------------- tests

ALL_KEYS = {
    "lipschitz/lower",
    "lipschitz/avg",
    "lipschitz/rms",
    "lipschitz/avg_tol",
    "lipschitz/upper",
    "lipschitz/upper_available",
    "lipschitz/lower_test",
    "lipschitz/lower_interp",
    "lipschitz/lower_noise",
    "lipschitz/lower_pgd",
    "lipschitz/lower_opt",
    "lipschitz/seconds",
    "params/dist_init",
    "params/path_length",
}


def full_callback(**kwargs) -> LipschitzCallback:
    options = dict(
        every_n_epochs=1,
        test=True,
        interp=True,
        interp_points=40,
        noise=True,
        pgd=True,
        pgd_steps=3,
        optimised_every=1,
        optimised_top_m=2,
        optimised_steps=3,
        progress_bar=False,
    )
    options.update(kwargs)
    return LipschitzCallback(**options)


def test_logged_keys_share_rows_with_test_loss(tmp_path):
    torch.manual_seed(0)
    callback = full_callback()
    trainer = make_trainer(tmp_path, [callback], max_epochs=2)
    trainer.fit(ToyNet(), datamodule=ToyData())
    rows = read_rows(trainer)
    initial = [r for r in rows if r.get("step") == 0 and "lipschitz/lower" in r]
    assert len(initial) == 1 and set(initial[0]) == ALL_KEYS | {"step"}  # written before the first update
    assert initial[0]["params/dist_init"] == 0.0 and initial[0]["params/path_length"] == 0.0
    loss_rows = [r for r in rows if "test/loss" in r]
    assert len(loss_rows) == 2  # one validation per epoch, each with all the Lipschitz metrics beside it
    for row in loss_rows:  # Lightning's own step and epoch column: the callback logs neither (a user's axis)
        assert set(row) == ALL_KEYS | {"test/loss", "step", "epoch"}
    assert [(r["epoch"], r["step"]) for r in loss_rows] == [(0.0, 3.0), (1.0, 7.0)]  # 4 updates per epoch
    assert not any("lipschitz/lower" in r and "test/loss" not in r and r["step"] != 0 for r in rows)
    for row in initial + loss_rows:  # every extra point set is a valid lower bound; opt >= the data max
        assert row["lipschitz/lower_opt"] >= row["lipschitz/lower"] - 1e-6
        assert row["lipschitz/rms"] >= row["lipschitz/avg"] - 1e-9 and row["lipschitz/lower"] >= row["lipschitz/rms"]
        assert row["lipschitz/upper"] >= row["lipschitz/lower"] and row["lipschitz/upper_available"] == 1.0
    assert [h["epoch"] for h in callback.history] == [0.0, 1.0, 2.0]
    assert callback.last_metrics == {k: v for k, v in callback.history[-1].items() if k != "epoch"}


def test_values_equal_direct_computation_on_checkpoint(tmp_path):
    torch.manual_seed(1)
    model, data = ToyNet(), ToyData()
    initial = copy.deepcopy(model)
    callback = LipschitzCallback(every_n_epochs=1, test=True, progress_bar=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=2)
    trainer.fit(model, datamodule=data)
    path = str(tmp_path / "final.ckpt")
    trainer.save_checkpoint(path)
    restored = ToyNet.load_from_checkpoint(path).eval()
    rows = [r for r in read_rows(trainer) if "lipschitz/lower" in r]
    for row, net in ((rows[0], initial), (rows[-1], restored)):
        train_norms = dense_jacobian_norms(net, data.train_x)
        assert row["lipschitz/lower"] == pytest.approx(float(train_norms.max()), rel=1e-5)
        assert row["lipschitz/avg"] == pytest.approx(float(train_norms.mean()), rel=1e-5)
        assert row["lipschitz/rms"] == pytest.approx(float(train_norms.square().mean().sqrt()), rel=1e-5)
        test_norms = dense_jacobian_norms(net, data.test_x)
        assert row["lipschitz/lower_test"] == pytest.approx(float(test_norms.max()), rel=1e-5)
    # BatchNorm in eval mode is the affine map x -> gamma (x - mu) / sqrt(var + eps) + beta: an explicit matrix
    bn = restored.net[1]
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double()
    w1, w2 = restored.net[0].weight.detach().double(), restored.net[4].weight.detach().double()
    upper_exact_rule = float(torch.linalg.svdvals(w1)[0] * scale.abs().max() * torch.linalg.svdvals(w2)[0])
    assert rows[-1]["lipschitz/upper"] == pytest.approx(upper_exact_rule, rel=1e-3)
    theta = lambda m: torch.cat([p.detach().reshape(-1) for p in m.parameters()]).double()  # noqa: E731
    assert rows[-1]["params/dist_init"] == pytest.approx(float((theta(restored) - theta(initial)).norm()), rel=1e-5)


def test_schedule_dense_then_every_n_plus_last():
    callback = LipschitzCallback(every_n_epochs=5, dense_epochs=3)
    measured = [e for e in range(0, 13) if callback.is_scheduled(e)]
    assert measured == [0, 1, 2, 3, 5, 10]
    assert callback.is_scheduled(7, last=True)


def test_schedule_in_a_run_includes_last_epoch(tmp_path):
    callback = LipschitzCallback(every_n_epochs=3, dense_epochs=1, upper=False, progress_bar=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=7, logger=False)
    trainer.fit(ToyNet(), datamodule=ToyData())
    assert [h["epoch"] for h in callback.history] == [0.0, 1.0, 3.0, 6.0, 7.0]
    assert callback.history[-1]["params/path_length"] >= callback.history[-1]["params/dist_init"] > 0


def final_weights(tmp_path, with_callback: bool) -> dict[str, Tensor]:
    pl.seed_everything(123, verbose=False)
    model = ToyNet(dropout=0.5)
    callbacks = [full_callback(noise_sigma=0.3)] if with_callback else []
    trainer = make_trainer(tmp_path, callbacks, max_epochs=3, logger=False)
    trainer.fit(model, datamodule=ToyData(shuffle=True))
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_training_bit_identical_with_and_without_callback(tmp_path):
    without = final_weights(tmp_path / "a", with_callback=False)
    with_cb = final_weights(tmp_path / "b", with_callback=True)
    assert without.keys() == with_cb.keys()
    for name in without:  # weights, BatchNorm running statistics and its batch counter
        assert torch.equal(without[name], with_cb[name]), name


def test_measurement_leaves_modes_grads_and_rng_untouched():
    model = ToyNet()
    model.train()
    model.net[1].eval()  # a user's frozen BatchNorm must stay in eval mode
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    trainer = make_trainer(".", [], logger=False)
    trainer.strategy.connect(model)
    callback = LipschitzCallback(train_points=toy_arrays()[0], noise=True, progress_bar=False)
    rng_before = torch.get_rng_state()
    bn_before = copy.deepcopy(model.net[1].state_dict())
    callback.measure(trainer, model, epoch=0)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert model.training and model.net[0].training and not model.net[1].training
    assert all(p.requires_grad and torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    for k, v in model.net[1].state_dict().items():
        assert torch.equal(v, bn_before[k])


def run_epochs(tmp_path, epochs: int, resume_from=None):
    torch.manual_seed(5)
    model = ToyNet(dropout=0.0)
    callback = LipschitzCallback(every_n_epochs=1, noise=True, progress_bar=False)
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, save_top_k=0)
    trainer = make_trainer(tmp_path, [callback, checkpoint], max_epochs=epochs, enable_checkpointing=True)
    trainer.fit(model, datamodule=ToyData(shuffle=False), ckpt_path=resume_from)
    return callback, trainer


def test_resume_continues_the_same_curves(tmp_path):
    full, _ = run_epochs(tmp_path / "full", 4)
    first, first_trainer = run_epochs(tmp_path / "part", 2)
    resumed, resumed_trainer = run_epochs(tmp_path / "resumed", 4, resume_from=str(tmp_path / "part/ckpt/last.ckpt"))
    assert [h["epoch"] for h in resumed.history] == [0.0, 1.0, 2.0, 3.0, 4.0]  # history travels in the state
    for epoch in (3, 4):
        assert_close_dicts(without_timing(full.history[epoch]), without_timing(resumed.history[epoch]), rel=1e-6)
    assert resumed.history[-1]["params/path_length"] > first.history[-1]["params/path_length"]
    logged = [r for r in read_rows(resumed_trainer) if "lipschitz/lower" in r]
    assert [r["epoch"] for r in logged] == [2.0, 3.0]  # the resumed run logs epochs 3, 4 only, no new epoch 0
    assert logged[-1]["lipschitz/upper"] == pytest.approx(full.history[4]["lipschitz/upper"], rel=1e-6)


def test_state_dict_round_trip():
    model = ToyNet()
    trainer = make_trainer(".", [], logger=False)
    trainer.strategy.connect(model)
    callback = LipschitzCallback(train_points=toy_arrays()[0], seed=9, progress_bar=False)
    callback.measure(trainer, model, epoch=0, record_trajectory=True)
    with torch.no_grad():
        model.net[0].weight.add_(0.1)
    callback.measure(trainer, model, epoch=1, record_trajectory=True)
    state = copy.deepcopy(callback.state_dict())
    clone = LipschitzCallback(train_points=toy_arrays()[0], progress_bar=False)
    clone.load_state_dict(state)
    assert clone.points.seed == 9 and clone.history == callback.history
    with torch.no_grad():
        model.net[0].weight.add_(0.1)
    a = callback.measure(trainer, model, epoch=2, record_trajectory=True)
    b = clone.measure(trainer, model, epoch=2, record_trajectory=True)
    assert_close_dicts(without_timing(a), without_timing(b), rel=1e-9)
    assert a["params/path_length"] == pytest.approx(0.2 * float(model.net[0].weight.numel()) ** 0.5, rel=1e-4)


def test_max_samples_uses_the_same_seeded_subset(tmp_path):
    x, y, _, _ = toy_arrays()
    callback = LipschitzCallback(max_samples=7, seed=3, every_n_epochs=1, upper=False, progress_bar=False)
    model = ToyNet()
    trainer = make_trainer(tmp_path, [callback], max_epochs=1, logger=False)
    trainer.fit(model, datamodule=ToyData())
    subset = seeded_subset(len(x), 7, 3)
    norms = dense_jacobian_norms(model, x[subset])
    assert callback.last_metrics["lipschitz/lower"] == pytest.approx(float(norms.max()), rel=1e-5)
    assert callback.last_metrics["lipschitz/avg"] == pytest.approx(float(norms.mean()), rel=1e-5)


def test_no_validation_falls_back_to_train_epoch_end(tmp_path):
    callback = LipschitzCallback(every_n_epochs=1, upper=False, progress_bar=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=2, limit_val_batches=0)
    data = ToyData()
    trainer.fit(ToyNet(), train_dataloaders=data.train_dataloader())
    rows = [r for r in read_rows(trainer) if "lipschitz/lower" in r]
    assert [(r.get("epoch"), r["step"]) for r in rows] == [(None, 0.0), (0.0, 3.0), (1.0, 7.0)]
    assert [h["epoch"] for h in callback.history] == [0.0, 1.0, 2.0]


def test_dict_batches_and_custom_input_function(tmp_path):
    x, y, tx, ty = toy_arrays()

    class DictData(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(DictDataset(x, y), batch_size=8, shuffle=True)

        def val_dataloader(self):
            return DataLoader(DictDataset(tx, ty), batch_size=8)

    model = ToyNet()
    by_key = LipschitzCallback(every_n_epochs=1, test=True, pgd=True, pgd_steps=2, upper=False, progress_bar=False)
    by_fn = LipschitzCallback(
        every_n_epochs=1, test=True, upper=False, progress_bar=False, seed=1, get_input=lambda batch: batch["image"]
    )
    trainer = make_trainer(tmp_path, [by_key, by_fn], max_epochs=1, logger=False)
    trainer.fit(model, datamodule=DictData())
    norms = dense_jacobian_norms(model, x)
    for callback in (by_key, by_fn):
        assert callback.last_metrics["lipschitz/lower"] == pytest.approx(float(norms.max()), rel=1e-5)
        assert callback.last_metrics["lipschitz/lower_test"] == pytest.approx(
            float(dense_jacobian_norms(model, tx).max()), rel=1e-5
        )


def test_batch_reading_rules():
    x, y = torch.randn(4, 2), torch.arange(4)
    assert batch_input(x) is x and batch_label(x) is None
    assert batch_input((x, y)) is x and batch_label([x, y]) is y
    assert batch_input({"input": x, "target": y}) is x and batch_label({"input": x, "target": y}) is y
    assert batch_input({"a": y, "b": x}, key="b") is x
    assert batch_input({"a": x}, fn=lambda b: b["a"] * 2).equal(2 * x)
    with pytest.raises(ValueError, match="input_key"):
        batch_input({"pixels": x})
    with pytest.raises(ValueError, match="expected a Tensor"):
        batch_input(("not a tensor", y))


def test_subsets_are_fixed_and_ranks_partition_them():
    a, b = seeded_subset(50, 20, seed=4), seeded_subset(50, 20, seed=4)
    assert torch.equal(a, b) and len(set(a.tolist())) == 20 and not torch.equal(a, seeded_subset(50, 20, seed=5))
    x = torch.arange(50.0)[:, None]
    shards = [
        PointSource.from_tensors(x, None, max_samples=20, seed=4, batch_size=3, rank=r, world_size=3) for r in range(3)
    ]
    seen = torch.cat([bx for s in shards for bx, _ in s.batches(torch.device("cpu"))]).reshape(-1)
    assert sorted(seen.long().tolist()) == sorted(a.tolist())
    assert sum(s.num_points for s in shards) == 20


def test_invalid_arguments_fail_with_one_line_errors():
    for kwargs in (
        {"every_n_epochs": 0},
        {"max_samples": 0},
        {"dense_epochs": -1},
        {"pgd_eps": 0.0},
        {"interp_lambdas": (1.5,)},
        {"batch_size": 2.5},
    ):
        with pytest.raises(ValueError, match="LipschitzCallback"):
            LipschitzCallback(**kwargs)


class AttentionNet(pl.LightningModule):
    """Self-attention over 5 tokens of dimension 4: no global Lipschitz constant, lower bounds still work."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(1, 4)
        self.attention = nn.MultiheadAttention(4, num_heads=1, batch_first=True)
        self.head = nn.Linear(4 * DIM, CLASSES)

    def forward(self, x):
        tokens = self.embed(x.unsqueeze(-1))
        mixed, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return self.head(mixed.flatten(1))

    training_step = ToyNet.training_step
    validation_step = ToyNet.validation_step
    split = staticmethod(ToyNet.split)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_attention_model_logs_upper_unavailable_and_lower(tmp_path):
    callback = LipschitzCallback(every_n_epochs=1, progress_bar=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1)
    with pytest.warns(RuntimeWarning, match="no upper bound") as record:
        trainer.fit(AttentionNet(), datamodule=ToyData())
    assert sum("no upper bound" in str(w.message) for w in record) == 1  # warned once, not every epoch
    rows = [r for r in read_rows(trainer) if "lipschitz/lower" in r]
    assert len(rows) == 2
    for row in rows:
        assert row["lipschitz/upper_available"] == 0.0 and "lipschitz/upper" not in row
        assert row["lipschitz/lower"] > 0 and math.isfinite(row["lipschitz/lower"])


class DivergingNet(ToyNet):
    """Sets every weight to NaN after the first epoch, as a diverged run would."""

    def on_train_epoch_end(self):
        if self.current_epoch == 0:
            with torch.no_grad():
                for p in self.parameters():
                    p.fill_(float("nan"))


def test_nan_weights_warn_and_do_not_crash(tmp_path):
    callback = LipschitzCallback(every_n_epochs=1, test=True, noise=True, progress_bar=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=3)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        trainer.fit(DivergingNet(batchnorm=False), datamodule=ToyData())
    assert math.isfinite(callback.history[0]["lipschitz/lower"])
    last = callback.history[-1]
    assert math.isnan(last["lipschitz/lower"]) and math.isnan(last["lipschitz/avg"])
    assert math.isnan(last["lipschitz/lower_test"]) and last["lipschitz/upper_available"] == 0.0
    rows = [r for r in read_rows(trainer) if "lipschitz/lower" in r]
    assert math.isnan(rows[-1]["lipschitz/lower"])


def test_validate_and_test_measure_the_current_weights(tmp_path):
    model, data = ToyNet(), ToyData()
    callback = LipschitzCallback(test=True, progress_bar=False)
    trainer = make_trainer(tmp_path, [callback], logger=False)  # default inference_mode=True
    validated = trainer.validate(model, datamodule=data, verbose=False)[0]
    tested = trainer.test(model, datamodule=data, verbose=False)[0]
    expected = float(dense_jacobian_norms(model, data.train_x).max())
    assert validated["lipschitz/lower"] == pytest.approx(expected, rel=1e-5)
    assert tested["lipschitz/lower"] == pytest.approx(expected, rel=1e-5)
    assert validated["lipschitz/lower_test"] == pytest.approx(
        float(dense_jacobian_norms(model, data.test_x).max()), rel=1e-5
    )
    assert "params/path_length" not in validated


class StopAfterEpoch(pl.Callback):
    """Sets should_stop at the end of training epoch `epoch` (after LipschitzCallback's hook has run)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def test_a_late_stop_still_measures_the_final_weights(tmp_path):
    callback = LipschitzCallback(every_n_epochs=10, dense_epochs=1, upper=False, progress_bar=False)
    model = ToyNet()
    trainer = make_trainer(tmp_path, [callback, StopAfterEpoch(3)], max_epochs=20)
    trainer.fit(model, datamodule=ToyData())
    assert [h["epoch"] for h in callback.history] == [0.0, 1.0, 4.0]
    rows = read_rows(trainer)
    final_row = [r for r in rows if "lipschitz/lower" in r][-1]
    # written straight to the logger after the last epoch's rows, at Lightning's step then (the update count)
    assert final_row["step"] == trainer.global_step == 16 > max(r["step"] for r in rows if "test/loss" in r)
    norms = dense_jacobian_norms(model, ToyData().train_x)
    assert final_row["lipschitz/lower"] == pytest.approx(float(norms.max()), rel=1e-5)


def test_in_memory_datamodule_tensors_are_used(tmp_path):
    from lipschitz_dd.data import SyntheticDataModule  # tests may use the project's datamodules

    data = SyntheticDataModule(input_shape=(DIM,), num_classes=CLASSES, num_train=24, num_test=10, batch_size=8)
    model = ToyNet()
    callback = LipschitzCallback(every_n_epochs=1, test=True, pgd=True, pgd_steps=2, upper=False, progress_bar=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1, logger=False, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    assert callback.last_metrics["lipschitz/lower"] == pytest.approx(
        float(dense_jacobian_norms(model, data.train_x).max()), rel=1e-5
    )
    assert callback.last_metrics["lipschitz/lower_test"] == pytest.approx(
        float(dense_jacobian_norms(model, data.test_x).max()), rel=1e-5
    )


class BatchList:
    """A re-iterable list of (x, y) batches with no `.dataset`: the callback streams it as it is."""

    def __init__(self, x, y, batch_size):
        self.batches = list(zip(x.split(batch_size), y.split(batch_size), strict=False))

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def test_plain_iterable_of_batches_is_streamed_up_to_max_samples(tmp_path):
    x, y, _, _ = toy_arrays()
    model = ToyNet()
    callback = LipschitzCallback(max_samples=13, upper=False, progress_bar=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1, logger=False)
    trainer.fit(model, train_dataloaders=BatchList(x, y, 8))
    norms = dense_jacobian_norms(model, x[:13])  # a stream: its first max_samples samples
    assert callback.last_metrics["lipschitz/avg"] == pytest.approx(float(norms.mean()), rel=1e-5)


def test_configurable_from_a_lightning_cli_style_config():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--callback", type=LipschitzCallback)
    config = parser.parse_args(
        [
            "--callback",
            '{"class_path": "lipschitz_dd.callbacks.lipschitz.LipschitzCallback", "init_args": '
            '{"every_n_epochs": 5, "points": {"input_key": 0, "max_samples": 7}, "upper": {"certified": true}, '
            '"optimised": {"every": 2, "data_box": [0, 1]}, "point_sets": ['
            '{"class_path": "lipschitz_dd.callbacks.TestPoints"}, '
            '{"class_path": "lipschitz_dd.callbacks.InterpolatedPoints", "init_args": {"lambdas": [0.1, 0.3]}}]}}',
        ]
    )
    callback = parser.instantiate(config).callback
    assert isinstance(callback, LipschitzCallback)
    assert (callback.every_n_epochs, callback.points.input_key, callback.points.max_samples) == (5, 0, 7)
    assert callback.upper.certified and callback.optimised.every == 2 and callback.optimised.data_box == (0.0, 1.0)
    assert [s.name for s in callback.measured_point_sets()] == ["train", "test", "interp"]
    assert callback.measured_point_sets()[2].lambdas == (0.1, 0.3)
