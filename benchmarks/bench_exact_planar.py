"""The exact Lipschitz constant of the study's 2-D toy network, by planar arrangement, beside its bounds.

Trains the study's toy as issue 22 sets it, in a plain PyTorch loop: three isotropic Gaussians (identity
covariance), means at distance 1.5 from the origin at -90 / 30 / 150 degrees, 15 training and 5 test points
per class (``lipschitz_dd.data.synthetic.study_toy2d``: the study's draws, a torch generator seeded 0), FCN 2-100-100-3 with biases (``torch.manual_seed(42)`` before building), full-batch gradient
descent on the mean cross-entropy at a constant lr 0.02 for 100,000 steps (float32, one thread). Then, in
float64, it prints beside the study's published numbers:

* train / test accuracy and test loss;
* C_lower: max ||J(x)||_2 over the training points (a lower bound of the constant);
* the max of ||J(x)||_2 over the 1000 x 1000 grid on [-5, 5]^2 (a lower bound);
* C_upper: the product of the three weights' spectral norms (a certified upper bound);
* the exact global constant (all of R^2) by ``exact_lipschitz_planar`` and its time, and the exact constant
  of f restricted to the box [-5, 5]^2 (which the grid maximum approaches from below);
* the branch and bound of ``exact_lipschitz(method="branch and bound")`` with a 90 s budget: its certified
  interval, for comparison.

Run: ``.venv/bin/python benchmarks/bench_exact_planar.py`` (about 2-4 minutes here, most of it the training and
the 90 s branch and bound), or ``--quick`` (5,000 steps, 10 s budget, 200 x 200 grid: a smoke run whose
numbers are not the study's).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn

from lipschitz_dd.bounds import exact_lipschitz, jacobian_spectral_norms, mlp_from_module, product_bound
from lipschitz_dd.bounds.exact_planar import exact_lipschitz_planar
from lipschitz_dd.data.synthetic import study_toy2d

STUDY = {  # the study's published numbers for this toy
    "train accuracy": 1.0,
    "test accuracy": 0.7333,
    "test loss": 4.589,
    "C_lower (train points)": 135.815,
    "grid max [-5,5]^2": 144.194,
    "C_upper (product)": 389.097,
}


def train_toy(steps: int, lr: float = 0.02) -> tuple[nn.Sequential, tuple, float]:
    torch.manual_seed(0)
    data = study_toy2d(seed=0)
    torch.manual_seed(42)
    net = nn.Sequential(nn.Linear(2, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 3))
    x, y = data[0], data[1]
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()
    return net.eval(), data, time.perf_counter() - start


def grid_max(net: nn.Module, points: int, half_width: float = 5.0) -> float:
    axis = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    best = 0.0
    for lo in range(0, points, 50):  # 50 grid rows at a time
        chunk = torch.cartesian_prod(axis[lo : lo + 50], axis)
        best = max(best, float(jacobian_spectral_norms(net, chunk).max()))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 steps, 10 s budget, 200 x 200 grid")
    parser.add_argument("--steps", type=int, default=None, help="gradient steps (default 100,000; quick 5,000)")
    parser.add_argument("--bb-budget", type=float, default=None, help="branch-and-bound seconds (90; quick 10)")
    args = parser.parse_args()
    steps = args.steps if args.steps is not None else (5_000 if args.quick else 100_000)
    budget = args.bb_budget if args.bb_budget is not None else (10.0 if args.quick else 90.0)
    grid_points = 200 if args.quick else 1000
    torch.set_num_threads(1)

    net32, (xtr, ytr, xte, yte), t_train = train_toy(steps)
    net = nn.Sequential(*[m for m in net32]).double().eval()
    with torch.no_grad():
        train_acc = float((net(xtr.double()).argmax(1) == ytr).double().mean())
        logits = net(xte.double())
        test_acc = float((logits.argmax(1) == yte).double().mean())
        test_loss = float(nn.functional.cross_entropy(logits, yte))
    c_lower = float(jacobian_spectral_norms(net, xtr.double()).max())
    t0 = time.perf_counter()
    g_max = grid_max(net, grid_points)
    t_grid = time.perf_counter() - t0
    c_upper = product_bound(mlp_from_module(net))
    exact = exact_lipschitz_planar(net, time_limit=600)
    boxed = exact_lipschitz_planar(net, box=((-5, 5), (-5, 5)), time_limit=600)
    bb = exact_lipschitz(net, time_limit=budget, method="branch and bound")

    print(f"study toy: {steps} full-batch GD steps at lr 0.02 in {t_train:.1f} s (torch {torch.__version__})")
    rows = [
        ("train accuracy", train_acc),
        ("test accuracy", test_acc),
        ("test loss", test_loss),
        ("C_lower (train points)", c_lower),
        (f"grid max [-5,5]^2 ({grid_points}^2)", g_max),
        ("C_upper (product)", c_upper),
    ]
    print(f"{'quantity':38s} {'study':>10s} {'ours':>14s}")
    for name, value in rows:
        key = "grid max [-5,5]^2" if name.startswith("grid") else name
        print(f"{name:38s} {STUDY[key]:10.4g} {value:14.9g}")
    print(
        f"exact global constant (planar):        {exact.lower:.6f}  [{exact.lower:.9g}, {exact.upper:.9g}] "
        f"exact={exact.exact}  {exact.seconds:.2f} s, {exact.cells} cells (per layer {exact.layer_cells})"
    )
    px, py = exact.point
    print(f"  attained at x = ({px:.6g}, {py:.6g}), ||x|| = {math.hypot(px, py):.4g}")
    print(
        f"exact constant on [-5,5]^2 (planar):    {boxed.lower:.6f}  exact={boxed.exact}  {boxed.seconds:.2f} s, "
        f"{boxed.cells} cells"
    )
    print(
        f"branch and bound, {budget:g} s budget:        [{bb.lower:.4f}, {bb.upper:.4f}] exact={bb.exact} "
        f"({bb.seconds:.1f} s, {bb.lps} LPs)"
    )
    print(f"grid max computed in {t_grid:.1f} s")
    e = exact.lower
    print(
        f"gaps to the exact constant: C_lower {c_lower / e:.4f} ({(c_lower - e) / e:+.2%}), grid max "
        f"{g_max / e:.4f} ({(g_max - e) / e:+.2%}), box exact / global {boxed.lower / e:.4f}, C_upper {c_upper / e:.3f}x"
    )
    assert c_lower <= e * (1 + 1e-9) and g_max <= boxed.lower * (1 + 1e-9) and boxed.lower <= e * (1 + 1e-9)
    assert bb.lower <= e * (1 + 1e-9) <= bb.upper * (1 + 2e-9)
    np.testing.assert_allclose(
        float(jacobian_spectral_norms(net, torch.from_numpy(exact.point)[None])), e, rtol=1e-9
    )  # attained at a real point


if __name__ == "__main__":
    main()
