"""Aggregated lists across servers: namespacing, guard filtering and one opaque cursor.

A gateway cursor is sealed (HMAC, expiry) `{server index, upstream cursor, list kind,
principal}`, the upstream cursor encrypted (AES-GCM under a per-process key): the client
pages through server after server without learning, or being able to forge, either part,
and a cursor works only for the principal it was issued to, on the list it came from,
for CURSOR_TTL seconds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mcpward.gateway.catalog import Catalog
from mcpward.gateway.context import RequestContext
from mcpward.gateway.peer import PeerError
from mcpward.gateway.upstream import Upstream
from mcpward.guards.base import Call, GuardChain, Listed, Refusal, audit_refusal
from mcpward.protocol import headers, jsonrpc
from mcpward.protocol.jsonrpc import JsonObj, ProtocolError
from mcpward.protocol.sealing import Sealer, SealError
from mcpward.transport.base import SendHints

log = logging.getLogger("mcpward.listing")
METHODS = {"tools": "tools/list", "prompts": "prompts/list", "resources": "resources/list",
           "resourceTemplates": "resources/templates/list"}
# The field that names an item of each kind of list.
IDENTITY_KEY = {"tools": "name", "prompts": "name", "resources": "uri", "resourceTemplates": "uriTemplate"}
CAPABILITY = {"tools": "tools", "prompts": "prompts", "resources": "resources", "resourceTemplates": "resources"}
CURSOR_TTL = 3600.0  # long enough to page through any list by hand; a lost cursor restarts the listing


ItemList = list[JsonObj]
ListedItems = list[Listed]


class Lister:
    def __init__(self, upstreams: dict[str, Upstream], catalog: Catalog, guards: GuardChain,
                 sealer: Sealer) -> None:
        self.upstreams = upstreams
        self.order = catalog.ranked(list(upstreams))
        self.catalog = catalog
        self.guards = guards
        self.sealer = sealer
        # (kind, server, upstream name or URI) -> the upstream's own definition, as listed.
        self.definitions: dict[tuple[str, str, str], JsonObj] = {}
        self._cipher = AESGCM(AESGCM.generate_key(bit_length=256))  # the upstream cursor inside ours
        for name, upstream in upstreams.items():
            # An upstream's change notification makes it list itself again through here, so the guards
            # (pinning) see the change before any client lists (gateway/list_changes.py). Stand-ins
            # for an upstream (tests) announce nothing.
            if isinstance(upstream, Upstream):
                upstream.changes.relist = partial(self.recheck, name)

    def definition(self, kind: str, server: str, name: str) -> JsonObj | None:
        return self.definitions.get((kind, server, name))

    def schema(self, server: str, tool: str) -> Any:
        found = self.definitions.get(("tools", server, tool))
        return None if found is None else found.get("inputSchema")

    def _seal_cursor(self, ctx: RequestContext, kind: str, index: int, upstream_cursor: Any) -> str:
        nonce = os.urandom(12)
        hidden = self._cipher.encrypt(nonce, orjson.dumps(upstream_cursor), kind.encode())
        return self.sealer.seal({"i": index, "n": len(self.order), "k": kind, "sub": ctx.principal.key,
                                 "c": base64.urlsafe_b64encode(nonce + hidden).decode()}, CURSOR_TTL)

    def _cursor(self, ctx: RequestContext, kind: str, params: JsonObj) -> tuple[int, Any]:
        cursor = params.get("cursor")
        if cursor is None:
            return 0, None
        try:
            state = self.sealer.unseal(cursor)
        except SealError as exc:
            raise ProtocolError(jsonrpc.INVALID_PARAMS, f"invalid cursor: {exc}") from None
        # Checked in this order so the message names the first reason a token does not fit.
        if state.get("sub") != ctx.principal.key:
            raise ProtocolError(jsonrpc.INVALID_PARAMS, "invalid cursor: issued to another principal")
        if state.get("k") != kind:
            raise ProtocolError(jsonrpc.INVALID_PARAMS, f"invalid cursor: issued for another list, not {METHODS[kind]}")
        index = state.get("i")
        if not isinstance(index, int) or not 0 <= index < len(self.order) or state.get("n") != len(self.order):
            raise ProtocolError(jsonrpc.INVALID_PARAMS, "invalid cursor: the server list changed")
        try:
            raw = base64.urlsafe_b64decode(str(state.get("c")))
            upstream_cursor = orjson.loads(self._cipher.decrypt(raw[:12], raw[12:], kind.encode()))
        except (InvalidTag, ValueError, binascii.Error, orjson.JSONDecodeError):
            raise ProtocolError(jsonrpc.INVALID_PARAMS, "invalid cursor: malformed") from None
        return index, upstream_cursor

    async def _page(self, ctx: RequestContext, server: str, kind: str, cursor: Any) -> JsonObj | None:
        upstream = self.upstreams[server]
        try:
            if CAPABILITY[kind] not in await upstream.capabilities_for(ctx):
                return None
            params: JsonObj = {} if cursor is None else {"cursor": cursor}
            return await upstream.call(ctx, METHODS[kind], params)
        except PeerError as exc:
            log.warning("server %s: %s failed: %s", server, METHODS[kind], exc)
            return None
        except Refusal:
            return None  # per-principal credentials, none for this principal: it sees nothing of this server

    async def list(self, ctx: RequestContext, kind: str, params: JsonObj) -> JsonObj:
        start, upstream_cursor = self._cursor(ctx, kind, params)
        targets = self.order[start:]
        pages = await asyncio.gather(*(
            self._page(ctx, server, kind, upstream_cursor if i == 0 else None) for i, server in enumerate(targets)
        ))
        items: ListedItems = []
        next_cursor: str | None = None
        ttls: list[int] = []
        private = False
        for offset, (server, page) in enumerate(zip(targets, pages, strict=True)):
            if page is None:
                continue
            items.extend(self._publish(server, kind, page))
            if (offset > 0 or upstream_cursor is None) and page.get("nextCursor") is None:
                self._settle(server, kind, page)  # this server's whole list, in one page
            ttl = page.get("ttlMs")
            if isinstance(ttl, int) and not isinstance(ttl, bool):
                ttls.append(ttl)
            private = private or page.get("cacheScope") == "private"
            upstream_next = page.get("nextCursor")
            if upstream_next is not None:
                next_cursor = self._seal_cursor(ctx, kind, start + offset, upstream_next)
                break
        if not self.guards.empty:
            call = Call(ctx=ctx, method=METHODS[kind], params=params)
            try:
                items, changed = await self.guards.listing(call, kind, items)
            except Refusal as refusal:
                # A list hook may refuse the whole listing (an interceptor's deny, or its fail-closed
                # rule when it crashed): a named, audited refusal, as on the request path.
                audit_refusal(call, refusal.rule)
                raise refusal.to_error() from None
            private = private or changed
        result: JsonObj = {kind: [listed.item for listed in items]}
        if next_cursor is not None:
            result["nextCursor"] = next_cursor
        if ctx.era == "modern":
            result["resultType"] = "complete"
            result["ttlMs"] = min(ttls) if ttls else 0
            result["cacheScope"] = "private" if private else "public"
        return result

    def _settle(self, server: str, kind: str, *pages: JsonObj) -> None:
        """A complete listing of `server`'s `kind`: the catalog forgets what it no longer offers. (Each
        page only adds: a server's list may come in several pages.)"""
        key = IDENTITY_KEY[kind]
        offered = {item[key] for page in pages if isinstance(page.get(kind), list)
                   for item in page[kind] if isinstance(item, dict) and isinstance(item.get(key), str)}
        if kind == "resources":
            self.catalog.settle_resources(server, offered)
        elif kind == "resourceTemplates":
            self.catalog.settle_templates(server, offered)
        else:
            self.catalog.settle(kind, server, offered)

    def _publish(self, server: str, kind: str, page: JsonObj) -> ListedItems:
        listed = self._publish_items(server, kind, page)
        self.guards.published(server, kind, listed)
        return listed

    def _publish_items(self, server: str, kind: str, page: JsonObj) -> ListedItems:
        raw = page.get(kind)
        if not isinstance(raw, list):
            return []
        items = [item for item in raw if isinstance(item, dict)]
        if kind in ("resources", "resourceTemplates"):
            key = "uri" if kind == "resources" else "uriTemplate"
            if kind == "resources":
                self.catalog.publish_resources(server, items)
            else:
                self.catalog.publish_templates(server, items)
            out = []
            for item in items:
                ident = item.get(key)
                if isinstance(ident, str):
                    self.definitions[(kind, server, ident)] = item
                    out.append(Listed(server, ident, item))
            return out
        if kind == "tools":
            items = self._valid_header_tools(server, items)
        for item in items:
            name = item.get("name")
            if isinstance(name, str):
                self.definitions[(kind, server, name)] = item
        by_exposed = self.catalog.maps[kind].by_exposed
        return [Listed(server, by_exposed[item["name"]].name, item)
                for item in self.catalog.publish(kind, server, items)]

    def _valid_header_tools(self, server: str, items: ItemList) -> ItemList:
        kept = []
        for item in items:
            schema = item.get("inputSchema")
            if headers.header_params(schema) is None:
                # The spec requires dropping tools whose x-mcp-header annotation is invalid.
                log.warning("server %s: tool %r has an invalid x-mcp-header annotation; hidden",
                            server, item.get("name"))
                continue
            kept.append(item)
        return kept

    async def refresh(self, ctx: RequestContext, kind: str, servers: Sequence[str] | None = None) -> None:
        """Walk every page of every server (or of `servers`) so name and URI maps are complete."""
        async def walk(server: str) -> None:
            cursor: Any = None
            pages: list[JsonObj] = []
            for _ in range(1000):  # a server that pages forever must not hang us
                page = await self._page(ctx, server, kind, cursor)
                if page is None:
                    return
                self._publish(server, kind, page)
                cursor = page.get("nextCursor")
                pages.append(page)
                if cursor is None:
                    self._settle(server, kind, *pages)
                    return

        await asyncio.gather(*(walk(server) for server in (self.order if servers is None else servers)))

    async def recheck(self, server: str, ctx: RequestContext, kind: str) -> None:
        """List `server`'s `kind` again as `ctx` (every page), through the guards' `on_published`."""
        await self.refresh(ctx, kind, [server])
        if kind == "resources":  # a resources change may add or drop templates too
            await self.refresh(ctx, "resourceTemplates", [server])

    def header_hints(self, server: str, call: Call) -> SendHints | None:
        if call.method != "tools/call" or call.target is None:
            return None
        schema = self.schema(server, call.target)
        if schema is None:
            return None
        found = headers.upstream_param_headers(schema, call.params.get("arguments"))
        return SendHints(headers=found) if found else None
