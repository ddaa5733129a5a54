"""One configured upstream server: era probing, sessions, lifecycle, request forwarding.

Modern (2026-07-28) upstreams are stateless: one connection serves every client. Legacy upstreams fix
capabilities per session at `initialize`, so the gateway keeps one session per distinct client capability
set: an upstream never sees a capability the client did not declare (no capability laundering).
A server with per-principal credentials has no connection of its own: each listed principal gets a child
Upstream (its own process or HTTP connection, credentials and probe; principal_pool.py); others are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from mcpward import __version__
from mcpward.gateway.config import GatewayConfig, ServerConfig, resolution_problem
from mcpward.gateway.context import RequestContext
from mcpward.gateway.list_changes import ListChanges, Relist
from mcpward.gateway.peer import Peer, PeerError, local_error
from mcpward.gateway.principal_pool import PrincipalPool
from mcpward.gateway.upstream_sessions import (
    LegacyWatch,
    Session,
    keep_listening,
    listen_filters,
    push_owner,
    retry_with_inputs,
)
from mcpward.guards.base import Refusal
from mcpward.protocol import jsonrpc
from mcpward.protocol import versions as v
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.transport.base import LinkError, MessageLink, SendHints

if TYPE_CHECKING:
    from mcpward.sandbox.launcher import Launcher

log = logging.getLogger("mcpward.upstream")
GATEWAY_INFO = {"name": "mcpward", "version": __version__}
PUSH_CAPABILITY = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}
MAX_BACKOFF = 30.0
UNBOUND_RULE = "credentials.per-principal"


@dataclass(slots=True)
class UpstreamEvents:
    """What an upstream tells the gateway outside of any request."""

    list_changed: Callable[[str, str], None] = lambda _server, _kind: None
    # (server, params, principal key): the key when the update came from one principal's own connection.
    resource_updated: Callable[[str, JsonObj, str | None], None] = lambda _server, _params, _principal: None
    # A request or notification from this server on its way to a client passes the guards' `on_message`
    # (None: nothing watches them). May raise Refusal.
    screen: Callable[[RequestContext, str, str, JsonObj], Awaitable[JsonObj]] | None = None


class Upstream:
    def __init__(self, cfg: ServerConfig, gw: GatewayConfig, events: UpstreamEvents,
                 launcher: Launcher | None = None, principal_key: str | None = None,
                 relist: Relist | None = None) -> None:
        if launcher is None:
            from mcpward.sandbox.launcher import make_launcher

            launcher = make_launcher(gw)
        self.cfg = cfg
        self.launcher = launcher
        self.gw = gw
        self.name = cfg.name
        self.events = events
        self.era: v.Era | None = None
        self.info: JsonObj = {}
        self.error: str | None = None
        self._sessions: dict[str, Session] = {}
        self._spare: MessageLink | None = None
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(cfg.max_in_flight)
        # Our progress token -> the session the request went out on, its client request, the client's token.
        # Tokens are random, and progress counts only from the session that holds the request.
        self._progress: dict[str, tuple[Session, RequestContext, Any]] = {}
        self.stray_messages = 0  # server messages for another session's request or subscription, dropped
        self.principal_key = principal_key  # a per-principal child: the one principal it serves
        self._failures = 0
        self._next_attempt = 0.0
        self._stopping = False
        self._listen_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._resource_uris: set[str] = set()
        self._watch = LegacyWatch(self.name, cfg.timeout)  # legacy subscriptions and log level
        self.changes = ListChanges(self.name, partial(events.list_changed, self.name), relist)  # list_changes.py
        # Per-principal credentials: a child Upstream per principal, stopped when idle. None: one shared set.
        self._pool = PrincipalPool(self.name, cfg.principal_idle_timeout, cfg.max_principal_connections,
                                   self._child) if cfg.principals else None

    # ----------------------------------------------------------------- lifecycle
    async def _open_link(self) -> MessageLink:
        """A new connection to the server: secrets resolved, the process started in its sandbox."""
        link = await self.launcher.link(self.cfg, self.gw.max_message_bytes)
        await link.open()
        return link

    @property
    def capabilities(self) -> JsonObj:
        caps = self.info.get("capabilities")
        return caps if isinstance(caps, dict) else {}

    @property
    def describe(self) -> str:
        return self.launcher.describe(self.cfg)

    @property
    def per_principal(self) -> bool:
        return self._pool is not None

    @property
    def watches_resources(self) -> bool:  # a principal's child with subscriptions is never idle
        return bool(self._resource_uris)

    def _for(self, ctx: RequestContext) -> contextlib.AbstractContextManager[Upstream]:
        """The upstream that serves `ctx`'s principal (this one, or its own child, kept while in use)."""
        return contextlib.nullcontext(self) if self._pool is None else self._pool.using(ctx.principal.key)

    def _child(self, key: str) -> Upstream:
        """A principal's own connection; one without credentials here never borrows another's: refused."""
        cfg = self.cfg.for_principal(key)
        if cfg is None:
            raise self.unbound(key)
        return Upstream(cfg, self.gw, self.events, self.launcher, principal_key=key, relist=self.changes.relist)

    def unbound(self, principal_key: str) -> Refusal:
        return Refusal(UNBOUND_RULE, f"server {self.name!r} has no credentials for {principal_key}")

    def refuses(self, ctx: RequestContext) -> bool:
        """Whether this server has per-principal credentials and none for `ctx`'s principal."""
        return self._pool is not None and ctx.principal.key not in self.cfg.principals

    async def era_for(self, ctx: RequestContext) -> v.Era | None:
        """The era of the server as `ctx` reaches it (probing it first if needed)."""
        with self._for(ctx) as target:
            await target.ensure()
            return target.era

    async def start(self) -> None:
        """Probe the era and keep the connection; errors are recorded, not raised."""
        if self._pool is not None:
            log.info("server %s has per-principal credentials: each principal's connection starts on its "
                     "first request", self.name)
            return
        try:
            await self.ensure(any_session=True)
        except PeerError as exc:
            log.error("server %s failed to start: %s", self.name, exc)

    def _ready(self, any_session: bool) -> bool:
        return self.era is not None and (any_session or self.era == "legacy" or "modern" in self._sessions)

    async def ensure(self, any_session: bool = False) -> None:
        if self._ready(any_session):
            return  # the hot path: no lock once the server is up
        async with self._lock:
            if self._ready(any_session):
                return
            self._refuse_while_backing_off()
            try:
                await self._probe()
                self._failures = 0
                self.error = None
            except (LinkError, PeerError) as exc:
                self._failed()
                self.error = str(exc)
                if isinstance(exc, LinkError):  # why it could not start (a sandbox or secret problem, a crash)
                    log.error("%s", exc)
                raise local_error(jsonrpc.UPSTREAM_UNAVAILABLE, f"server {self.name!r} is unavailable") from exc

    def _failed(self) -> float:
        """One more start or session that failed: the next waits 0.5 s, doubling up to MAX_BACKOFF."""
        self._failures += 1
        delay: float = min(MAX_BACKOFF, 0.25 * 2.0 ** self._failures)
        self._next_attempt = time.monotonic() + delay
        return delay

    def _refuse_while_backing_off(self) -> None:
        """No new process (or legacy session) before the backoff after a failure has passed."""
        wait = self._next_attempt - time.monotonic()
        if wait > 0:
            wait = math.ceil(wait * 10) / 10
            raise local_error(jsonrpc.UPSTREAM_UNAVAILABLE, f"server {self.name!r} is restarting; retry in {wait:.1f}s",
                              {"retryAfterSeconds": wait})

    async def _check_address(self) -> None:
        """A remote server's name must not resolve to a non-public address unless allowed.

        Checked before any connection is made, for a clear probe error. It is not the guard
        against DNS rebinding: the link's transport (transport/vetted_dial.py) resolves again at
        every connect, vets that answer and dials exactly the address it vetted.
        """
        if self.cfg.url is None or self.cfg.allow_private:
            return
        parts = urllib.parse.urlsplit(self.cfg.url)
        problem = await resolution_problem(parts.hostname or "", parts.port or 443)
        if problem is not None:
            raise LinkError(problem)

    async def _probe(self) -> None:
        await self._check_address()
        link = await self._open_link()
        peer = self._attach(link, "modern", "modern")
        params = {"_meta": {v.META_VERSION: v.LATEST_MODERN, v.META_CAPABILITIES: {},
                            v.META_CLIENT_INFO: GATEWAY_INFO}}
        try:
            result = await peer.request("server/discover", params, self.gw.probe_timeout)
        except PeerError as exc:
            if exc.local and exc.code != jsonrpc.REQUEST_TIMEOUT:
                await link.close()
                raise
            raw = exc.error.get("data")
            data: JsonObj = raw if isinstance(raw, dict) else {}
            unreachable = "transport" in data or int(data.get("httpStatus") or 0) >= 500
            if unreachable:
                # A refused connection or a broken server is not a legacy server.
                await link.close()
                raise
            if exc.code == jsonrpc.UNSUPPORTED_PROTOCOL_VERSION and data.get("supported"):
                await link.close()
                raise local_error(jsonrpc.UPSTREAM_UNAVAILABLE,
                                  f"server {self.name!r} speaks none of our modern versions") from exc
            # Any other error, or silence, means legacy (never keyed to one code).
            self.era = "legacy"
            if exc.local and exc.code == jsonrpc.REQUEST_TIMEOUT:
                # A slow dual-era server may still answer the probe and stay modern on this
                # process: the legacy session gets a fresh one.
                await link.close()
            else:
                self._spare = link
            log.info("server %s speaks the legacy (initialize) era", self.name)
            return
        self.era = "modern"
        self.info = result
        self._sessions["modern"] = Session(peer=peer, era="modern", key="modern", info=result)
        self._relisten()
        log.info("server %s speaks %s", self.name, v.LATEST_MODERN)

    def _attach(self, link: MessageLink, key: str, era: v.Era) -> Peer:
        def current() -> Session | None:
            # The live session on this very connection: a late message from a dead process is nobody's.
            session = self._sessions.get(key)
            return session if session is not None and session.peer is peer else None

        async def on_request(message: JsonObj) -> JsonObj:
            return await self._on_push(current(), message)

        def on_notification(message: JsonObj) -> None:
            self._on_notification(current(), message)

        peer = Peer(link, self.name, on_request, on_notification,
                    cancel_by_notification=not (era == "modern" and self.cfg.url is not None))

        def on_closed(reason: str) -> None:
            peer.fail_all(reason)
            self._background(link.close())
            session = self._sessions.get(key)
            if session is not None and session.peer is peer:
                self._drop_session(key)
                self._on_crash(reason)

        link.on_closed = on_closed
        return peer

    def _on_crash(self, reason: str) -> None:
        if self._stopping:
            return
        delay = self._failed()
        log.error("server %s stopped (%s); restarting in %.2fs", self.name, reason, delay)
        if self.era == "modern":
            self.era = None  # re-probe: a restarted server may come back different
        if self.cfg.start == "eager":
            asyncio.get_running_loop().call_later(delay, lambda: asyncio.ensure_future(self._restart()))

    async def _restart(self) -> None:
        if self._stopping:
            return
        with contextlib.suppress(PeerError):
            await self.ensure(any_session=True)

    async def stop(self) -> None:
        self._stopping = True
        self.changes.stop()
        if self._listen_task is not None:
            self._listen_task.cancel()
        sessions, self._sessions = list(self._sessions.values()), {}
        links = [s.peer.link for s in sessions] + ([self._spare] if self._spare else [])
        self._spare = None
        await asyncio.gather(*(link.close() for link in links), *([self._pool.stop()] if self._pool else []),
                             return_exceptions=True)

    async def capabilities_for(self, ctx: RequestContext) -> JsonObj:
        """The server's capabilities as seen by this client (legacy: its session's answer)."""
        if self._pool is not None:
            with self._for(ctx) as child:
                return await child.capabilities_for(ctx)
        session = await self._session_for(ctx)
        caps = session.info.get("capabilities")
        return caps if isinstance(caps, dict) else {}

    # ------------------------------------------------------------------ sessions
    async def _session_for(self, ctx: RequestContext) -> Session:
        await self.ensure()
        if self.era == "modern":
            return self._sessions["modern"]
        # One legacy session per capability set, principal and client connection: pushes and
        # log lines of a legacy server carry no request id, so sharing a session between two
        # clients could hand one client's sampling request to the other.
        key = "|".join((orjson.dumps(ctx.capabilities, option=orjson.OPT_SORT_KEYS).decode(),
                        ctx.principal.key, ctx.connection_id or "stateless"))
        async with self._lock:
            session = self._sessions.get(key)
            if session is not None:
                return session
            self._refuse_while_backing_off()  # a legacy server that keeps crashing is not respawned per request
            self._evict_idle()
            link, self._spare = self._spare, None
            if link is None:
                try:
                    link = await self._open_link()
                except LinkError as exc:
                    self._failed()
                    log.error("%s", exc)
                    raise local_error(jsonrpc.UPSTREAM_UNAVAILABLE, f"server {self.name!r} is unavailable") from exc
            peer = self._attach(link, key, "legacy")
            session = Session(peer=peer, era="legacy", key=key)
            self._sessions[key] = session
            try:
                await self._initialize(session, ctx)
            except PeerError:
                if self._sessions.pop(key, None) is not None:  # not a crash, which on_closed already counted
                    self._failed()
                await link.close()
                raise
            self._failures = 0
            await self._watch.restore(session.key, session.peer, session.info.get("capabilities") or {},
                                      self._resource_uris, ctx.log_level)
            return session

    def _drop_session(self, key: str) -> None:
        del self._sessions[key]
        self._watch.forget(key)

    def _evict_idle(self) -> None:
        if len(self._sessions) < self.cfg.max_sessions:
            return
        idle = [s for s in self._sessions.values() if not s.active]
        if not idle:
            raise local_error(jsonrpc.OVERLOADED,
                              f"server {self.name!r} has {self.cfg.max_sessions} busy sessions; retry later")
        oldest = min(idle, key=lambda s: s.last_used)
        self._drop_session(oldest.key)
        self._background(oldest.peer.link.close())

    async def _initialize(self, session: Session, ctx: RequestContext) -> None:
        version = ctx.protocol_version if ctx.protocol_version in v.LEGACY_VERSIONS else v.LATEST_LEGACY
        params = {"protocolVersion": version, "capabilities": ctx.capabilities,
                  "clientInfo": ctx.client_info or GATEWAY_INFO}
        result = await session.peer.request("initialize", params, self.cfg.timeout)
        session.info = result
        session.client_capabilities = ctx.capabilities
        session.protocol_version = str(result.get("protocolVersion", version))
        self.info = result
        await session.peer.notify("notifications/initialized")
        log.info("server %s: legacy session %s initialised", self.name, session.protocol_version)

    # ---------------------------------------------------------------- forwarding
    async def call(self, ctx: RequestContext, method: str, params: JsonObj,
                   hints: SendHints | None = None) -> JsonObj:
        """Forward one request for `ctx`, bridging eras; returns the result object."""
        if self._pool is not None:
            with self._for(ctx) as child:
                child.changes.principal = ctx.principal  # whom a relist after its change notification runs as
                return await child.call(ctx, method, params, hints)
        deadline = time.monotonic() + self.cfg.timeout
        try:
            if self._slots.locked():  # only a full server pays for a timed wait
                await asyncio.wait_for(self._slots.acquire(), self.cfg.timeout)
            else:
                await self._slots.acquire()
        except TimeoutError:
            raise local_error(jsonrpc.OVERLOADED, f"server {self.name!r} is at its in-flight limit") from None
        try:
            session = await self._session_for(ctx)
            session.last_used = time.monotonic()
            if session.era == "legacy" and ctx.era == "legacy":
                session.last_ctx = ctx
            while True:
                body, token = self._outgoing(session, ctx, params)
                rid = session.peer.next_id()
                session.active[rid] = ctx
                try:
                    result = await session.peer.request(method, body, max(0.0, deadline - time.monotonic()),
                                                        hints, request_id=rid)
                except PeerError as exc:
                    if exc.local and exc.code == jsonrpc.REQUEST_TIMEOUT:  # the code alone is not self-explanatory
                        exc.error.setdefault("data", {"reason": "timeout", "timeoutSeconds": self.cfg.timeout})
                    raise
                finally:
                    session.active.pop(rid, None)
                    if token is not None:
                        self._progress.pop(token, None)
                if result.get("resultType") != "input_required" or ctx.era == "modern":
                    return result
                # A legacy client cannot take InputRequiredResult: ask it, then retry.
                params = await retry_with_inputs(self.name, params, result, partial(self._ask_client, ctx))
        finally:
            self._slots.release()

    def _outgoing(self, session: Session, ctx: RequestContext, params: JsonObj) -> tuple[JsonObj, str | None]:
        meta: JsonObj = dict(ctx.forward_meta)
        token: str | None = None
        if ctx.progress_token is not None:
            token = f"{self.name}-{secrets.token_urlsafe(16)}"  # unguessable: no other session can aim at it
            self._progress[token] = (session, ctx, ctx.progress_token)
            meta["progressToken"] = token
        if session.era == "modern":
            meta[v.META_VERSION] = v.LATEST_MODERN
            meta[v.META_CAPABILITIES] = ctx.capabilities
            if ctx.client_info is not None:
                meta[v.META_CLIENT_INFO] = ctx.client_info
            if ctx.log_level is not None:
                meta[v.META_LOG_LEVEL] = ctx.log_level
        body = {k: val for k, val in params.items() if k != "_meta"}
        if meta:
            body["_meta"] = meta
        return body, token

    async def _ask_client(self, ctx: RequestContext, method: str, params: JsonObj) -> JsonObj:
        capability = PUSH_CAPABILITY.get(method)
        if capability is None:
            raise local_error(jsonrpc.METHOD_NOT_FOUND, f"{method} cannot be sent to clients")
        if not ctx.has_capability(capability):
            raise local_error(jsonrpc.MISSING_REQUIRED_CLIENT_CAPABILITY,
                              f"the client did not declare the {capability!r} capability",
                              {"requiredCapabilities": {capability: {}}})
        if self.events.screen is not None:  # what the server asks reaches a model or a person: guard it
            try:
                params = await self.events.screen(ctx, self.name, method, params)
            except Refusal as refusal:
                error = refusal.to_error()
                raise local_error(error.code, error.message, error.data) from None
        if ctx.channel.can_ask:
            return await ctx.channel.ask(method, params, self.cfg.timeout)
        if ctx.push_sink is not None:
            return await ctx.push_sink(method, params)
        raise local_error(jsonrpc.INTERNAL_ERROR, f"{method} cannot reach this client")

    # -------------------------------------------------------- upstream-initiated
    async def _on_push(self, session: Session | None, message: JsonObj) -> JsonObj:
        method = message["method"]
        params = message.get("params") or {}
        if method == "ping":
            return {}
        ctx = push_owner(session)
        if ctx is None:
            log.warning("server %s sent %s that cannot be tied to one client request; refused", self.name, method)
            raise local_error(jsonrpc.INVALID_REQUEST, f"{method} cannot be tied to one client request")
        return await self._ask_client(ctx, method, params)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_notification(self, session: Session | None, message: JsonObj) -> None:
        method = message["method"]
        params = message.get("params") or {}
        if method == "notifications/progress":
            entry = self._progress.get(str(params.get("progressToken")))
            if entry is None or entry[0] is not session:
                self._stray(method)  # unknown, finished, or another session's request
                return
            _session, progress_ctx, original = entry
            self._background(self._deliver(progress_ctx, method, dict(params, progressToken=original)))
        elif method == "notifications/message":
            owner = push_owner(session)
            if owner is not None and session is not None and v.log_level_allows(
                    owner.log_level, params.get("level"), legacy_pair=owner.era == session.era == "legacy"):
                self._background(self._deliver(owner, method, params))
        elif method.endswith("/list_changed"):
            self.changes.announce(method.split("/")[1], session)
        elif method == "notifications/resources/updated":
            # A legacy session speaks only for what it subscribed: updates reach every client watching the URI.
            if session is None or (session.era == "legacy"
                                   and not self._watch.holds(session.key, params.get("uri"))):
                self._stray(method)
                return
            self.events.resource_updated(self.name, params, self.principal_key)
        elif method not in ("notifications/cancelled", "notifications/subscriptions/acknowledged"):
            log.debug("server %s sent %s; not forwarded", self.name, method)

    def _stray(self, method: str) -> None:
        # Counted, and logged sparingly: a server sending many must not flood our log.
        self.stray_messages += 1
        if self.stray_messages <= 5 or self.stray_messages % 1000 == 0:
            log.warning("server %s sent %s that belongs to no request or subscription of that session; dropped "
                        "(%d so far)", self.name, method, self.stray_messages)

    async def _deliver(self, ctx: RequestContext, method: str, params: JsonObj) -> None:
        """A notification to the client, through the guards' `on_message` (a refusal drops it; the guard audits)."""
        if self.events.screen is not None:
            try:
                params = await self.events.screen(ctx, self.name, method, params)
            except Refusal:
                return
        await ctx.channel.notify(jsonrpc.notification(method, params))

    # ------------------------------------------------------------- session-wide
    def _sessions_of(self, ctx: RequestContext) -> list[Session]:
        """The live legacy sessions of `ctx`'s client connection (legacy sessions are per connection),
        never another client's, another principal's, or the gateway's own."""
        owner = f"|{ctx.principal.key}|{ctx.connection_id or 'stateless'}"
        return [s for s in self._sessions.values() if s.era == "legacy" and s.key.endswith(owner)]

    async def set_log_level(self, ctx: RequestContext, level: str) -> None:
        """Legacy `logging/setLevel` reaches `ctx`'s own sessions that offer logging (its later sessions
        start at the level `ctx` carries): one client asking for `emergency` never silences another."""
        child = self._pool.get(ctx.principal.key) if self._pool else None
        if child is not None:
            await child.set_log_level(ctx, level)
        for session in self._sessions_of(ctx):
            if "logging" in (session.info.get("capabilities") or {}):
                with contextlib.suppress(PeerError):
                    await session.peer.request("logging/setLevel", {"level": level}, self.cfg.timeout)

    async def roots_changed(self, ctx: RequestContext) -> None:
        """A legacy client's `notifications/roots/list_changed` reaches `ctx`'s own sessions whose initialize
        declared roots. A stateless request has no session of its own to tell."""
        if ctx.connection_id is None:
            return
        child = self._pool.get(ctx.principal.key) if self._pool else None
        if child is not None:
            await child.roots_changed(ctx)
        for session in self._sessions_of(ctx):
            if "roots" in session.client_capabilities:
                with contextlib.suppress(LinkError):
                    await session.peer.notify("notifications/roots/list_changed")

    # ------------------------------------------------------------ subscriptions
    async def subscribe(self, ctx: RequestContext, all_uris: set[str]) -> None:
        """Make sure the upstream tells us about changes to every URI in `all_uris`."""
        if self._pool is not None:
            # `all_uris` is what this principal asked for now: its connection watches that and what it
            # already watched, never other principals' URIs.
            with self._for(ctx) as target:
                await target.subscribe(ctx, target._resource_uris | all_uris)
            return
        await self.ensure()
        self._resource_uris = set(all_uris)
        if self.era == "modern":
            self._relisten()
            return
        session = await self._session_for(ctx)
        held = self._watch.held()  # one live session watching a URI is enough: updates fan out by URI
        for wanted in sorted(all_uris - held):
            await self.call(ctx, "resources/subscribe", {"uri": wanted})
            self._watch.record(session.key, wanted)

    async def unsubscribe(self, ctx: RequestContext, uri: str, all_uris: set[str]) -> None:
        if self._pool is not None:
            with self._for(ctx) as target:
                await target.unsubscribe(ctx, uri, target._resource_uris - {uri})
            return
        self._resource_uris = set(all_uris)
        if self.era == "modern":
            self._relisten()
            return
        await self._watch.unsubscribe(uri, self._peer_of)

    def _relisten(self) -> None:
        """(Re)open the gateway's own `subscriptions/listen` on a modern upstream."""
        if self._listen_task is not None:
            self._listen_task.cancel()
        self._listen_task = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        meta = {v.META_VERSION: v.LATEST_MODERN, v.META_CAPABILITIES: {}, v.META_CLIENT_INFO: GATEWAY_INFO}
        await keep_listening(self.name, listen_filters(self.capabilities, self._resource_uris), meta,
                             lambda: None if self._stopping else self._modern_peer())

    def _modern_peer(self) -> Peer | None:
        session = self._sessions.get("modern")
        return None if session is None else session.peer

    def _peer_of(self, key: str) -> Peer | None:
        session = self._sessions.get(key)
        return None if session is None else session.peer
