"""How the benchmarks time things: best of several runs, and latency percentiles."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def timed(fn: Callable[..., T], *args: object, repeat: int = 1) -> tuple[T, float]:
    """The result and the best wall time of ``repeat`` calls: the least disturbed by other work."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return result, best


def p50_p99_ms(seconds: list[float]) -> tuple[float, float]:
    """Median and 99th percentile of durations given in seconds, in milliseconds."""
    p50, p99 = np.percentile(np.array(seconds) * 1000, [50, 99])
    return float(p50), float(p99)
