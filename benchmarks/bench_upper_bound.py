"""Benchmark of the upper-bound engine (run: python benchmarks/bench_upper_bound.py [--threads 1]).

1. Conv operator norms of CNN 20 (the four-layer CNN of Nakkiran et al., w = 20, 32x32 inputs): ours
   (certified Fourier bound; cold and warm power iteration) against building the explicit sparse
   convolution matrix with scipy.sparse and calling scipy.sparse.linalg.svds (the sparse 2-norm).
   Target: >= 20x faster, same value to 1e-3 relative.
2. The warm-started upper bound of FCN 256 on MNIST-1D-shaped data (40 features, 10 classes, 4,000 points)
   in units of one training epoch (SGD, batch 512, cross-entropy). Target: <= 2 % of an epoch.
All figures come from one process, side by side.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F
from torch import nn

from lipschitz_dd.bounds.operator_norms import conv_operator_norm
from lipschitz_dd.bounds.upper import UpperBoundEstimator


def sparse_conv_matrix(weight: np.ndarray, height: int, width: int, padding: int) -> scipy.sparse.csr_matrix:
    """The explicit (C_out H' W') x (C_in H W) matrix of a stride-1 2-d convolution (cross-correlation)."""
    c_out, c_in, kh, kw = weight.shape
    out_h, out_w = height + 2 * padding - kh + 1, width + 2 * padding - kw + 1
    co, i, j, ci, a, b = np.meshgrid(
        np.arange(c_out),
        np.arange(out_h),
        np.arange(out_w),
        np.arange(c_in),
        np.arange(kh),
        np.arange(kw),
        indexing="ij",
        sparse=True,
    )
    y, x = i + a - padding, j + b - padding
    valid = np.broadcast_to(
        (y >= 0) & (y < height) & (x >= 0) & (x < width),
        np.broadcast_shapes(co.shape, i.shape, j.shape, ci.shape, a.shape, b.shape),
    )
    rows = np.broadcast_to((co * out_h + i) * out_w + j, valid.shape)[valid]
    cols = np.broadcast_to((ci * height + y) * width + x, valid.shape)[valid]
    vals = np.broadcast_to(weight[co, ci, a, b], valid.shape)[valid]
    return scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(c_out * out_h * out_w, c_in * height * width))


def timed(fn, repeats: int = 1):
    """(median seconds, last result) over `repeats` calls."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_conv_norms() -> None:
    torch.manual_seed(0)
    w = 20
    shapes = [(3, 20, 32), (20, 40, 32), (40, 80, 16), (80, 160, 8)]  # (c_in, c_out, input size) of CNN 20
    print(f"\n== Conv operator norm, CNN 20 on 32x32 inputs (w = {w}) ==")
    print(
        f"{'layer':>14} {'scipy build+svds':>17} {'certified':>10} {'x faster':>9} {'rel diff':>9} "
        f"{'power cold':>11} {'x faster':>9} {'rel diff':>9} {'power warm':>11} {'x faster':>9}"
    )
    for c_in, c_out, size in shapes:
        conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        shape = (c_in, size, size)

        def scipy_norm():
            matrix = sparse_conv_matrix(conv.weight.detach().double().numpy(), size, size, 1)
            return float(scipy.sparse.linalg.svds(matrix, k=1, return_singular_vectors=False, tol=1e-8)[0])

        t_scipy, exact = timed(scipy_norm)
        t_cert, cert = timed(lambda: conv_operator_norm(conv, shape, certified=True).value, 3)
        t_cold, cold = timed(lambda: conv_operator_norm(conv, shape, tol=1e-6, max_iters=2000), 3)
        with torch.no_grad():  # one epoch of training moves the weights a little
            conv.weight.add_(1e-3 * conv.weight.std() * torch.randn_like(conv.weight))
        t_warm, warm = timed(lambda: conv_operator_norm(conv, shape, tol=1e-6, max_iters=5, init=cold.vector), 3)
        print(
            f"{f'{c_in}->{c_out} @{size}':>14} {t_scipy:16.3f}s {t_cert:9.4f}s {t_scipy / t_cert:9.1f} "
            f"{(cert - exact) / exact:+9.1e} {t_cold:10.4f}s {t_scipy / t_cold:9.1f} "
            f"{(cold.value - exact) / exact:+9.1e} {t_warm:10.4f}s {t_scipy / t_warm:9.1f} ({warm.iterations} it)"
        )
    print(
        "certified: guaranteed >= the norm; power: Lanczos-accelerated power iteration, an estimate from "
        "below (cold: random start, tol 1e-6; warm: <= 5 steps from the cold vector after a 1e-3 weight change)"
    )


def bench_fcn_epoch() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(4000, 40), torch.randint(0, 10, (4000,))
    model = nn.Sequential(nn.Linear(40, 256, bias=False), nn.ReLU(), nn.Linear(256, 10, bias=False), nn.ReLU())
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)

    def epoch():
        model.train()
        for idx in torch.randperm(len(x)).split(512):
            optimiser.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimiser.step()

    estimator = UpperBoundEstimator(model, x[:1])
    estimator.compute()  # the first call converges from random vectors
    epochs, bounds = [], []
    for _ in range(30):
        t_epoch, _ = timed(epoch)
        model.eval()
        t_bound, result = timed(estimator.compute)
        epochs.append(t_epoch)
        bounds.append(t_bound)
    t_epoch, t_bound = statistics.median(epochs), statistics.median(bounds)
    share = statistics.median(b / e for b, e in zip(bounds, epochs, strict=False))  # per adjacent pair: drift cancels
    t_cert, cert = timed(lambda: estimator.compute(certified=True), 5)
    print("\n== Warm-started upper bound, FCN 256 (40 -> 256 -> 10), 4,000 points, batch 512 ==")
    print(f"one training epoch (8 SGD steps): {t_epoch * 1e3:8.2f} ms")
    print(
        f"upper bound, power, warm:         {t_bound * 1e3:8.3f} ms = {100 * share:5.2f} % of an "
        f"epoch (median of {len(bounds)} epoch / bound pairs; target <= 2 %); value {result.value:.5f}"
    )
    print(
        f"upper bound, certified:           {t_cert * 1e3:8.3f} ms = {100 * t_cert / t_epoch:5.2f} % of an "
        f"epoch; value {cert.value:.5f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU")
    bench_conv_norms()
    bench_fcn_epoch()


if __name__ == "__main__":
    main()
