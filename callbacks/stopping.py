"""The paper's stopping rule: stop when the full-batch gradient norm of the training loss is small."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import move_data_to_device, rank_zero_info
from lightning.pytorch.utilities.data import extract_batch_size

from lipschitz_dd.callbacks._base import PackageCallback
from lipschitz_dd.callbacks._schedule import Schedule
from lipschitz_dd.metric_names import TRAIN_GRAD_NORM


def _summed_loss_gradient(
    module: torch.nn.Module, batches: Iterable[Any], batch_loss: Callable[[Any], torch.Tensor]
) -> tuple[torch.Tensor, float, int]:
    """(g, S, n): the gradient g of the summed loss S = sum_b n_b * batch_loss(b) over all n samples of
    `batches`, flattened over the parameters that require grad, S itself and n. Exact. The gradient is
    accumulated with `torch.autograd.grad`, leaving every parameter's `.grad` untouched."""
    params = [p for p in module.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) for p in params]
    total_loss, count = 0.0, 0
    with torch.enable_grad():
        for batch in batches:
            n = extract_batch_size(batch)
            loss = batch_loss(batch)
            parts = torch.autograd.grad(loss * n, params, allow_unused=True)
            for g, part in zip(grads, parts, strict=False):
                if part is not None:
                    g.add_(part)
            total_loss += float(loss.detach()) * n
            count += n
    flat = torch.cat([g.flatten() for g in grads]) if grads else torch.zeros(0)
    return flat, total_loss, count


def full_batch_gradient_norm(
    module: torch.nn.Module,
    batches: Iterable[Any],
    batch_loss: Callable[[Any], torch.Tensor],
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, float]:
    """(||grad_theta L(theta)||_2, L(theta)) for the mean loss L over all samples of `batches`. Exact.

    L = sum_b n_b * batch_loss(b) / sum_b n_b, so batches of unequal size are weighted correctly. The gradient
    is accumulated with `torch.autograd.grad`, leaving every parameter's `.grad` untouched.
    reduce_sum: sums a tensor over processes (under DDP: `trainer.strategy.reduce(t, reduce_op="sum")`). Each
    process then passes its shard of the data and all get the values of the whole data set: the gradient of the
    summed loss, the summed loss and the count add up over shards. Every process must call it.
    """
    grad, total_loss, count = _summed_loss_gradient(module, batches, batch_loss)
    totals = torch.cat([grad.double(), grad.new_tensor([total_loss, count], dtype=torch.float64)])
    if reduce_sum is not None:
        totals = reduce_sum(totals)
    count = float(totals[-1])
    if count == 0:
        raise ValueError("full_batch_gradient_norm: the training data is empty")
    return float(torch.linalg.vector_norm(totals[:-2])) / count, float(totals[-2]) / count


class GradNormStopping(PackageCallback):
    """Logs `train/grad_norm`, the norm of the gradient of the mean training loss over the whole training set,
    and stops training once it is <= `target` (after `min_epochs` epochs). Maximum epochs: `Trainer(max_epochs)`.

    The module must offer `batch_loss(batch) -> mean loss of the batch` (our models do). The gradient is taken
    with the model in eval mode (BatchNorm running statistics, no dropout) over the datamodule's
    `train_eval_dataloader()` if it has one (the whole training set, each sample once per process), else over
    `trainer.train_dataloader` (under DDP its DistributedSampler may repeat a few samples to even out the
    shards, and a loader that drops its last partial batch leaves those samples out). Under DDP it is the
    whole training set's gradient on every rank (per-rank gradients of the summed loss and sample counts are
    summed), so all ranks stop together. Set `converged` when it stops, for the run record.

    It acts only at the end of validation epochs inside `fit` (not in the sanity check, `trainer.validate` or
    `trainer.test`), and it does not disturb training: the global RNG streams and the loader's own
    torch.Generators are restored after iterating the loader (a shuffled loader draws from them), so a seeded
    run ends with the same parameters with or without this callback.
    """

    state_attributes: ClassVar[dict[str, str]] = {"converged": "converged", "last_grad_norm": "last_grad_norm"}

    def __init__(
        self,
        target: float | None = 0.01,
        min_epochs: int = 0,
        every_n_epochs: int = 1,
        enabled: bool = True,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"GradNormStopping: every_n_epochs must be >= 1, got {every_n_epochs}")
        if target is not None and target < 0:
            raise ValueError(f"GradNormStopping: target must be >= 0, got {target}")
        self.target = target
        self.min_epochs = min_epochs
        self.every_n_epochs = every_n_epochs
        self.enabled = enabled
        self.schedule = Schedule(every_n_epochs, dense_epochs=0, measure_last=False)
        self.converged = False
        self.last_grad_norm: float | None = None

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        epoch = trainer.current_epoch + 1
        if not self.is_due(trainer, epoch):
            return
        if not hasattr(pl_module, "batch_loss"):
            raise AttributeError("GradNormStopping needs the LightningModule to define batch_loss(batch) -> mean loss")
        loader = self.training_loader(trainer)
        device = pl_module.device
        # Under DDP every rank holds a shard (or all) of the training set: summed over ranks, it is the whole
        # set's gradient on every rank, so all ranks take the same stopping decision. One process: unchanged.
        # The parameters stay trainable (the gradient is taken with autograd.grad, .grad untouched); the
        # loader's own generators and the global RNG streams are restored after iterating it.
        with self.isolated(pl_module, freeze_parameters=False, loaders=[loader]):
            batches = (move_data_to_device(b, device) for b in loader)
            grad_norm, _ = full_batch_gradient_norm(
                pl_module,
                batches,
                pl_module.batch_loss,
                reduce_sum=lambda t: trainer.strategy.reduce(t, reduce_op="sum"),
            )
        self.last_grad_norm = grad_norm
        pl_module.log(TRAIN_GRAD_NORM, grad_norm, on_epoch=True, sync_dist=True)
        if (
            self.target is not None
            and math.isfinite(grad_norm)
            and grad_norm <= self.target
            and epoch >= self.min_epochs
        ):
            self.converged = True
            trainer.should_stop = True
            rank_zero_info(f"GradNormStopping: gradient norm {grad_norm:.3g} <= {self.target} at epoch {epoch}")
