"""An upstream's sessions: to whom their messages belong, and what they watch for the gateway.

A legacy push or log line carries no request id, so it belongs to the one client request in
flight on its session (`push_owner`), or to nobody when that is ambiguous.

Legacy servers subscribe per session, so the gateway records which live session holds each URI
(one is enough: updates fan out to clients by URI). When a session ends (a crash, an eviction), what
it held is subscribed again on the next session that starts, together with the last
`logging/setLevel`; a session may only report updates for what it subscribed itself.
Modern servers are watched through one `subscriptions/listen` the gateway keeps open; its filters
come from `listen_filters`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mcpward.gateway.context import RequestContext
from mcpward.gateway.peer import Peer, PeerError, local_error
from mcpward.protocol import jsonrpc
from mcpward.protocol import versions as v
from mcpward.protocol.jsonrpc import JsonObj

log = logging.getLogger("mcpward.upstream")
LISTEN_TIMEOUT = 365 * 24 * 3600.0


@dataclass(slots=True)
class Session:
    peer: Peer
    era: v.Era
    key: str
    info: JsonObj = field(default_factory=dict)  # initialize or discover result
    client_capabilities: JsonObj = field(default_factory=dict)  # what the gateway declared at initialize
    protocol_version: str = v.LATEST_MODERN
    active: dict[int, RequestContext] = field(default_factory=dict)
    last_ctx: RequestContext | None = None
    last_used: float = field(default_factory=time.monotonic)


def owner_of(ctx: RequestContext) -> object:
    """Requests of one legacy client connection share an owner; stateless requests are their own."""
    return ctx.connection_id if ctx.connection_id is not None else id(ctx)


def push_owner(session: Session | None) -> RequestContext | None:
    """The client request a push or a log line belongs to.

    Legacy stdio carries no request correlation, so: the oldest request in
    flight on this session, else the last legacy client that used it.
    """
    if session is None:
        return None
    if session.active:
        owners = {owner_of(ctx) for ctx in session.active.values()}
        if len(owners) > 1:
            return None  # ambiguous between clients: refuse rather than guess
        return session.active[min(session.active)]
    return session.last_ctx


class LegacyWatch:
    def __init__(self, server: str, timeout: float) -> None:
        self.server = server
        self.timeout = timeout
        self.by_session: dict[str, set[str]] = {}  # live legacy session key -> URIs it subscribed

    def held(self) -> set[str]:
        return set().union(*self.by_session.values())

    def holds(self, session_key: str, uri: object) -> bool:
        return uri in self.by_session.get(session_key, ())

    def record(self, session_key: str, uri: str) -> None:
        self.by_session.setdefault(session_key, set()).add(uri)

    def forget(self, session_key: str) -> None:
        """A session ended: what it subscribed is no longer watched by anyone."""
        self.by_session.pop(session_key, None)

    async def restore(self, session_key: str, peer: Peer, capabilities: JsonObj, wanted: set[str],
                      log_level: str | None) -> None:
        """A new session takes over what lost sessions had set up: its client's log level, and every URI
        still `wanted` that no live session holds."""
        if log_level is not None and "logging" in capabilities:
            try:
                await peer.request("logging/setLevel", {"level": log_level}, self.timeout)
            except PeerError as exc:
                log.warning("server %s: logging/setLevel on a new session failed: %s", self.server, exc)
        orphans = wanted - self.held()
        done = self.by_session.setdefault(session_key, set())
        for uri in sorted(orphans):
            try:
                await peer.request("resources/subscribe", {"uri": uri}, self.timeout)
            except PeerError as exc:
                log.warning("server %s: re-subscribing to %s on a new session failed: %s", self.server, uri, exc)
                continue
            done.add(uri)
            log.info("server %s: subscription to %s restored on a new session", self.server, uri)

    async def unsubscribe(self, uri: str, peer_of: Callable[[str], Peer | None]) -> None:
        """Unsubscribe `uri` on the session that subscribed it (not the caller's)."""
        for key, done in list(self.by_session.items()):
            peer = peer_of(key)
            if uri in done and peer is not None:
                done.discard(uri)
                with contextlib.suppress(PeerError):
                    await peer.request("resources/unsubscribe", {"uri": uri}, self.timeout)


def listen_filters(capabilities: JsonObj, uris: set[str]) -> JsonObj:
    """The filters of the gateway's own `subscriptions/listen` on a modern upstream: the list changes
    the server announces, and the resources clients watch when it offers subscriptions."""
    wanted: JsonObj = {}
    for kind, flag in (("tools", "toolsListChanged"), ("prompts", "promptsListChanged"),
                       ("resources", "resourcesListChanged")):
        offered = capabilities.get(kind)
        if isinstance(offered, dict) and offered.get("listChanged"):
            wanted[flag] = True
    resources = capabilities.get("resources")
    if uris and isinstance(resources, dict) and resources.get("subscribe"):
        wanted["resourceSubscriptions"] = sorted(uris)
    return wanted


async def keep_listening(server: str, filters: JsonObj, meta: JsonObj, peer: Callable[[], Peer | None]) -> None:
    """Hold the gateway's `subscriptions/listen` open on a modern upstream, opening it again when the
    server ends the stream, until `peer()` is None (stopping, or the session is gone: a restart
    re-opens it after the probe) or the server does not offer the method."""
    if not filters:
        return
    params = {"_meta": meta, "notifications": filters}
    while (current := peer()) is not None:
        try:
            await current.request("subscriptions/listen", params, LISTEN_TIMEOUT)
        except PeerError as exc:
            if exc.code in (jsonrpc.METHOD_NOT_FOUND, jsonrpc.INVALID_PARAMS):
                log.info("server %s does not offer subscriptions/listen", server)
                return
        await asyncio.sleep(1.0)  # the server ended the stream: listen again


async def retry_with_inputs(server: str, params: JsonObj, result: JsonObj,
                            ask: Callable[[str, JsonObj], Awaitable[JsonObj]]) -> JsonObj:
    """A modern server's InputRequiredResult for a client that cannot take one (legacy): each input
    request is asked of the client with `ask`, and the params of the retry carry the answers."""
    requests = result.get("inputRequests") or {}
    if not isinstance(requests, dict):
        raise local_error(jsonrpc.INTERNAL_ERROR, f"server {server!r} sent malformed inputRequests")
    responses: JsonObj = {}
    for key, req in requests.items():
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            raise local_error(jsonrpc.INTERNAL_ERROR, f"server {server!r} sent a malformed input request")
        responses[key] = await ask(req["method"], req.get("params") or {})
    retry = {k: val for k, val in params.items() if k not in ("inputResponses", "requestState")}
    retry["inputResponses"] = responses
    if "requestState" in result:
        retry["requestState"] = result["requestState"]
    return retry
