"""Benchmark of the exact Jacobian lower bound (lipschitz_dd.bounds.lower_bound) against the obvious code.

Prints, in one process and on the same thread count:
  1. throughput (points / s) of lower_bound vs a per-sample torch.autograd.functional.jacobian + svdvals
     loop (timed on a subset and scaled) vs torch.func vmap(jacrev) + svdvals, with the largest relative
     difference of the values, on MNIST-1D-shaped points (FCN 40-256-10) and CIFAR-shaped images (CNN 20);
  2. the cost of the exact train-set lower bound (4,000 MNIST-1D points, FCN 256) in training epochs
     (SGD, batch 512, CE, forward + backward + step);
  3. peak memory (peak resident-set growth in a fresh subprocess) of lower_bound for 10x more points at the same
     batch size, and for a 10x larger batch size.

    python benchmarks/bench_lower_bound.py [--threads 1] [--cifar-points 2000] [--quick]
Inputs and weights are random (the timing does not depend on training); everything runs on the CPU.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import time

import torch
from _memory import peak_growth_mib
from torch import nn

from lipschitz_dd.bounds import lower_bound


def fcn_256() -> nn.Sequential:
    """The paper's FCN 256 on MNIST-1D: Linear layers without bias, ReLU after each (logits >= 0)."""
    return nn.Sequential(nn.Linear(40, 256, bias=False), nn.ReLU(), nn.Linear(256, 10, bias=False), nn.ReLU())


def cnn(width: int) -> nn.Sequential:
    """Nakkiran's 5-layer CNN for 32x32 inputs (the project's build_cnn when available)."""
    try:
        from lipschitz_dd.models.cnn import build_cnn
    except ImportError:  # models not written yet: the same architecture inline
        channels = [3, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for c_in, c_out, pool in zip(channels[:-1], channels[1:], (1, 2, 2, 8), strict=False):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(pool)]
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(8 * width, 10, bias=False))
    return build_cnn(width)


def per_sample_loop(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The obvious code: one explicit Jacobian and one SVD per sample."""
    norms = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(model, xi[None])
        norms.append(torch.linalg.svdvals(jac.reshape(jac.shape[1], -1))[0])
    return torch.stack(norms)


def vmap_jacrev(model: nn.Module, x: torch.Tensor, chunk: int = 100) -> torch.Tensor:
    """torch.func: vmap over samples of jacrev of the single-sample model, then batched svdvals."""
    per_sample = torch.func.vmap(torch.func.jacrev(lambda z: model(z[None])[0]))
    norms = []
    for part in x.split(chunk):
        jac = per_sample(part)
        norms.append(torch.linalg.svdvals(jac.reshape(part.shape[0], jac.shape[1], -1))[:, 0].detach())
    return torch.cat(norms)


def ours(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return lower_bound(model, x, batch_size=batch_size, keep_norms=True).norms


def timed(fn, *args, repeats: int = 1):
    """(result of the last call, median wall-clock seconds over repeats)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        seconds.append(time.perf_counter() - start)
    return result, statistics.median(seconds)


def relative_differences(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() - b.double()).abs() / b.double().abs().clamp_min(1e-30)


def describe(differences: torch.Tensor) -> str:
    """max relative difference and the share of points within 1e-5."""
    return f"{float(differences.max()):.1e} ({100 * float((differences <= 1e-5).double().mean()):.0f}%)"


def throughput_rows(name, model, x, batch_size, loop_subset, vmap_subset, repeats):
    """Points per second of the three methods (float32); the slow ones on subsets (rates are per point).
    Ours and vmap also run alternately on the vmap subset, `repeats` pairs: the "vs vmap" figure is the median
    of the per-pair ratios, so the machine's drifting speed cancels."""
    ours(model, x[:2], batch_size), vmap_jacrev(model, x[:2]), per_sample_loop(model, x[:2])  # warm-up
    norms, t_ours = timed(ours, model, x, batch_size, repeats=repeats)
    loop_norms, t_loop = timed(per_sample_loop, model, x[:loop_subset])
    pairs = []
    for _ in range(repeats):
        _, t_vmap = timed(vmap_jacrev, model, x[:vmap_subset])
        _, t_ours_subset = timed(ours, model, x[:vmap_subset], batch_size)
        pairs.append(t_vmap / t_ours_subset)
    vmap_norms = vmap_jacrev(model, x[:vmap_subset])
    rate = {"ours": len(x) / t_ours, "loop": loop_subset / t_loop, "vmap": vmap_subset / t_vmap}
    print(
        f"{name:<26} {len(x):>6} {rate['ours']:>10.0f} {rate['loop']:>10.1f} {rate['vmap']:>10.1f} "
        f"{rate['ours'] / rate['loop']:>8.1f}x {statistics.median(pairs):>8.1f}x "
        f"{describe(relative_differences(norms[:loop_subset], loop_norms)):>14} "
        f"{describe(relative_differences(norms[:vmap_subset], vmap_norms)):>14}"
    )


def float64_agreement(name, model, x, n_points) -> None:
    """The same comparison in float64 on n_points: float32 outliers are ReLU / max-pool kinks that
    rounding puts on the other side (a neighbouring linear region), not errors of a method."""
    model, x = copy.deepcopy(model).double(), x[:n_points].double()
    norms = ours(model, x, n_points)
    print(
        f"  float64, {name}, {n_points} points: max relative difference vs loop "
        f"{float(relative_differences(norms, per_sample_loop(model, x)).max()):.1e}, vs vmap "
        f"{float(relative_differences(norms, vmap_jacrev(model, x)).max()):.1e}"
    )


def training_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> None:
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=False):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        optimiser.step()


def epoch_cost(x: torch.Tensor, batch_size: int, pairs: int = 15) -> None:
    """The exact train-set lower bound in training epochs: epochs and bounds alternate (`pairs` of each), and the
    figure is the median of the per-pair ratios (the machine's speed drifts by 20-30 % within seconds)."""
    model = fcn_256()
    y = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(1))
    model.train()
    training_epoch(model, x, y)
    epochs, bounds = [], []
    for _ in range(pairs):
        model.train()
        epochs.append(timed(training_epoch, model, x, y)[1])
        model.eval()
        with torch.no_grad():
            bounds.append(timed(ours, model, x, batch_size)[1])
    ratios = [b / e for b, e in zip(bounds, epochs, strict=False)]
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"\nexact train-set lower bound, {len(x)} MNIST-1D points, FCN 256 (K = 10), {pairs} alternating pairs:")
    print(f"  one training epoch (SGD, batch 512): {1e3 * statistics.median(epochs):8.1f} ms (median)")
    print(
        f"  lower_bound (batch {batch_size}):           {1e3 * statistics.median(bounds):8.1f} ms (median)"
        f"   = {statistics.median(ratios):.2f} epochs (median of pairs; quartiles {quartiles[0]:.2f}-"
        f"{quartiles[2]:.2f}; target <= 5)"
    )


# ------------------------------------------------------------------ memory (run in fresh subprocesses)


def memory_probe(n_points: int, batch_size: int, width: int) -> None:
    """Child process: peak growth of resident memory (MiB, sampled every 0.5 ms by a thread) while
    lower_bound streams n_points CIFAR-shaped images that are generated on the fly (never all in memory)."""
    torch.manual_seed(0)
    model = cnn(width).eval()
    lower_bound(model, torch.randn(2, 3, 32, 32), batch_size=2)  # load kernels before the baseline
    generator = torch.Generator().manual_seed(0)

    def stream(chunk: int = batch_size):  # a data set that never sits in memory, like a DataLoader
        for start in range(0, n_points, chunk):
            yield torch.randn(min(chunk, n_points - start), 3, 32, 32, generator=generator)

    counted = []
    growth = peak_growth_mib(lambda: counted.append(lower_bound(model, stream(), batch_size=batch_size).count))
    assert counted == [n_points]
    print(f"{growth:.1f}")


def memory_table(threads: int, width: int, small: int) -> None:
    print(f"\npeak memory of lower_bound (peak RSS growth in a fresh process, CNN {width}, streamed 3x32x32 points):")
    print(f"  {'points':>7} {'batch':>6} {'MiB':>8}")
    for n_points, batch_size in [(small, 20), (10 * small, 20), (small, 200)]:
        output = subprocess.run(
            [
                sys.executable,
                __file__,
                "--threads",
                str(threads),
                "--memory-probe",
                str(n_points),
                str(batch_size),
                str(width),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        print(f"  {n_points:>7} {batch_size:>6} {float(output[-1]):>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--cifar-points", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="smaller subsets, for a smoke run")
    parser.add_argument(
        "--memory-probe", type=int, nargs=3, metavar=("POINTS", "BATCH", "WIDTH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        memory_probe(*args.memory_probe)
        return
    quick = args.quick
    generator = torch.Generator().manual_seed(0)
    mnist1d = torch.randn(4000, 40, generator=generator)
    cifar = torch.randn(200 if quick else args.cifar_points, 3, 32, 32, generator=generator)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32, CPU")
    print("throughput in points/s; rel = max relative difference of the values (share of points within 1e-5)")
    print(
        f"{'model / points':<26} {'points':>6} {'ours':>10} {'loop':>10} {'vmap':>10} "
        f"{'vs loop':>9} {'vs vmap':>9} {'rel loop':>14} {'rel vmap':>14}"
    )
    fcn, cnn20 = fcn_256().eval(), cnn(20).eval()
    with torch.no_grad():  # as in Lightning validation: the estimator enables grad itself
        throughput_rows(
            "FCN 256, MNIST-1D (40)",
            fcn,
            mnist1d,
            1000,
            loop_subset=200,
            vmap_subset=1000 if quick else 4000,
            repeats=5,
        )
        throughput_rows(
            "CNN 20, CIFAR (3x32x32)",
            cnn20,
            cifar,
            100,
            loop_subset=20 if quick else 100,
            vmap_subset=20 if quick else 200,
            repeats=3,
        )
        float64_agreement("FCN 256", fcn, mnist1d, 200)
        float64_agreement("CNN 20", cnn20, cifar, 20 if quick else 100)
    epoch_cost(mnist1d, 1000)
    memory_table(args.threads, width=8, small=100 if quick else 400)


if __name__ == "__main__":
    main()
