"""An upstream's change notifications: the gateway lists the server again itself, then tells clients.

A `notifications/<kind>/list_changed` (legacy, on a session) or a list change delivered on the
gateway's own `subscriptions/listen` (modern) means a definition may have changed. Waiting for a
client to list again would leave the change unchecked and unaudited until then, so the upstream
hands each announcement to `ListChanges`, which relists that server (the lister's refresh runs the
guards' `on_published`: the integrity guard's pin check hides and audits a changed definition) and
only then tells the clients.

Bounded, because a server decides how often it announces: per kind, at most one relist runs at a
time, announcements that arrive meanwhile are coalesced into the next one, and two relists of one
kind start at least RELIST_INTERVAL seconds apart. A legacy server lists per session (often one
process per session), so the relist goes through the session that announced the change; several
sessions announcing in one window are relisted one after the other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from mcpward.gateway.context import Principal, RequestContext, SilentChannel, system_context
from mcpward.gateway.upstream_sessions import Session

log = logging.getLogger("mcpward.upstream")
RELIST_INTERVAL = 1.0  # seconds between two relists of one server's list of one kind
KINDS = frozenset({"tools", "prompts", "resources"})  # the lists a server may announce a change of

# (context to list as, kind): lists one server's `kind` again through the guards.
Relist = Callable[[RequestContext, str], Awaitable[None]]


def relist_context(session: Session | None, principal: Principal | None) -> RequestContext | None:
    """Who the gateway lists as after `session` announced a change (None: nobody can, only tell clients).

    Modern: the gateway itself (or, on a per-principal connection, that principal). Legacy: a request
    of the announcing session, so the list comes from the very session (process) that changed; its
    channel is silenced and its era set to modern so the relist neither talks to that client nor
    becomes the session's "last client" that log lines are routed to.
    """
    if session is None:
        return None
    if session.era == "modern":
        return system_context(principal)
    source = next(iter(session.active.values()), None) or session.last_ctx
    if source is None:
        return None
    return replace(source, era="modern", channel=SilentChannel(), forward_meta={}, progress_token=None,
                   push_sink=None, call=None)


class ListChanges:
    """Coalesces one upstream's change announcements into bounded relists, then tells clients."""

    def __init__(self, server: str, tell: Callable[[str], None], relist: Relist | None = None,
                 interval: float = RELIST_INTERVAL) -> None:
        self.server = server
        self.relist = relist  # set by the lister (listing.py); None: announcements are only told
        self.principal: Principal | None = None  # a per-principal connection: whom it serves, once it served
        self._tell = tell
        self.interval = interval
        self._pending: dict[str, dict[str, RequestContext | None]] = {}  # kind -> session key -> context
        self._running: dict[str, asyncio.Task[None]] = {}
        self._last: dict[str, float] = {}

    def announce(self, kind: str, session: Session | None) -> None:
        """`session` (None: one no longer live) announced that its list of `kind` changed. Another kind
        names no list: dropped (a server inventing kinds must not grow our state or reach clients)."""
        if kind not in KINDS:
            log.debug("server %s announced a change of an unknown list; dropped", self.server)
            return
        self.pend(kind, "" if session is None else session.key, relist_context(session, self.principal))

    def pend(self, kind: str, session_key: str, ctx: RequestContext | None) -> None:
        self._pending.setdefault(kind, {})[session_key] = ctx
        if kind not in self._running:
            self._running[kind] = asyncio.ensure_future(self._drain(kind))

    async def _drain(self, kind: str) -> None:
        try:
            while self._pending.get(kind):
                wait = self._last.get(kind, float("-inf")) + self.interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)  # announcements arriving meanwhile join this relist
                batch = self._pending.pop(kind)
                self._last[kind] = time.monotonic()
                relist = self.relist
                for ctx in batch.values():
                    if relist is not None and ctx is not None:
                        await self._relist_one(relist, ctx, kind)
                self._tell(kind)
        finally:
            self._running.pop(kind, None)

    async def _relist_one(self, relist: Relist, ctx: RequestContext, kind: str) -> None:
        try:
            await relist(ctx, kind)
        except Exception as exc:
            # One failed relist must not stop the others or the telling. Still closed: the clients
            # are told, and their own list passes the same checks.
            log.warning("server %s: relisting %s after its change notification failed: %s: %s",
                        self.server, kind, type(exc).__name__, exc)

    def stop(self) -> None:
        for task in self._running.values():
            task.cancel()
        self._pending.clear()
