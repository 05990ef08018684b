"""LipschitzCallback under DDP: two CPU processes (gloo, ddp_spawn) each measure their share of the points;
the logged values must equal one process's values over the whole set."""

from __future__ import annotations

import copy
import json

import lightning.pytorch as pl
import pytest
import torch
from conftest import ToyData, ToyNet, dense_jacobian_norms, make_trainer, read_rows
from torch import nn

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


class StoredPoints(pl.Callback):
    """Writes, per rank at the end of fit, the point indices whose warm-start vectors the rank holds."""

    def __init__(self, lipschitz: LipschitzCallback, folder) -> None:
        self.lipschitz, self.folder = lipschitz, folder

    def on_train_end(self, trainer, pl_module) -> None:
        store = self.lipschitz._train_norms.estimator.store
        indices = [] if store is None else store.state_dict()["indices"].tolist()
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(indices))


def test_ddp_warm_estimator_keeps_each_ranks_points_and_logs_the_exact_max(tmp_path):
    torch.manual_seed(0)
    model, data = ToyNet(dropout=0.0), ToyData()
    model.net[4] = nn.Linear(16, 24)  # 24 logits: "auto" takes the warm estimator
    initial = copy.deepcopy(model)
    callback = LipschitzCallback(every_n_epochs=1, max_samples=29, upper=False, progress_bar=False)
    trainer = make_trainer(
        tmp_path, [callback, StoredPoints(callback, tmp_path)], max_epochs=2, strategy="ddp_fork", devices=2
    )
    trainer.fit(model, datamodule=data)
    rows = [r for r in read_rows(trainer) if "lipschitz/lower" in r]
    assert len(rows) == 3
    subset = torch.randperm(30, generator=torch.Generator().manual_seed(0))[:29]
    for row, net in ((rows[0], initial), (rows[-1], model)):
        norms = dense_jacobian_norms(net, data.train_x[subset])
        assert row["lipschitz/lower"] == pytest.approx(float(norms.max()), rel=1e-5)
        assert row["lipschitz/avg"] == pytest.approx(float(norms.mean()), rel=1e-3)
        assert row["lipschitz/rms"] == pytest.approx(float(norms.square().mean().sqrt()), rel=1e-3)
        assert 0.0 <= row["lipschitz/avg_tol"] < 1e-2
    held = [sorted(json.loads((tmp_path / f"rank{r}.json").read_text())) for r in (0, 1)]
    assert held == [sorted(subset[0::2].tolist()), sorted(subset[1::2].tolist())]  # each rank its own shard
