"""Shared statistics for the detection benchmarks."""

from __future__ import annotations

import math


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of k successes in n trials."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pct(k: int, n: int, counts: bool = False) -> str:
    """`12.3% [10.1, 14.9]`, with `(k/n)` after it when asked."""
    if not n:
        return "n/a"
    lo, hi = wilson(k, n)
    tail = f" ({k}/{n})" if counts else ""
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]{tail}"
