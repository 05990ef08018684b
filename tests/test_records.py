"""The run folder's CSV (one row per step) and results.json (status, final, max), on a tiny user-style module."""

import json
import math

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from lipschitz_dd.callbacks.records import ResultsWriter, read_metric_rows, summarise, write_json_atomic
from lipschitz_dd.callbacks.stopping import GradNormStopping, full_batch_gradient_norm
from lipschitz_dd.loggers import EpochCSVLogger


def _batches(n=32, d=3, seed=0, batch=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch)


class TinyModule(LightningModule):
    def __init__(self, fail_at_epoch=None, lr=0.1):
        super().__init__()
        self.net = torch.nn.Linear(3, 2)
        self.fail_at_epoch = fail_at_epoch
        self.lr = lr
        self.diverged = False

    def forward(self, x):
        return self.net(x)

    def batch_loss(self, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def training_step(self, batch, batch_idx):
        if self.fail_at_epoch is not None and self.current_epoch == self.fail_at_epoch:
            raise ValueError("boom")
        return self.batch_loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("test/loss", self.batch_loss(batch), on_epoch=True)

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.log("step", float(self.current_epoch + 1))

    def on_train_start(self):
        for lg in self.trainer.loggers:
            lg.log_metrics({"test/loss": 1.0}, step=0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _fit(tmp_path, module, epochs=3, callbacks=()):
    logger = EpochCSVLogger(save_dir=str(tmp_path), name="exp", version="run")
    record = ResultsWriter(config={"model.width": 4})
    trainer = Trainer(
        max_epochs=epochs,
        logger=logger,
        callbacks=[record, *callbacks],
        enable_progress_bar=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )
    data = _batches()
    trainer.fit(module, train_dataloaders=data, val_dataloaders=_batches(seed=1))
    return tmp_path / "exp" / "run", trainer


def test_one_row_per_epoch_and_results(tmp_path):
    class WithCallbackLog(TinyModule):
        def on_train_start(self):
            super().on_train_start()
            for lg in self.trainer.loggers:  # a second writer at step 0, as a callback would do
                lg.log_metrics({"lipschitz/lower": 2.0}, step=0)

    run_dir, trainer = _fit(tmp_path, WithCallbackLog())
    rows = read_metric_rows(str(run_dir / "metrics.csv"))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert rows[0]["lipschitz/lower"] == 2.0 and rows[0]["test/loss"] == 1.0
    with open(run_dir / "metrics.csv") as f:
        assert len(f.read().strip().splitlines()) == 1 + 4  # header + one row per step: rows really merged
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "finished"
    assert record["epochs"] == 3
    assert record["config"] == {"model.width": 4}
    assert record["final"]["test/loss"] == pytest.approx(rows[-1]["test/loss"])
    assert record["max"]["test/loss"] == pytest.approx(max(r["test/loss"] for r in rows))
    assert "torch" in record["versions"]


def test_failure_still_writes_record(tmp_path):
    with pytest.raises(ValueError, match="boom"):
        _fit(tmp_path, TinyModule(fail_at_epoch=1))
    record = json.loads((tmp_path / "exp" / "run" / "results.json").read_text())
    assert record["status"] == "failed"
    assert "boom" in record["error"]
    assert record["final"]["test/loss"] > 0  # epoch 1's values were not lost


def test_diverged_status(tmp_path):
    class Diverging(TinyModule):
        def training_step(self, batch, batch_idx):
            self.diverged = True
            self.trainer.should_stop = True
            return None

    run_dir, _ = _fit(tmp_path, Diverging())
    assert json.loads((run_dir / "results.json").read_text())["status"] == "diverged"


def test_summarise_ignores_nan_in_max():
    final, maximum = summarise([{"step": 0, "a": 1.0}, {"step": 1, "a": float("nan")}, {"step": 2, "b": 3.0}])
    assert math.isnan(final["a"]) and maximum["a"] == 1.0 and final["b"] == 3.0


def test_write_json_atomic_replaces(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(str(path), {"a": 1})
    write_json_atomic(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_full_batch_gradient_norm_matches_one_big_batch():
    torch.manual_seed(0)
    module = TinyModule()
    batches = _batches(n=30, batch=7)  # unequal last batch
    norm, loss = full_batch_gradient_norm(module, batches, module.batch_loss)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    full = module.batch_loss((x, y))
    grads = torch.autograd.grad(full, list(module.parameters()))
    expected = torch.sqrt(sum((g**2).sum() for g in grads))
    assert norm == pytest.approx(float(expected), rel=1e-5)
    assert loss == pytest.approx(float(full), rel=1e-5)
    assert all(p.grad is None for p in module.parameters())


def test_grad_norm_stopping_stops_and_logs(tmp_path):
    stopper = GradNormStopping(target=1e9, min_epochs=2)  # always "converged": stops as soon as allowed
    run_dir, trainer = _fit(tmp_path, TinyModule(), epochs=10, callbacks=[stopper])
    assert trainer.current_epoch == 2
    rows = read_metric_rows(str(run_dir / "metrics.csv"))
    assert all("train/grad_norm" in r for r in rows[1:])
    assert json.loads((run_dir / "results.json").read_text())["status"] == "stopped_converged"


def test_grad_norm_stopping_rejects_bad_input():
    with pytest.raises(ValueError, match="every_n_epochs"):
        GradNormStopping(every_n_epochs=0)
    with pytest.raises(ValueError, match="target"):
        GradNormStopping(target=-1.0)


def test_loss_that_blows_up_but_stays_finite_is_diverged(tmp_path):
    class BlowingUp(TinyModule):
        def on_train_epoch_end(self):  # train/loss: 2.0 before training, then 1e8: finite, but 5e7 x the start
            for lg in self.trainer.loggers:
                lg.log_metrics({"train/loss": 1e8}, step=self.current_epoch + 1)

        def on_train_start(self):
            super().on_train_start()
            for lg in self.trainer.loggers:
                lg.log_metrics({"train/loss": 2.0}, step=0)

    run_dir, _ = _fit(tmp_path, BlowingUp())
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "diverged" and record["final"]["train/loss"] == 1e8
    assert "train/loss went from 2 to 1e+08" in record["error"]
