"""Bounds at the HTTP door, before anything is authenticated.

- Refusals of the request's shape (method, media types, body size, body too slow) name a rule, which the
  reply carries in `error.data.rule` and the front audits like its other refusals (DoorRefusal).
- The request body must arrive within BODY_SECONDS (BodyDeadline), or 408: a body trickled a byte at a
  time would otherwise hold a connection and a task for ever.
- The HTTP server itself (uvicorn_config): uvicorn's httptools protocol plus a cap on a request head's size
  (httptools has none of its own) and a deadline for the head of every request (BoundedHttpToolsProtocol: a
  connection that sends nothing, trickles a head or sends an endless one is closed), a cap on concurrent
  connections, and a bounded graceful shutdown (an open SSE stream would otherwise hold a SIGTERM off until
  the client left). uvicorn's h11 protocol has a head cap built in, but parses in pure Python: it cost about
  550k instructions more per request (callgrind, `mcpward serve`, one `tools/call`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mcpward.protocol import jsonrpc
from mcpward.transport.http_checks import HttpRejection

if TYPE_CHECKING:
    import uvicorn

    from mcpward.transport.http_front import RefusalAudit

log = logging.getLogger("mcpward.http")

BODY_SECONDS = 30.0  # the whole request body, from the first receive
HEAD_SECONDS = 10.0  # a request's head (request line and headers), from connect or the previous response
MAX_HEAD_BYTES = 65536
MAX_CONNECTIONS = 1000
KEEP_ALIVE_SECONDS = 5  # uvicorn's default, kept
SHUTDOWN_SECONDS = 5  # open streams get this long after SIGTERM before they are cut
SHOWN_PATH = 200


class DoorRefusal(HttpRejection):
    """A refusal of the request's shape, with its rule: the front audits it where it answers it."""

    def __init__(self, status: int, rule: str, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        body = jsonrpc.error(None, jsonrpc.INVALID_REQUEST, f"{message} (refused by {rule})", {"rule": rule})
        super().__init__(status, body, headers)
        self.rule = rule

    def audit(self, refusals: RefusalAudit, scope: Mapping[str, Any]) -> None:
        client = scope.get("client")
        refusals.refused(self.rule, self.status, client[0] if client else None,
                         http_method=scope.get("method"), path=str(scope.get("path", ""))[:SHOWN_PATH])


class BodyDeadline:
    """Receives a request body's messages until BODY_SECONDS after the first one was asked for."""

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = BODY_SECONDS if seconds is None else seconds
        self.when = asyncio.get_running_loop().time() + self.seconds

    async def receive(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        try:
            async with asyncio.timeout_at(self.when):
                return await receive()
        except TimeoutError:
            raise DoorRefusal(408, "http.body-timeout",
                              f"request body not received within {self.seconds:g}s") from None


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus a deadline and a size cap for each request's head. uvicorn times out
    only a connection idle after a response, and any byte received stops that timer: a connection that never
    sends, or sends its head a byte at a time, would stay open for ever and hold a descriptor. httptools
    buffers a header of any length until its end, so an endless head would grow without limit."""

    _head_timer: asyncio.TimerHandle | None = None
    _in_head = True  # between a request's first byte (or the connection's start) and the end of its head
    _head_bytes = 0
    _tail = b""  # the head's last bytes so far: its blank line may start in the previous chunk

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES and self._head_too_long(data):
                return
            self._tail = data[-3:]
        super().data_received(data)

    def _head_too_long(self, data: bytes) -> bool:
        """Whether the head in progress passes MAX_HEAD_BYTES. The chunk may carry the head's end and a body
        after it, so the head's own length counts: up to its blank line, if this chunk has it."""
        end = (self._tail + data).find(b"\r\n\r\n") - len(self._tail)
        if end >= -len(self._tail) and self._head_bytes - len(data) + end + 4 <= MAX_HEAD_BYTES:
            return False
        log.info("closed an HTTP connection whose request head passed %d bytes", MAX_HEAD_BYTES)
        if not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
                                 b"connection: close\r\n\r\n")
            self.transport.close()
        self._in_head = False  # nothing more is read from this connection
        return True

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # The next request's head starts here. (Not at on_message_begin: the parser calls that after
        # data_received has counted the chunk holding the head's first bytes.)
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()  # the next request's head, on this kept-alive connection

    def _arm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(HEAD_SECONDS, self._head_overdue)

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being served: its head arrived in time
        if not self.transport.is_closing():
            log.info("closed an HTTP connection that sent no complete request head within %gs", HEAD_SECONDS)
            self.transport.close()


def max_connections() -> int:
    """MAX_CONNECTIONS, or fewer when the descriptor limit is low: half the descriptors stay for everything else
    (upstream pipes and sockets, the audit log), so idle clients cannot starve the gateway of them."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft // 2))


def uvicorn_config(app: Any, host: str, port: int) -> uvicorn.Config:
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="on", access_log=False,
        http=BoundedHttpToolsProtocol,
        limit_concurrency=max_connections(), timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
    )
