"""Benchmark of the warm-started lower bound (lipschitz_dd.bounds.WarmLowerBound) against the exact method.

A training run in miniature: measure, take a few SGD steps, measure again, ... The first measurement of a
warm estimator starts from random vectors (cold); the later ones start from the previous measurement's
vectors. Each measurement times, side by side in one process on one torch thread:
  exact     K batched VJPs + top Gram eigenvalue (lipschitz_dd.bounds.jacobian_spectral_norms "exact");
  official  the original study's method, reimplemented: K backward passes form J, then power iteration
            per sample in a Python loop (100 iterations at most, tolerance 1e-6);
  warm r/t  WarmLowerBound(method="warm", block=r, max_iter=t, tol=1e-4) incl. its refinement;
and prints the relative difference of `lower` (max) and `avg` (mean) to exact, the mean iterations per
point, the mean relative change of the last iteration (avg_tol), and time ratios exact / method.
Each of k10/k100/k1000 ends with a line "TARGET ..." (the issue's target and whether it is met); where it
is not, the last warm measurement of the best config is replayed under a phase profile (seconds per
phase: forward, VJPs, JVPs, Rayleigh-Ritz, exact refinement, the rest), printed below it.

Sections (--only): jvp (forward-mode vs double-backward JVPs), k10 (CNN 20, K = 10), k100 (CNN with 100
outputs), k1000 (torchvision resnet18, K = 1,000, 64x64), memory (peak RSS growth of one measurement vs
number of points, fresh subprocesses).

    python benchmarks/bench_warm_lower.py --quick [--only k10,k100] [--points N] [--measurements M]

Inputs are random CIFAR-shaped tensors with random labels (timing and convergence do not need real data).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import statistics
import subprocess
import sys
import time

import torch
from _memory import peak_growth_mib
from torch import nn

import lipschitz_dd.bounds.warm_iteration as warm_iteration
import lipschitz_dd.bounds.warm_lower as warm_lower
import lipschitz_dd.bounds.warm_refine as warm_refine
from lipschitz_dd.bounds import WarmLowerBound, jacobian_spectral_norms
from lipschitz_dd.bounds.jacobian import jacobian_rows
from lipschitz_dd.bounds.warm_iteration import warm_spectral_norms
from lipschitz_dd.models.cnn import build_cnn

WARM_CONFIGS = [(1, 1), (2, 1), (2, 2), (3, 2), (2, 3)]  # (block r, max iterations t); 2/3 = the defaults
LOWER_TOL, AVG_TOL = 1e-4, 1e-3  # the accuracy targets: same lower (rel), avg within 1e-3 (rel)


# ----------------------------------------------------------------------------------------------- helpers


def train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, seed: int) -> None:
    """A few SGD steps on random batches of (x, y), then back to eval mode."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        pick = torch.randint(0, x.shape[0], (min(64, x.shape[0]),), generator=generator)
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x[pick]), y[pick]).backward()
        optimiser.step()
    model.eval()


def exact_norms(model: nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([jacobian_spectral_norms(model, part, method="exact") for part in x.split(chunk)])


def official_norms(model: nn.Module, x: torch.Tensor, chunk: int, max_iter: int = 100, tol: float = 1e-6):
    """The original study's recipe, written from its description: J from K backward passes, then power
    iteration on J^T J for each sample separately."""
    generator = torch.Generator().manual_seed(0)
    norms = []
    for part in x.split(chunk):
        jac = jacobian_rows(model, part)
        for matrix in jac:
            v = torch.randn(matrix.shape[1], generator=generator).to(matrix.device)
            v = v / v.norm()
            sigma = 0.0
            for _ in range(max_iter):
                w = matrix.T @ (matrix @ v)
                new_sigma = float(w.norm().sqrt())
                v = w / w.norm().clamp_min(1e-30)
                if abs(new_sigma - sigma) <= tol * new_sigma:
                    sigma = new_sigma
                    break
                sigma = new_sigma
            norms.append(float((matrix @ v).norm()))
    return torch.tensor(norms)


DEVICE = torch.device("cpu")


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn, *args):
    synchronize()
    start = time.perf_counter()
    result = fn(*args)
    synchronize()
    return result, time.perf_counter() - start


def warm_measure(estimator: WarmLowerBound, model, x: torch.Tensor, chunk: int):
    estimator.begin()
    indices = torch.arange(x.shape[0])
    values = torch.cat(
        [estimator.update(model, xb, ib) for xb, ib in zip(x.split(chunk), indices.split(chunk), strict=True)]
    )
    return estimator.finish(model), values


def warm_estimator(r: int, t: int, chunk: int) -> WarmLowerBound:
    return WarmLowerBound(method="warm", block=r, max_iter=t, tol=1e-4, chunk_size=chunk)


def run_training(name, model, x, y, *, measurements, steps, lr, chunk, exact_subset=None, official=True):
    """Measure `measurements` times with SGD steps in between; print one row per method and measurement,
    then the median time ratios over the warm measurements (2nd and later). Returns a :class:`RunSummary`
    (per config: median ratio, worst errors; the estimator states before the last measurement, to replay
    it under the profiler)."""
    model, x, y = model.to(DEVICE), x.to(DEVICE), y.to(DEVICE)
    n = x.shape[0]
    n_exact = n if exact_subset is None else exact_subset
    print(
        f"\n{name}: {n} points ({n_exact} for exact/official), {measurements} measurements, {steps} SGD steps between"
    )
    head = f"{'meas':>4} {'method':<10} {'s':>8} {'ratio':>7} {'lower':>10} {'lower rel':>9} {'avg rel':>9}"
    print(head + f" {'mean err':>9} {'max err':>9} {'iters':>5} {'avg_tol':>8} {'refined':>7}")
    estimators = {f"warm {r}/{t}": warm_estimator(r, t, chunk) for r, t in WARM_CONFIGS}
    ratios: dict[str, list[float]] = {key: [] for key in [*estimators, "official"]}
    lower_rels: dict[str, list[float]] = {key: [] for key in estimators}
    avg_rels: dict[str, list[float]] = {key: [] for key in estimators}
    mean_errs: dict[str, list[float]] = {key: [] for key in estimators}
    iterations: dict[str, list[float]] = {key: [] for key in estimators}
    seconds_of: dict[str, float] = {}
    before_last: dict[str, dict] = {}
    exact_s_all = math.nan
    for m in range(measurements):
        if m:
            train_steps(model, x, y, steps, lr, seed=m)
        exact, exact_s = timed(exact_norms, model, x[:n_exact], chunk)
        exact_s_all = exact_s * n / n_exact  # per-point rate scaled to all points
        lower, avg = float(exact.max()), float(exact.mean())
        print(f"{m:>4} {'exact':<10} {exact_s_all:>8.2f} {1.0:>7.2f} {lower:>10.6f}")
        if official and m in (0, measurements - 1):
            values, seconds = timed(official_norms, model, x[:n_exact], chunk)
            seconds *= n / n_exact
            ratios["official"].append(exact_s_all / seconds)
            rel = abs(float(values.max()) - lower) / lower
            print(
                f"{m:>4} {'official':<10} {seconds:>8.2f} {exact_s_all / seconds:>7.2f} {float(values.max()):>10.6f} {rel:>9.1e}"
            )
        for key, estimator in estimators.items():
            if m == measurements - 1:
                before_last[key] = estimator.state_dict()
            (result, values), seconds = timed(warm_measure, estimator, model, x, chunk)
            err = ((exact - values[:n_exact]) / exact).cpu()
            full_exact = n_exact == n
            lower_rel = abs(result.max - lower) / lower if full_exact else float("nan")
            avg_rel = abs(result.mean - avg) / avg if full_exact else float("nan")
            print(
                f"{m:>4} {key:<10} {seconds:>8.2f} {exact_s_all / seconds:>7.2f} {result.max:>10.6f} {lower_rel:>9.1e} "
                f"{avg_rel:>9.1e} {float(err.mean()):>9.1e} {float(err.max()):>9.1e} {result.iterations:>5.2f} "
                f"{result.avg_tol:>8.1e} {result.refined:>4}/{result.refined_exactly}"
            )
            if m:
                ratios[key].append(exact_s_all / seconds)
                lower_rels[key].append(lower_rel)
                avg_rels[key].append(avg_rel)
                mean_errs[key].append(float(err.mean()))
                iterations[key].append(result.iterations)
                seconds_of[key] = seconds
    print(f"summary over measurements 2-{measurements} (warm starts): median time ratio exact/method, worst error")
    summary = RunSummary(model, x, chunk, exact_s_all, n_exact == n, before_last, seconds_of)
    for key in ratios:
        if not ratios[key]:
            continue
        median = statistics.median(ratios[key])
        if key in estimators:
            summary.configs[key] = (median, max(lower_rels[key]), max(avg_rels[key]), max(mean_errs[key]))
            worst = (
                f"worst lower rel {max(lower_rels[key]):.1e}, avg rel {max(avg_rels[key]):.1e}, "
                f"mean err {max(mean_errs[key]):.1e}, iters {iterations[key]}"
            )
        else:
            worst = ""
        print(f"  {key:<10} {median:>7.2f}x  {worst}")
    return summary


class RunSummary:
    """What a section needs for its target line: per config (median ratio, worst lower rel, worst avg rel,
    worst per-point mean error on the exact subset), and the state to replay the last measurement."""

    def __init__(self, model, x, chunk, exact_seconds, full_exact, before_last, seconds_of):
        self.model, self.x, self.chunk = model, x, chunk
        self.exact_seconds, self.full_exact = exact_seconds, full_exact
        self.before_last, self.seconds_of = before_last, seconds_of
        self.configs: dict[str, tuple[float, float, float, float]] = {}

    def accurate(self, key: str) -> bool:
        """Same lower (rel <= 1e-4) and avg within 1e-3 in every warm measurement (NaN: not checked)."""
        _, lower_rel, avg_rel, _ = self.configs[key]
        return lower_rel <= LOWER_TOL and avg_rel <= AVG_TOL

    def best(self, accurate_only: bool = True) -> str | None:
        keys = [key for key in self.configs if self.accurate(key) or not accurate_only]
        return max(keys, key=lambda key: self.configs[key][0]) if keys else None

    def describe(self, key: str) -> str:
        ratio, lower_rel, avg_rel, mean_err = self.configs[key]
        if self.full_exact:
            return f"{ratio:.1f}x at {key} (lower rel {lower_rel:.0e}, avg rel {avg_rel:.0e})"
        return f"{ratio:.1f}x at {key} (per-point mean err {mean_err:.0e} on the exact subset)"

    def profile(self, key: str) -> None:
        """Replay the last warm measurement of config key (same weights, same stored vectors) under
        :class:`PhaseProfile` and print its table."""
        r, t = (int(n) for n in key.split()[1].split("/"))
        estimator = warm_estimator(r, t, self.chunk)
        estimator.load_state_dict(self.before_last[key])
        profile = PhaseProfile()
        with profile.installed():
            _, seconds = timed(warm_measure, estimator, self.model, self.x, self.chunk)
        profile.print(
            f"profile of the last warm measurement of {key}, replayed ({seconds:.2f} s profiled, "
            f"{self.seconds_of[key]:.2f} s unprofiled; exact {self.exact_seconds:.2f} s)"
        )


# ------------------------------------------------------------------------------------- phase profile

PHASES = {
    "forward": "forward pass (logits + graph)",
    "vjp": "VJPs (backward passes, r per iteration)",
    "jvp": "JVPs (forward-mode, r per iteration)",
    "ritz": "Rayleigh-Ritz, QR, Gram-Schmidt (eigh)",
    "exact": "exact Jacobians + eigh/SVD (K VJPs a point)",
    "other": "store, candidate pool, Python overhead",
}


class PhaseProfile:
    """Exclusive wall-clock seconds per (stage, phase) of a WarmLowerBound measurement, by wrapping the
    functions warm_lower calls (timers, synchronised on CUDA). Stages: "pass" (update: the warm iterations
    of every point) and "refine" (finish: the refinement of the candidates, batched warm rounds and exact
    recomputation). Phases nest: a phase inside another leaf phase (e.g. the VJPs inside an exact Jacobian)
    counts to the outer one; what a stage spends outside any phase is "other"."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], float] = {}
        self.stack: list[dict] = []

    @contextlib.contextmanager
    def phase(self, name: str, stage: str | None = None):
        if self.stack and self.stack[-1]["leaf"]:
            yield
            return
        stage_of = stage or next((e["stage"] for e in reversed(self.stack) if e["stage"]), "pass")
        synchronize()
        entry = {"stage": stage_of if stage else None, "leaf": stage is None, "inner": 0.0}
        self.stack.append(entry)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize()
            elapsed = time.perf_counter() - start
            self.stack.pop()
            key = (stage_of, "other" if stage else name)
            self.seconds[key] = self.seconds.get(key, 0.0) + elapsed - entry["inner"]
            if self.stack:
                self.stack[-1]["inner"] += elapsed

    def wrap(self, fn, name: str, stage: str | None = None, returns_fn: bool = False):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with self.phase(name, stage):
                result = fn(*args, **kwargs)
            return self.wrap(result, name) if returns_fn else result

        return wrapped

    @contextlib.contextmanager
    def installed(self):
        patches = [
            (warm_lower.WarmLowerBound, "update", "other", "pass", False),
            (warm_lower.WarmLowerBound, "finish", "other", "refine", False),
            (warm_lower, "_flat_logits", "forward", None, False),
            (warm_iteration, "_flat_logits", "forward", None, False),
            (torch.autograd, "grad", "vjp", None, False),
            (warm_iteration, "_forward_jvp", "jvp", None, True),
            (warm_iteration, "_double_backward_jvp", "jvp", None, True),
            (warm_iteration, "_orthonormal_rows", "ritz", None, False),
            (warm_refine, "_orthonormal_rows", "ritz", None, False),
            (warm_iteration, "_extend_basis", "ritz", None, False),
            (warm_iteration, "_top_ritz_norm", "ritz", None, False),
            (torch.linalg, "eigh", "ritz", None, False),
            (warm_lower, "jacobian_rows", "exact", None, False),
            (warm_lower, "top_singular_from_jacobians", "exact", None, False),
            (torch.linalg, "svd", "exact", None, False),
        ]
        originals = [(owner, attr, getattr(owner, attr)) for owner, attr, *_ in patches]
        try:
            for owner, attr, name, stage, returns_fn in patches:
                setattr(owner, attr, self.wrap(getattr(owner, attr), name, stage, returns_fn))
            yield self
        finally:
            for owner, attr, original in originals:
                setattr(owner, attr, original)

    def print(self, title: str) -> None:
        total = sum(self.seconds.values())
        print(f"  {title}")
        print(f"    {'phase':<46} {'pass s':>7} {'refine s':>8} {'share':>6}")
        for name, label in PHASES.items():
            values = [self.seconds.get((stage, name), 0.0) for stage in ("pass", "refine")]
            print(f"    {label:<46} {values[0]:>7.3f} {values[1]:>8.3f} {sum(values) / total:>6.1%}")
        stages = [sum(v for (s, _), v in self.seconds.items() if s == stage) for stage in ("pass", "refine")]
        print(f"    {'total':<46} {stages[0]:>7.3f} {stages[1]:>8.3f} {1:>6.0%}")


ALWAYS_PROFILE = False  # --profile: print the phase profile where the target is met too


def print_target(line: str, met: bool | None, summary: RunSummary, profile_key: str | None) -> None:
    print(f"TARGET {line}")
    if (ALWAYS_PROFILE or not met) and profile_key is not None:
        summary.profile(profile_key)


def cifar(n: int, classes: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, classes, (n,), generator=generator)


# ----------------------------------------------------------------------------------------------- sections


def section_jvp(quick: bool) -> None:
    torch.manual_seed(0)
    model = build_cnn(20, num_classes=100).eval().to(DEVICE)
    x = cifar(25 if quick else 100, 100)[0].to(DEVICE)
    pairs = 3 if quick else 7
    print(f"\nJVP implementation: warm_spectral_norms(block=2, max_iter=2, tol=0), CNN 20 K=100, {x.shape[0]} points")
    times = {"forward": [], "double_backward": []}
    for _ in range(pairs):
        for jvp in times:
            _, seconds = timed(lambda jvp=jvp: warm_spectral_norms(model, x, block=2, max_iter=2, tol=0, jvp=jvp))
            times[jvp].append(seconds)
    ratio = [b / f for f, b in zip(times["forward"], times["double_backward"], strict=True)]
    print(f"  forward-mode (vmapped torch.func.jvp): median {statistics.median(times['forward']):.2f} s")
    print(f"  double-backward trick:                 median {statistics.median(times['double_backward']):.2f} s")
    print(f"  double-backward / forward: median {statistics.median(ratio):.2f}x over {pairs} alternating pairs")


def section_k10(args) -> None:
    torch.manual_seed(0)
    model = build_cnn(20).eval()
    x, y = cifar(args.points or (150 if args.quick else 2000), 10)
    summary = run_training(
        "K=10: CNN 20, CIFAR-shaped", model, x, y, measurements=args.measurements, steps=5, lr=0.01, chunk=100
    )
    best = summary.best()
    target = f"K=10: warm vs exact, same lower (rel <= {LOWER_TOL:g}), avg within {AVG_TOL:g}: best speed-up "
    if best is None:
        fastest = summary.best(accurate_only=False)
        line = target + f"none accurate (fastest {summary.describe(fastest)})"
        faster = False
    else:
        line = target + summary.describe(best)
        faster = summary.configs[best][0] > 1
    auto = warm_lower.choose_method(10, 3 * 32 * 32, memory_budget_bytes=1 << 30, chunk_size=100).method
    verdict = "switches to warm" if auto == "warm" else "keeps exact"
    agrees = "as measured" if faster == (auto == "warm") else "although the measurement says otherwise"
    why = best or summary.best(accurate_only=False)
    print_target(f"{line} -> auto {verdict} ({agrees})", faster, summary, why)


def section_k100(args) -> None:
    torch.manual_seed(0)
    width = 10 if args.quick else 20
    model = build_cnn(width, num_classes=100).eval()
    x, y = cifar(args.points or (100 if args.quick else 1000), 100)
    summary = run_training(
        f"K=100: CNN {width} with 100 outputs, CIFAR-shaped",
        model,
        x,
        y,
        measurements=args.measurements,
        steps=5,
        lr=0.01,
        chunk=100,
        official=not args.quick,
    )
    best = summary.best()
    target = f"K=100: target >= 10x exact at the same lower and avg within {AVG_TOL:g}: best "
    if best is None:
        fastest = summary.best(accurate_only=False)
        met, line, why = False, target + f"none accurate (fastest {summary.describe(fastest)})", fastest
    else:
        met = summary.configs[best][0] >= 10
        line, why = target + summary.describe(best), best
    print_target(f"{line} -> {'met' if met else 'not met'}", met, summary, why)


def section_k1000(args) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=1000).eval()
    n = args.points or (16 if args.quick else 48)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 64, 64, generator=generator)
    y = torch.randint(0, 1000, (n,), generator=generator)
    subset = args.exact_subset or (2 if args.quick else 8)
    summary = run_training(
        "K=1000: torchvision resnet18, 3x64x64",
        model,
        x,
        y,
        measurements=max(2, min(args.measurements, 3)),
        steps=2,
        lr=0.001,
        chunk=16,
        exact_subset=subset,
        official=False,
    )
    best = summary.best(accurate_only=False)
    met = summary.configs[best][0] >= 50
    line = f"K=1000: target >= 50x exact: best {summary.describe(best)} -> {'met' if met else 'not met'}"
    print_target(line + f" ({subset} of {n} points checked exactly)", met, summary, best)


# ------------------------------------------------------------------ memory (run in fresh subprocesses)


def memory_probe(n_points: int) -> None:
    """Child: peak RSS growth (MiB, sampled every 0.5 ms) of two warm measurements (cold, then warm) of
    n_points streamed CIFAR-shaped points in batches of 50 (CNN 8, K = 100, block 2)."""
    torch.manual_seed(0)
    model = build_cnn(8, num_classes=100).eval()
    estimator = WarmLowerBound(method="warm", block=2, max_iter=2)
    warm_spectral_norms(model, torch.randn(2, 3, 32, 32))  # load kernels before the baseline

    def stream():
        generator = torch.Generator().manual_seed(0)
        for start in range(0, n_points, 50):
            b = min(50, n_points - start)
            yield torch.randn(b, 3, 32, 32, generator=generator), torch.arange(start, start + b)

    def measure_twice() -> None:
        for _ in range(2):
            estimator.measure(model, stream())

    print(f"{peak_growth_mib(measure_twice):.1f}")


def section_memory(args) -> None:
    small = 100 if args.quick else 500
    print("\npeak memory of two measurements (peak RSS growth in a fresh process; CNN 8, K=100, batches of 50)")
    print(f"  {'points':>7} {'MiB':>8}  (vectors stored: points x 2 x 100 x 4 bytes)")
    for n_points in (small, 4 * small, 16 * small):
        command = [sys.executable, __file__, "--threads", str(args.threads), "--memory-probe", str(n_points)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
        print(f"  {n_points:>7} {float(output[-1]):>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes in all)")
    parser.add_argument("--points", type=int, default=None, help="points per measurement (per section default)")
    parser.add_argument("--measurements", type=int, default=4, help="measurements per training run (default 4)")
    parser.add_argument("--only", default="jvp,k10,k100,k1000,memory", help="comma-separated sections")
    parser.add_argument("--configs", default="1/1,2/1,2/2,3/2,2/3", help="warm block/iterations pairs, e.g. 3/3")
    parser.add_argument("--exact-subset", type=int, default=None, help="k1000: points computed exactly (2 / 8)")
    parser.add_argument("--device", default="cpu", help="torch device (memory section: CPU only)")
    parser.add_argument("--profile", action="store_true", help="print the phase profile where targets are met too")
    parser.add_argument("--memory-probe", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global DEVICE, ALWAYS_PROFILE
    DEVICE = torch.device(args.device)
    ALWAYS_PROFILE = args.profile
    WARM_CONFIGS[:] = [tuple(int(n) for n in pair.split("/")) for pair in args.configs.split(",")]
    if args.memory_probe is not None:
        memory_probe(args.memory_probe)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32, {DEVICE}")
    sections = {"jvp": lambda: section_jvp(args.quick), "k10": lambda: section_k10(args)}
    sections |= {"k100": lambda: section_k100(args), "k1000": lambda: section_k1000(args)}
    sections |= {"memory": lambda: section_memory(args)}
    for name in args.only.split(","):
        if name not in sections:
            raise SystemExit(f"unknown section {name!r}; choose from {sorted(sections)}")
        sections[name]()


if __name__ == "__main__":
    main()
