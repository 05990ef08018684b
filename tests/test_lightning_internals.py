"""Each private Lightning internal lipschitz_dd reads (lipschitz_dd/_lightning_internals.py) still exists and
means what we use it for: these fail when a Lightning upgrade changes one."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from conftest import ToyData, ToyNet, make_trainer
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from lipschitz_dd import _lightning_internals as internals


class Probe(pl.Callback):
    """Records what the accessors return in the hooks that use them."""

    def __init__(self) -> None:
        self.seen: dict[str, list] = {"last_batch": [], "step_at_val_end": [], "started": [], "fx": []}

    def on_train_start(self, trainer, pl_module):
        self.seen["started"].append(internals.epochs_started(trainer))
        internals.setup_val_data(trainer)  # callable here, loads the loaders (a no-op after the sanity check)
        assert trainer.val_dataloaders is not None

    def on_train_epoch_start(self, trainer, pl_module):
        self.seen["started"].append(internals.epochs_started(trainer))

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self.seen["last_batch"].append(internals.is_last_batch(trainer))
        self.seen["step_at_val_end"].append(internals.logger_step(trainer))
        self.seen["fx"].append(getattr(pl_module, internals.CURRENT_FX_ATTRIBUTE))


def test_fit_loop_internals(tmp_path):
    probe = Probe()
    trainer = make_trainer(tmp_path, [probe], max_epochs=2, val_check_interval=0.5, logger=False)
    trainer.fit(ToyNet(), datamodule=ToyData(batch_size=8))  # 4 batches: validation after 2 and after 4
    assert probe.seen["last_batch"] == [False, True, False, True]  # a mid-epoch validation is not the end
    assert probe.seen["step_at_val_end"] == [1, 3, 5, 7]  # the step of the validation row: updates - 1
    assert probe.seen["started"] == [0, 1, 2]  # 0 before the first epoch, then 1-based
    assert probe.seen["fx"] == ["on_validation_epoch_end"] * 4  # Lightning names the running hook


def test_logger_experiment_is_read_without_creating_it(tmp_path):
    logger = CSVLogger(str(tmp_path), name="run", version=0)
    assert internals.logger_experiment(logger) is None
    experiment = logger.experiment
    assert internals.logger_experiment(logger) is experiment
    wandb = WandbLogger(save_dir=str(tmp_path), offline=True)
    assert internals.logger_experiment(wandb) is None and internals.is_wandb_logger(wandb)
    assert not internals.is_wandb_logger(logger)


def test_csv_writer_attributes_exist(tmp_path):
    writer = ExperimentWriter(str(tmp_path))
    for name in internals.CSV_WRITER_ATTRIBUTES:
        assert hasattr(writer, name), name
    writer.log_metrics({"a": 1.0}, step=0)
    assert writer.metrics == [{"a": 1.0, "step": 0}]
    writer._record_new_keys()
    assert set(writer.metrics_keys) == {"a", "step"}
    assert writer.metrics_file_path.endswith("metrics.csv")


def test_module_attribute_is_set_around_hooks():
    assert hasattr(torch.nn.Module, "__setattr__")
    assert internals.CURRENT_FX_ATTRIBUTE in vars(pl.LightningModule()).keys() | set(dir(pl.LightningModule()))
