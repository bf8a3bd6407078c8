"""CPU wall-clock timing for benchmarks: medians of repeated calls, and interleaved A/B/C rounds so that every
implementation sees the same machine load (the ratios are what a benchmark reports, never an absolute time)."""
from __future__ import annotations

import statistics
import time


def time_cpu(fn, repeats: int, inner: int, warmup: int = 1) -> float:
    for i in range(warmup):
        fn(i)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for j in range(inner):
            fn(r * inner + j)
        times.append((time.perf_counter() - t0) * 1e3 / inner)
    return statistics.median(times)


def time_cpu_interleaved(fns: dict, repeats: int, inner: int, warmup: int = 1) -> dict[str, float]:
    """Median milliseconds per call of each fn(i), the implementations taking turns group by group (A B C A B C ...)."""
    for fn in fns.values():
        for i in range(warmup):
            fn(i)
    times = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for j in range(inner):
                fn(r * inner + j)
            times[name].append((time.perf_counter() - t0) * 1e3 / inner)
    return {name: statistics.median(ts) for name, ts in times.items()}
