"""LipschitzCallback under DDP: two CPU processes (gloo, ddp_spawn) each measure their share of the points;
the logged values must equal one process's values over the whole set."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ToyData, ToyNet, dense_jacobian_norms, make_trainer, read_rows

from lipschitz_dd.callbacks.lipschitz import LipschitzCallback

pytestmark = pytest.mark.slow  # DDP processes


def test_ddp_values_equal_single_process_values_over_the_whole_set(tmp_path):
    torch.manual_seed(0)
    model, data = ToyNet(dropout=0.0), ToyData()
    initial = copy.deepcopy(model)
    # 29 of the 30 training points: ranks get 15 and 14, so a mean of per-rank means would differ from the
    # true mean; the test set's 12 points split 6 / 6
    callback = LipschitzCallback(every_n_epochs=1, max_samples=29, test=True, progress_bar=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1, strategy="ddp_fork", devices=2)
    trainer.fit(model, datamodule=data)  # ddp_fork hands the trained weights back to this process
    rows = [r for r in read_rows(trainer) if "lipschitz/lower" in r]
    assert len(rows) == 2
    subset = torch.randperm(30, generator=torch.Generator().manual_seed(0))[:29]  # the documented seeded subset
    for row, net in ((rows[0], initial), (rows[-1], model)):
        norms = dense_jacobian_norms(net, data.train_x[subset])
        assert row["lipschitz/lower"] == pytest.approx(float(norms.max()), rel=1e-5)
        assert row["lipschitz/avg"] == pytest.approx(float(norms.mean()), rel=1e-5)
        assert row["lipschitz/rms"] == pytest.approx(float(norms.square().mean().sqrt()), rel=1e-5)
        assert row["lipschitz/lower_test"] == pytest.approx(
            float(dense_jacobian_norms(net, data.test_x).max()), rel=1e-5
        )
        assert row["lipschitz/upper_available"] == 1.0 and row["lipschitz/upper"] >= row["lipschitz/lower"]
    assert rows[-1]["params/dist_init"] > 0
