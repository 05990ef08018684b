"""The shared LightningModule base: the paper's training protocol for any classifier network.

Subclasses call ``super().__init__(**kwargs)`` first and then build their layers into ``self.net`` (in
order, so a seed gives the same initial weights as ``torch.manual_seed`` followed by the plain builder).

Protocol (the study's, docs/study.md): CE or MSE on one-hot targets, both summed over the batch and divided by the batch
size; SGD (optional momentum / weight decay) or Adam; learning-rate schedules stepped once per update;
global gradient-norm clipping (default 50). A non-finite training loss stops the run cleanly
(``self.diverged = True``).

Logging: one row per epoch. Validation loader 0 is the test set (``test/loss``, ``test/acc``), loader 1 the
full training set in eval mode (``train/loss``, ``train/acc``); the logger step is the number of finished
epochs: the module logs the ``step`` metric of ``lipschitz_dd/epoch_axis.py`` in its validation rows and opts
into the project's epoch axis (``epoch_axis = True``, see ``epoch_axis.on_epoch_axis``), so LipschitzCallback logs
the same ``step`` in the rows of the epochs it writes (a user's own module gets Lightning's steps); epoch 0 (before the first update) is evaluated in ``on_train_start``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lipschitz_dd._lightning_internals import CURRENT_FX_ATTRIBUTE, setup_val_data
from lipschitz_dd.epoch_axis import STEP_METRIC
from lipschitz_dd.metric_names import PARAMS_COUNT
from lipschitz_dd.models._checks import check_size
from lipschitz_dd.models.constraint import SpectralNormConstraint
from lipschitz_dd.models.penalty import jacobian_norm_penalty
from lipschitz_dd.models.schedules import SCHEDULE_NAMES, make_lr_lambda, updates_per_epoch_of

log = logging.getLogger(__name__)

EVAL_PREFIXES = ("test", "train")
"""Metric prefix of validation dataloader 0 (the test set) and 1 (the full training set)."""


def per_sample_loss(logits: Tensor, targets: Tensor, loss: str) -> Tensor:
    """Loss of each sample, shape ``[B]`` (exact).

    ``"ce"``: cross-entropy ``-log softmax(logits)[y]``. ``"mse"``: squared Euclidean distance between the
    logits and the one-hot target, summed over the K classes (not averaged over them).
    """
    if loss == "ce":
        return F.cross_entropy(logits, targets, reduction="none")
    one_hot = F.one_hot(targets, num_classes=logits.shape[-1]).to(logits.dtype)
    return (logits - one_hot).pow(2).sum(dim=-1)


class LipschitzModule(LightningModule):
    """Base of every network family: loss, optimiser, LR schedule, gradient clipping, per-epoch metrics.

    Args:
        num_classes: number of classes K (width of the logits).
        loss: ``"ce"`` (cross-entropy) or ``"mse"`` (squared error to one-hot targets summed over classes);
            both reduced as sum over the batch divided by the batch size.
        optimizer: ``"sgd"`` or ``"adam"``.
        lr: base learning rate.
        momentum: SGD momentum (0 = plain SGD, the paper's protocol); must be 0 with Adam.
        weight_decay: L2 weight decay passed to the optimiser.
        lr_schedule: ``"constant"``, ``"warmup20000step25"``, ``"cont100"``, ``"cont50"`` or ``"step30"`` (ImageNet: divided
            by 10 every 30 epochs; see ``schedules.py``), stepped once per update.
        lr_floor: ``cont100`` / ``cont50`` only: an absolute learning rate below which the schedule never goes.
        schedule_epochs: ``warmup20000step25`` only: its decay milestones sit at 25/50/75 % of this many
            epochs after the warm-up.
        grad_clip_norm: clip the global L2 norm of all gradients to this value before each update (None: no
            clipping). A ``Trainer(gradient_clip_val=...)`` flag, if given, takes precedence.
        lipschitz_bound: C. When set, every Linear/Conv layer is rescaled after each update (and once before
            the first) so its operator norm is at most ``C^(1/depth)`` (depth = number of weight layers): the
            product bound of ``net`` is then at most C (see ``constraint.py``; feed-forward chains only).
        constraint_margin: relative safety margin of that rescaling against power iteration's low error.
        logit_temperature: tau; the logits are ``tau * net(x)`` (the study: 1 unconstrained, 10 with C = 10,
            40 with C = 1), so the network's constant is at most ``tau * C``.
        jacobian_penalty: lambda; the training loss becomes ``loss + lambda * max_b ||J(x_b)||_2`` over the
            batch (C_lower of the batch as a regulariser, see ``penalty.py``); 0 = off. Evaluation losses
            never include it.
    """

    epoch_axis = True
    """Opt-in to the project's epoch axis (lipschitz_dd/epoch_axis.py): rows keyed by `step` = finished epochs."""

    net: nn.Module

    def __init__(
        self,
        num_classes: int = 10,
        loss: Literal["ce", "mse"] = "ce",
        optimizer: Literal["sgd", "adam"] = "sgd",
        lr: float = 0.01,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        lr_schedule: Literal["constant", "warmup20000step25", "cont100", "cont50", "step30"] = "constant",
        lr_floor: float | None = None,
        schedule_epochs: int = 10_000,
        grad_clip_norm: float | None = 50.0,
        lipschitz_bound: float | None = None,
        constraint_margin: float = 1e-2,
        logit_temperature: float = 1.0,
        jacobian_penalty: float = 0.0,
    ) -> None:
        super().__init__()
        _check_choice("loss", loss, ("ce", "mse"))
        _check_choice("optimizer", optimizer, ("sgd", "adam"))
        _check_choice("lr_schedule", lr_schedule, SCHEDULE_NAMES)
        check_size("num_classes", num_classes)
        check_size("schedule_epochs", schedule_epochs)
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if optimizer == "adam" and momentum != 0:
            raise ValueError("momentum is an SGD option; with optimizer='adam' set momentum to 0")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if lr_floor is not None and not lr_floor >= 0:
            raise ValueError(f"lr_floor must be >= 0 or None, got {lr_floor}")
        if grad_clip_norm is not None and not grad_clip_norm > 0:
            raise ValueError(f"grad_clip_norm must be > 0 or None, got {grad_clip_norm}")
        if lipschitz_bound is not None and not lipschitz_bound > 0:
            raise ValueError(f"lipschitz_bound must be > 0 or None, got {lipschitz_bound}")
        if not constraint_margin >= 0:
            raise ValueError(f"constraint_margin must be >= 0, got {constraint_margin}")
        if not logit_temperature > 0:
            raise ValueError(f"logit_temperature must be > 0, got {logit_temperature}")
        if not jacobian_penalty >= 0:
            raise ValueError(f"jacobian_penalty must be >= 0, got {jacobian_penalty}")
        # Collects the init arguments of the whole subclass chain (Lightning walks the __init__ frames).
        self.save_hyperparameters()
        self.num_classes = num_classes
        self.loss_name = loss
        self.diverged = False
        self.logit_temperature = float(logit_temperature)
        self.jacobian_penalty = float(jacobian_penalty)
        self.constraint: SpectralNormConstraint | None = None  # built on the first use, once self.net exists
        # Index = validation dataloader index (0: test set, 1: full training set). NaN losses are kept,
        # not dropped, so a diverged network reports NaN.
        self.eval_loss = nn.ModuleList(MeanMetric(nan_strategy="disable") for _ in EVAL_PREFIXES)
        # validate_args=False: skips per-batch input checks (a bad label already fails in the loss).
        self.eval_acc = nn.ModuleList(
            MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False) for _ in EVAL_PREFIXES
        )

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets `_current_fx_name` (a str or None) twice around every hook call, a few hundred times per
        # epoch; nn.Module.__setattr__'s parameter/module/buffer checks cost ~4 us each time and cannot apply to
        # a str. Storing it directly is what nn.Module would do in the end (Lightning does the same for its
        # logged-metric modules).
        if name == CURRENT_FX_ATTRIBUTE:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ----------------------------------------------------------------- model and loss
    def forward(self, x: Tensor) -> Tensor:
        """The logits ``tau * net(x)``, shape ``[B, num_classes]`` (the output the loss sees; tau =
        ``logit_temperature``, usually 1)."""
        logits = self.net(x)
        return logits if self.logit_temperature == 1.0 else logits * self.logit_temperature

    def batch_loss(self, batch: Sequence[Tensor]) -> Tensor:
        """Mean loss of an ``(x, y)`` batch: sum of per-sample losses divided by the batch size (exact)."""
        x, y = batch[0], batch[1]
        if self.loss_name == "ce":  # the same mean in one fused op, a little faster than the two below
            return F.cross_entropy(self(x), y)
        return per_sample_loss(self(x), y, self.loss_name).mean()

    # ----------------------------------------------------------------- training
    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor | None:
        """The mean batch loss (plus ``jacobian_penalty * max_b ||J(x_b)||_2`` when set); on a non-finite loss:
        warn, stop the trainer, skip the update (None)."""
        if self.jacobian_penalty > 0:
            x, y = batch[0], batch[1]
            penalty, logits = jacobian_norm_penalty(self, x)
            loss = per_sample_loss(logits, y, self.loss_name).mean() + self.jacobian_penalty * penalty
            self.last_jacobian_norm = float(penalty.detach())
        else:
            loss = self.batch_loss(batch)
        if not torch.isfinite(loss):
            log.warning(
                "non-finite training loss (%s) at epoch %d, step %d: stopping (diverged)",
                loss.item(),
                self.current_epoch,
                self.global_step,
            )
            self.diverged = True
            self.trainer.should_stop = True
            return None
        return loss

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """The optimiser update, then (with ``lipschitz_bound``) the rescaling of the weight layers."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.hparams.get("lipschitz_bound") is not None:
            self.apply_lipschitz_constraint()

    def apply_lipschitz_constraint(self, example: Tensor | None = None) -> None:
        """Rescale the weight layers onto the ``lipschitz_bound`` budget (see ``constraint.py``).

        ``example``: an input batch to run once (eval mode, no grad) when a convolution's input shape is not
        known yet; without it the rescaling waits for the first training forward pass.
        """
        if self.constraint is None:
            self.constraint = SpectralNormConstraint(
                self.net, self.hparams.lipschitz_bound, margin=self.hparams.get("constraint_margin", 1e-2)
            )
        if not self.constraint.ready():
            if example is None:
                return
            was_training = self.training
            self.eval()
            with torch.no_grad():
                self.net(example)
            self.train(was_training)
        self.constraint.project()

    def on_fit_start(self) -> None:
        """Checks ``jacobian_penalty``'s network; with ``lipschitz_bound``: rescales the initial weights, so the
        bound holds from epoch 0 on."""
        if self.jacobian_penalty > 0:
            random_layers = sorted(
                {
                    type(m).__name__
                    for m in self.modules()
                    if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd))
                }
            )
            if random_layers:
                raise ValueError(
                    f"jacobian_penalty needs a network without {', '.join(random_layers)}: in training mode its input "
                    "Jacobian depends on the batch statistics / dropout masks"
                )
        if self.hparams.get("lipschitz_bound") is None:
            return
        shape = getattr(self.trainer.datamodule, "input_shape", None)
        example = torch.zeros(1, *shape, device=self.device) if shape is not None else None
        self.apply_lipschitz_constraint(example)

    def configure_optimizers(self):
        """The optimiser of ``optimizer`` and, unless constant, a LambdaLR stepped once per update."""
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.lr_schedule == "constant":
            return opt
        factor = make_lr_lambda(
            hp.lr_schedule,
            base_lr=hp.lr,
            updates_per_epoch=self._updates_per_epoch(),
            schedule_epochs=hp.schedule_epochs,
            lr_floor=hp.lr_floor,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def _updates_per_epoch(self) -> int:
        trainer = self.trainer
        trainer.estimated_stepping_batches  # noqa: B018 -- makes the trainer load the train loader and count its batches
        return updates_per_epoch_of(trainer.num_training_batches, trainer.accumulate_grad_batches)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip the global gradient L2 norm to ``grad_clip_norm`` (a Trainer clipping flag takes precedence)."""
        if gradient_clip_val is None and self.hparams.grad_clip_norm is not None:
            gradient_clip_val, gradient_clip_algorithm = self.hparams.grad_clip_norm, "norm"
        self.clip_gradients(
            optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
        )

    # ----------------------------------------------------------------- evaluation
    def _update_eval_metrics(self, batch: Sequence[Tensor], dataloader_idx: int) -> None:
        if dataloader_idx >= len(EVAL_PREFIXES):
            raise ValueError(
                f"validation dataloader {dataloader_idx} is not expected: loader 0 is the test set, 1 the training set"
            )
        x, y = batch[0], batch[1]
        logits = self(x)
        self.eval_loss[dataloader_idx].update(per_sample_loss(logits, y, self.loss_name))
        self.eval_acc[dataloader_idx].update(logits, y)

    def _compute_eval_metrics(self) -> dict[str, Tensor]:
        """``{prefix/loss, prefix/acc}`` for every loader seen since the last reset; resets the metrics."""
        metrics = {}
        for prefix, loss_metric, acc_metric in zip(EVAL_PREFIXES, self.eval_loss, self.eval_acc, strict=False):
            if loss_metric.update_called:
                metrics[f"{prefix}/loss"] = loss_metric.compute()
                metrics[f"{prefix}/acc"] = acc_metric.compute()
            loss_metric.reset()
            acc_metric.reset()
        return metrics

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Accumulates loss and accuracy of loader 0 (test set) or 1 (full training set)."""
        self._update_eval_metrics(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        """Logs ``test/*`` and ``train/*`` once per epoch with logger step = finished epochs."""
        metrics = self._compute_eval_metrics()
        if self.trainer.sanity_checking:
            return
        metrics[STEP_METRIC] = float(self.current_epoch + 1)
        self.log_dict(metrics, on_epoch=True)

    def test_step(self, batch: Sequence[Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """``trainer.test``: accumulates the test-set loss and accuracy."""
        self._update_eval_metrics(batch, 0)

    def on_test_epoch_end(self) -> None:
        for name, value in self._compute_eval_metrics().items():
            self.log(name, value, on_epoch=True)

    def on_train_start(self) -> None:
        """Epoch 0: evaluates the validation loaders before the first update and logs them at step 0.

        Uses the same loaders and batch limits as Lightning's validation, in eval mode under ``no_grad``;
        restores train mode afterwards and leaves the global RNG state untouched (creating a DataLoader
        iterator draws from it).
        """
        loaders, limits = self._eval_loaders()
        if not loaders:
            return
        was_training = self.training
        self.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for idx, (loader, limit) in enumerate(zip(loaders, limits, strict=False)):
                for batch_idx, batch in enumerate(loader):
                    if batch_idx >= limit:
                        break
                    batch = self.transfer_batch_to_device(batch, self.device, idx)
                    self._update_eval_metrics(batch, idx)
        metrics = {name: float(value) for name, value in self._compute_eval_metrics().items()}
        self.train(was_training)
        metrics.update(self._run_facts())
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=0)

    def _run_facts(self) -> dict[str, float]:
        """Constants of the run the report needs: parameter count, n, K and E||x||^2 over the test inputs."""
        facts = {
            PARAMS_COUNT: float(sum(p.numel() for p in self.parameters() if p.requires_grad)),
            "data/num_classes": float(self.num_classes),
        }
        data = self.trainer.datamodule
        if getattr(data, "train_x", None) is not None:
            facts["data/train_size"] = float(len(data.train_x))
        if getattr(data, "test_x", None) is not None:
            facts["data/mean_sq_norm"] = float(data.test_x.flatten(1).pow(2).sum(1).mean())
        return facts

    def on_train_end(self) -> None:
        self.log_fit_end_values()

    def log_fit_end_values(self) -> None:
        """Records f(0), the logits at the all-zero input (eval mode), in the last row: the report's Var f(0)."""
        data = self.trainer.datamodule
        shape = getattr(data, "input_shape", None)
        if shape is None:
            return
        was_training = self.training
        self.eval()
        with torch.no_grad():
            f0 = self(torch.zeros(1, *shape, device=self.device)).flatten()
        self.train(was_training)
        metrics = {f"f0/{k}": float(v) for k, v in enumerate(f0)}
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=self.current_epoch)

    def _eval_loaders(self) -> tuple[list, list[float]]:
        """The fit's validation loaders (the datamodule's or those given to ``fit``) and their batch limits."""
        trainer = self.trainer
        if not trainer.enable_validation:  # no val loaders, or limit_val_batches=0
            return [], []
        setup_val_data(trainer)  # no-op if already loaded (e.g. by the sanity check)
        loaders = trainer.val_dataloaders
        if loaders is None:
            return [], []
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        return loaders, list(trainer.num_val_batches)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
