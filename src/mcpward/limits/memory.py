"""An in-process storage for the `limits` strategies, built for a gateway's hot path.

Why not `limits.aio.storage.MemoryStorage`: it schedules an expiry task after every hit, and
that task walks every key through `asyncio.to_thread`. Measured here, that put about 180 us on
each call as soon as the event loop yields between calls (a real server always does), which is
more than the whole per-call budget. This storage does the same bookkeeping inline: each
operation prunes only the key it touches, and a full sweep of idle keys runs at most once per
`sweep_interval`. No task, no thread, no lock: every method runs to completion without an
`await`, so it is atomic under asyncio.

The clock is injectable so tests can move time instead of sleeping.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from limits.aio.storage import MovingWindowSupport, Storage


class ClockedMemoryStorage(Storage, MovingWindowSupport):
    """Counters (fixed windows: quotas) and timestamp queues (moving windows: buckets) in dicts."""

    def __init__(self, clock: Callable[[], float] = time.time, sweep_interval: float = 60.0) -> None:
        super().__init__(None)
        self.clock = clock
        self.sweep_interval = sweep_interval
        # key -> [count, expires_at]
        self._counters: dict[str, list[float]] = {}
        # key -> (timestamps oldest first, window seconds)
        self._windows: dict[str, tuple[deque[float], float]] = {}
        self._next_sweep = clock() + sweep_interval

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def __len__(self) -> int:
        return len(self._counters) + len(self._windows)

    # ------------------------------------------------------------ fixed windows
    # The synchronous methods are the whole implementation; the async ones are what `limits`
    # strategies call. The gateway's own fast path (rate.Limiter) calls the `*_at` ones with keys it
    # prepared once and one clock reading for all the limits of a request, so a call costs dict
    # lookups rather than key formatting and a clock read per limit.
    def now(self) -> float:
        """The clock, and the occasional sweep of idle keys: read once per request by the fast path."""
        return self._now()

    def counter(self, key: str) -> tuple[int, float]:
        """(count, when the window ends); (0, now) for a window that is not open."""
        return self.counter_at(key, self._now())

    def counter_at(self, key: str, now: float) -> tuple[int, float]:
        entry = self._counters.get(key)
        if entry is None or entry[1] <= now:
            return 0, now
        return int(entry[0]), entry[1]

    def counter_add(self, key: str, expiry: float, amount: int) -> int:
        return self.counter_add_at(key, expiry, amount, self._now())

    def counter_add_at(self, key: str, expiry: float, amount: int, now: float) -> int:
        entry = self._counters.get(key)
        if entry is None or entry[1] <= now:
            entry = self._counters[key] = [0, now + expiry]
        entry[0] += amount
        return int(entry[0])

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.counter_add(key, expiry, amount)

    async def decr(self, key: str, amount: int = 1) -> int:
        entry = self._counters.get(key)
        if entry is None or entry[1] <= self._now():
            return 0
        entry[0] = max(0, entry[0] - amount)
        return int(entry[0])

    async def get(self, key: str) -> int:
        return self.counter(key)[0]

    async def get_expiry(self, key: str) -> float:
        return self.counter(key)[1]

    # ----------------------------------------------------------- moving windows
    def window(self, key: str, expiry: float) -> tuple[float, int]:
        """(time of the oldest entry still in the window, entries in the window), as `limits` expects:
        the window frees its next slot at `oldest + expiry`."""
        return self.window_at(key, expiry, self._now())

    def window_at(self, key: str, expiry: float, now: float) -> tuple[float, int]:
        found = self._windows.get(key)
        if found is None:
            return now, 0
        stamps = found[0]
        cutoff = now - expiry
        while stamps and stamps[0] < cutoff:
            stamps.popleft()
        if not stamps:
            return now, 0
        return stamps[0], len(stamps)

    def window_add(self, key: str, limit: int, expiry: float, amount: int) -> bool:
        return self.window_add_at(key, limit, expiry, amount, self._now())

    def window_add_at(self, key: str, limit: int, expiry: float, amount: int, now: float) -> bool:
        if amount > limit:
            return False
        found = self._windows.get(key)
        if found is None:
            found = self._windows[key] = (deque(maxlen=limit), float(expiry))
        stamps = found[0]
        cutoff = now - expiry
        while stamps and stamps[0] < cutoff:
            stamps.popleft()
        if len(stamps) + amount > limit:
            return False
        if amount == 1:
            stamps.append(now)
        else:
            stamps.extend([now] * amount)
        return True

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.window_add(key, limit, expiry, amount)

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        return self.window(key, expiry)

    # -------------------------------------------------------------- housekeeping
    async def check(self) -> bool:
        return True

    async def reset(self) -> int | None:
        count = len(self)
        self._counters.clear()
        self._windows.clear()
        return count

    async def clear(self, key: str) -> None:
        self._counters.pop(key, None)
        self._windows.pop(key, None)

    def _now(self) -> float:
        now = self.clock()
        if now >= self._next_sweep:
            self._sweep(now)
        return now

    def _sweep(self, now: float) -> None:
        """Drops keys nobody used for a whole window, so principals that went away free their memory."""
        self._next_sweep = now + self.sweep_interval
        for key in [k for k, entry in self._counters.items() if entry[1] <= now]:
            del self._counters[key]
        for key in [k for k, (stamps, span) in self._windows.items() if not stamps or stamps[-1] < now - span]:
            del self._windows[key]
