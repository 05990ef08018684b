"""Peak growth of this process's resident memory while a function runs (Linux /proc; for the memory probes
that the benchmarks run in fresh subprocesses)."""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable


def resident_mib() -> float:
    """Resident set size of this process in MiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def peak_growth_mib(run: Callable[[], object], interval: float = 0.0005) -> float:
    """Largest resident size seen while `run()` executes (sampled every `interval` s by a thread), minus the
    size just before it started, in MiB."""
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_mib())
            time.sleep(interval)

    baseline = resident_mib()
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run()
    finally:
        done.set()
        sampler.join()
    return peak[0] - baseline
