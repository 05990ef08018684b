"""When a callback measures (see `PackageCallback.is_due`): `LipschitzCallback` at epoch 0, every epoch up to
`dense_epochs`, every `every_n_epochs`-th epoch and the last epoch; `EvolutionBound` every n-th and the last;
`GradNormStopping` every n-th (epochs counted as finished epochs; 0 = before the first update)."""

from __future__ import annotations

from dataclasses import dataclass

from lightning.pytorch import Trainer


@dataclass(frozen=True)
class Schedule:
    """Measure after epoch e when e <= dense_epochs, e % every_n_epochs == 0, or (with `measure_last`) the fit
    ends after e."""

    every_n_epochs: int = 10
    dense_epochs: int = 10
    measure_last: bool = True

    def is_scheduled(self, epoch: int, last: bool = False) -> bool:
        """Whether the parameters after `epoch` finished epochs are measured."""
        return (last and self.measure_last) or epoch <= self.dense_epochs or epoch % self.every_n_epochs == 0

    @staticmethod
    def is_last_epoch(trainer: Trainer, finished_epochs: int) -> bool:
        """Whether the fit ends after `finished_epochs` epochs: stopped, or max_epochs / max_steps reached."""
        max_epochs = trainer.max_epochs
        reached_epochs = max_epochs is not None and max_epochs >= 0 and finished_epochs >= max_epochs
        reached_steps = trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step
        return bool(trainer.should_stop or reached_epochs or reached_steps)
