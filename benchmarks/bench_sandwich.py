"""How tight is the sandwich: every Lipschitz bound of an MLP side by side on random ReLU MLPs.

For random float64 MLPs of growing width and depth (biases ~ N(0, 1), PyTorch's default weights) this
times and evaluates, in one process:

* sampled: max ||J(x)||_2 over random Gaussian points at several scales (a lower bound);
* optimised: ``optimised_lower_bound`` from those points (a lower bound);
* exact: ``exact_lipschitz`` with a time budget (exact, or a certified interval [lower, upper]);
* LipSDP: ``lipsdp_neuron`` (certified upper bound; skipped without cvxpy or when the LMI is large);
* ECLipsE-Fast: ``eclipse_fast`` (certified upper bound);
* product: the product of the layers' spectral norms (certified upper bound).

Each value is printed as a ratio to the reference: the exact constant where the search finished, else the
LipSDP bound (marked *), else ECLipsE-Fast (marked +); the exact search's interval is [lower, upper]. Run: ``.venv/bin/python benchmarks/bench_sandwich.py [--quick]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from lipschitz_dd.bounds import (
    eclipse_fast,
    exact_lipschitz,
    jacobian_spectral_norms,
    optimised_lower_bound,
    product_bound,
)

NETS = [  # (layer sizes, exact budget in seconds)
    ((2, 8, 8, 2), 20.0),
    ((3, 10, 10, 2), 20.0),
    ((20, 16, 10), 20.0),  # one hidden layer, 16 <= 20: all 2^16 patterns enumerated
    ((5, 16, 16, 3), 5.0),
    ((10, 32, 32, 32, 5), 3.0),
    ((10, 16, 16, 16, 16, 16, 16, 5), 3.0),
    ((40, 64, 64, 10), 2.0),
    ((40, 256, 256, 10), 1.0),
    ((40, 1024, 1024, 1024, 10), 1.0),
]
SDP_MAX_NEURONS = 100  # LipSDP only up to this many hidden neurons (Clarabel's time grows steeply)


def random_mlp(sizes, seed):
    torch.manual_seed(seed)
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=False):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    net = nn.Sequential(*layers[:-1]).double().eval()
    for layer in net:
        if isinstance(layer, nn.Linear):
            layer.bias.data.normal_(0, 1)
    return net


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def compare_optimised(nets: int = 8, sizes=(3, 10, 10, 2)) -> None:
    """Optimised lower bound / exact constant on random nets: random directions only (surrogate=False, also
    with twice the rounds, the same number of Jacobian evaluations) against random + surrogate proposals."""
    ratios = {"random, 100 rounds": [], "random, 200 rounds": [], "random + surrogate, 100 rounds": []}
    for seed in range(nets):
        net = random_mlp(sizes, seed)
        exact = exact_lipschitz(net, time_limit=60)
        if not exact.exact:
            continue
        x = torch.randn(256, sizes[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        settings = [(100, False), (200, False), (100, True)]
        for values, (steps, surrogate) in zip(ratios.values(), settings, strict=True):
            values.append(optimised_lower_bound(net, x, top_m=16, steps=steps, surrogate=surrogate).value / exact.lower)
    print(f"optimised / exact on {len(next(iter(ratios.values())))} random {'-'.join(map(str, sizes))} ReLU nets")
    for name, values in ratios.items():
        t = torch.tensor(values)
        print(f"{name}: mean {t.mean():.3f}, min {t.min():.3f}, at the exact value {int((t > 1 - 1e-9).sum())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="the first four nets only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimised", action="store_true", help="only: optimised bound with / without surrogate")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.optimised:
        compare_optimised()
        return
    try:
        import cvxpy  # noqa: F401

        from lipschitz_dd.bounds import lipsdp_neuron
    except ImportError:
        lipsdp_neuron = None
    rows = []
    for sizes, budget in NETS[:4] if args.quick else NETS:
        net = random_mlp(sizes, args.seed)
        gen = torch.Generator().manual_seed(args.seed)
        scales = torch.logspace(-1, 1, 4, dtype=torch.float64).repeat_interleave(256)[:, None]
        x = torch.randn(1024, sizes[0], dtype=torch.float64, generator=gen) * scales
        sampled, t_sampled = timed(lambda net=net, x=x: float(jacobian_spectral_norms(net, x).max()))
        opt, t_opt = timed(lambda net=net, x=x: optimised_lower_bound(net, x, top_m=16, steps=100).value)
        exact, t_exact = timed(lambda net=net, budget=budget: exact_lipschitz(net, time_limit=budget))
        ecl, t_ecl = timed(lambda net=net: eclipse_fast(net).value)
        prod, t_prod = timed(lambda net=net: product_bound(net).value)
        sdp, t_sdp = None, None
        if lipsdp_neuron is not None and sum(sizes[1:-1]) <= SDP_MAX_NEURONS:
            sdp, t_sdp = timed(lambda net=net: lipsdp_neuron(net).value)
        if exact.exact:
            ref, mark = exact.lower, ""
        elif sdp is not None:
            ref, mark = sdp, "*"
        else:
            ref, mark = ecl, "+"

        def ratio(value, ref=ref, mark=mark):
            return "-" if value is None or ref is None else f"{value / ref:.3f}{mark}"

        exact_cell = f"{ratio(exact.lower)}" if exact.exact else f"[{ratio(exact.lower)}, {ratio(exact.upper)}]"
        rows.append(
            (
                "-".join(map(str, sizes)),
                f"{ratio(sampled)} ({t_sampled:.2f}s)",
                f"{ratio(opt)} ({t_opt:.1f}s)",
                f"{exact_cell} ({t_exact:.1f}s, {exact.method}, {exact.regions} regions, {exact.lps} LPs)",
                "-" if sdp is None else f"{ratio(sdp)} ({t_sdp:.1f}s)",
                f"{ratio(ecl)} ({1000 * t_ecl:.1f}ms)",
                f"{ratio(prod)} ({1000 * t_prod:.1f}ms)",
                f"{ref:.4g}",
            )
        )
        print(" | ".join(rows[-1]), flush=True)
    header = ("net", "sampled", "optimised", "exact", "LipSDP", "ECLipsE-Fast", "product", "reference")
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
