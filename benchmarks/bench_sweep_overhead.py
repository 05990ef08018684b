"""The local sweep runner's overhead per run, in seconds (median of --repeats):

bare process       `python -c pass`
runner start       the first sweep in a process: engine imports, lock, SQLite, grid proposals
runner per run     a warm sweep of `python -c pass` runs through the runner, per run, minus the bare
                   process (SQLite bookkeeping, parameter files, log, results read-back)
CLI imports        `python -c "import lipschitz_dd.train_cli"` (torch, Lightning, models, data, callbacks)
tiny fit, 1 epoch  `lipschitz-dd fit --config configs/test_tiny.yaml --trainer.max_epochs=1`: process
                   start + imports + data + the first epoch; an upper bound on the time before training

python benchmarks/bench_sweep_overhead.py [--repeats 5] [--runs 8]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from lipschitz_dd.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]


def seconds(argv: list[str], repeats: int) -> float:
    """Median wall-clock seconds of running argv to completion."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sweep_seconds(runs: int) -> float:
    """Wall-clock seconds of run_sweep on a one-worker grid of `runs` no-op processes."""
    with tempfile.TemporaryDirectory() as tmp:
        sweep_file = Path(tmp) / "noop.yaml"
        sweep_file.write_text(
            yaml.safe_dump(
                {
                    "method": "grid",
                    "parameters": {"i": {"values": list(range(runs))}},
                    "command": ["${env}", "${interpreter}", "-c", "pass", "${args}"],
                }
            )
        )
        start = time.perf_counter()
        result = run_sweep(sweep_file, out=Path(tmp) / "out", workers=1, progress=False)
        elapsed = time.perf_counter() - start
    assert all(r.state == "finished" for r in result.runs), [r.log_tail for r in result.runs]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    bare = seconds([sys.executable, "-c", "pass"], args.repeats)
    print(f"{'bare process (python -c pass)':40s} {bare:7.3f} s", flush=True)
    first = sweep_seconds(1)  # pays the one-off imports of the sweeps engine (scipy, sklearn)
    print(f"{'runner start (1-run sweep, cold imports)':40s} {first:7.3f} s", flush=True)
    per_run = sweep_seconds(args.runs) / args.runs
    print(
        f"{'runner per run, minus the bare process':40s} {per_run - bare:7.3f} s   ({per_run:.3f} s in all)", flush=True
    )
    imports = seconds([sys.executable, "-c", "import lipschitz_dd.train_cli"], args.repeats)
    print(
        f"{'CLI imports (import lipschitz_dd.train_cli)':40s} {imports:7.3f} s   ({imports - bare:.3f} s over bare)",
        flush=True,
    )
    tiny_argv = [
        str(Path(sys.executable).parent / "lipschitz-dd"),
        "fit",
        "--config",
        "configs/test_tiny.yaml",
        "--trainer.max_epochs=1",
        "--save_dir",
        tempfile.mkdtemp(),
    ]
    tiny = seconds(tiny_argv, max(1, args.repeats // 2))
    print(f"{'tiny fit, 1 epoch (lipschitz-dd fit)':40s} {tiny:7.3f} s   ({tiny - bare:.3f} s over bare)")


if __name__ == "__main__":
    main()
