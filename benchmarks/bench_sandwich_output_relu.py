"""Does the study's output ReLU matter to the sandwich? Each bound of a trained FCN with and without its last ReLU.

The study's FCN ends in a ReLU (logits >= 0; configs/fcn_mnist1d.yaml, `output_activation: auto`). The bounds
read it in the MLP normal form (lipschitz_dd.bounds.mlp_from_module): a third hidden layer of 10 ReLU neurons and
an identity output layer. For each run folder below RUNS (e.g. those of `lipschitz-dd reproduce sandwich_fcn256`)
this loads the last checkpoint and prints, for f = net(x) (with the output ReLU) and g = net[:-1](x) (without it;
Lip(f) <= Lip(g) since the ReLU is 1-Lipschitz), in float64:

* C_lower: max over the run's training points of ||J(x)||_2 (exact Jacobians; a lower bound of each);
* LipSDP: lipsdp_first_order with a time limit (certified upper bound), its time and why it stopped;
* ECLipsE-Fast: eclipse_fast (certified upper bound);
* product: product_bound (certified; the same for both: the ReLU counts as 1-Lipschitz).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sandwich_output_relu.py RUNS [--time_limit 30]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from lipschitz_dd.bounds import eclipse_fast, jacobian_spectral_norms, lipsdp_first_order, product_bound
from lipschitz_dd.report.records import load_runs
from lipschitz_dd.reproduce.checkpoints import load_trained


def bounds(net: nn.Sequential, x: torch.Tensor, time_limit: float) -> dict[str, object]:
    net = net.double().eval()
    lower = float(jacobian_spectral_norms(net, x.double(), method="exact").max())
    start = time.perf_counter()
    sdp = lipsdp_first_order(net, time_limit=time_limit)
    return {
        "C_lower": lower,
        "LipSDP": sdp.value,
        "sdp_s": time.perf_counter() - start,
        "sdp_stop": sdp.stopped_by,
        "ECLipsE": float(eclipse_fast(net)),
        "product": float(product_bound(net)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="folder holding the run folders")
    parser.add_argument("--time_limit", type=float, default=30.0, help="LipSDP's time limit in seconds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    columns = ("C_lower", "LipSDP", "ECLipsE", "product")
    print("| run | seed | epoch | output | " + " | ".join(columns) + " | LipSDP time |")
    print("|---|---|---|---|" + "---|" * len(columns) + "---|")
    for record in load_runs(args.runs):
        if not record.completed:
            continue
        model, x, _ = load_trained(record, "train")
        net = model.net
        if not isinstance(net[-1], nn.ReLU):
            print(f"{record.name}: the net does not end in a ReLU; skipped")
            continue
        for label, module in (("ReLU", net), ("none", net[:-1])):
            b = bounds(module, x, args.time_limit)
            cells = [f"{b[c]:.6g}" for c in columns]
            seed = record.config.get("seed_everything")
            timing = f"{b['sdp_s']:.1f} s ({b['sdp_stop']})"
            print(f"| {record.name} | {seed} | {record.epochs} | {label} | " + " | ".join(cells) + f" | {timing} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
