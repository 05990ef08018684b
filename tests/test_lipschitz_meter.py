"""`LipschitzMeter` measures from a plain PyTorch loop (no Lightning), and the callback's grouped options measure
exactly what the deprecated flat names did."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from conftest import ToyData, ToyNet, dense_jacobian_norms, make_trainer, toy_arrays, without_timing
from torch import nn

from lipschitz_dd.callbacks import LipschitzCallback, LipschitzMeter, NoisePoints, TestPoints, TrainPoints
from lipschitz_dd.callbacks.options import OptimisedBound, PointOptions, UpperBound


def test_plain_pytorch_loop_measures_through_the_meter():
    torch.manual_seed(0)
    x, y, x_test, _ = toy_arrays()
    model = nn.Sequential(nn.Linear(x.shape[1], 8), nn.Tanh(), nn.Linear(8, 3))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    meter = LipschitzMeter([TrainPoints(), TestPoints()], batch_size=8)
    for epoch in range(3):
        m = meter.measure(model, {"train": x, "test": x_test}, epoch)
        assert model.training  # the meter put it back in train mode
        assert m.metrics["lipschitz/lower"] == pytest.approx(float(dense_jacobian_norms(model, x).max()), rel=1e-5)
        assert m.metrics["lipschitz/lower_test"] == pytest.approx(float(dense_jacobian_norms(model, x_test).max()))
        assert m.metrics["lipschitz/upper"] >= m.metrics["lipschitz/lower"] and m.lower_exact is True
        model.train()  # dense_jacobian_norms left it in eval mode
        loss = nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert [h["epoch"] for h in meter.history] == [0.0, 1.0, 2.0]
    assert meter.history[-1]["params/path_length"] > 0


@pytest.mark.e2e
def test_the_meter_imports_without_lightning():
    code = "import sys; from lipschitz_dd.callbacks import LipschitzMeter; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def fit_history(callback) -> list[dict[str, float]]:
    torch.manual_seed(1)
    trainer = make_trainer(".", [callback], max_epochs=2, logger=False)
    trainer.fit(ToyNet(dropout=0.0), datamodule=ToyData(shuffle=False))
    return [without_timing(h) for h in callback.history]


def test_grouped_options_measure_what_the_deprecated_names_did():
    with pytest.warns(DeprecationWarning, match="deprecated"):
        old = LipschitzCallback(
            every_n_epochs=1,
            batch_size=8,
            seed=3,
            max_samples=20,
            test=True,
            noise=True,
            noise_sigma=0.3,
            upper_certified=True,
            optimised_every=1,
            optimised_top_m=2,
            optimised_steps=3,
            progress_bar=False,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new = LipschitzCallback(
            every_n_epochs=1,
            points=PointOptions(batch_size=8, seed=3, max_samples=20),
            point_sets=[TestPoints(), NoisePoints(0.3)],
            upper=UpperBound(certified=True),
            optimised=OptimisedBound(every=1, top_m=2, steps=3),
            progress_bar=False,
        )
    assert fit_history(new) == fit_history(old)  # bit-identical


def test_constructor_is_small():
    import inspect

    assert len(inspect.signature(LipschitzCallback.__init__).parameters) - 1 <= 16
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['bogus'\\]"):
        LipschitzCallback(bogus=1)
