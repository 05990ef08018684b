"""The training-point measurement of LipschitzCallback with method="auto" (the default) against method="exact".

A training run in miniature: measure, move the weights by one small random step, measure again, ... Both
callbacks measure the same weights, side by side in one process on one torch thread (interleaved, in
alternating order; the whole run repeated --repeats times with fresh callbacks, best time per measurement),
through `callback.measure` (train points only: no upper bound, no trajectory).
"exact" is the computation the callback made before the warm-started estimator (K backward passes per point);
"auto" is exact for K <= 16 logits (so the K = 10 row shows the overhead the estimator adds around it) and warm
above. Prints per measurement the seconds of each and their ratio (exact / auto), and the relative difference
of lipschitz/lower and lipschitz/avg from the exact values, plus auto's avg_tol.

    python benchmarks/bench_callback_lower.py [--points 4000] [--measurements 4] [--outputs 10,100] [--repeats 3]

Models: the study's FCN shape, 40 -> 256 -> 256 -> K (ReLU), on random MNIST-1D-shaped inputs [N, 40], and a
CNN on random CIFAR-shaped inputs [N, 3, 32, 32] (--cnn), since timing and agreement do not need real data.
"""

from __future__ import annotations

import argparse
import time
import warnings

import lightning.pytorch as pl
import torch
from torch import nn

from lipschitz_dd.callbacks.lipschitz import LipschitzCallback


class Net(pl.LightningModule):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x)


def fcn(outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, outputs))


def cnn(outputs: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, outputs),
    )


def run(outputs: int, args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = Net(cnn(outputs) if args.cnn else fcn(outputs))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    shape = (3, 32, 32) if args.cnn else (40,)
    x = torch.randn(args.points, *shape)
    trainer = pl.Trainer(logger=False, accelerator="cpu", devices=1, enable_progress_bar=False)
    trainer.strategy.connect(model)
    options = dict(train_points=x, upper=False, track_params=False, progress_bar=False, batch_size=args.batch_size)
    seconds = {(name, m): [] for name in ("exact", "auto") for m in range(args.measurements)}
    for repeat in range(args.repeats):  # the whole run again with fresh callbacks: best of the repeats
        model.load_state_dict(initial)
        callbacks = {m: LipschitzCallback(method=m, **options) for m in ("exact", "auto")}
        g = torch.Generator().manual_seed(1)
        rows = []
        for m in range(args.measurements):
            metrics = {}
            for name in ("exact", "auto") if (m + repeat) % 2 == 0 else ("auto", "exact"):  # alternate the order
                start = time.perf_counter()
                metrics[name] = callbacks[name].measure(trainer, model, epoch=m)
                seconds[name, m].append(time.perf_counter() - start)
            rows.append((metrics, callbacks["auto"].last_method))
            with torch.no_grad():  # about one SGD step's worth of change
                for p in model.parameters():
                    p.add_(args.step * p.abs().mean() * torch.randn(p.shape, generator=g))
    print(f"\nK = {outputs}, {args.points} points of shape {list(shape)}, best of {args.repeats}")
    print(
        f"{'measurement':>11} {'exact s':>9} {'auto s':>9} {'ratio':>7} {'lower rel':>10} {'avg rel':>9} "
        f"{'avg_tol':>9}  auto"
    )
    for m, (metrics, choice) in enumerate(rows):
        exact, auto = metrics["exact"], metrics["auto"]
        t_exact, t_auto = min(seconds["exact", m]), min(seconds["auto", m])
        rel = lambda k: abs(auto[k] - exact[k]) / abs(exact[k])  # noqa: E731
        label = f"{m}{' (cold)' if m == 0 else ''}"
        print(
            f"{label:>11} {t_exact:9.3f} {t_auto:9.3f} {t_exact / t_auto:6.2f}x {rel('lipschitz/lower'):10.1e} "
            f"{rel('lipschitz/avg'):9.1e} {auto['lipschitz/avg_tol']:9.1e}  {choice.method} ({choice.reason})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=4000)
    parser.add_argument("--measurements", type=int, default=4)
    parser.add_argument("--outputs", default="10,100")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--step", type=float, default=0.01, help="weight change between measurements (relative)")
    parser.add_argument("--cnn", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for outputs in (int(k) for k in args.outputs.split(",")):
        run(outputs, args)


if __name__ == "__main__":
    main()
