"""The upper bound part of `LipschitzCallback`: one warm-started `UpperBoundEstimator` per run, its checkpoint
state, and the reason when a model cannot be bounded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from lipschitz_dd.bounds import UpperBoundEstimator


class UpperBoundTracker:
    """Product of per-layer constants of the traced model (`UpperBoundEstimator`): power iteration warm-started
    from the previous measurement (may err slightly low), or every layer constant certified (`certified=True`,
    a guaranteed upper bound). Built once per run, traced on one input sample; its warm-start state travels in
    the callback's checkpoint."""

    def __init__(self, certified: bool = False) -> None:
        self.certified = certified
        self.estimator: UpperBoundEstimator | None = None
        self.failure: str | None = None  # why the model cannot be bounded (then never retried in this run)
        self._pending_state: dict[str, Any] | None = None  # loaded before the estimator exists

    def compute(self, model: nn.Module, example: Callable[[], Tensor | None]) -> tuple[float, bool, str | None]:
        """(value, available, reason): value NaN and the reason when not available."""
        if self.failure is None and self.estimator is None:
            self._build(model, example())
        if self.estimator is None:
            return float("nan"), False, self.failure
        result = self.estimator.compute(certified=self.certified)
        value = result.value if result.value is not None else float("nan")
        return value, bool(result.available), result.reason

    def _build(self, model: nn.Module, example: Tensor | None) -> None:
        if example is None:
            self.failure = "no input sample to trace the model with"
            return
        try:
            self.estimator = UpperBoundEstimator(model, example)
        except Exception as error:  # noqa: BLE001 -- an untraceable user model must not stop training
            self.failure = f"{type(error).__name__}: {error}"
            return
        if self._pending_state is not None:
            self.estimator.load_state_dict(self._pending_state)
            self._pending_state = None

    def state_dict(self) -> dict[str, Any] | None:
        return self.estimator.state_dict() if self.estimator is not None else self._pending_state

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self._pending_state = state
        if self.estimator is not None and state is not None:
            self.estimator.load_state_dict(state)
            self._pending_state = None
