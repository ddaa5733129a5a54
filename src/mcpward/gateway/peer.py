"""JSON-RPC correlation over a MessageLink: requests get futures, the rest is routed.

The gateway assigns its own request ids upstream, so ids from different clients can
never collide on a shared upstream connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mcpward.protocol import jsonrpc
from mcpward.protocol.jsonrpc import JsonObj, RequestId
from mcpward.transport.base import LinkError, MessageLink, SendHints

log = logging.getLogger("mcpward.peer")

RequestHandler = Callable[[JsonObj], Awaitable[JsonObj]]
NotificationHandler = Callable[[JsonObj], None]


class PeerError(Exception):
    """The upstream answered with a JSON-RPC error, or could not answer at all."""

    def __init__(self, error: JsonObj, *, local: bool = False) -> None:
        super().__init__(str(error.get("message", "upstream error")))
        self.error = error
        self.local = local  # True when the gateway made the error up (timeout, crash)

    @property
    def code(self) -> Any:
        return self.error.get("code")


MAX_WAIT_CREDIT = 900.0  # seconds of a request's life spent waiting on us that do not count against its timeout


def local_error(code: int, message: str, data: Any = None) -> PeerError:
    return PeerError(jsonrpc.ProtocolError(code, message, data).to_error(), local=True)


class Peer:
    def __init__(
        self,
        link: MessageLink,
        name: str,
        on_request: RequestHandler,
        on_notification: NotificationHandler,
        cancel_by_notification: bool = True,
    ) -> None:
        self.link = link
        self.name = name
        self.on_request = on_request
        self.on_notification = on_notification
        # Modern HTTP cancels by closing the request's stream; everything else by notification.
        self.cancel_by_notification = cancel_by_notification
        self._ids = itertools.count(1)
        self._pending: dict[RequestId, asyncio.Future[JsonObj]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # the server's requests being answered now
        # The server's requests being answered, by the server's id: its notifications/cancelled stops one.
        self._answering: dict[RequestId, asyncio.Task[None]] = {}
        # While the server waits on us (a sampling, elicitation or roots request being answered by a
        # client, maybe a person), its own requests' clocks stop: the time spent so is not its delay.
        self._waited_total = 0.0  # seconds with at least one server request being answered, until...
        self._waiting_since: float | None = None  # ...this moment, when one is being answered now
        self._timers: dict[asyncio.Future[JsonObj], asyncio.TimerHandle] = {}  # re-armed request timers
        self.closed: str | None = None
        link.on_message = self._dispatch

    def next_id(self) -> int:
        return next(self._ids)

    async def request(
        self,
        method: str,
        params: JsonObj | None,
        timeout: float,
        hints: SendHints | None = None,
        request_id: int | None = None,
    ) -> JsonObj:
        if self.closed is not None:
            raise local_error(jsonrpc.UPSTREAM_UNAVAILABLE, f"server {self.name!r} is unavailable")
        rid = request_id if request_id is not None else self.next_id()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[JsonObj] = loop.create_future()
        self._pending[rid] = future
        # A timer instead of asyncio.wait_for: no wrapper on the hot path, same effect.
        now = loop.time()
        timer = loop.call_later(timeout, self._expire, future, now, self._waited(now), timeout)
        try:
            await self.link.send(jsonrpc.request(rid, method, params), hints)
            reply = await future
        except LinkError as exc:
            raise local_error(jsonrpc.UPSTREAM_UNAVAILABLE, f"server {self.name!r} is unavailable") from exc
        except TimeoutError:
            await self._cancel_upstream(rid, "timed out")
            raise local_error(
                jsonrpc.REQUEST_TIMEOUT, f"server {self.name!r} did not answer {method} within {timeout:g}s"
            ) from None
        except asyncio.CancelledError:
            await asyncio.shield(self._cancel_upstream(rid, "cancelled by the client"))
            raise
        finally:
            self._timers.pop(future, timer).cancel()
            self._pending.pop(rid, None)
        if "error" in reply:
            error = reply["error"]
            if not isinstance(error, dict):
                raise local_error(jsonrpc.INTERNAL_ERROR, f"server {self.name!r} sent a malformed error")
            raise PeerError(error, local=isinstance(error, jsonrpc.GatewayError))
        body = reply.get("result")
        if not isinstance(body, dict):
            raise local_error(jsonrpc.INTERNAL_ERROR, f"server {self.name!r} sent a result that is not an object")
        return body

    def _waited(self, now: float) -> float:
        """Seconds, since this peer began, during which the server waited on one of our answers."""
        since = self._waiting_since
        return self._waited_total + (now - since if since is not None else 0.0)

    def _expire(self, future: asyncio.Future[JsonObj], started: float, waited: float, timeout: float) -> None:
        """A request's time is up, unless part of it was spent with the server waiting on us: then the
        timer is set again for what is left."""
        if future.done():
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        # Credited waiting is capped: a server that keeps asking (and a client that never answers)
        # must not keep one of its requests alive for ever.
        credit = min(self._waited(now) - waited, MAX_WAIT_CREDIT)
        left = timeout - ((now - started) - credit)
        if left > 0.001:
            self._timers[future] = loop.call_later(left, self._expire, future, started, waited, timeout)
            return
        future.set_exception(TimeoutError())

    async def _cancel_upstream(self, rid: RequestId, reason: str) -> None:
        self.link.abandon(rid)
        if self.cancel_by_notification and self.closed is None:
            with contextlib.suppress(LinkError):
                await self.link.send(jsonrpc.notification("notifications/cancelled",
                                                          {"requestId": rid, "reason": reason}))

    async def notify(self, method: str, params: JsonObj | None = None) -> None:
        await self.link.send(jsonrpc.notification(method, params))

    def _dispatch(self, message: JsonObj) -> None:
        try:
            kind = jsonrpc.classify(message)
        except jsonrpc.ProtocolError as exc:
            log.warning("server %s sent an invalid message: %s", self.name, exc.message)
            # An invalid reply to a request of ours answers it with an error now, not at its timeout.
            rid = message.get("id")
            future = self._pending.get(rid) if isinstance(rid, (int, str)) and not isinstance(rid, bool) else None
            if future is not None and not future.done():
                future.set_result(jsonrpc.gateway_error(
                    rid, jsonrpc.INTERNAL_ERROR, f"server {self.name!r} sent an invalid reply ({exc.message})"))
            return
        if kind is jsonrpc.Kind.RESPONSE:
            future = self._pending.get(message["id"])
            if future is not None and not future.done():
                future.set_result(message)
            return
        if kind is jsonrpc.Kind.NOTIFICATION:
            if message["method"] == "notifications/cancelled":
                self._cancelled(message.get("params"))
            self.on_notification(message)
            return
        rid = message["id"]
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._answer(message))
        if not self._tasks:
            self._waiting_since = loop.time()
        self._tasks.add(task)
        if rid not in self._answering:  # a reused id still running: the first keeps the mapping
            self._answering[rid] = task
        task.add_done_callback(lambda done: self._finished(rid, done))

    def _finished(self, rid: RequestId, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks and self._waiting_since is not None:
            self._waited_total += asyncio.get_running_loop().time() - self._waiting_since
            self._waiting_since = None
        if self._answering.get(rid) is task:
            del self._answering[rid]

    def _cancelled(self, params: Any) -> None:
        """The server gave up on one of its requests: stop answering it. Whatever it was waiting on is
        cancelled with it (a question to the client is withdrawn there), and no response is sent."""
        target = params.get("requestId") if isinstance(params, dict) else None
        task = self._answering.get(target) if isinstance(target, (int, str)) and not isinstance(target, bool) else None
        if task is not None:
            log.info("server %s cancelled its request %r", self.name, target)
            task.cancel()

    async def _answer(self, message: JsonObj) -> None:
        rid = message["id"]
        try:
            reply = jsonrpc.result(rid, await self.on_request(message))
        except PeerError as exc:
            reply = {"jsonrpc": "2.0", "id": rid, "error": exc.error}
        except jsonrpc.ProtocolError as exc:
            reply = exc.response(rid)
        except Exception:
            log.exception("answering %s from server %s failed", message.get("method"), self.name)
            reply = jsonrpc.error(rid, jsonrpc.INTERNAL_ERROR, "the gateway could not answer this request")
        with contextlib.suppress(LinkError):
            await self.link.send(reply)

    def fail_all(self, reason: str) -> None:
        """The link died: every waiter gets an error now instead of a timeout later."""
        self.closed = reason
        for rid, future in list(self._pending.items()):
            if not future.done():
                future.set_result(jsonrpc.gateway_error(rid, jsonrpc.UPSTREAM_UNAVAILABLE,
                                                f"server {self.name!r} went away: {reason}"))
        for task in list(self._tasks):
            task.cancel()
