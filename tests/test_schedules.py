"""Learning-rate schedules: closed-form values at key updates, LambdaLR stepping, and use inside a Trainer."""

import math

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lipschitz_dd.models import FCN
from lipschitz_dd.models.schedules import (
    constant_factor,
    cont100_factor,
    make_lr_lambda,
    updates_per_epoch_of,
    warmup20000step25_factor,
)


def test_constant_is_one():
    assert [constant_factor(u) for u in (0, 1, 10**6)] == [1.0, 1.0, 1.0]


def test_warmup_ramps_linearly_from_1_over_20000_to_1():
    f = lambda u: warmup20000step25_factor(u, updates_per_epoch=8, schedule_epochs=10_000)  # noqa: E731
    assert f(0) == pytest.approx(1 / 20000)
    assert f(1) == pytest.approx(2 / 20000)
    assert f(9_999) == pytest.approx(0.5)
    assert f(19_999) == pytest.approx(1.0)
    assert f(20_000) == pytest.approx(1.0)


def test_step25_milestones_at_quarter_epochs_after_warmup():
    per_epoch, epochs = 8, 10_000
    f = lambda u: warmup20000step25_factor(u, updates_per_epoch=per_epoch, schedule_epochs=epochs)  # noqa: E731
    first = 20_000 + 2_500 * per_epoch  # 25 % of 10,000 epochs after the warm-up
    assert f(first - 1) == pytest.approx(1.0)
    assert f(first) == pytest.approx(0.75)
    assert f(20_000 + 5_000 * per_epoch) == pytest.approx(0.75**2)
    assert f(20_000 + 7_500 * per_epoch - 1) == pytest.approx(0.75**2)
    assert f(20_000 + 7_500 * per_epoch) == pytest.approx(0.75**3)
    assert f(10**9) == pytest.approx(0.75**3)


def test_cont100_decays_every_100_epochs_and_respects_floor():
    per_epoch = 3
    assert cont100_factor(100 * per_epoch - 1, per_epoch) == 1.0
    assert cont100_factor(100 * per_epoch, per_epoch) == pytest.approx(0.95)
    assert cont100_factor(1000 * per_epoch + 5, per_epoch) == pytest.approx(0.95**10)
    # lr_floor is an absolute learning rate: base 0.1, floor 0.05 -> factor never below 0.5
    f = make_lr_lambda("cont100", base_lr=0.1, updates_per_epoch=per_epoch, lr_floor=0.05)
    assert f(100 * per_epoch) == pytest.approx(0.95)
    k = math.ceil(math.log(0.5) / math.log(0.95))  # first decay count below 0.5
    assert f(k * 100 * per_epoch) == pytest.approx(0.5)
    assert f((k - 1) * 100 * per_epoch) == pytest.approx(0.95 ** (k - 1))


def test_cont50_decays_every_50_epochs():
    per_epoch = 4
    f = make_lr_lambda("cont50", base_lr=0.04, updates_per_epoch=per_epoch)
    assert f(50 * per_epoch - 1) == 1.0
    assert f(50 * per_epoch) == pytest.approx(0.95)
    assert f(500 * per_epoch + 3) == pytest.approx(0.95**10)
    floored = make_lr_lambda("cont50", base_lr=0.04, updates_per_epoch=per_epoch, lr_floor=0.02)
    assert floored(10**6) == pytest.approx(0.5)


def test_lambda_lr_stepped_per_update_gives_closed_form_lr():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, make_lr_lambda("warmup20000step25", base_lr=0.2, updates_per_epoch=4)
    )
    for update in range(5):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * (update + 1) / 20000)
        opt.step()
        sched.step()


def test_bad_schedule_arguments_raise_value_error():
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        make_lr_lambda("cosine", base_lr=0.1, updates_per_epoch=1)
    with pytest.raises(ValueError, match="updates_per_epoch"):
        make_lr_lambda("cont100", base_lr=0.1)
    with pytest.raises(ValueError, match="infinite"):
        updates_per_epoch_of(float("inf"))
    assert updates_per_epoch_of(10, accumulate_grad_batches=3) == 4


def test_trainer_steps_schedule_per_update_with_loader_length():
    x, y = torch.randn(12, 40), torch.randint(0, 10, (12,))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)  # 3 updates per epoch
    model = FCN(width=4, lr=0.5, lr_schedule="warmup20000step25")
    trainer = Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, loader)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.lr_lambdas[0].keywords["updates_per_epoch"] == 3
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.5 * 7 / 20000)  # after 6 updates


def test_step30_divides_by_ten_every_30_epochs():
    factor = make_lr_lambda("step30", base_lr=0.1, updates_per_epoch=7)
    assert factor(0) == 1.0 and factor(30 * 7 - 1) == 1.0  # epochs 0..29
    assert factor(30 * 7) == pytest.approx(0.1) and factor(60 * 7 - 1) == pytest.approx(0.1)
    assert factor(60 * 7) == pytest.approx(0.01) and factor(89 * 7 + 6) == pytest.approx(0.01)  # last of 90 epochs
    assert factor(90 * 7) == pytest.approx(0.001)
