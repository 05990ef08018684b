"""Training options of the study: Lipschitz-constrained weights with a logit temperature, the Jacobian-norm
regulariser, dropout and weight decay."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch import nn

from lipschitz_dd.bounds import upper_bound
from lipschitz_dd.callbacks import LipschitzCallback
from lipschitz_dd.data import SyntheticDataModule
from lipschitz_dd.models import (
    CNN,
    FCN,
    PreActResNet18,
    ResNet20,
    ResNet50,
    build_resnet20,
    build_resnet50,
    build_simple_vit,
)
from lipschitz_dd.models.constraint import SpectralNormConstraint
from lipschitz_dd.models.imagenet import sincos_position_embedding
from lipschitz_dd.models.penalty import jacobian_norm_penalty
from lipschitz_dd.models.resnet20 import PadShortcut


def make_trainer(**kwargs) -> Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    defaults.update(kwargs)
    return Trainer(**defaults)


class CertifiedBoundAfterEveryStep(Callback):
    """Records the certified product bound of the model (logits included) after every optimiser update."""

    def __init__(self, example: torch.Tensor):
        self.example = example
        self.bounds: list[float] = []

    def _measure(self, pl_module) -> None:
        was_training = pl_module.training
        pl_module.eval()
        self.bounds.append(upper_bound(pl_module, self.example, certified=True).value)
        pl_module.train(was_training)

    def on_train_start(self, trainer, pl_module):
        self._measure(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._measure(pl_module)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("make", "shape", "bound", "tau"),
    [
        (lambda **kw: FCN(width=32, depth=2, bias=True, output_activation="none", **kw), (40,), 1.0, 40.0),
        (lambda **kw: FCN(width=32, depth=2, bias=True, output_activation="none", **kw), (40,), 10.0, 10.0),
        (lambda **kw: CNN(width=2, in_channels=1, input_size=28, **kw), (1, 28, 28), 1.0, 40.0),
    ],
    ids=["fcn-C1-tau40", "fcn-C10-tau10", "cnn-C1-tau40"],
)
def test_constrained_training_keeps_certified_bound_below_tau_times_C(make, shape, bound, tau):
    seed_everything(0)
    data = SyntheticDataModule(input_shape=shape, num_train=64, num_test=16, batch_size=16)
    model = make(lipschitz_bound=bound, logit_temperature=tau, lr=0.5, momentum=0.9)
    data.setup()
    probe = CertifiedBoundAfterEveryStep(data.train_x[:2])
    make_trainer(callbacks=[probe]).fit(model, datamodule=data)
    assert len(probe.bounds) == 1 + 2 * 4  # before training, then after each of the 8 updates
    assert max(probe.bounds) <= tau * bound * (1 + 1e-4), probe.bounds
    # not trivially small: a large lr pushes the layers onto their budget, so the bound sits near tau * C
    assert probe.bounds[-1] >= 0.5 * tau * bound
    # the budget is shared equally: every layer ends at C^(1/depth) / (1 + margin) at most
    budget = bound ** (1 / model.constraint.depth)
    assert max(model.constraint.project()) <= budget


def test_unconstrained_run_exceeds_the_bound_the_constraint_enforces():
    """The same setting without the constraint: the product bound grows well past 1, so the test above can fail."""
    seed_everything(0)
    data = SyntheticDataModule(input_shape=(40,), num_train=64, num_test=16, batch_size=16)
    model = FCN(width=32, depth=2, bias=True, output_activation="none", lr=0.5, momentum=0.9)
    data.setup()
    probe = CertifiedBoundAfterEveryStep(data.train_x[:2])
    make_trainer(callbacks=[probe]).fit(model, datamodule=data)
    assert probe.bounds[-1] > 1.5


def test_temperature_scales_logits():
    seed_everything(0)
    plain = FCN(width=8, depth=1)
    hot = FCN(width=8, depth=1, logit_temperature=10.0)
    hot.load_state_dict(plain.state_dict())
    x = torch.randn(3, 40)
    torch.testing.assert_close(hot(x), 10.0 * plain(x))


def test_constraint_uses_the_convolutions_operator_norm_on_its_input_shape():
    """A 3x3 conv with padding: the operator norm (dense SVD of the explicit matrix) is what gets budgeted."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4, bias=False))
    constraint = SpectralNormConstraint(net, bound=0.25, margin=1e-3)
    net(torch.zeros(1, 2, 6, 6))
    constraint.project()
    basis = torch.eye(2 * 36).reshape(72, 2, 6, 6)
    dense = conv(basis).reshape(72, -1)  # rows: images of the basis vectors, so the matrix is dense^T
    conv_norm = torch.linalg.matrix_norm(dense.double(), ord=2)
    linear_norm = torch.linalg.matrix_norm(net[3].weight.double(), ord=2)
    budget = 0.25**0.5
    assert conv_norm <= budget and linear_norm <= budget
    assert conv_norm >= budget / 1.002 and linear_norm >= budget / 1.002


def test_constraint_refuses_batchnorm_networks():
    with pytest.raises(ValueError, match="BatchNorm2d"):
        SpectralNormConstraint(PreActResNet18(width=2).net, bound=1.0)


@pytest.mark.parametrize("kwargs", [{"lipschitz_bound": 0.0}, {"logit_temperature": -1.0}, {"jacobian_penalty": -1.0}])
def test_bad_constraint_options_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        FCN(width=4, **kwargs)


# --------------------------------------------------------------------------- Jacobian-norm regulariser
def explicit_max_jacobian_norm(model, x: torch.Tensor) -> torch.Tensor:
    """max_b ||J(x_b)||_2 from the explicit Jacobians (torch.func.jacrev), differentiable in the parameters."""
    jac = torch.func.vmap(torch.func.jacrev(lambda xi: model(xi[None])[0]))(x)  # [B, K, d]
    return torch.linalg.matrix_norm(jac.flatten(2), ord=2).max()


@pytest.mark.parametrize(
    "make", [lambda: FCN(width=16, depth=2, bias=True), lambda: CNN(width=2, in_channels=1, input_size=28)]
)
def test_penalty_value_and_gradient_match_autograd_on_the_explicit_jacobian(make):
    torch.manual_seed(0)
    model = make().double()
    shape = (40,) if isinstance(model, FCN) else (1, 28, 28)
    x = torch.randn(6, *shape, dtype=torch.float64)
    penalty, logits = jacobian_norm_penalty(model, x)
    reference = explicit_max_jacobian_norm(model, x)
    torch.testing.assert_close(penalty, reference, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(logits, model(x))
    params = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(penalty, params)
    theirs = torch.autograd.grad(reference, params)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_penalised_training_loss_adds_lambda_times_batch_max_norm():
    torch.manual_seed(0)
    model = FCN(width=16, depth=1, jacobian_penalty=0.5)
    model.trainer = None  # training_step only reads self.trainer on a non-finite loss
    x, y = torch.randn(8, 40), torch.randint(0, 10, (8,))
    loss = model.training_step((x, y), 0)
    expected = model.batch_loss((x, y)) + 0.5 * explicit_max_jacobian_norm(model, x)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_penalty_lowers_the_batch_jacobian_norm_compared_with_plain_training():
    def train(penalty: float) -> float:
        seed_everything(0)
        data = SyntheticDataModule(input_shape=(40,), num_train=64, num_test=16, batch_size=16)
        model = FCN(width=32, depth=1, lr=0.05, jacobian_penalty=penalty)
        make_trainer(max_epochs=5).fit(model, datamodule=data)
        return float(explicit_max_jacobian_norm(model.eval(), data.train_x).detach())

    assert train(1.0) < 0.8 * train(0.0)


# --------------------------------------------------------------------------- dropout, weight decay, ResNet-20
def test_resnet20_parameter_counts_match_he_et_al():
    """Option A (zero-padding shortcuts): the published 0.27M (269,722); option B adds 1x1 projections + BN."""
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(build_resnet20()) == 269_722
    projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # two 1x1 convs and their BatchNorms
    assert n(build_resnet20(shortcut="B")) == 269_722 + projections
    assert n(build_resnet20(width=8)) < n(build_resnet20()) / 3


def test_resnet20_shapes_and_dropout_placement():
    net = build_resnet20(in_channels=1, dropout=0.3)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    kinds = [type(m).__name__ for m in net]
    assert kinds.count("Dropout2d") == 9 and kinds.count("BasicBlock") == 9
    assert all(kinds[i + 1] == "BasicBlock" for i, k in enumerate(kinds) if k == "Dropout2d")  # before each block
    assert kinds[-2:] == ["Dropout", "Linear"]  # 1-D dropout right before the last layer
    assert "Dropout" not in [type(m).__name__ for m in build_resnet20()]


def test_option_a_shortcut_pads_channels_and_subsamples():
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_fcn_dropout_sits_between_layers():
    net = FCN(width=8, depth=2, dropout=0.2).net
    assert [type(m).__name__ for m in net] == [
        "Flatten", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear", "ReLU"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="dropout"):
        FCN(width=8, dropout=1.0)


@pytest.mark.parametrize(
    "make", [lambda: FCN(width=16, depth=2, dropout=0.5), lambda: ResNet20(width=4, in_channels=1, dropout=0.4)]
)
def test_model_with_dropout_gives_the_same_bounds_measured_twice(make):
    """The callback measures in eval mode: dropout is off, so two measurements of the same weights agree."""
    torch.manual_seed(0)
    model = make()
    shape = (40,) if isinstance(model, FCN) else (1, 28, 28)
    points = torch.randn(12, *shape)
    model.train()
    trainer = make_trainer()
    trainer.strategy.connect(model)
    callback = LipschitzCallback(train_points=points, progress_bar=False)
    first = callback.measure(trainer, model, epoch=0)
    second = callback.measure(trainer, model, epoch=0)
    assert {"lipschitz/lower", "lipschitz/upper"} <= set(first)
    for key in ("lipschitz/lower", "lipschitz/avg"):  # exact per-sample norms: bit-identical
        assert first[key] == second[key], key
    # the product bound's power iteration is warm-started from the first call: equal up to its tolerance
    assert first["lipschitz/upper"] == pytest.approx(second["lipschitz/upper"], rel=1e-5)
    assert model.training  # train mode restored
    # in train mode the network is random: the same input gives different outputs
    assert not torch.equal(model(points[:4]), model(points[:4]))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_weight_decay_reaches_the_optimizer(optimizer):
    model = ResNet20(width=4, optimizer=optimizer, weight_decay=5e-4)
    opt = model.configure_optimizers()
    assert opt.param_groups[0]["weight_decay"] == 5e-4


# --------------------------------------------------------------------------- ImageNet networks
def test_simple_vit_parameter_count_and_study_shape():
    net = build_simple_vit()  # patch 16, width 384, depth 12, heads 6, MLP 1,536, 1000 classes
    d, hidden = 384, 1536
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)
    expected = (3 * 16 * 16 * d + d) + 12 * block + 2 * d + (d * 1000 + 1000)
    assert sum(p.numel() for p in net.parameters()) == expected == 21_974_632
    assert net.blocks[0].mlp[0].out_features == 1536 and len(net.blocks) == 12
    small = build_simple_vit(width=12, depth=1, heads=6, num_classes=5)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert small(torch.randn(2, 3, 48, 64)).shape == (2, 5)  # position embeddings follow the patch grid


def test_sincos_position_embedding_is_the_closed_form():
    emb = sincos_position_embedding(2, 3, 8)
    assert emb.shape == (6, 8)
    omega = torch.tensor([1.0, 1.0 / 10_000])  # dim/4 = 2 frequencies: 10000^(-k/1)
    row, col = 1, 2  # patch 5 in row-major order
    expected = torch.cat([(col * omega).sin(), (col * omega).cos(), (row * omega).sin(), (row * omega).cos()])
    torch.testing.assert_close(emb[5], expected)
    assert len({tuple(r.tolist()) for r in emb}) == 6  # every patch position distinct
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_position_embedding(2, 2, 6)


@pytest.mark.slow
def test_resnet50_is_torchvisions_standard_network():
    assert sum(p.numel() for p in build_resnet50().parameters()) == 25_557_032
    model = ResNet50(width=4, num_classes=7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (lambda: ResNet20(width=2, in_channels=1, lipschitz_bound=1.0), "BatchNorm2d"),
        (lambda: FCN(width=8, dropout=0.2, jacobian_penalty=0.1), "jacobian_penalty needs a network without Dropout"),
        (lambda: ResNet20(width=2, in_channels=1, jacobian_penalty=0.1), "BatchNorm2d"),
    ],
)
def test_options_the_network_cannot_honour_fail_at_fit_start_with_one_line(model, match):
    shape = (40,) if "FCN" in match or "Dropout" in match else (1, 28, 28)
    data = SyntheticDataModule(input_shape=shape, num_train=8, num_test=4, batch_size=4)
    with pytest.raises(ValueError, match=match) as error:
        make_trainer(max_epochs=1).fit(model(), datamodule=data)
    assert "\n" not in str(error.value)


def test_lipschitz_callback_of_a_constrained_run_reports_bounds_below_tau_times_C():
    """The callback measures the module's forward, temperature included: every upper bound <= tau * C."""
    seed_everything(0)
    data = SyntheticDataModule(input_shape=(40,), num_train=64, num_test=16, batch_size=16)
    model = FCN(
        width=32, depth=2, bias=True, output_activation="none", lipschitz_bound=1.0, logit_temperature=40.0, lr=0.5
    )
    callback = LipschitzCallback(every_n_epochs=1, progress_bar=False, upper_certified=True)
    make_trainer(max_epochs=3, callbacks=[callback], limit_val_batches=None).fit(model, datamodule=data)
    uppers = [row["lipschitz/upper"] for row in callback.history if "lipschitz/upper" in row]
    lowers = [row["lipschitz/lower"] for row in callback.history if "lipschitz/lower" in row]
    assert len(uppers) == 4  # epochs 0..3
    assert max(uppers) <= 40.0 * (1 + 1e-4) and max(lowers) <= max(uppers)
    assert uppers[-1] > 20.0  # the lr drives the layers to their budget
