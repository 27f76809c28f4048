"""What every benchmark shares: timing on a shared machine, the machine record, and "write JSON, print markdown".

Timing interleaves the compared functions (A, B, A, B, ...) after a warm-up, so that load changes on a shared
2-core machine hit every variant alike; callers report medians, or medians of same-repeat ratios.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["seconds", "median_seconds", "interleaved_seconds", "machine", "write_report"]


def seconds(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median of ``repeats`` timed calls of ``fn`` (no warm-up: the caller decides)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    return statistics.median(seconds(fn) for _ in range(repeats))


def interleaved_seconds(
    fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Time every function ``repeats`` times, round-robin, after ``warmup`` untimed calls each.

    Interleaving makes each repeat's measurements see the same machine load, so the per-repeat ratios stay
    meaningful on a shared machine even when absolute times drift.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()  # allocator, oneDNN kernels
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(seconds(fn))
    return times


def machine() -> dict[str, object]:
    """Where a measurement was taken (timings mean little without it)."""
    info: dict[str, object] = {"platform": platform.platform(), "python": platform.python_version(),
                               "cpu_count": os.cpu_count(), "load_average_1m": os.getloadavg()[0]}
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    return info


def write_report(
    result: Mapping, out: str | os.PathLike, table: str, markdown: str | os.PathLike | None = None
) -> Path:
    """Write ``result`` as JSON to ``out`` (atomically, folders created), the table to ``markdown`` if given, then
    print the table and where the JSON went; return ``out``."""
    from data_prep.common import atomic_write_json

    out = atomic_write_json(out, result)
    if markdown is not None:
        Path(markdown).write_text(table + "\n")
    print(table)
    print(f"\nwritten: {out}", flush=True)
    return out
