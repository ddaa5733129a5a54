"""The per-principal connections of one server: made on demand, ended when idle, capped in number.

A server with per-principal credentials starts one child (a sandboxed process, or an HTTP connection)
for each principal that calls it (gateway/upstream.py). Kept for ever, every principal that called once
would hold a process for the gateway's whole life. So a child unused for `principal_idle_timeout`
seconds is stopped, and at most `max_principal_connections` children live at once: a new principal
over that cap takes the place of the least recently used idle child, and is refused
(`upstream.principal-connections`, retryable) when every child is busy.

A child is busy while a request of its principal is in it (`using`), and while it holds resource
subscriptions for its principal (evicting it would silently end them). A stopped child is forgotten:
the principal's next request starts a new one. Every eviction is logged and audited
(`upstream.principal-evicted`, with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mcpward.audit import events as audit
from mcpward.gateway.peer import local_error
from mcpward.protocol import jsonrpc

if TYPE_CHECKING:
    from mcpward.gateway.upstream import Upstream

log = logging.getLogger("mcpward.upstream")
FULL_RULE = "upstream.principal-connections"
EVICTED = "upstream.principal-evicted"
SWEEP_MAX = 60.0  # seconds between idle sweeps at most


@dataclass(slots=True)
class _Entry:
    child: Upstream
    last_used: float
    calls: int = 0


class PrincipalPool:
    def __init__(self, server: str, idle_timeout: float, cap: int, make: Callable[[str], Upstream],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.server = server
        self.idle_timeout = idle_timeout
        self.cap = cap
        self.make = make  # a new child for a principal; raises the refusal when it has no credentials here
        self.clock = clock
        self.entries: dict[str, _Entry] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()

    def get(self, key: str) -> Upstream | None:
        """The principal's live child, if there is one (nothing is started)."""
        entry = self.entries.get(key)
        return None if entry is None else entry.child

    def children(self) -> list[Upstream]:
        return [entry.child for entry in self.entries.values()]

    @contextlib.contextmanager
    def using(self, key: str) -> Iterator[Upstream]:
        """The principal's child, made if needed, kept from eviction while the caller works with it."""
        entry = self.entries.get(key)
        if entry is None:
            child = self.make(key)  # first: a principal without credentials is refused before any eviction
            self.sweep()
            if len(self.entries) >= self.cap:
                self._make_room()
            entry = self.entries[key] = _Entry(child, self.clock())
            self._start_sweeper()
        entry.calls += 1
        try:
            yield entry.child
        finally:
            entry.calls -= 1
            entry.last_used = self.clock()

    def sweep(self) -> None:
        """Stop every child idle for longer than the timeout."""
        now = self.clock()
        for key, entry in list(self.entries.items()):
            if self._idle(entry) and now - entry.last_used > self.idle_timeout:
                self._evict(key, "idle")

    def _make_room(self) -> None:
        idle = [(entry.last_used, key) for key, entry in self.entries.items() if self._idle(entry)]
        if not idle:
            log.warning("server %s: %d principal connections, all busy; a new principal is refused (%s)",
                        self.server, self.cap, FULL_RULE)
            raise local_error(jsonrpc.OVERLOADED, f"refused by {FULL_RULE}: server {self.server!r} has {self.cap} "
                              "principal connections, all busy; retry later", {"rule": FULL_RULE})
        self._evict(min(idle)[1], "cap")

    @staticmethod
    def _idle(entry: _Entry) -> bool:
        return entry.calls == 0 and not entry.child.watches_resources

    def _evict(self, key: str, reason: str) -> None:
        entry = self.entries.pop(key)
        idle_for = round(self.clock() - entry.last_used, 1)
        log.info("server %s: stopping the connection of %s (%s, idle %.1fs)", self.server, key, reason, idle_for)
        audit.record(EVICTED, server=self.server, principal=key, reason=reason, idle_seconds=idle_for)
        task = asyncio.ensure_future(entry.child.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def _start_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep_while_any())

    async def _sweep_while_any(self) -> None:
        interval = min(SWEEP_MAX, max(0.5, self.idle_timeout / 4))
        while self.entries:
            await asyncio.sleep(interval)
            self.sweep()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        children, self.entries = self.children(), {}
        await asyncio.gather(*(child.stop() for child in children), *self._stopping, return_exceptions=True)
