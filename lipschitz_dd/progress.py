"""The CLI's progress bar: Lightning's TQDMProgressBar, redrawn at most every `interval` seconds.

Lightning's bar redraws twice per training batch (the count, then the metrics); on the default fit's 4,000
batches of 100 points that cost more than the updates themselves. Here a redraw happens when `interval` seconds
have passed since the last one, and always at an epoch's last batch, so the bar still ends each epoch on its
final count and metrics. Written to a file (not a terminal: a sweep's log), the bars would fill it with
carriage-return frames (750 KB for a 100-epoch fit): there the training bar is drawn at each epoch's end only
and the validation bars not at all (`for_stream`).
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

#: seconds between two redraws on a terminal
TERMINAL_INTERVAL = 0.2


class ThrottledProgressBar(TQDMProgressBar):
    """TQDMProgressBar that redraws the training and validation bars at most every `interval` seconds (and at
    each loader's last batch); `interval=math.inf` draws each epoch's final state only, and `validation=False`
    hides the validation bars."""

    def __init__(self, interval: float = TERMINAL_INTERVAL, validation: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.interval = float(interval)
        self.validation = validation
        self._last_draw = -math.inf

    @classmethod
    def for_stream(cls, stream: IO[str] | None = None) -> ThrottledProgressBar:
        """The bar for `stream` (default: stderr, where tqdm writes): throttled on a terminal, one line per epoch
        and no validation bars on anything else."""
        stream = sys.stderr if stream is None else stream
        terminal = bool(getattr(stream, "isatty", lambda: False)())
        return cls(interval=TERMINAL_INTERVAL) if terminal else cls(interval=math.inf, validation=False)

    def _due(self, n: int, total: float | int | None) -> bool:
        now = time.monotonic()
        if n == total or now - self._last_draw >= self.interval:
            self._last_draw = now
            return True
        return False

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._due(batch_idx + 1, self.train_progress_bar.total):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def init_validation_tqdm(self) -> Any:
        return super().init_validation_tqdm() if self.validation else Tqdm(disable=True)

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.validation and self._due(batch_idx + 1, self.val_progress_bar.total):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
