"""The gateway: routes each client request to the right upstream through the guards.

Fronts (stdio, HTTP) turn bytes into a RequestContext plus (method, params) and
call `Gateway.handle`; everything here is transport-agnostic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mcpward import __version__
from mcpward.gateway.accounting import Accounting
from mcpward.gateway.bridge import InputBridge, open_upstream_state, seal_upstream_state
from mcpward.gateway.catalog import Catalog, Entry
from mcpward.gateway.config import GatewayConfig
from mcpward.gateway.context import Principal, RequestContext, system_context
from mcpward.gateway.listing import Lister
from mcpward.gateway.peer import PeerError, local_error
from mcpward.gateway.subscriptions import Subscriptions
from mcpward.gateway.upstream import GATEWAY_INFO, Upstream, UpstreamEvents
from mcpward.guards.base import Call, GuardChain, Refusal, audit_refusal
from mcpward.protocol import jsonrpc
from mcpward.protocol import versions as v
from mcpward.protocol.jsonrpc import JsonObj, ProtocolError
from mcpward.protocol.sealing import Sealer, is_sealed
from mcpward.sandbox.launcher import Launcher, make_launcher
from mcpward.transport.base import SendHints

log = logging.getLogger("mcpward.gateway")
Handler = Callable[[RequestContext, JsonObj], Awaitable[JsonObj]]

# Removed in 2026-07-28: a modern client asking for them gets "method not found".
# Which listed definition a forwarded method acts on (completion is left to its ref).
DEFINITION_KIND = {"tools/call": "tools", "prompts/get": "prompts", "resources/read": "resources"}
LISTED_BY_NAME = frozenset({"tools", "prompts"})  # resources are also read by URIs no list names (templates)

SCHEMA_RELIST_SECONDS = 1.0  # how often an unknown name in a routing-header check may list tools again
LEGACY_ONLY = frozenset({"resources/subscribe", "resources/unsubscribe", "logging/setLevel", "ping"})

GATEWAY_CAPABILITIES: JsonObj = {
    "tools": {"listChanged": True},
    "prompts": {"listChanged": True},
    "resources": {"subscribe": True, "listChanged": True},
    "completions": {},
    "logging": {},
}


class Gateway:
    def __init__(self, cfg: GatewayConfig, guards: GuardChain | None = None,
                 launcher: Launcher | None = None) -> None:
        self.cfg = cfg
        self.guards = guards or GuardChain()
        self.sealer = Sealer()
        self.bridge = InputBridge(self.sealer)
        self.catalog = Catalog(cfg.servers, cfg.separator)
        self.subscriptions = Subscriptions()
        events = UpstreamEvents(list_changed=self._on_list_changed, resource_updated=self._on_resource_updated,
                                screen=self.guards.message if self.guards.watches_messages else None)
        self.launcher = launcher or make_launcher(cfg)
        self.upstreams = {name: Upstream(scfg, cfg, events, self.launcher) for name, scfg in cfg.servers.items()}
        self.lister = Lister(self.upstreams, self.catalog, self.guards, self.sealer)
        self._schema_relist = asyncio.Lock()
        self._schema_relisted = float("-inf")
        self.guards.bind(self)
        self._policy_guard: Any = next((g for g in self.guards.guards if hasattr(g, "engine")), None)
        # The limits' door: counts every request against its principal before any work on it (lists and
        # unknown names too, which never reach the guard chain). See docs/limits.md.
        self._door: Any = self._hook("admit_request")
        # What a server's instructions pass on their way to a client (each None when no guard has it): the
        # integrity guard's scan and pins, the policy's view of the server, the output guard's redaction.
        self._instructions_shown: Any = self._hook("instructions_shown")
        self._server_visible: Any = self._hook("server_visible")
        self._instructions_redacted: Any = self._hook("instructions_redacted")
        self.accounting = Accounting(cfg, policy_hash=self.policy_hash)
        self._handlers: dict[str, Handler] = {
            "tools/list": lambda c, p: self.lister.list(c, "tools", p),
            "prompts/list": lambda c, p: self.lister.list(c, "prompts", p),
            "resources/list": lambda c, p: self.lister.list(c, "resources", p),
            "resources/templates/list": lambda c, p: self.lister.list(c, "resourceTemplates", p),
            "tools/call": lambda c, p: self._named_call(c, "tools", "tools/call", p),
            "prompts/get": lambda c, p: self._named_call(c, "prompts", "prompts/get", p),
            "resources/read": self._read_resource,
            "completion/complete": self._complete,
            "resources/subscribe": self._subscribe,
            "resources/unsubscribe": self._unsubscribe,
            "server/discover": self._discover,
            "ping": self._ping,
        }

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        eager = [u.start() for u in self.upstreams.values() if u.cfg.start == "eager"]
        await asyncio.gather(*eager)

    async def stop(self) -> None:
        await self.bridge.close()
        await asyncio.gather(*(u.stop() for u in self.upstreams.values()), return_exceptions=True)
        await self.launcher.aclose()  # idle warm sandbox slots: their stubs and cgroups

    def lists_changed(self, kinds: tuple[str, ...] = ("tools", "prompts", "resources")) -> None:
        """Tell listening clients to list again (the policy that filters lists was reloaded)."""
        for kind in kinds:
            self.subscriptions.broadcast(jsonrpc.notification(f"notifications/{kind}/list_changed"), list_kind=kind)

    def _hook(self, name: str) -> Any:
        """The first guard's method called `name`, or None: hooks the core calls outside the chain's order."""
        return next((getattr(g, name) for g in self.guards.guards if hasattr(g, name)), None)

    def policy_hash(self) -> str | None:
        """The version of the policy deciding now (its guard may swap engines on reload)."""
        if self._policy_guard is None:
            return None
        found: str | None = getattr(self._policy_guard.engine, "policy_hash", None)
        return found

    def server_instructions(self, server: str) -> str | None:
        upstream = self.upstreams.get(server)
        text = None if upstream is None else upstream.info.get("instructions")
        return text if isinstance(text, str) else None

    async def relist(self, kind: str, principal: Principal | None = None) -> None:
        """List `kind` again from every server; servers with per-principal credentials only when a
        principal is given, and then as that principal (the gateway has no credentials of its own there)."""
        await self.lister.refresh(system_context(), kind)
        own = [name for name, upstream in self.upstreams.items() if upstream.per_principal]
        if principal is not None and own:
            await self.lister.refresh(system_context(principal), kind, own)

    def instructions(self, ctx: RequestContext | None = None) -> str | None:
        """The servers' instructions, each as `[server] text`. Left out: a server's held instructions
        (the integrity guard's scan and pins), and for `ctx`'s principal the instructions of a server
        whose lists the policy shows it nothing of (they describe tools it may not see)."""
        shown, visible, redacted = self._instructions_shown, self._server_visible, self._instructions_redacted
        parts = []
        for name, upstream in self.upstreams.items():
            text = upstream.info.get("instructions")
            if isinstance(text, str) and text.strip() and (shown is None or shown(name, text)) \
                    and (visible is None or ctx is None or visible(ctx, name)):
                text = text if redacted is None else redacted(name, text)
                if text is not None and text.strip():
                    parts.append(f"[{name}] {text.strip()}")
        return "\n\n".join(parts) or None

    def server_result(self, ctx: RequestContext | None = None) -> JsonObj:
        """Fields shared by the `initialize` and `server/discover` answers (for `ctx`'s principal)."""
        body: JsonObj = {"capabilities": GATEWAY_CAPABILITIES}
        text = self.instructions(ctx)
        if text:
            body["instructions"] = text
        return body

    def serves(self, method: str, era: str) -> bool:
        return method in self._handlers and not (era == "modern" and method in LEGACY_ONLY)

    async def tool_schema(self, exposed: str, principal: Principal | None = None) -> Any:
        """The input schema of an exposed tool (for the routing-header check), listing again if unknown.

        That check runs before the request is counted against its principal, so an unknown name
        lists again at most once per SCHEMA_RELIST_SECONDS for everyone: a client sending made-up
        names cannot make every upstream list its tools once per request."""
        entry = self.catalog.resolve("tools", exposed)
        if entry is not None and self.lister.definition("tools", entry.server, entry.name) is not None:
            return self.lister.schema(entry.server, entry.name)
        async with self._schema_relist:
            if time.monotonic() - self._schema_relisted >= SCHEMA_RELIST_SECONDS:
                self._schema_relisted = time.monotonic()
                await self.relist("tools", principal)
        entry = self.catalog.resolve("tools", exposed)
        return self.lister.schema(entry.server, entry.name) if entry else None

    # ------------------------------------------------------------------ dispatch
    async def admit(self, ctx: RequestContext, method: str, params: JsonObj) -> None:
        """The limits' door: the request counts against its principal (or is refused) before any work."""
        if self._door is not None:
            await self._door(ctx, method, params)

    async def handle(self, ctx: RequestContext, method: str, params: JsonObj) -> JsonObj:
        await self.admit(ctx, method, params)
        if not self.serves(method, ctx.era):
            raise ProtocolError(jsonrpc.METHOD_NOT_FOUND, f"method not found: {method}")
        result = await self._handlers[method](ctx, params)
        return stamp_modern(result, method) if ctx.era == "modern" else strip_modern(result)

    async def _ping(self, ctx: RequestContext, params: JsonObj) -> JsonObj:
        return {}

    async def _discover(self, ctx: RequestContext, params: JsonObj) -> JsonObj:
        # Instructions are shown per principal when the policy's answers depend on who asks.
        private = self._policy_guard is not None and self._policy_guard.engine.bundle.per_requester
        return {**self.server_result(ctx), "supportedVersions": list(v.MODERN_VERSIONS),
                "resultType": "complete", "ttlMs": 0, "cacheScope": "private" if private else "public"}

    async def _named_call(self, ctx: RequestContext, kind: str, method: str, params: JsonObj) -> JsonObj:
        name = params.get("name")
        if not isinstance(name, str):
            raise ProtocolError(jsonrpc.INVALID_PARAMS, f"{method} needs a string 'name'")
        entry = await self._resolve_named(ctx, kind, name)
        upstream_params = params if entry.name == name else {**params, "name": entry.name}
        return await self._forward(ctx, entry.server, method, upstream_params, entry.name, name)

    async def _resolve_named(self, ctx: RequestContext, kind: str, name: str) -> Entry:
        """Exposed tool or prompt name -> (server, upstream name), listing once when unknown.

        Only unprefixed servers can own a name the catalog has not seen; prefixed names route
        by their prefix, so a miss there is final and costs no listing.
        """
        entry = self.catalog.resolve(kind, name)
        if entry is None and self.catalog.unprefixed_servers():
            await self.lister.refresh(ctx, kind)
            entry = self.catalog.resolve(kind, name)
        if entry is None or entry.server not in self.upstreams:
            noun = "tool" if kind == "tools" else "prompt"
            raise ProtocolError(jsonrpc.INVALID_PARAMS, f"unknown {noun}: {name}")
        return entry

    async def _read_resource(self, ctx: RequestContext, params: JsonObj) -> JsonObj:
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise ProtocolError(jsonrpc.INVALID_PARAMS, "resources/read needs a string 'uri'")
        server = await self._server_for_uri(ctx, uri)
        return await self._forward(ctx, server, "resources/read", params, uri, uri)

    async def _server_for_uri(self, ctx: RequestContext, uri: str) -> str:
        server = self.catalog.resolve_uri(uri)
        if server is None:
            await self.lister.refresh(ctx, "resources")
            await self.lister.refresh(ctx, "resourceTemplates")
            server = self.catalog.resolve_uri(uri)
        if server is None:
            # 2026-07-28 moved "resource not found" to -32602 (SEP-2164).
            raise ProtocolError(jsonrpc.INVALID_PARAMS, f"Resource not found: {uri}", {"uri": uri})
        return server

    async def _complete(self, ctx: RequestContext, params: JsonObj) -> JsonObj:
        ref = params.get("ref")
        if not isinstance(ref, dict):
            raise ProtocolError(jsonrpc.INVALID_PARAMS, "completion/complete needs a 'ref' object")
        if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
            entry = await self._resolve_named(ctx, "prompts", ref["name"])
            return await self._forward(ctx, entry.server, "completion/complete",
                                       {**params, "ref": {**ref, "name": entry.name}}, entry.name, ref["name"])
        if ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
            server = await self._server_for_uri(ctx, ref["uri"])
            return await self._forward(ctx, server, "completion/complete", params, ref["uri"], ref["uri"])
        raise ProtocolError(jsonrpc.INVALID_PARAMS, "unsupported completion reference")

    async def _subscribe(self, ctx: RequestContext, params: JsonObj) -> JsonObj:
        uri = params.get("uri")
        if not isinstance(uri, str) or ctx.session_id is None:
            raise ProtocolError(jsonrpc.INVALID_PARAMS, "resources/subscribe needs a 'uri' and a legacy session")
        server = await self._server_for_uri(ctx, uri)
        await self._check_subscription(ctx, server, uri)
        first = self.subscriptions.add_resource(ctx.session_id, server, uri)
        upstream = self.upstreams[server]
        if upstream.per_principal:  # each principal's own connection subscribes to what it asked for
            first, uris = True, {uri}
        else:
            uris = self.subscriptions.uris_for(server)
        if first:
            try:
                await upstream.subscribe(ctx, uris)
            except Refusal as refusal:
                self.subscriptions.remove_resource(ctx.session_id, uri)
                audit_refusal(Call(ctx=ctx, method="resources/subscribe", params=params, server=server,
                                   target=uri, exposed=uri), refusal.rule)
                raise refusal.to_error() from None
        return {}

    async def _unsubscribe(self, ctx: RequestContext, params: JsonObj) -> JsonObj:
        uri = params.get("uri")
        if not isinstance(uri, str) or ctx.session_id is None:
            raise ProtocolError(jsonrpc.INVALID_PARAMS, "resources/unsubscribe needs a 'uri' and a legacy session")
        server = self.subscriptions.remove_resource(ctx.session_id, uri)
        if server is not None and uri not in self.subscriptions.uris_for(server):
            with contextlib.suppress(Refusal):  # nothing was subscribed for a principal without credentials
                await self.upstreams[server].unsubscribe(ctx, uri, self.subscriptions.uris_for(server))
        return {}

    async def _check_subscription(self, ctx: RequestContext, server: str, uri: str) -> None:
        """Watching a resource needs the same permission as reading it."""
        if self.guards.empty:
            return
        call = Call(ctx=ctx, method="resources/subscribe", params={"uri": uri}, server=server, target=uri,
                    exposed=uri, definition=self.lister.definition("resources", server, uri))
        try:
            await self.guards.request(call)
        except Refusal as refusal:
            audit_refusal(call, refusal.rule)
            raise refusal.to_error() from None

    # ---------------------------------------------------------------- forwarding
    async def _forward(self, ctx: RequestContext, server: str, method: str, params: JsonObj,
                       target: str, exposed: str) -> JsonObj:
        upstream = self.upstreams[server]
        call = Call(ctx=ctx, method=method, params=params, server=server, target=target, exposed=exposed)
        ctx.call = call  # the request's audit record reads what the guards noted
        if upstream.refuses(ctx):  # per-principal credentials, none for this principal: first, whatever it asks
            refusal = upstream.unbound(ctx.principal.key)
            audit_refusal(call, refusal.rule)
            raise refusal.to_error()
        kind = DEFINITION_KIND.get(method, "")
        call.definition = self.lister.definition(kind, server, target)
        if call.definition is None and kind in LISTED_BY_NAME:
            # Called by a name before anything listed it (a client may call without listing): list first,
            # so every guard sees the definition (the argument guard's schema and parameter kinds, the
            # policy's annotations), not only the integrity guard, which would list for itself.
            # That server only (a made-up name must not make every server list), as the caller where only
            # a principal's own credentials reach it.
            await self.lister.refresh(system_context(ctx.principal if upstream.per_principal else None), kind,
                                      [server])
            call.definition = self.lister.definition(kind, server, target)
        if self.guards.empty:
            return await self._dispatch(ctx, upstream, call)
        try:
            answered = await self.guards.request(call)
            if answered is not None:
                return answered
            try:
                result = await self._dispatch(ctx, upstream, call)
            except PeerError as exc:
                code = exc.error.get("code")
                error = ProtocolError(code if isinstance(code, int) else jsonrpc.INTERNAL_ERROR,
                                      str(exc.error.get("message", "")), exc.error.get("data"))
                if exc.local:
                    # The gateway's own failure (timeout, crashed upstream): error hooks observe it
                    # (circuit breakers) but the client keeps the gateway's message.
                    call.notes["gateway_error"] = True
                    await self.guards.error(call, error)
                    raise
                raise await self.guards.error(call, error) from None
            result = await self.guards.result(call, result)
        except Refusal as refusal:
            audit_refusal(call, refusal.rule)
            if refusal.as_tool_error and method == "tools/call":
                return refusal.to_tool_result()
            raise refusal.to_error() from None
        return result

    async def _dispatch(self, ctx: RequestContext, upstream: Upstream, call: Call) -> JsonObj:
        method, params = call.method, call.params
        hints = self.lister.header_hints(upstream.name, call) if upstream.cfg.url else None
        if "requestState" in params:
            # Every requestState a client holds was sealed here: the bridge's own, or a modern upstream's
            # bound to its principal. A bare one is refused: it could be another principal's.
            if not is_sealed(params["requestState"]):
                raise local_error(jsonrpc.INVALID_PARAMS, "requestState refused: not issued by this gateway")
            state = self.bridge.unseal(params["requestState"])
            if state.get("kind") != "upstream":
                return await self.bridge.resume(ctx, upstream.name, method, params, state)
            params = open_upstream_state(state, ctx, upstream.name, method, params)
        needs_bridge = (ctx.era == "modern" and not ctx.channel.can_ask
                        and method in ("tools/call", "prompts/get", "resources/read"))
        if needs_bridge and await upstream.era_for(ctx) == "legacy":
            async def forward(c: RequestContext) -> JsonObj:
                return await upstream.call(c, method, params, hints)

            return await self.bridge.start(ctx, upstream.name, method, params, forward)
        result = await upstream.call(ctx, method, params, hints)
        if ctx.era == "modern":
            return seal_upstream_state(self.sealer, ctx, upstream.name, method, call.params, result)
        return result

    # ------------------------------------------------------- upstream-initiated
    def _on_list_changed(self, server: str, kind: str) -> None:
        # The upstream has already listed itself again (gateway/list_changes.py), so the guards (pinning)
        # saw the change before any client is told.
        self.subscriptions.broadcast(jsonrpc.notification(f"notifications/{kind}/list_changed"), list_kind=kind)

    def _on_resource_updated(self, server: str, params: JsonObj, principal: str | None = None) -> None:
        """By (server, URI): a client watching mail://inbox on one server hears nothing of another
        server's mail://inbox; from a server with per-principal credentials, only the principal whose
        connection sent it hears it (the server's own, shared connection has nothing to say there)."""
        uri = params.get("uri")
        upstream = self.upstreams.get(server)
        if not isinstance(uri, str) or upstream is None or (upstream.per_principal and principal is None):
            return
        body = {k: val for k, val in params.items() if k != "_meta"}
        self.subscriptions.resource_updated(
            server, uri, jsonrpc.notification("notifications/resources/updated", body), principal)

    async def listen(self, ctx: RequestContext, request_id: Any, params: JsonObj,
                     send: Callable[[JsonObj], Awaitable[None]]) -> None:
        """Serve a modern `subscriptions/listen` until the client cancels it."""
        await self.admit(ctx, "subscriptions/listen", params)
        wanted = listen_filters(params)
        agreed: JsonObj = {k: val for k, val in wanted.items() if k in LIST_FILTERS and val is True}
        uris: list[str] = wanted.get("resourceSubscriptions", [])
        routed: list[tuple[str, str]] = []
        for uri in uris:
            try:
                server = await self._server_for_uri(ctx, uri)
                await self._check_subscription(ctx, server, uri)
            except ProtocolError:
                continue  # unknown or refused URIs are left out of the acknowledgement
            routed.append((server, uri))
        if routed:
            agreed["resourceSubscriptions"] = [u for _s, u in routed]
        meta = {v.META_SUBSCRIPTION_ID: request_id}
        listener = self.subscriptions.add_listener(agreed, send, meta, principal=ctx.principal.key)
        new_servers = [s for s, u in routed if self.subscriptions.add_resource(listener, s, u)]
        try:
            for server in sorted(set(new_servers)):
                upstream = self.upstreams[server]
                # A per-principal server: this principal's own connection watches only what it asked for.
                watched = ({u for s, u in routed if s == server} if upstream.per_principal
                           else self.subscriptions.uris_for(server))
                await upstream.subscribe(ctx, watched)
            await send(jsonrpc.notification("notifications/subscriptions/acknowledged",
                                            {"_meta": meta, "notifications": agreed}))
            await asyncio.Event().wait()  # until the front cancels us
        finally:
            self.subscriptions.remove_listener(listener)

    async def set_log_level(self, ctx: RequestContext, level: str) -> None:
        """A legacy client's `logging/setLevel`, applied to that client's own upstream sessions only
        (legacy sessions are per client connection)."""
        await asyncio.gather(*(u.set_log_level(ctx, level) for u in self.upstreams.values()))

    async def roots_changed(self, ctx: RequestContext) -> None:
        """A legacy client's `notifications/roots/list_changed`: counted at the limits' door like a
        request (a refusal is audited and raised), then passed to that client connection's own upstream
        sessions that declared roots (legacy sessions are per client connection)."""
        await self.admit(ctx, "notifications/roots/list_changed", {})
        await asyncio.gather(*(u.roots_changed(ctx) for u in self.upstreams.values()), return_exceptions=True)


LIST_FILTERS = ("toolsListChanged", "promptsListChanged", "resourcesListChanged")


def listen_filters(params: JsonObj) -> JsonObj:
    """The `notifications` filters of a `subscriptions/listen`, checked: a malformed filter is
    invalid params (-32602), not a listen for nothing the client would wait on forever."""
    wanted = params.get("notifications", {})
    if not isinstance(wanted, dict):
        raise ProtocolError(jsonrpc.INVALID_PARAMS, "subscriptions/listen: 'notifications' must be an object")
    for flag in LIST_FILTERS:
        if flag in wanted and not isinstance(wanted[flag], bool):
            raise ProtocolError(jsonrpc.INVALID_PARAMS, f"subscriptions/listen: '{flag}' must be a boolean")
    uris = wanted.get("resourceSubscriptions", [])
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        raise ProtocolError(jsonrpc.INVALID_PARAMS,
                            "subscriptions/listen: 'resourceSubscriptions' must be an array of URI strings")
    return wanted


CACHEABLE = frozenset({"tools/list", "prompts/list", "resources/list", "resources/templates/list",
                       "resources/read", "server/discover"})


def stamp_modern(result: JsonObj, method: str) -> JsonObj:
    """Make a result whole for a 2026-07-28 client, whatever era the upstream spoke.

    Modern results name the server that answered (the gateway, not the upstream), carry
    `resultType`, and cacheable ones `ttlMs`/`cacheScope`; a legacy upstream sends none of
    these. Unknown cacheability defaults to private and not cached.
    """
    # In place, no copy: every result is parsed fresh for this one request, so nobody else holds it.
    meta = result.get("_meta")
    if isinstance(meta, dict):
        meta[v.META_SERVER_INFO] = GATEWAY_INFO
    else:
        result["_meta"] = {v.META_SERVER_INFO: GATEWAY_INFO}
    result.setdefault("resultType", "complete")
    if method in CACHEABLE:
        result.setdefault("ttlMs", 0)
        result.setdefault("cacheScope", "private")
    return result


def strip_modern(result: JsonObj) -> JsonObj:
    """A legacy client gets no upstream identity stamp (it would leak which server answered)."""
    meta = result.get("_meta")
    if isinstance(meta, dict) and v.META_SERVER_INFO in meta:
        del meta[v.META_SERVER_INFO]
        if not meta:
            del result["_meta"]
    return result


__all__ = ["GATEWAY_CAPABILITIES", "Gateway", "PeerError", "SendHints", "__version__", "local_error"]
