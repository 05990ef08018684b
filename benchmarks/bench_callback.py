"""Overhead of LipschitzCallback on the paper's FCN 256 / MNIST-1D training (SGD, batch 512, CE).

Prints, side by side and in one process (same threads, runs interleaved, best of --repeats):
  1. wall time of `trainer.fit` for --epochs epochs without the callback, and with the callback measuring
     the exact train-set lower bound (+ avg/rms) and the upper bound at every epoch: target ratio <= 3x;
  2. the same with the default schedule (dense early, then every n epochs), run for --epochs epochs, and
     extrapolated to a 1,000-epoch run: ratio = 1 + M * m / (1000 * t), where t = seconds per epoch without
     the callback, m = seconds per measurement (from run 1: extra time / number of measurements) and M = the
     number of epochs the default schedule measures in a 1,000-epoch run (epoch 0 and the last included):
     target <= 1.3x. The extrapolation is also given from the default run's own extra time per measurement
     (which carries the cold first measurement over fewer measurements, so it errs high);
  3. with --long-epochs N: a direct check, no callback vs the default schedule over N epochs (best of 1);
  4. the every-epoch ratio measured inside one run, epoch by epoch: epoch time / (epoch time - time spent in
     the callback's hooks). This machine's speed drifts by 20-30 % within seconds, which moves the ratio of
     separate runs; the in-run ratio compares each epoch with itself and is the steadier figure.
Both runs include the module's own per-epoch evaluation of the test and training sets.

    python benchmarks/bench_callback.py [--epochs 30] [--repeats 2] [--threads 1] [--long-epochs 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import lightning.pytorch as pl
import torch

from lipschitz_dd.callbacks.lipschitz import LipschitzCallback
from lipschitz_dd.data import MNIST1DDataModule
from lipschitz_dd.models import FCN

LONG_RUN = 1000


def fit_seconds(epochs: int, callback: LipschitzCallback | None) -> float:
    """Wall time of one fit of FCN 256 (40 -> 256 -> 10, no bias, ReLU after every layer) on MNIST-1D."""
    pl.seed_everything(0, verbose=False)
    model = FCN(width=256, bias=False, lr=0.01)
    data = MNIST1DDataModule(batch_size=512)
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[callback] if callback else [],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )
    data.prepare_data()
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    return time.perf_counter() - start


class EpochClock(pl.Callback):
    """The time of every epoch start: consecutive marks bound everything Lightning does in an epoch."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.marks.append(time.perf_counter())


class TimedLipschitzCallback(LipschitzCallback):
    """LipschitzCallback that adds up the wall time spent inside its own hooks (measuring and logging)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.spans: list[tuple[float, float]] = []

    def _timed(self, hook, *args) -> None:
        start = time.perf_counter()
        getattr(super(), hook)(*args)
        self.spans.append((start, time.perf_counter()))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._timed("on_validation_epoch_end", trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._timed("on_train_epoch_end", trainer, pl_module)


def in_run_ratios(epochs: int, options: dict) -> list[float]:
    """Per epoch of one run with the callback: epoch time / (epoch time - time inside the callback's hooks),
    i.e. the slowdown against the same epoch without the callback, measured on the same epoch (so the
    machine's drifting speed cancels). Epoch 0 (warm-up) and the last epoch are left out."""
    clock, callback = EpochClock(), TimedLipschitzCallback(**options)
    pl.seed_everything(0, verbose=False)
    model = FCN(width=256, bias=False, lr=0.01)
    data = MNIST1DDataModule(batch_size=512)
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[clock, callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, datamodule=data)
    ratios = []
    for begin, end in zip(clock.marks[1:-1], clock.marks[2:], strict=False):
        inside = sum(b - a for a, b in callback.spans if begin <= a < end)
        ratios.append((end - begin) / (end - begin - inside))
    return ratios


def measured_epochs(callback: LipschitzCallback, epochs: int) -> int:
    """How many measurements the callback's schedule makes in a run of `epochs` epochs (epoch 0 included)."""
    return sum(callback.is_scheduled(e, last=e == epochs) for e in range(epochs + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--long-epochs", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    every_epoch = dict(every_n_epochs=1, upper=True, lower=True, average=True, progress_bar=False)
    default = dict(progress_bar=False)
    times: dict[str, list[float]] = {"none": [], "every": [], "default": []}
    fit_seconds(1, None)  # warm-up: imports, MNIST-1D cache, first-call overheads
    for _ in range(args.repeats):
        times["none"].append(fit_seconds(args.epochs, None))
        times["every"].append(fit_seconds(args.epochs, LipschitzCallback(**every_epoch)))
        times["default"].append(fit_seconds(args.epochs, LipschitzCallback(**default)))
    base, every, dflt = (min(times[k]) for k in ("none", "every", "default"))

    per_epoch = base / args.epochs
    every_measurements = args.epochs + 1
    per_measurement = (every - base) / every_measurements
    schedule = LipschitzCallback(**default)
    m_short, m_long = measured_epochs(schedule, args.epochs), measured_epochs(schedule, LONG_RUN)
    predicted_short = 1 + m_short * per_measurement / (args.epochs * per_epoch)
    predicted_long = 1 + m_long * per_measurement / (LONG_RUN * per_epoch)
    own_per_measurement = (dflt - base) / m_short
    predicted_long_own = 1 + m_long * own_per_measurement / (LONG_RUN * per_epoch)

    print(
        f"FCN 256 on MNIST-1D (4,000 train / 1,000 test), SGD batch 512, {args.epochs} epochs, "
        f"{args.threads} thread(s), best of {args.repeats}"
    )
    print(f"{'run':<44}{'seconds':>10}{'ratio':>9}{'target':>9}")
    print(f"{'no callback':<44}{base:>10.2f}{1.0:>9.2f}")
    print(f"{'lower (exact, train) + upper, every epoch':<44}{every:>10.2f}{every / base:>9.2f}{'<= 3':>9}")
    print(
        f"{'default schedule (' + str(m_short) + ' measurements)':<44}{dflt:>10.2f}{dflt / base:>9.2f}"
        f"{'':>9}   (predicted {predicted_short:.2f})"
    )
    print(
        f"{'default schedule, 1,000 epochs (extrapolated)':<44}{'':>10}{predicted_long:>9.2f}{'<= 1.3':>9}"
        f"   (from the default run's own overhead: {predicted_long_own:.2f})"
    )
    ratios = in_run_ratios(max(args.epochs, 20), every_epoch)
    quartiles = statistics.quantiles(ratios, n=4)
    print(
        f"{'same, measured inside one run (median)':<44}{'':>10}{statistics.median(ratios):>9.2f}{'<= 3':>9}"
        f"   (quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f} over {len(ratios)} epochs: epoch time / "
        f"(epoch time - time in the callback))"
    )
    print(
        f"  seconds per epoch without the callback: {per_epoch:.4f}; per measurement: {per_measurement:.4f} "
        f"({per_measurement / per_epoch:.2f} epochs); default schedule: every {schedule.every_n_epochs} epochs "
        f"after the first {schedule.dense_epochs}: {m_long} measurements in {LONG_RUN} epochs"
    )
    if args.long_epochs:
        long_base = fit_seconds(args.long_epochs, None)
        long_default = fit_seconds(args.long_epochs, LipschitzCallback(**default))
        m = measured_epochs(schedule, args.long_epochs)
        predicted = 1 + m * per_measurement / (args.long_epochs * per_epoch)
        print(
            f"{args.long_epochs} epochs, default schedule ({m} measurements): {long_default:.2f} s vs "
            f"{long_base:.2f} s without: ratio {long_default / long_base:.2f} (predicted {predicted:.2f})"
        )


if __name__ == "__main__":
    main()
