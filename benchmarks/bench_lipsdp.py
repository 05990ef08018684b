"""LipSDP-Neuron at the study's scale: the first-order solver against Clarabel, SCS and ECLipsE-Fast.

For the study's FCN (``lipschitz_dd.models.FCN``: no biases, ReLU, an output ReLU, so 40-w-w-10 has 2w + 10
hidden neurons in the MLP normal form) this prints, per network, in one process:

* ECLipsE-Fast (``eclipse_fast``, certified, milliseconds) and the product bound (certified);
* first-order LipSDP (``lipsdp_first_order``, certified; default options, i.e. a 10 s time limit, cold start);
* a reference: Clarabel (``lipsdp_neuron``, interior point, the SDP's optimum to solver accuracy) where it fits
  (``--clarabel-max`` hidden neurons); else, with ``--scs``, SCS through the same cvxpy formulation (a
  first-order conic solver: its own value is a reference, not a certificate; its multipliers are certified
  like ours); else a long first-order run (``tol=1e-9``, up to 5,000 evaluations, no time limit);
* the ratios first-order / reference and first-order / ECLipsE-Fast.

Nets: 40-32-32-10 and 40-48-48-10 at init (Clarabel), 40-256-256-10 at init and after a short training on
MNIST-1D (2,000 Adam steps; then one more epoch and a warm-started solve from the previous result against a
cold one), and with ``--big`` a 784-1024-1024-10 FCN at init (time limit 100 s).
Run: ``.venv/bin/python benchmarks/bench_lipsdp.py [--threads 1] [--scs] [--big] [--quick]`` (two threads thrash
when another busy process shares the two cores: 10x slower here).
"""

from __future__ import annotations

import argparse
import time

import torch

from lipschitz_dd.bounds import eclipse_fast, lipsdp_first_order, mlp_from_module, product_bound
from lipschitz_dd.models import FCN


def fcn(sizes, seed=0):
    torch.manual_seed(seed)
    return FCN(input_dim=sizes[0], widths=list(sizes[1:-1]), num_classes=sizes[-1]).net.double().eval()


def train_briefly(net, steps=2000, seed=0):
    """A short training of the study's FCN 256 on MNIST-1D (4,000 training points, Adam 1e-3, batch 128)."""
    from lipschitz_dd.data.mnist1d import generate_mnist1d

    data = generate_mnist1d()
    x, y = torch.from_numpy(data["x"]).double(), torch.from_numpy(data["y"])
    gen = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (128,), generator=gen)
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return net.eval(), (x, y, optimiser, gen)


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def row(name, net, args, reference=None, time_limit=10.0):
    mlp = mlp_from_module(net)
    neurons = sum(mlp.hidden_widths)
    ecl, t_ecl = timed(lambda: eclipse_fast(mlp))
    prod = product_bound(mlp)
    fo, t_fo = timed(lambda: lipsdp_first_order(mlp, time_limit=time_limit))
    ref_name, ref, t_ref = "-", None, None
    if reference is not None:
        ref_name, ref, t_ref = reference
    elif neurons <= args.clarabel_max:
        from lipschitz_dd.bounds.lipsdp import lipsdp_neuron

        result, t_ref = timed(lambda: lipsdp_neuron(mlp))
        ref_name, ref = "Clarabel", result.value
    elif args.scs:
        from lipschitz_dd.bounds.lipsdp import lipsdp_neuron

        result, t_ref = timed(lambda: lipsdp_neuron(mlp, solver="SCS"))
        ref_name, ref = f"SCS ({result.status}, certified {result.value:.6g})", result.solver_value
    elif not args.no_long:
        result, t_ref = timed(lambda: lipsdp_first_order(mlp, tol=1e-9, max_iter=5000, time_limit=None))
        ref_name, ref = f"long first-order ({result.iterations} evaluations)", result.value
    ratio = f"{fo.value / ref:.4f}" if ref else "-"
    print(
        f"| {name} | {neurons} | {ecl:.6g} ({t_ecl:.3f} s) | {fo.value:.6g} ({t_fo:.1f} s, {fo.iterations} ev., "
        f"{fo.stopped_by}) | {ref_name}: {ref if ref is None else f'{ref:.6g}'} "
        f"({'-' if t_ref is None else f'{t_ref:.1f} s'}) | {ratio} | {fo.value / ecl:.3f} | {prod / fo.value:.2f} |",
        flush=True,
    )
    return fo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clarabel-max", type=int, default=110, help="hidden neurons up to which Clarabel runs")
    parser.add_argument("--scs", action="store_true", help="SCS as the reference beyond Clarabel's reach")
    parser.add_argument("--no-long", action="store_true", help="no long first-order reference run")
    parser.add_argument("--big", action="store_true", help="also 784-1024-1024-10 (about 2 minutes)")
    parser.add_argument("--quick", action="store_true", help="the FCN 256 at init only, no reference")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {args.threads}")
    print(
        "| net | hidden neurons | ECLipsE-Fast | first-order LipSDP | reference | first-order / reference "
        "| first-order / ECLipsE | product / first-order |"
    )
    print("|---|---|---|---|---|---|---|---|")
    if args.quick:
        args.no_long = True
        row("40-256-256-10 init", fcn((40, 256, 256, 10)), args)
        return
    for sizes in [(40, 32, 32, 10), (40, 48, 48, 10)]:
        row(f"{'-'.join(map(str, sizes))} init", fcn(sizes), args)
    row("40-256-256-10 init", fcn((40, 256, 256, 10)), args)
    net, (x, y, optimiser, gen) = train_briefly(fcn((40, 256, 256, 10)))
    previous = row("40-256-256-10 trained (2,000 steps)", net, args)
    # one more epoch (32 steps), then warm (from the previous result) against cold
    net.train()
    for _ in range(32):
        idx = torch.randint(len(x), (128,), generator=gen)
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.eval()
    cold, t_cold = timed(lambda: lipsdp_first_order(net))
    warm, t_warm = timed(lambda: lipsdp_first_order(net, init=previous))
    print(
        f"\nwarm start after one more epoch: cold {cold.value:.6g} ({t_cold:.1f} s, {cold.iterations} evaluations), "
        f"warm {warm.value:.6g} ({t_warm:.1f} s, {warm.iterations} evaluations, warm_started={warm.warm_started})"
    )
    if args.big:
        args.no_long, args.scs = True, False
        print()
        row("784-1024-1024-10 init (time limit 100 s)", fcn((784, 1024, 1024, 10)), args, time_limit=100.0)


if __name__ == "__main__":
    main()
