"""Training overhead of lipschitz_dd against a plain PyTorch loop doing the same work, in one process.

FCN 256 (40 -> 256 -> 10, no bias, ReLU on every layer: the paper's default) on MNIST-1D (4,000 train /
1,000 test) with the paper's protocol: SGD, batch 512 (8 updates per epoch, fixed order), CE, global
gradient-norm clipping at 50, and after every epoch the full-batch gradient norm of the training loss
(the stopping rule's check), the full training-set loss/accuracy and the test loss/accuracy.

    python benchmarks/bench_training.py [--epochs 200]

Prints seconds per epoch for both and their ratio (target: lipschitz_dd <= 1.5x the plain loop).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything

from callbacks import GradNormStopping
from lipschitz_dd.data import MNIST1DDataModule
from lipschitz_dd.loggers import EpochCSVLogger
from lipschitz_dd.models import FCN, build_fcn


def plain_loop(train_x, train_y, test_x, test_y, epochs: int, batch_size: int = 512) -> float:
    """Seconds for `epochs` epochs of the same updates and per-epoch measurements in plain PyTorch."""
    torch.manual_seed(0)
    model = build_fcn(40, [256], 10, bias=False, output_activation="relu")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    params = list(model.parameters())
    start = time.perf_counter()
    for _ in range(epochs):
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
    return time.perf_counter() - start


def lipschitz_dd_run(epochs: int) -> float:
    """Seconds for `epochs` epochs through lipschitz_dd's FCN, MNIST-1D datamodule, Trainer and callbacks."""
    seed_everything(0, verbose=False)
    data = MNIST1DDataModule(batch_size=512)
    model = FCN(width=256, depth=1, bias=False, lr=0.01, grad_clip_norm=50.0)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            max_epochs=epochs, logger=EpochCSVLogger(tmp, name="bench", version="run"),
            callbacks=[GradNormStopping(target=None)], enable_progress_bar=False, enable_model_summary=False,
            enable_checkpointing=False, num_sanity_val_steps=0, log_every_n_steps=1,
        )
        data.prepare_data()
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = MNIST1DDataModule(batch_size=512)
    data.prepare_data()
    data.setup("fit")
    tensors = (data.train_x, data.train_y, data.test_x, data.test_y)
    plain_loop(*tensors, epochs=5)  # warm-up
    lipschitz_dd_run(epochs=2)
    t_plain = plain_loop(*tensors, epochs=args.epochs)
    t_ours = lipschitz_dd_run(epochs=args.epochs)
    print(f"FCN 256 on MNIST-1D, batch 512, {args.epochs} epochs, {args.threads} thread(s)")
    print(f"{'':26s}{'ms/epoch':>10s}")
    print(f"{'plain PyTorch loop':26s}{t_plain / args.epochs * 1e3:10.2f}")
    print(f"{'lipschitz_dd (Lightning)':26s}{t_ours / args.epochs * 1e3:10.2f}")
    print(f"ratio lipschitz_dd / plain: {t_ours / t_plain:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
