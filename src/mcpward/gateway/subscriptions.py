"""Who downstream wants which notifications: legacy sessions and modern listen streams."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mcpward.protocol.jsonrpc import JsonObj

log = logging.getLogger("mcpward.subscriptions")
Send = Callable[[JsonObj], Awaitable[None]]
LIST_FILTERS = {"tools": "toolsListChanged", "prompts": "promptsListChanged", "resources": "resourcesListChanged"}


@dataclass(slots=True)
class Listener:
    id: str
    send: Send
    filters: JsonObj  # modern filter; legacy sessions get every list change
    meta: JsonObj | None = None  # modern: the subscriptionId tag
    uris: set[str] = field(default_factory=set)
    principal: str | None = None  # whose listener: updates from one principal's own connection reach only it


class Subscriptions:
    def __init__(self) -> None:
        self._listeners: dict[str, Listener] = {}
        self._ids = itertools.count(1)
        self._by_server: dict[str, dict[str, set[str]]] = {}  # server -> uri -> listener ids
        self._tasks: set[asyncio.Task[None]] = set()

    def add_session(self, session_id: str, send: Send, principal: str | None = None) -> None:
        filters = {flag: True for flag in LIST_FILTERS.values()}
        self._listeners[session_id] = Listener(session_id, send, filters, principal=principal)

    def add_listener(self, filters: JsonObj, send: Send, meta: JsonObj, principal: str | None = None) -> str:
        listener_id = f"listen-{next(self._ids)}"
        self._listeners[listener_id] = Listener(listener_id, send, filters, meta, principal=principal)
        return listener_id

    def remove_listener(self, listener_id: str) -> None:
        listener = self._listeners.pop(listener_id, None)
        if listener is None:
            return
        for uris in self._by_server.values():
            for uri in listener.uris:
                uris.get(uri, set()).discard(listener_id)

    def add_resource(self, listener_id: str, server: str, uri: str) -> bool:
        """Subscribe; True when this is the first subscriber of `uri` on `server`."""
        listener = self._listeners.get(listener_id)
        if listener is not None:
            listener.uris.add(uri)
        holders = self._by_server.setdefault(server, {}).setdefault(uri, set())
        first = not holders
        holders.add(listener_id)
        return first

    def remove_resource(self, listener_id: str, uri: str) -> str | None:
        listener = self._listeners.get(listener_id)
        if listener is not None:
            listener.uris.discard(uri)
        for server, uris in self._by_server.items():
            if listener_id in uris.get(uri, set()):
                uris[uri].discard(listener_id)
                if not uris[uri]:
                    del uris[uri]
                return server
        return None

    def uris_for(self, server: str) -> set[str]:
        return {uri for uri, holders in self._by_server.get(server, {}).items() if holders}

    def resource_updated(self, server: str, uri: str, message: JsonObj, principal: str | None) -> None:
        """An update from `server` reaches the listeners that subscribed to `uri` on that server, never
        those watching the same URI on another server. `principal` set: the update came from that
        principal's own connection and reaches only that principal's listeners."""
        for listener_id in sorted(self._by_server.get(server, {}).get(uri, set())):
            listener = self._listeners.get(listener_id)
            if listener is None or (principal is not None and listener.principal != principal):
                continue
            self._send(listener, message)

    def broadcast(self, message: JsonObj, list_kind: str | None = None) -> None:
        for listener in list(self._listeners.values()):
            if list_kind is not None and not listener.filters.get(LIST_FILTERS.get(list_kind, "")):
                continue
            self._send(listener, message)

    def _send(self, listener: Listener, message: JsonObj) -> None:
        out = message
        if listener.meta is not None:
            params = dict(message.get("params") or {})
            params["_meta"] = {**(params.get("_meta") or {}), **listener.meta}
            out = {**message, "params": params}
        task = asyncio.ensure_future(self._deliver(listener, out))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, listener: Listener, message: JsonObj) -> None:
        with contextlib.suppress(Exception):
            await listener.send(message)
