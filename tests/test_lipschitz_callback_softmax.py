"""LipschitzCallback(output_transform="softmax"): the softmax's bounds beside the logits', checked against explicit
per-sample Jacobians of softmax(f) and a dense SVD; the 1/2 factor of its upper bound against the explicit
softmax Jacobian diag(p) - p p^T."""

from __future__ import annotations

import pytest
import torch
from conftest import ToyNet, dense_jacobian_norms, make_trainer, toy_arrays

from lipschitz_dd.bounds import SoftmaxOutput
from lipschitz_dd.callbacks import LipschitzCallback


def test_the_softmax_jacobian_has_spectral_norm_at_most_one_half():
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for k in (2, 3, 10, 100):
        for scale in (0.1, 1.0, 10.0):
            z = scale * torch.randn(200, k, generator=g, dtype=torch.float64)
            jac = torch.func.vmap(torch.func.jacrev(lambda v: v.softmax(-1)))(z)
            p = z.softmax(-1)
            explicit = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
            torch.testing.assert_close(jac, explicit)
            worst = max(worst, float(torch.linalg.matrix_norm(explicit, ord=2).max()))
    assert worst <= 0.5 + 1e-12
    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)  # attained: two classes at 1/2
    assert torch.linalg.matrix_norm(torch.diag(p) - torch.outer(p, p), ord=2) == pytest.approx(0.5)


@pytest.mark.parametrize("jacobian_method", ["exact", "auto"])
def test_softmax_metrics_are_added_and_the_logits_metrics_keep_their_values(jacobian_method):
    torch.manual_seed(0)
    model = ToyNet()
    trainer = make_trainer(".", [], logger=False)
    trainer.strategy.connect(model)
    x = toy_arrays()[0]
    options = dict(train_points=x, progress_bar=False, jacobian_method=jacobian_method)
    logits_only = LipschitzCallback(**options).measure(trainer, model, epoch=1)
    both = LipschitzCallback(**options, output_transform="softmax").measure(trainer, model, epoch=1)
    for name, value in logits_only.items():
        if name != "lipschitz/seconds":
            assert both[name] == pytest.approx(value, rel=1e-6), name
    assert "lipschitz/lower_softmax" not in logits_only
    softmax = dense_jacobian_norms(SoftmaxOutput(model), x)
    assert both["lipschitz/lower_softmax"] == pytest.approx(float(softmax.max()), rel=1e-4)
    assert both["lipschitz/avg_softmax"] == pytest.approx(float(softmax.mean()), rel=1e-4)
    assert both["lipschitz/upper_softmax"] == pytest.approx(0.5 * both["lipschitz/upper"])
    assert both["lipschitz/lower_softmax"] <= both["lipschitz/upper_softmax"]
    assert both["lipschitz/lower_softmax"] <= 0.5 * both["lipschitz/lower"] + 1e-6


def test_softmax_metrics_are_logged_during_fit(tmp_path):
    from conftest import ToyData

    torch.manual_seed(0)
    callback = LipschitzCallback(every_n_epochs=1, progress_bar=False, output_transform="softmax")
    make_trainer(tmp_path, [callback], max_epochs=1, logger=False).fit(ToyNet(), datamodule=ToyData())
    assert [h["epoch"] for h in callback.history] == [0.0, 1.0]
    assert all("lipschitz/lower_softmax" in h and "lipschitz/upper_softmax" in h for h in callback.history)


def test_an_unknown_output_transform_is_one_clear_error():
    with pytest.raises(ValueError, match="output_transform must be 'logits' or 'softmax'"):
        LipschitzCallback(output_transform="probabilities")
