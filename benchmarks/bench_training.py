"""Training overhead of lipschitz_dd against a plain PyTorch loop doing the same work, in one process.

FCN 256 (40 -> 256 -> 10, no bias, ReLU on every layer: the paper's default) on MNIST-1D (4,000 train /
1,000 test) with the paper's protocol: SGD, batch 512 (8 updates per epoch, fixed order), CE, global
gradient-norm clipping at 50, and after every epoch the full-batch gradient norm of the training loss
(the stopping rule's check), the full training-set loss/accuracy and the test loss/accuracy.

    python benchmarks/bench_training.py [--epochs 300] [--width 256]

The two alternate epoch by epoch in one process (a plain epoch runs at the start of every Lightning epoch), so
each pair sees the same machine speed. Prints the median milliseconds per epoch of both and the ratio
(median over epoch pairs, its quartiles, and the ratio of totals); target: lipschitz_dd <= 1.5x the plain loop.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer, seed_everything

from lipschitz_dd.callbacks import GradNormStopping
from lipschitz_dd.data import MNIST1DDataModule
from lipschitz_dd.loggers import EpochCSVLogger
from lipschitz_dd.models import FCN, build_fcn


def plain_epoch_fn(train_x, train_y, test_x, test_y, width: int = 256, batch_size: int = 512):
    """One epoch of the plain loop (a closure over its own model and optimiser): the same updates and the same
    per-epoch measurements as lipschitz_dd, in plain PyTorch."""
    torch.manual_seed(0)
    model = build_fcn(40, [width], 10, bias=False, output_activation="relu")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    params = list(model.parameters())

    def epoch() -> None:
        model.train()
        for i in range(0, len(train_x), batch_size):
            loss = F.cross_entropy(model(train_x[i : i + batch_size]), train_y[i : i + batch_size])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 50.0)
            opt.step()
        model.eval()
        full = F.cross_entropy(model(train_x), train_y)  # full-batch gradient norm (stopping rule)
        grad_norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in torch.autograd.grad(full, params)]))
        with torch.no_grad():  # train and test loss/accuracy
            for x, y in ((test_x, test_y), (train_x, train_y)):
                logits = model(x)
                _ = F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()
        _ = grad_norm.item()

    return epoch


class PlainTwin(Callback):
    """Runs one plain-loop epoch at the start of every Lightning epoch and times both, so that every
    lipschitz_dd epoch has a plain epoch run right next to it (the machine's speed drifts by 20-30 % within
    seconds here; adjacent pairs cancel that drift). lipschitz_dd's epoch i is the time from the end of plain
    epoch i to the start of plain epoch i+1: training, validation, callbacks and logging, nothing excluded."""

    def __init__(self, plain_epoch) -> None:
        self.plain_epoch = plain_epoch
        self.plain: list[float] = []
        self.ours: list[float] = []
        self._mark: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._mark is not None:
            self.ours.append(time.perf_counter() - self._mark)
        start = time.perf_counter()
        self.plain_epoch()
        self.plain.append(time.perf_counter() - start)
        self._mark = time.perf_counter()


def paired_run(epochs: int, tensors, width: int = 256) -> tuple[list[float], list[float]]:
    """Seconds per epoch of lipschitz_dd's FCN, MNIST-1D datamodule, Trainer and callbacks, and of the plain
    loop run alternately in the same process: (plain, ours) for epochs 1 .. epochs-1 (epoch 0 is warm-up)."""
    twin = PlainTwin(plain_epoch_fn(*tensors, width=width))
    seed_everything(0, verbose=False)
    data = MNIST1DDataModule(batch_size=512)
    model = FCN(width=width, depth=1, bias=False, lr=0.01, grad_clip_norm=50.0)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            max_epochs=epochs,
            logger=EpochCSVLogger(tmp, name="bench", version="run"),
            callbacks=[GradNormStopping(target=None), twin],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
        data.prepare_data()
        trainer.fit(model, datamodule=data)
    n = len(twin.ours)  # the last epoch has no following start: it is left out, as is epoch 0
    return twin.plain[1:n], twin.ours[1:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=int, default=256, help="FCN width (the issue's figure: 256)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = MNIST1DDataModule(batch_size=512)
    data.prepare_data()
    data.setup("fit")
    tensors = (data.train_x, data.train_y, data.test_x, data.test_y)
    paired_run(5, tensors)  # warm-up
    plain, ours = paired_run(args.epochs, tensors, args.width)
    ratios = sorted(o / p for o, p in zip(ours, plain, strict=False))
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"FCN {args.width} on MNIST-1D, batch 512, {len(ours)} epoch pairs, {args.threads} thread(s)")
    print(f"{'':26s}{'median ms/epoch':>16s}")
    print(f"{'plain PyTorch loop':26s}{statistics.median(plain) * 1e3:16.2f}")
    print(f"{'lipschitz_dd (Lightning)':26s}{statistics.median(ours) * 1e3:16.2f}")
    print(
        f"ratio lipschitz_dd / plain: median of epoch pairs {statistics.median(ratios):.2f}x "
        f"(quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f}), total {sum(ours) / sum(plain):.2f}x (target <= 1.5x)"
    )


if __name__ == "__main__":
    main()
