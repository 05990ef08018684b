"""Learning-rate schedules of the paper's protocol, as multiplicative factors of the base learning rate.

Every schedule here is a plain function ``factor(update) -> float`` where ``update`` is the number of
optimiser updates already made (0 before the first one). The learning rate used for update ``u`` is
``base_lr * factor(u)``. They are meant for ``torch.optim.lr_scheduler.LambdaLR`` stepped once per update
(Lightning: ``interval="step"``); :func:`make_lr_lambda` builds the right one from its name.

Epoch-based rules (milestones counted in epochs) are converted to updates with ``updates_per_epoch``: epoch
``e`` starts at update ``e * updates_per_epoch``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

SCHEDULE_NAMES = ("constant", "warmup20000step25", "cont100", "cont50", "step30")

WARMUP_UPDATES = 20_000
"""Length of the linear warm-up of ``Warmup20000Step25``, in updates."""
STEP25_GAMMA = 0.75
"""Factor applied at each of the 25/50/75 % milestones of ``Warmup20000Step25``."""
CONT_EVERY_EPOCHS = {"cont100": 100, "cont50": 50}
"""Epochs between the x0.95 steps of the "Cont" schedules (the study's Cont100 and Cont50)."""
CONT_GAMMA = 0.95
STEP30_EVERY_EPOCHS = 30
STEP30_GAMMA = 0.1


def constant_factor(update: int) -> float:
    """The constant schedule: factor 1 at every update."""
    return 1.0


def warmup20000step25_factor(update: int, updates_per_epoch: int, schedule_epochs: int = 10_000) -> float:
    """Factor of the paper's ``Warmup20000Step25`` schedule at a given update (exact, closed form).

    Warm-up: for ``u < 20000`` the factor is ``(u + 1) / 20000``, a linear ramp from 1/20000 (first update)
    to 1 (update 19,999). Afterwards, with ``e = (u - 20000) / updates_per_epoch`` the number of epochs since
    the end of the warm-up, the factor is ``0.75 ** m`` where ``m`` counts the milestones
    ``0.25 * schedule_epochs``, ``0.5 * schedule_epochs`` and ``0.75 * schedule_epochs`` with ``e >= milestone``.
    After the last milestone the factor stays at ``0.75 ** 3``.
    """
    if update < WARMUP_UPDATES:
        return (update + 1) / WARMUP_UPDATES
    epochs_after_warmup = (update - WARMUP_UPDATES) / updates_per_epoch
    passed = sum(epochs_after_warmup >= fraction * schedule_epochs for fraction in (0.25, 0.5, 0.75))
    return STEP25_GAMMA**passed


def cont_factor(update: int, updates_per_epoch: int, every_epochs: int = 100, floor_factor: float = 0.0) -> float:
    """Factor of the paper's ``Cont100`` (``every_epochs`` 100) or ``Cont50`` (50) schedule at a given update
    (exact, closed form).

    ``max(0.95 ** floor(epoch / every_epochs), floor_factor)`` with ``epoch = floor(update / updates_per_epoch)``:
    the learning rate is multiplied by 0.95 at the start of epochs every_epochs, 2 every_epochs, ..., and never
    goes below ``floor_factor`` times the base learning rate (0: no floor).
    """
    epoch = update // updates_per_epoch
    return max(CONT_GAMMA ** (epoch // every_epochs), floor_factor)


def cont100_factor(update: int, updates_per_epoch: int, floor_factor: float = 0.0) -> float:
    """``Cont100``: :func:`cont_factor` with a x0.95 step every 100 epochs."""
    return cont_factor(update, updates_per_epoch, CONT_EVERY_EPOCHS["cont100"], floor_factor)


def step30_factor(update: int, updates_per_epoch: int) -> float:
    """Factor of the ImageNet schedule (He et al. 2016) at a given update (exact, closed form):
    ``0.1 ** floor(epoch / 30)`` with ``epoch = floor(update / updates_per_epoch)``, i.e. the learning rate is
    divided by 10 at the start of epochs 30, 60, 90, ..."""
    epoch = update // updates_per_epoch
    return STEP30_GAMMA ** (epoch // STEP30_EVERY_EPOCHS)


def make_lr_lambda(
    name: str,
    *,
    base_lr: float,
    updates_per_epoch: int | None = None,
    schedule_epochs: int = 10_000,
    lr_floor: float | None = None,
) -> Callable[[int], float]:
    """The factor function ``update -> float`` of the schedule called ``name`` (see :data:`SCHEDULE_NAMES`).

    ``lr_floor`` (``cont100`` / ``cont50`` only) is an absolute learning rate: the schedule never goes below
    ``min(lr_floor, base_lr)``. ``updates_per_epoch`` is required by the epoch-based schedules.
    """
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"unknown lr_schedule {name!r}; choose one of {', '.join(SCHEDULE_NAMES)}")
    if name == "constant":
        return constant_factor
    if updates_per_epoch is None or updates_per_epoch < 1:
        raise ValueError(f"lr_schedule {name!r} needs updates_per_epoch >= 1, got {updates_per_epoch!r}")
    if name == "warmup20000step25":
        if schedule_epochs < 1:
            raise ValueError(f"schedule_epochs must be >= 1, got {schedule_epochs}")
        return partial(warmup20000step25_factor, updates_per_epoch=updates_per_epoch, schedule_epochs=schedule_epochs)
    if name == "step30":
        return partial(step30_factor, updates_per_epoch=updates_per_epoch)
    floor_factor = 0.0 if lr_floor is None else min(lr_floor / base_lr, 1.0)
    every_epochs = CONT_EVERY_EPOCHS[name]
    return partial(
        cont_factor, updates_per_epoch=updates_per_epoch, every_epochs=every_epochs, floor_factor=floor_factor
    )


def updates_per_epoch_of(num_training_batches: float, accumulate_grad_batches: int = 1) -> int:
    """Optimiser updates per epoch: ``ceil(num_training_batches / accumulate_grad_batches)`` (exact)."""
    if not math.isfinite(num_training_batches):
        raise ValueError("epoch-based lr schedules need a training dataloader with a length (got an infinite one)")
    return max(1, math.ceil(num_training_batches / accumulate_grad_batches))
