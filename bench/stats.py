"""Shared statistics for the detection benchmarks."""

from __future__ import annotations

from mcpward.integrity.evaluation import wilson  # one implementation, shared with `mcpward eval`


def pct(k: int, n: int, counts: bool = False) -> str:
    """`12.3% [10.1, 14.9]`, with `(k/n)` after it when asked."""
    if not n:
        return "n/a"
    lo, hi = wilson(k, n)
    tail = f" ({k}/{n})" if counts else ""
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]{tail}"
