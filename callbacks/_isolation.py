"""Run a measurement without leaving a trace on training: RNG streams, train/eval modes, parameter gradients."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn


@contextmanager
def preserved_rng_state(loaders: Iterable[Any] = ()) -> Iterator[None]:
    """Saves the global RNG states (torch CPU, every initialised CUDA device, numpy, python `random`) and the
    torch.Generators the given loaders draw from (see `loader_generators`) and restores them on exit, so draws
    made inside (e.g. iterating a shuffled DataLoader) do not shift training's."""
    generators = [(g, g.get_state()) for loader in loaders for g in loader_generators(loader)]
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        for generator, state in generators:
            generator.set_state(state)


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The torch.Generators a loader draws its order or worker seeds from: `loader.generator`, its sampler's
    and its batch sampler's sampler's (a DataLoader built with `generator=` or a seeded sampler)."""
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    owners = (loader, sampler, getattr(batch_sampler, "sampler", None))
    found = [getattr(owner, "generator", None) for owner in owners if owner is not None]
    unique = {id(g): g for g in found if isinstance(g, torch.Generator)}
    return list(unique.values())


@contextmanager
def measurement_mode(model: nn.Module, freeze_parameters: bool = True) -> Iterator[None]:
    """Inside: every submodule in eval mode (BatchNorm uses and keeps its running statistics, dropout is off),
    autograd on even under `torch.no_grad`, and inference mode off (tensors made inside are ordinary tensors).
    With `freeze_parameters` the parameters have requires_grad=False (their .grad cannot change; input gradients
    still flow); without, they keep it (for gradients with respect to them: take those with
    `torch.autograd.grad`, never `.backward()`). On exit each submodule's training flag, each parameter's
    requires_grad and its `.grad` (the tensor it referred to) are restored exactly."""
    modes = [(m, m.training) for m in model.modules()]
    grad_flags = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    with torch.inference_mode(False), torch.enable_grad():
        try:
            model.eval()
            if freeze_parameters:
                for p, _, _ in grad_flags:
                    p.requires_grad_(False)
            yield
        finally:
            for m, training in modes:
                m.training = training
            for p, flag, grad in grad_flags:
                p.requires_grad_(flag)
                if p.grad is not grad:
                    p.grad = grad
