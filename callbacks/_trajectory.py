"""How far the parameters have moved: distance from initialisation and path length over measurements."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn


def flat_parameters(parameters: Iterable[nn.Parameter]) -> Tensor:
    """All parameters concatenated into one detached float32 vector theta (a copy)."""
    return torch.cat([p.detach().reshape(-1).float() for p in parameters])


def _norm(v: Tensor) -> float:
    return float(torch.linalg.vector_norm(v, dtype=torch.float64))


class ParameterTrajectory:
    """Tracks theta_0 (the first parameters seen), the previous measured theta, and the path length.

    dist_init = ||theta - theta_0||_2 (exact, Euclidean over all parameters flattened);
    path_length = sum over consecutive measurements of ||theta_{t+1} - theta_t||_2: the length of the polygon
    through the measured points, a lower bound on the length of the full per-update trajectory.
    """

    def __init__(self) -> None:
        self.theta_0: Tensor | None = None
        self.previous: Tensor | None = None
        self.path_length = 0.0

    def step(self, theta: Tensor) -> tuple[float, float]:
        """Records a new measured theta; returns (dist_init, path_length). The first call sets theta_0."""
        if self.theta_0 is None:
            self.theta_0 = theta.clone()
        self._check_size(theta)
        if self.previous is not None:
            self.path_length += _norm(theta - self.previous.to(theta.device))
        self.previous = theta.clone()
        return self.distance(theta), self.path_length

    def distance(self, theta: Tensor) -> float:
        """||theta - theta_0||_2 without recording theta (NaN if theta_0 is unknown)."""
        if self.theta_0 is None:
            return float("nan")
        self._check_size(theta)
        return _norm(theta - self.theta_0.to(theta.device))

    def _check_size(self, theta: Tensor) -> None:
        if self.theta_0 is not None and theta.numel() != self.theta_0.numel():
            raise ValueError(
                f"LipschitzCallback: the model has {theta.numel()} parameters but theta_0 has "
                f"{self.theta_0.numel()}; was the checkpoint made with another model?"
            )

    def state_dict(self) -> dict[str, Any]:
        cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
        return {"theta_0": cpu(self.theta_0), "previous": cpu(self.previous), "path_length": self.path_length}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta_0 = state["theta_0"]
        self.previous = state["previous"]
        self.path_length = float(state["path_length"])
