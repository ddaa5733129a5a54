"""One request on the HTTP front, answered as JSON or as an SSE stream, with a bounded backlog.

A request runs while its client reads what it says: a reply is plain JSON when nothing comes before
it, else an SSE stream of the notifications (and server->client requests) that precede it. Those wait
in the request's outbox until the client reads them. A server flooding progress while the client reads
slowly would grow that outbox without limit, so it holds at most MAX_QUEUED messages and MAX_QUEUED_BYTES
of them (one message is always let in, however large: it is bounded by max_message_bytes already).

When a message does not fit, the outbox makes room by dropping its oldest progress and log
notifications (`notifications/progress`, `notifications/message`: a newer one says as much as an older
one). If only messages that may not be dropped are queued, or the new one may not be and nothing
droppable is left, the stream ends at once with an error reply naming the rule (`http.stream-backlog`)
and the request is cancelled. The final reply is never dropped and never counted. Either way the
request gets one `http.stream-dropped` audit record when it ends, with the counts, never one per message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mcpward.audit import events as audit
from mcpward.protocol import jsonrpc
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.transport.http_checks import status_for
from mcpward.transport.sse import encode_comment, encode_event

log = logging.getLogger("mcpward.http")
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Stream = Callable[[JsonObj], Awaitable[None]]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache, no-transform"),
               (b"x-accel-buffering", b"no")]
KEEPALIVE = 15.0
MAX_QUEUED = 1024  # messages waiting for one request's client
MAX_QUEUED_BYTES = 4 * 1024 * 1024  # their encoded size
DROPPABLE = frozenset({"notifications/progress", "notifications/message"})
RULE = "http.stream-backlog"


class Outbox:
    """What one request has to say before its reply, bounded by count and bytes (see the module doc)."""

    def __init__(self) -> None:
        # Read at construction so a test (or a later setting) can change them.
        self.max_items, self.max_bytes = MAX_QUEUED, MAX_QUEUED_BYTES
        self._items: collections.deque[tuple[str | None, bytes]] = collections.deque()  # (method, SSE event)
        self.size = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.overflowed = False  # a message that may not be dropped found no room: the stream ends
        self.done = False
        self.reply: JsonObj | None = None
        self._wake = asyncio.Event()

    def put(self, message: JsonObj) -> None:
        if self.done or self.overflowed:
            return
        method = message.get("method") if "id" not in message else None
        data = event(message)
        while self._items and not self._fits(len(data)):
            if not self._drop_oldest_droppable():
                break
        if self._items and not self._fits(len(data)):
            if method in DROPPABLE:
                self._count_drop(method)
                return
            self.overflowed = True
            self._items.clear()  # the client is not going to read them: free the memory now
            self.size = 0
            log.warning("a request's stream backlog is full of messages that may not be dropped; ending it (%s)",
                        RULE)
        else:
            self._items.append((method, data))
            self.size += len(data)
        self._wake.set()

    def finish(self, reply: JsonObj | None) -> None:
        self.done, self.reply = True, reply
        self._wake.set()

    def _fits(self, size: int) -> bool:
        return len(self._items) < self.max_items and self.size + size <= self.max_bytes

    def _drop_oldest_droppable(self) -> bool:
        for index, (method, data) in enumerate(self._items):
            if method in DROPPABLE:
                del self._items[index]
                self.size -= len(data)
                self._count_drop(method)
                return True
        return False

    def _count_drop(self, method: str | None) -> None:
        self.dropped[method or "?"] += 1
        if sum(self.dropped.values()) == 1:
            log.warning("a client reads its stream too slowly: dropping its oldest progress and log notifications")

    async def next(self, watcher: asyncio.Future[None]) -> Any:
        """The next event to send (bytes), DONE, OVERFLOW, DISCONNECTED, or KEEPALIVE after a quiet while."""
        while True:
            if self.overflowed:
                return OVERFLOW
            if self._items:
                _method, data = self._items.popleft()
                self.size -= len(data)
                return data
            if self.done:
                return DONE
            self._wake.clear()
            woken = asyncio.ensure_future(self._wake.wait())
            waiting: set[asyncio.Future[Any]] = {woken, watcher}
            try:
                done, _ = await asyncio.wait(waiting, timeout=KEEPALIVE, return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
            if watcher in done:
                return DISCONNECTED
            if not done:
                return KEEPALIVE_TICK


async def exchange(receive: Receive, send: Send, handler: Callable[[Stream], Awaitable[JsonObj | None]],
                   request_id: Any, principal: str, wants_sse: bool, cancel_on_disconnect: bool,
                   status_table: bool) -> None:
    """Run one request; answer JSON if nothing precedes the reply, else switch to SSE."""
    outbox = Outbox()

    async def stream(msg: JsonObj) -> None:
        outbox.put(msg)

    async def runner() -> None:
        reply: JsonObj | None = None
        try:
            reply = await handler(stream)
        finally:
            outbox.finish(reply)

    task = asyncio.ensure_future(runner())
    watcher = asyncio.ensure_future(wait_disconnect(receive))
    try:
        item = await outbox.next(watcher)
        if item is DISCONNECTED:
            return
        if item is DONE:
            reply = outbox.reply
            if reply is None:
                await respond(send, 202, None)
                return
            error = reply.get("error")
            status = status_for(reply) if status_table and isinstance(error, dict) else 200
            await respond(send, status, reply)
            return
        if not wants_sse:
            log.warning("client does not accept SSE; streaming anyway, as the reply needs it")
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        while item is not DISCONNECTED:
            if item is KEEPALIVE_TICK:
                body = encode_comment("ping")
            elif item is DONE or item is OVERFLOW:
                final = outbox.reply if item is DONE else _backlog_error(request_id)
                if final is not None:
                    await send({"type": "http.response.body", "body": event(final), "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            else:
                body = item
            await send({"type": "http.response.body", "body": body, "more_body": True})
            item = await outbox.next(watcher)
    finally:
        watcher.cancel()
        if (cancel_on_disconnect or outbox.overflowed) and not task.done():
            task.cancel()  # modern HTTP: a closed stream is the cancellation; an ended stream ends its request
        if outbox.dropped or outbox.overflowed:
            audit.record("http.stream-dropped", rule=RULE, principal=principal, dropped=dict(outbox.dropped),
                         ended=outbox.overflowed)


def _backlog_error(request_id: Any) -> JsonObj:
    return jsonrpc.error(request_id, jsonrpc.OVERLOADED,
                         f"refused by {RULE}: the client read this request's stream too slowly; the stream was ended",
                         {"rule": RULE})


DONE: Any = object()
OVERFLOW: Any = object()
KEEPALIVE_TICK: Any = object()
DISCONNECTED: Any = object()


async def next_or_disconnect(queue: asyncio.Queue[Any], watcher: asyncio.Future[None]) -> Any:
    """The next item of `queue`, DISCONNECTED when the client went away, KEEPALIVE_TICK after a quiet while."""
    if not queue.empty():
        return queue.get_nowait()
    getter = asyncio.ensure_future(queue.get())
    try:
        done, _ = await asyncio.wait({getter, watcher}, timeout=KEEPALIVE, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
    if getter in done:
        return getter.result()
    return DISCONNECTED if watcher in done else KEEPALIVE_TICK


async def wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def event(message: JsonObj) -> bytes:
    """A message as one SSE `message` event."""
    return encode_event(jsonrpc.encode(message), event="message")


async def respond(send: Send, status: int, body: JsonObj | bytes | None,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = list(extra or [])
    payload = b""
    if isinstance(body, bytes):
        payload = body
        headers.append((b"content-type", b"text/plain; charset=utf-8"))
    elif body is not None:
        payload = jsonrpc.encode(body)
        headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    with contextlib.suppress(Exception):
        await send({"type": "http.response.body", "body": payload})
