"""GradNormStopping under DDP: two CPU processes (gloo, ddp_fork) each hold half of the training set; the logged
train/grad_norm must be the norm of the whole set's mean-loss gradient, as one process computes it."""

from __future__ import annotations

import csv

import lightning.pytorch as pl
import pytest

from lipschitz_dd.callbacks import GradNormStopping
from lipschitz_dd.callbacks.stopping import full_batch_gradient_norm
from lipschitz_dd.data import SyntheticDataModule
from lipschitz_dd.loggers import EpochCSVLogger
from lipschitz_dd.models import FCN

pytestmark = pytest.mark.slow  # DDP processes


def test_ddp_grad_norm_is_the_whole_training_sets(tmp_path):
    pl.seed_everything(0, verbose=False)
    data = SyntheticDataModule(num_train=21, num_test=6, input_shape=(40,), batch_size=5, eval_batch_size=4)
    model = FCN(width=8, lr=0.05)
    logger = EpochCSVLogger(tmp_path, name="run", version="v")
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
        logger=logger,
        callbacks=[GradNormStopping(target=None)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=data)  # ddp_fork hands the trained weights back to this process
    with open(next(tmp_path.rglob("metrics.csv"))) as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/grad_norm")]
    assert [int(r["step"]) for r in rows] == [1, 2]
    data.setup("fit")  # in this process: world size 1, the whole training set
    model.eval()
    expected, _ = full_batch_gradient_norm(model, [(data.train_x, data.train_y)], model.batch_loss)
    assert float(rows[-1]["train/grad_norm"]) == pytest.approx(expected, rel=1e-5)
    # the ranks' halves (11 and 10 points) alone give other values: the reduction is what makes it match
    half, _ = full_batch_gradient_norm(model, [(data.train_x[0::2], data.train_y[0::2])], model.batch_loss)
    assert half != pytest.approx(expected, rel=1e-3)
