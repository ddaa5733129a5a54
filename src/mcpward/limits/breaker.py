"""Circuit breakers, one per exposed tool, in this process.

Closed: calls go, and each outcome (latency, error or not) joins a window of `window_seconds`.
Once the window holds `min_calls` samples, an error share above `error_rate` or a 99th
percentile latency above `p99_seconds` opens the breaker: calls are refused at once for
`open_seconds`. Then it is half-open: exactly one call (the probe) goes; its success closes the
breaker with an empty window, its failure opens it again for another `open_seconds`.

Breakers are per process on purpose: each replica sees its own upstream connections, and a
breaker's job is to stop this process from waiting on a tool that does not answer.

One principal cannot open a breaker for everyone: when the window's errors (or slow calls) cross
the threshold, the breaker opens only if the window still crosses it with any one principal's calls
left out, or if nobody else called the tool in the window. Calls a principal makes fail on purpose
(bad arguments, a slow query) then hurt only that principal.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from mcpward.audit import events
from mcpward.limits import refusal
from mcpward.limits.refusal import LimitRefusal
from mcpward.limits.settings import BreakerSettings

State = Literal["closed", "open", "half-open"]
HALF_OPEN_RETRY = 1.0  # seconds a caller waits while the probe is out: it usually answers quickly


@dataclass(frozen=True, slots=True)
class Ticket:
    """What the breaker handed a call it let through, so its outcome is filed in the right place."""

    generation: int
    probe: bool


def p99(latencies: list[float]) -> float:
    """Nearest-rank 99th percentile: below 100 samples it is the largest one."""
    ordered = sorted(latencies)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


class Breaker:
    __slots__ = ("_by", "_errors", "_samples", "_slow", "_ticket", "clock", "generation", "open_until",
                 "probe_deadline", "settings", "state", "tool")

    def __init__(self, tool: str, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.tool = tool
        self.settings = settings
        self.clock = clock
        self.state: State = "closed"
        # Bumped at every state change, so outcomes of calls admitted before it are ignored: a slow
        # answer from before the breaker opened must not close it again.
        self.generation = 0
        self.open_until = 0.0
        self.probe_deadline = 0.0  # while a probe is out; 0 when none is
        self._samples: deque[tuple[float, float, bool, str]] = deque()  # (when, latency, error, principal)
        self._errors = 0
        self._slow = 0  # samples slower than p99_seconds: p99 > limit iff too many of these
        self._by: dict[str, list[int]] = {}  # principal -> [samples, errors, slow] in the window
        self._ticket = Ticket(0, False)  # every closed-state call of this generation gets this same one

    def blocked(self) -> LimitRefusal | None:
        """The refusal `admit` would raise now, without changing anything (no probe is handed out):
        the rate guard asks first, so a call the breaker will refuse spends no quota."""
        if self.state == "closed":
            return None
        return self._refusal(self.clock())

    def admit(self) -> Ticket:
        """A ticket for a call that may go, or LimitRefusal while the breaker is open."""
        if self.state == "closed":
            return self._ticket
        now = self.clock()
        refused = self._refusal(now)
        if refused is not None:
            raise refused
        if self.state == "open":  # its time is up
            self._change("half-open")
            events.record("limits.breaker-half-open", tool=self.tool)
        # The probe: no probe out, or the last one never reported (cancelled, refused further on).
        self.probe_deadline = now + self.settings.probe_timeout
        return Ticket(self.generation, True)

    def _refusal(self, now: float) -> LimitRefusal | None:
        if self.state == "open" and now < self.open_until:
            return LimitRefusal(refusal.BREAKER_OPEN, f"tool {self.tool} is failing or slow; "
                                "calls are refused until it recovers", self.open_until - now)
        if self.state == "half-open" and self.probe_deadline and now < self.probe_deadline:
            return LimitRefusal(refusal.BREAKER_OPEN, f"tool {self.tool} is being probed after failing; "
                                "one call at a time", min(HALF_OPEN_RETRY, self.probe_deadline - now))
        return None

    def record(self, ticket: Ticket, latency: float, error: bool, principal: str = "") -> None:
        if ticket.generation != self.generation:
            return
        now = self.clock()
        s = self.settings
        if ticket.probe:
            if self.state != "half-open":
                return
            if error or latency > s.p99_seconds:
                self._open(now, "probe-failed", failure="error" if error else "slow", latency=round(latency, 4))
            else:
                self._change("closed")
                events.record("limits.breaker-closed", tool=self.tool, latency=round(latency, 4))
            return
        if self.state != "closed":
            return
        samples, by = self._samples, self._by
        slow = latency > s.p99_seconds
        samples.append((now, latency, error, principal))
        self._errors += error
        self._slow += slow
        mine = by.get(principal)
        if mine is None:
            mine = by[principal] = [0, 0, 0]
        mine[0] += 1
        mine[1] += error
        mine[2] += slow
        cutoff = now - s.window_seconds
        while samples and samples[0][0] < cutoff:
            _, old_latency, old_error, old_principal = samples.popleft()
            old_slow = old_latency > s.p99_seconds
            self._errors -= old_error
            self._slow -= old_slow
            theirs = by[old_principal]
            theirs[0] -= 1
            theirs[1] -= old_error
            theirs[2] -= old_slow
            if not theirs[0]:
                del by[old_principal]
        n = len(samples)
        if n < s.min_calls:
            return
        if self._errors / n > s.error_rate and self._others_cross(1, lambda k, bad: bad / k > s.error_rate):
            self._open(now, "error-rate", value=round(self._errors / n, 4), threshold=s.error_rate, samples=n)
        elif self._slow > n - math.ceil(0.99 * n) and self._others_cross(
                2, lambda k, bad: bad > k - math.ceil(0.99 * k)):
            # Cheap test first (counts), the sort only on the way to opening, for the record.
            self._open(now, "p99", value=round(p99([x[1] for x in samples]), 4), threshold=s.p99_seconds,
                       samples=n)

    def _others_cross(self, column: int, crosses: Callable[[int, int], bool]) -> bool:
        """Whether the window still crosses the threshold with any one principal's samples left out
        (column 1: errors, 2: slow); True when a single principal is the only caller. So no one
        principal's calls, failing on purpose, can open the breaker for the others."""
        by = self._by
        if len(by) == 1:
            return True
        n, bad = len(self._samples), self._errors if column == 1 else self._slow
        return all(crosses(n - counts[0], bad - counts[column]) for counts in by.values())

    def _open(self, now: float, reason: str, **facts: object) -> None:
        self._change("open")
        self.open_until = now + self.settings.open_seconds
        events.record("limits.breaker-opened", tool=self.tool, reason=reason,
                      open_seconds=self.settings.open_seconds, **facts)

    def _change(self, state: State) -> None:
        self.state = state
        self.generation += 1
        self._ticket = Ticket(self.generation, False)
        self.probe_deadline = 0.0
        self._samples.clear()
        self._by.clear()
        self._errors = self._slow = 0


class BreakerBoard:
    """The breakers of one gateway process, made on first use of each tool."""

    def __init__(self, settings_for: Callable[[str], BreakerSettings],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings_for = settings_for
        self.clock = clock
        self._breakers: dict[str, Breaker | None] = {}

    def get(self, tool: str) -> Breaker | None:
        try:
            return self._breakers[tool]
        except KeyError:
            pass
        settings = self.settings_for(tool)
        breaker = Breaker(tool, settings, self.clock) if settings.enabled else None
        self._breakers[tool] = breaker
        return breaker

    def blocked(self, tool: str) -> LimitRefusal | None:
        breaker = self._breakers.get(tool)
        return breaker.blocked() if breaker is not None else None

    def state(self, tool: str) -> State:
        breaker = self._breakers.get(tool)
        return breaker.state if breaker is not None else "closed"
