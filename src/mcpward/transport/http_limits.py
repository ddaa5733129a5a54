"""Bounds at the HTTP door, before anything is authenticated.

- Refusals of the request's shape (method, media types, body size, body too slow) name a rule, which the
  reply carries in `error.data.rule` and the front audits like its other refusals (DoorRefusal).
- The request body must arrive within BODY_SECONDS (BodyDeadline), or 408: a body trickled a byte at a
  time would otherwise hold a connection and a task for ever.
- The HTTP server itself (uvicorn_config): h11 with a cap on a request head's size (httptools has none),
  a deadline for the head of every request (DeadlineH11Protocol: a connection that sends nothing, or
  trickles a head, is closed), a cap on concurrent connections, and a bounded graceful shutdown (an open
  SSE stream would otherwise hold a SIGTERM off until the client left).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.h11_impl import H11Protocol

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


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for each request's head. uvicorn times out only a connection
    idle after a response, and any byte received stops that timer: a connection that never sends, or sends
    its head a byte at a time, stays open for ever and holds a descriptor."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

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
        http=DeadlineH11Protocol, h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        limit_concurrency=max_connections(), timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
    )
