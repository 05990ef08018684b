"""Run a measurement without leaving a trace on training: RNG streams, train/eval modes, parameter gradients."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn


@contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Saves the global RNG states (torch CPU, every initialised CUDA device, numpy, python `random`) and
    restores them on exit, so draws made inside (e.g. iterating a shuffled DataLoader) do not shift training's."""
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


@contextmanager
def measurement_mode(model: nn.Module) -> Iterator[None]:
    """Inside: every submodule in eval mode (BatchNorm uses and keeps its running statistics, dropout is off),
    parameters with requires_grad=False (their .grad cannot change; input gradients still flow), autograd on
    even under `torch.no_grad`, and inference mode off (tensors made inside are ordinary tensors). On exit each
    submodule's training flag and each parameter's requires_grad are restored exactly."""
    modes = [(m, m.training) for m in model.modules()]
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    with torch.inference_mode(False), torch.enable_grad():
        try:
            model.eval()
            for p, _ in grad_flags:
                p.requires_grad_(False)
            yield
        finally:
            for m, training in modes:
                m.training = training
            for p, flag in grad_flags:
                p.requires_grad_(flag)
