"""Architectures and the shared LightningModule base: sizes, seeding, loss, clipping, divergence, logging."""

import copy
import csv
import logging
import math

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lipschitz_dd.models import (
    CNN,
    FCN,
    PreActResNet18,
    Toy2DFCN,
    ViT,
    build_cnn,
    build_fcn,
    build_preact_resnet18,
    build_vit,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_trainer(tmp_path=None, **kwargs) -> Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False if tmp_path is None else CSVLogger(tmp_path, name="run"),
    )
    defaults.update(kwargs)
    return Trainer(**defaults)


# ------------------------------------------------------------------ parameter counts
@pytest.mark.parametrize("width", [1, 16, 256])
def test_fcn_one_hidden_layer_has_50w_params(width):
    assert n_params(FCN(width=width).net) == 50 * width


def test_fcn_widths_list_and_double_descent_variant_counts():
    assert n_params(FCN(widths=[3, 5]).net) == 40 * 3 + 3 * 5 + 5 * 10
    w = 32  # 40 -> w -> w -> 10 with biases
    model = FCN(width=w, depth=2, bias=True, output_activation="none", momentum=0.9)
    assert n_params(model.net) == (40 * w + w) + (w * w + w) + (10 * w + 10)
    assert not isinstance(model.net[-1], (nn.ReLU, nn.LeakyReLU))


def test_fcn_auto_output_activation_follows_loss():
    assert isinstance(FCN(width=4, loss="ce").net[-1], nn.ReLU)
    last = FCN(width=4, loss="mse").net[-1]
    assert isinstance(last, nn.LeakyReLU) and last.negative_slope == 0.01


@pytest.mark.parametrize("width,expected", [(5, 9_985), (11, 46_915), (12, 55_716), (60, 1_367_220)])
def test_cnn_param_counts_on_cifar10(width, expected):
    assert n_params(CNN(width=width).net) == expected
    assert n_params(build_cnn(width)) == 378 * width**2 + 107 * width  # closed form, 3 channels, 10 classes


def standard_preact_resnet18_count(k: int, num_classes: int = 10, in_channels: int = 3) -> int:
    """Parameters of the standard pre-activation ResNet-18 counted layer by layer by hand."""
    total = in_channels * k * 9  # stem conv
    c_in = k
    for stage in range(4):
        c = k * 2**stage
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            total += 2 * c_in + c_in * c * 9 + 2 * c + c * c * 9  # bn1, conv1, bn2, conv2
            if stride != 1 or c_in != c:
                total += c_in * c  # 1x1 projection shortcut
            c_in = c
    return total + 8 * k * num_classes + num_classes  # linear head with bias


def test_preact_resnet18_param_count_matches_standard():
    assert standard_preact_resnet18_count(64) == 11_171_146  # the known ~11.17M of PreActResNet18
    assert n_params(PreActResNet18(width=64).net) == 11_171_146
    assert n_params(build_preact_resnet18(5)) == standard_preact_resnet18_count(5)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in build_preact_resnet18(4).modules()) == 16


def test_vit_param_count_closed_form():
    w, depth, k, patches = 12, 2, 10, 16
    per_block = 2 * 2 * w + (3 * w * w + 3 * w) + (w * w + w) + (4 * w * w + 4 * w) + (4 * w * w + w)
    expected = (3 * 8 * 8 * w + w) + w + (patches + 1) * w + depth * per_block + 2 * w + (w * k + k)
    assert n_params(build_vit(w, depth=depth, heads=3)) == expected


# ------------------------------------------------------------------ shapes
SMALL_MODELS = {
    "fcn": lambda c, s: FCN(input_dim=c * s * s, width=8),
    "cnn": lambda c, s: CNN(width=2, in_channels=c, input_size=s),
    "cnn_bn": lambda c, s: CNN(width=2, in_channels=c, input_size=s, batch_norm=True),
    "resnet": lambda c, s: PreActResNet18(width=2, in_channels=c),
    "vit": lambda c, s: ViT(width=6, patch_size=s // 4, depth=1, in_channels=c, image_size=s),
}


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_forward_shapes(name, channels, size):
    model = SMALL_MODELS[name](channels, size)
    out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


def test_toy_is_2_100_100_3_with_bias():
    model = Toy2DFCN()
    shapes = [tuple(p.shape) for p in model.net.parameters()]
    assert shapes == [(100, 2), (100,), (100, 100), (100,), (3, 100), (3,)]
    assert model(torch.randn(5, 2)).shape == (5, 3)
    assert not isinstance(model.net[-1], (nn.ReLU, nn.LeakyReLU))


# ------------------------------------------------------------------ seeding
SEEDED_PAIRS = {
    "fcn": (lambda: FCN(width=6, depth=2), lambda: build_fcn(40, [6, 6], 10)),
    "cnn": (lambda: CNN(width=2, batch_norm=True), lambda: build_cnn(2, batch_norm=True)),
    "resnet": (lambda: PreActResNet18(width=2), lambda: build_preact_resnet18(2)),
    "vit": (lambda: ViT(width=6, depth=1), lambda: build_vit(6, depth=1)),
    "toy": (lambda: Toy2DFCN(width=5), lambda: build_fcn(2, [5, 5], 3, bias=True, output_activation="none")),
}


@pytest.mark.parametrize("name", sorted(SEEDED_PAIRS))
def test_same_seed_same_initial_weights_as_plain_builder(name):
    make_module, make_plain = SEEDED_PAIRS[name]
    seed_everything(123)
    module = make_module()
    torch.manual_seed(123)
    plain = make_plain()
    module_state, plain_state = module.net.state_dict(), plain.state_dict()
    assert module_state.keys() == plain_state.keys()
    for key in plain_state:
        assert torch.equal(module_state[key], plain_state[key]), key
    seed_everything(124)
    other = make_module()
    assert any(
        not torch.equal(a, b) for a, b in zip(other.net.state_dict().values(), plain_state.values(), strict=False)
    )


# ------------------------------------------------------------------ hyper-parameters and CLI signature
def test_hparams_and_cli_signature_include_base_arguments():
    model = FCN(width=7, lr=0.3, loss="mse")
    assert model.hparams["width"] == 7 and model.hparams["lr"] == 0.3 and model.hparams["loss"] == "mse"
    parser = ArgumentParser()
    parser.add_class_arguments(CNN, "model")
    cfg = parser.parse_args(["--model.width", "5", "--model.lr", "0.1", "--model.lr_schedule", "cont100"])
    assert cfg.model.width == 5 and cfg.model.lr == 0.1 and cfg.model.lr_schedule == "cont100"
    assert cfg.model.grad_clip_norm == 50.0


def test_attribute_fast_path_keeps_module_registration():
    """The __setattr__ shortcut for Lightning's hook name stores a plain attribute and leaves every other
    assignment to nn.Module (submodules, parameters and buffers are still registered)."""
    model = FCN(width=3)
    model._current_fx_name = "training_step"
    assert model.__dict__["_current_fx_name"] == "training_step" and model._current_fx_name == "training_step"
    model.extra = nn.Linear(2, 2)
    model.scale = nn.Parameter(torch.ones(1))
    model.register_buffer("count", torch.zeros(1))
    assert "extra" in dict(model.named_children()) and "extra" not in model.__dict__
    assert "scale" in dict(model.named_parameters()) and "count" in dict(model.named_buffers())


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "make",
    [
        lambda: FCN(width=0),
        lambda: FCN(widths=[4, -1]),
        lambda: CNN(width=0),
        lambda: PreActResNet18(width=-2),
        lambda: ViT(width=0),
        lambda: Toy2DFCN(width=0),
    ],
)
def test_non_positive_width_raises(make):
    with pytest.raises(ValueError, match="must be a positive integer"):
        make()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(loss="hinge"), "unknown loss"),
        (dict(optimizer="rmsprop"), "unknown optimizer"),
        (dict(lr_schedule="cosine"), "unknown lr_schedule"),
        (dict(lr=0.0), "lr must be > 0"),
        (dict(optimizer="adam", momentum=0.9), "momentum is an SGD option"),
        (dict(grad_clip_norm=0.0), "grad_clip_norm"),
        (dict(output_activation="tanh"), "unknown output_activation"),
    ],
)
def test_bad_training_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FCN(width=4, **kwargs)


def test_bad_image_geometry_raises():
    with pytest.raises(ValueError, match="input_size must be one of"):
        CNN(width=2, input_size=30)
    with pytest.raises(ValueError, match="multiple of heads"):
        ViT(width=10)


# ------------------------------------------------------------------ loss reduction
def test_ce_loss_is_sum_over_batch_divided_by_batch_size():
    torch.manual_seed(0)
    model = FCN(width=5, output_activation="none")
    x, y = torch.randn(7, 40), torch.randint(0, 10, (7,))
    logits = model(x).detach().double().numpy()
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -sum(log_softmax[i, y[i]] for i in range(7)) / 7
    assert model.batch_loss((x, y)).item() == pytest.approx(expected, rel=1e-5)


def test_mse_loss_is_squared_error_to_one_hot_summed_over_classes():
    torch.manual_seed(0)
    model = FCN(width=5, loss="mse")
    x, y = torch.randn(6, 40), torch.randint(0, 10, (6,))
    logits = model(x).detach().double().numpy()
    total = 0.0
    for i in range(6):
        for c in range(10):
            total += (logits[i, c] - (1.0 if c == y[i] else 0.0)) ** 2
    assert model.batch_loss((x, y)).item() == pytest.approx(total / 6, rel=1e-5)


# ------------------------------------------------------------------ gradient clipping
def one_update_direction(grad_clip_norm):
    """Gradient of the first batch (computed by hand) and the update SGD made with it inside a Trainer."""
    torch.manual_seed(0)
    x, y = 100.0 * torch.randn(8, 40), torch.randint(0, 10, (8,))
    lr = 1e3
    model = FCN(width=16, loss="mse", lr=lr, grad_clip_norm=grad_clip_norm)
    reference = copy.deepcopy(model)
    reference.batch_loss((x, y)).backward()
    grad = torch.cat([p.grad.flatten() for p in reference.parameters()])
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    make_trainer(max_steps=1).fit(model, DataLoader(TensorDataset(x, y), batch_size=8))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return grad, (before - after) / lr


def test_gradient_norm_clipped_to_50():
    grad, applied = one_update_direction(50.0)
    assert grad.norm() > 500  # the raw gradient is far above the threshold
    assert applied.norm().item() == pytest.approx(50.0, rel=1e-4)
    assert torch.allclose(applied, grad * (50.0 / grad.norm()), rtol=1e-3, atol=1e-6)


def test_no_clipping_when_disabled():
    grad, applied = one_update_direction(None)
    assert torch.allclose(applied, grad, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------ divergence
def test_diverging_run_keeps_one_row_per_epoch_with_the_lipschitz_bounds(tmp_path):
    """A run cut short mid-epoch by a NaN loss: the validation row of that epoch is written, then the
    callback measures at the train-epoch end. Its values used to land in an extra row at Lightning's global step
    (with an `epoch` column), out of order; they must join the row step = finished epochs."""
    from lipschitz_dd.callbacks import LipschitzCallback
    from lipschitz_dd.data import SyntheticDataModule
    from lipschitz_dd.loggers import EpochCSVLogger

    seed_everything(0)
    data = SyntheticDataModule(input_shape=(40,), num_classes=10, num_train=256, num_test=64, batch_size=64)
    model = FCN(width=16, lr=1e6, grad_clip_norm=None)
    trainer = make_trainer(
        max_epochs=5,
        logger=EpochCSVLogger(str(tmp_path), name="d", version="r"),
        callbacks=[LipschitzCallback(progress_bar=False)],
    )
    trainer.fit(model, datamodule=data)
    assert model.diverged and trainer.current_epoch < 5
    with open(tmp_path / "d" / "r" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [float(r["step"]) for r in rows]
    assert "epoch" not in rows[0] and steps == sorted(set(steps)) and max(steps) == trainer.current_epoch
    assert rows[-1]["lipschitz/upper_available"] != "" and rows[-1]["test/loss"] != ""


def test_nan_loss_stops_cleanly_and_marks_diverged(caplog):
    x, y = torch.randn(12, 40), torch.randint(0, 10, (12,))
    x[5, 0] = float("nan")  # the second batch of 4 has a NaN input
    torch.manual_seed(0)
    model = FCN(width=4)
    reference = copy.deepcopy(model)  # trained on the first (finite) batch only
    make_trainer(max_steps=1).fit(reference, DataLoader(TensorDataset(x[:4], y[:4]), batch_size=4))
    trainer = make_trainer(max_epochs=5, num_sanity_val_steps=0)
    with caplog.at_level(logging.WARNING):
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=4))
    assert model.diverged is True
    assert trainer.current_epoch == 1  # stopped in the first of 5 epochs (the counter counts it as finished)
    for p, q in zip(model.parameters(), reference.parameters(), strict=False):
        assert torch.equal(p, q)  # the NaN batch made no update
    assert any("non-finite training loss" in r.getMessage() and "epoch 0" in r.getMessage() for r in caplog.records)


def test_finite_run_is_not_diverged():
    x, y = torch.randn(8, 40), torch.randint(0, 10, (8,))
    model = FCN(width=4)
    make_trainer(max_epochs=1).fit(model, DataLoader(TensorDataset(x, y), batch_size=4))
    assert model.diverged is False


# ------------------------------------------------------------------ logging: one row per epoch, epoch 0 included
def read_rows(tmp_path):
    path = next(tmp_path.rglob("metrics.csv"))
    with open(path) as handle:
        return list(csv.DictReader(handle))


def manual_eval(model, x, y):
    """Mean CE loss and accuracy computed directly, in eval mode."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return torch.nn.functional.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def test_csv_rows_at_epochs_0_to_E_match_direct_evaluation(tmp_path):
    torch.manual_seed(0)
    x_train, y_train = torch.randn(20, 40), torch.randint(0, 10, (20,))
    x_test, y_test = torch.randn(15, 40), torch.randint(0, 10, (15,))
    train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=5)
    val_loaders = [
        DataLoader(TensorDataset(x_test, y_test), batch_size=4),
        DataLoader(TensorDataset(x_train, y_train), batch_size=7),
    ]
    model = FCN(width=8, lr=0.1, output_activation="none")
    initial = copy.deepcopy(model)
    trainer = make_trainer(tmp_path, max_epochs=2)  # default sanity check runs: must not log a row
    trainer.fit(model, train_loader, val_loaders)

    rows = read_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    for key in ("test/loss", "test/acc", "train/loss", "train/acc"):
        assert all(r[key] != "" for r in rows), key
    for row, net in ((rows[0], initial), (rows[-1], model)):
        test_loss, test_acc = manual_eval(net, x_test, y_test)
        train_loss, train_acc = manual_eval(net, x_train, y_train)
        assert float(row["test/loss"]) == pytest.approx(test_loss, rel=1e-5)
        assert float(row["test/acc"]) == pytest.approx(test_acc)
        assert float(row["train/loss"]) == pytest.approx(train_loss, rel=1e-5)
        assert float(row["train/acc"]) == pytest.approx(train_acc)
    assert float(rows[1]["train/loss"]) < float(rows[0]["train/loss"])


def test_single_val_loader_logs_test_metrics_only(tmp_path):
    x, y = torch.randn(8, 40), torch.randint(0, 10, (8,))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    make_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0).fit(FCN(width=4), loader, loader)
    rows = read_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [0, 1]
    assert "test/loss" in rows[0] and "train/loss" not in rows[0]
    assert all(math.isfinite(float(r["test/loss"])) for r in rows)


def test_epoch_zero_evaluation_restores_train_mode_and_global_rng(tmp_path):
    x, y = torch.randn(8, 40), torch.randint(0, 10, (8,))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    seen = {}

    class Probe(FCN):
        def on_train_start(self):
            seen["rng_before"] = torch.random.get_rng_state()
            super().on_train_start()
            seen["rng_after"] = torch.random.get_rng_state()
            seen["training"] = self.training

    make_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0).fit(Probe(width=4), loader, [loader])
    assert torch.equal(seen["rng_before"], seen["rng_after"])
    assert seen["training"] is True
    assert [int(r["step"]) for r in read_rows(tmp_path)] == [0, 1]


def test_epoch_zero_uses_datamodule_val_loaders(tmp_path):
    from lightning.pytorch import LightningDataModule

    x, y = torch.randn(8, 40), torch.randint(0, 10, (8,))

    class TinyData(LightningDataModule):
        def train_dataloader(self):
            return DataLoader(TensorDataset(x, y), batch_size=4)

        def val_dataloader(self):
            return [DataLoader(TensorDataset(x[:4], y[:4]), batch_size=4), self.train_dataloader()]

    model = FCN(width=4)
    initial = copy.deepcopy(model)
    make_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0).fit(model, datamodule=TinyData())
    rows = read_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [0, 1]
    assert float(rows[0]["test/loss"]) == pytest.approx(manual_eval(initial, x[:4], y[:4])[0], rel=1e-5)
    assert float(rows[0]["train/loss"]) == pytest.approx(manual_eval(initial, x, y)[0], rel=1e-5)
