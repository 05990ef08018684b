"""LipschitzCallback's MLP bounds (lipschitz/upper_eclipse, /upper_sdp, /exact): values equal the bound functions
called directly on an independently built network with the same weights (the logit temperature folded into the
last Linear layer by hand), the schedule, and "not available" warned once with nothing logged."""

from __future__ import annotations

import copy
import warnings

import lightning.pytorch as pl
import pytest
import torch
from conftest import CLASSES, DIM, ToyData, ToyNet, dense_jacobian_norms, make_trainer, read_rows
from torch import Tensor, nn

from lipschitz_dd.bounds import eclipse_fast, exact_lipschitz
from lipschitz_dd.callbacks import LipschitzCallback, MLPBounds

MLP_KEYS = {"lipschitz/upper_eclipse", "lipschitz/upper_sdp", "lipschitz/exact"}


class TemperedMLP(pl.LightningModule):
    """A user's module in lipschitz_dd's convention: logits = logit_temperature * net(x), net an MLP."""

    def __init__(self, widths=(6, 5), temperature: float = 2.5, activation=nn.ReLU, scaled_input: bool = False):
        super().__init__()
        sizes = [DIM, *widths]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=False):
            layers += [nn.Linear(fan_in, fan_out), activation()]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], CLASSES))
        self.logit_temperature = temperature
        self.scaled_input = scaled_input  # forward(x) = tau * net(2 x): not the convention

    def forward(self, x: Tensor) -> Tensor:
        return self.logit_temperature * self.net(2 * x if self.scaled_input else x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def folded(model: TemperedMLP) -> nn.Sequential:
    """The same function as one nn.Sequential: tau folded into the last Linear layer (weight and bias)."""
    net = copy.deepcopy(model.net).double()
    with torch.no_grad():
        net[-1].weight.mul_(model.logit_temperature)
        net[-1].bias.mul_(model.logit_temperature)
    return net


def fit(tmp_path, model, callback, max_epochs: int = 2, **kwargs):
    trainer = make_trainer(tmp_path, [callback], max_epochs=max_epochs, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=ToyData())
    return trainer, [str(w.message) for w in caught if "not available" in str(w.message)]


@pytest.mark.e2e
def test_mlp_bounds_equal_direct_calls_on_the_same_weights(tmp_path):
    pytest.importorskip("cvxpy")
    from lipschitz_dd.bounds import lipsdp_neuron

    model = TemperedMLP()
    callback = LipschitzCallback(every_n_epochs=1, mlp_bounds=MLPBounds(sdp_every=1, exact_every=1), progress_bar=False)
    trainer, unavailable = fit(tmp_path, model, callback)
    assert unavailable == []
    assert [h["epoch"] for h in callback.history] == [0.0, 1.0, 2.0]
    assert all(MLP_KEYS <= set(h) for h in callback.history)
    reference = folded(model.eval())
    final = callback.last_metrics
    assert final["lipschitz/upper_eclipse"] == pytest.approx(eclipse_fast(reference), rel=1e-6)
    assert final["lipschitz/upper_sdp"] == pytest.approx(lipsdp_neuron(reference).value, rel=1e-5)
    exact = exact_lipschitz(reference)
    assert exact.exact and final["lipschitz/exact"] == pytest.approx(exact.lower, rel=1e-6)
    # the sandwich: data lower bound <= exact <= LipSDP <= ECLipsE <= product of norms
    data_max = float(dense_jacobian_norms(model, ToyData().train_x).max())
    assert data_max <= final["lipschitz/exact"] * (1 + 1e-5)
    assert final["lipschitz/exact"] <= final["lipschitz/upper_sdp"] * (1 + 1e-6)
    assert final["lipschitz/upper_sdp"] <= final["lipschitz/upper_eclipse"] * (1 + 1e-6)
    assert final["lipschitz/upper_eclipse"] <= final["lipschitz/upper"] * (1 + 1e-4)
    # the same values reach the logger, in the row of their epoch
    rows = {int(r.get("epoch", -1)) + 1: r for r in read_rows(trainer) if "lipschitz/exact" in r}
    assert rows[2]["lipschitz/exact"] == pytest.approx(final["lipschitz/exact"], rel=1e-6)


@pytest.mark.e2e
def test_lipschitz_dd_fcn_with_a_logit_temperature(tmp_path):
    from lipschitz_dd.models import FCN

    model = FCN(input_dim=DIM, widths=[6, 4], num_classes=CLASSES, bias=True, logit_temperature=3.0, lr=0.05)
    callback = LipschitzCallback(every_n_epochs=1, mlp_bounds=MLPBounds(exact_every=1), progress_bar=False)
    _, unavailable = fit(tmp_path, model, callback, max_epochs=1)
    assert unavailable == []
    net = copy.deepcopy(model.net).double()  # Flatten, Linear, ReLU, Linear, ReLU, Linear, ReLU (output ReLU)
    last = [m for m in net if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():  # tau * ReLU(W h + b) = ReLU(tau W h + tau b) for tau > 0
        last.weight.mul_(3.0)
        last.bias.mul_(3.0)
    assert callback.last_metrics["lipschitz/upper_eclipse"] == pytest.approx(eclipse_fast(net), rel=1e-6)
    assert callback.last_metrics["lipschitz/exact"] == pytest.approx(exact_lipschitz(net).lower, rel=1e-6)


@pytest.mark.e2e
def test_schedule_every_k_measurements_and_always_the_last(tmp_path):
    callback = LipschitzCallback(every_n_epochs=1, mlp_bounds=MLPBounds(exact_every=2, sdp_every=0), progress_bar=False)
    fit(tmp_path, TemperedMLP(), callback, max_epochs=3)
    with_exact = [h["epoch"] for h in callback.history if "lipschitz/exact" in h]
    assert with_exact == [0.0, 2.0, 3.0]  # measurements 0 and 2, and the last one (3)
    assert all("lipschitz/upper_eclipse" in h for h in callback.history)  # eclipse: every measurement
    assert not any("lipschitz/upper_sdp" in h for h in callback.history)  # sdp_every=0: never


class StopAfterFirstEpoch(pl.Callback):
    """Decides to stop after the Lipschitz callback measured the epoch (listed after it)."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


@pytest.mark.e2e
def test_a_late_stop_still_gets_the_last_measurement_bounds(tmp_path):
    callback = LipschitzCallback(every_n_epochs=1, mlp_bounds=MLPBounds(exact_every=5), progress_bar=False)
    model = TemperedMLP()
    trainer = make_trainer(tmp_path, [callback, StopAfterFirstEpoch()], max_epochs=10)
    trainer.fit(model, datamodule=ToyData())
    assert [h["epoch"] for h in callback.history] == [0.0, 1.0]
    exact = exact_lipschitz(folded(model.eval()))
    assert callback.history[-1]["lipschitz/exact"] == pytest.approx(exact.lower, rel=1e-6)
    rows = [r for r in read_rows(trainer) if "lipschitz/exact" in r]
    assert sorted(int(r["step"]) for r in rows) == [0, trainer.global_step]  # before, and after the last update


@pytest.mark.e2e
def test_a_cut_search_logs_the_certified_interval(tmp_path):
    model = TemperedMLP(widths=(6, 5))
    options = MLPBounds(exact_every=1, exact_time_limit=1e-6, upper_eclipse=False)
    callback = LipschitzCallback(mlp_bounds=options, progress_bar=False)
    fit(tmp_path, model, callback, max_epochs=1)
    final = callback.last_metrics
    assert "lipschitz/exact" not in final and "lipschitz/upper_eclipse" not in final
    exact = exact_lipschitz(folded(model.eval()))
    assert exact.exact
    assert final["lipschitz/exact_lower"] <= exact.lower * (1 + 1e-6)
    assert final["lipschitz/exact_upper"] >= exact.upper * (1 - 1e-6)
    assert final["lipschitz/exact_lower"] < final["lipschitz/exact_upper"]


def _one_warning_per_bound(unavailable: list[str], expected: dict[str, str]) -> None:
    assert len(unavailable) == len(expected), unavailable
    for metric, reason in expected.items():
        assert any(metric in m and reason in m for m in unavailable), (metric, unavailable)


def test_non_mlp_warns_once_per_bound_and_logs_nothing(tmp_path):
    options = MLPBounds(upper_eclipse=True, sdp_every=1, exact_every=1)
    callback = LipschitzCallback(every_n_epochs=1, mlp_bounds=options, progress_bar=False)
    trainer, unavailable = fit(tmp_path, ToyNet(), callback, max_epochs=2)  # BatchNorm: not an MLP
    reason = "layer 1 is BatchNorm1d"
    _one_warning_per_bound(unavailable, {m: reason for m in MLP_KEYS})
    assert not any(MLP_KEYS & set(h) for h in callback.history)
    assert not any(MLP_KEYS & set(r) for r in read_rows(trainer))
    assert "lipschitz/lower" in callback.last_metrics


def test_by_default_eclipse_is_skipped_silently_where_it_cannot_run(tmp_path):
    """ECLipsE is on by default for MLPs; a CNN, a ResNet or this BatchNorm net gets no warning for it."""
    callback = LipschitzCallback(every_n_epochs=1, progress_bar=False)
    _, unavailable = fit(tmp_path, ToyNet(), callback, max_epochs=1)
    assert not unavailable
    assert not any("lipschitz/upper_eclipse" in h for h in callback.history)


def test_a_forward_other_than_temperature_times_net_is_not_bounded(tmp_path):
    callback = LipschitzCallback(every_n_epochs=1, mlp_bounds=MLPBounds(upper_eclipse=True), progress_bar=False)
    _, unavailable = fit(tmp_path, TemperedMLP(scaled_input=True), callback)
    _one_warning_per_bound(unavailable, {"lipschitz/upper_eclipse": "is not logit_temperature * net(x)"})
    assert not any("lipschitz/upper_eclipse" in h for h in callback.history)


def test_too_large_and_smooth_activations_are_not_available(tmp_path):
    options = MLPBounds(sdp_every=1, sdp_max_neurons=10, exact_every=1)
    callback = LipschitzCallback(mlp_bounds=options, progress_bar=False)
    _, unavailable = fit(tmp_path, TemperedMLP(widths=(6, 5), activation=nn.Tanh), callback)
    _one_warning_per_bound(
        unavailable,
        {"lipschitz/upper_sdp": "11 hidden neurons > sdp_max_neurons=10", "lipschitz/exact": "got tanh"},
    )
    assert all("lipschitz/upper_eclipse" in h for h in callback.history)  # ECLipsE handles tanh
    assert not any({"lipschitz/upper_sdp", "lipschitz/exact"} & set(h) for h in callback.history)
    options = MLPBounds(upper_eclipse=True, eclipse_max_neurons=10, exact_every=1, exact_max_neurons=10)
    callback = LipschitzCallback(mlp_bounds=options, progress_bar=False)
    _, unavailable = fit(tmp_path, TemperedMLP(widths=(6, 5)), callback)
    _one_warning_per_bound(
        unavailable,
        {
            "lipschitz/upper_eclipse": "11 hidden neurons > eclipse_max_neurons=10",
            "lipschitz/exact": "11 hidden neurons > exact_max_neurons=10",
        },
    )
    assert not any({"lipschitz/upper_eclipse", "lipschitz/exact"} & set(h) for h in callback.history)


def test_missing_cvxpy_is_not_available(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "cvxpy", None)  # import cvxpy raises ImportError
    callback = LipschitzCallback(mlp_bounds=MLPBounds(sdp_every=1, sdp_solver="interior_point"), progress_bar=False)
    _, unavailable = fit(tmp_path, TemperedMLP(), callback)
    _one_warning_per_bound(unavailable, {"lipschitz/upper_sdp": "cvxpy"})
    assert not any("lipschitz/upper_sdp" in h for h in callback.history)


def test_network_option_measures_the_sequential_itself(tmp_path):
    model = TemperedMLP(temperature=4.0)
    callback = LipschitzCallback(network="net", progress_bar=False)
    fit(tmp_path, model, callback, max_epochs=1)
    assert callback.last_metrics["lipschitz/upper_eclipse"] == pytest.approx(eclipse_fast(model.net), rel=1e-6)


@pytest.mark.parametrize(
    "option", ["sdp_every", "exact_every", "eclipse_max_neurons", "sdp_max_neurons", "exact_max_neurons"]
)
def test_bad_options_are_one_line_errors(option):
    with pytest.raises(ValueError, match=option):
        MLPBounds(**{option: -1})
    with pytest.raises(ValueError, match="exact_time_limit"):
        MLPBounds(exact_time_limit=0.0)
    with pytest.raises(ValueError, match="mlp_bounds must be an MLPBounds"):
        LipschitzCallback(mlp_bounds={option: 1})
