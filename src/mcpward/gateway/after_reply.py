"""Bookkeeping that every request needs but its reply need not wait for.

The anomaly rules read each request's audit record and the metrics time each request; neither
changes the answer. Running them once the front has written the reply moves them off the
client's wait: the gateway does them while the client reads its answer (measured: about a
quarter of what accountability adds per call, see docs/benchmarks.md).

What must come before the reply never goes here: the audit record itself is written (journaled)
before the reply, so an acknowledged request is always on record.

`defer(fn)` queues; the fronts call `run()` after writing a reply. Whatever no front runs (a
request answered by another path, tests driving the core directly) is run by a fallback timer
within FALLBACK_DELAY; with no event loop running, `defer` runs at once. Order is kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

log = logging.getLogger("mcpward.gateway")
FALLBACK_DELAY = 0.05

_pending: deque[Callable[[], None]] = deque()
_fallback: asyncio.AbstractEventLoop | None = None  # the loop a fallback run is scheduled on


def defer(fn: Callable[[], None]) -> None:
    global _fallback
    loop = asyncio._get_running_loop()
    if loop is None:
        _call(fn)
        return
    _pending.append(fn)
    if _fallback is not loop:  # one timer per loop at a time, not one per request
        _fallback = loop
        loop.call_later(FALLBACK_DELAY, _on_fallback)


def run() -> None:
    """Run everything deferred so far (each failure is logged; none reaches the caller)."""
    while _pending:
        _call(_pending.popleft())


def pending() -> int:
    return len(_pending)


def _on_fallback() -> None:
    global _fallback
    _fallback = None
    run()


def _call(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # bookkeeping must never fail a request or a front
        log.exception("deferred bookkeeping failed: %r", fn)
