"""The stdio front: what Claude Desktop and IDEs launch. One client, both eras.

Callback-driven, because every coroutine hop costs an event-loop iteration on the
hot path: stdin's protocol splits each chunk into frames and dispatches them right
in `data_received`. A request starts its task there; anything whose handling must
finish before the next frame is looked at (notifications such as
notifications/cancelled or notifications/initialized, responses to our own
requests, error replies) runs as a "held" task, and the frames after it wait in a
backlog until it is done, so the order is the one a loop awaiting each frame gives.

Flow control: reading stops while a held task runs (the backlog never holds more
than one chunk) and while MAX_IN_FLIGHT requests are running, so a flood cannot
grow memory without bound. Writes go straight to the pipe while it is not full; a
full pipe makes writers queue and wait for it, in order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, BinaryIO, cast

from mcpward.audit import events as audit
from mcpward.gateway import after_reply
from mcpward.gateway.context import Principal
from mcpward.gateway.core import Gateway
from mcpward.gateway.downstream import ClientConnection
from mcpward.protocol import jsonrpc
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.transport.lines import Item, LineSplitter

log = logging.getLogger("mcpward.stdio")

# Requests running at once before stdin is paused. High, because a running request may be
# waiting for the client's answer to a sampling or elicitation request, which arrives on stdin.
MAX_IN_FLIGHT = 1024
SIZE_RULE = "stdio.message-size"  # a frame over [gateway] max_message_bytes


class _Stdin(asyncio.Protocol):
    """stdin's protocol: hands every chunk and the end of input to the front."""

    def __init__(self, front: StdioFront) -> None:
        self.front = front

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A read pipe's transport (uvloop's does not subclass asyncio.ReadTransport, so no isinstance).
        self.front._reading = cast(asyncio.ReadTransport, transport)

    def data_received(self, data: bytes) -> None:
        self.front._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front._input_ended(exc)


class _Stdout(asyncio.Protocol):
    """stdout's protocol: tracks whether the pipe is full (paused) or gone, for drain(), and tells the front
    when it is gone."""

    def __init__(self, on_lost: Callable[[], None] = lambda: None) -> None:
        self.on_lost = on_lost
        self.paused = False
        self.lost = False
        self._waiters: list[asyncio.Future[None]] = []

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.paused = False
        self._wake(exc or ConnectionResetError("Connection lost"))
        self.on_lost()

    def _wake(self, exc: Exception | None) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)
        self._waiters.clear()

    async def drain(self) -> None:
        """Wait until the pipe has room (as StreamWriter.drain does); raise once the reader is gone."""
        if self.lost:
            raise ConnectionResetError("Connection lost")
        if not self.paused:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter


class StdioFront:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.max_bytes = gateway.cfg.max_message_bytes
        self._lock = asyncio.Lock()  # writers queue here only while the pipe is full
        self._queued_writers = 0
        self._pipe: asyncio.WriteTransport | None = None
        self._out = _Stdout(self._output_lost)
        self.conn = ClientConnection(gateway, "stdio", Principal.local_user(), self.write)
        self._tasks: set[asyncio.Task[Any]] = set()
        # Reading side, driven by _Stdin's callbacks.
        self._reading: asyncio.ReadTransport | None = None
        self._lines = LineSplitter(self.max_bytes)
        self._backlog: deque[Item] = deque()
        self._held: asyncio.Task[None] | None = None  # a frame the next frames wait for
        self._paused = False
        self._eof = False
        self._failure: BaseException | None = None  # why input ended, if not plain EOF
        self._ended: asyncio.Future[None] | None = None
        # serve() sets the loop; tasks are made with it directly, since asyncio.ensure_future looks the loop
        # up on every call, and that lookup costs a getpid() system call.
        self._loop: asyncio.AbstractEventLoop

    async def write(self, message: JsonObj) -> None:
        data = jsonrpc.encode(message) + b"\n"
        out = self._out
        if not self._queued_writers and not out.paused and not out.lost:
            assert self._pipe is not None
            self._pipe.write(data)  # the pipe has room and nobody is queued: nothing to wait for
            return
        self._queued_writers += 1
        try:
            async with self._lock:
                assert self._pipe is not None
                self._pipe.write(data)
                await out.drain()
        finally:
            self._queued_writers -= 1

    async def serve(self, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._ended = loop.create_future()
        out = stdout or os.fdopen(os.dup(sys.stdout.fileno()), "wb")
        # Output first: a frame can be dispatched, and answered, as soon as input is connected.
        self._pipe, _ = await loop.connect_write_pipe(lambda: self._out, out)
        await loop.connect_read_pipe(lambda: _Stdin(self), stdin or sys.stdin.buffer)
        try:
            await self._ended
        finally:
            self.conn.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---------------------------------------------------------------- reading
    def _feed(self, data: bytes) -> None:
        items = self._lines.feed(data)
        if self._backlog or self._held is not None or self._paused:
            self._backlog.extend(items)
            self._run_backlog()
            return
        for i, item in enumerate(items):  # the usual case: dispatch straight from the chunk
            self._dispatch(item)
            if self._held is not None or len(self._tasks) >= MAX_IN_FLIGHT:
                self._backlog.extend(items[i + 1:])
                self._run_backlog()
                return

    def _input_ended(self, exc: Exception | None) -> None:
        self._eof = True
        self._paused = False  # a closed transport is neither paused nor resumable
        if exc is not None and self._failure is None:
            self._failure = exc  # a read error: like the stream reader before, stop at once and raise it
        self._backlog.extend(self._lines.feed_eof())
        self._run_backlog()

    def _run_backlog(self) -> None:
        """Dispatch waiting frames while nothing blocks them; pause or resume stdin to match."""
        backlog = self._backlog
        while backlog and self._held is None and len(self._tasks) < MAX_IN_FLIGHT and self._failure is None:
            self._dispatch(backlog.popleft())
        blocked = bool(backlog) or self._held is not None or len(self._tasks) >= MAX_IN_FLIGHT
        if self._eof:
            if (not backlog or self._failure is not None) and self._held is None:
                self._finish()
        elif blocked and not self._paused:
            assert self._reading is not None
            self._reading.pause_reading()
            self._paused = True
        elif not blocked and self._paused:
            assert self._reading is not None
            self._reading.resume_reading()
            self._paused = False

    def _output_lost(self) -> None:
        """The client closed the gateway's stdout: no answer can reach it any more, so nothing more is run.
        The front ends as on end of input (serve() returns; what is running is cancelled), with a warning:
        the client hung up, the gateway did nothing wrong, so no error and no traceback."""
        if self._ended is None or self._ended.done():
            return
        log.warning("the client closed the gateway's stdout; ending the stdio front")
        self._eof = True
        self._backlog.clear()
        if self._reading is not None:
            self._reading.pause_reading()
        self._finish()

    def _finish(self) -> None:
        """Input is over and every frame of it dispatched: serve() returns (or raises why)."""
        ended = self._ended
        if ended is None or ended.done():
            return
        if self._failure is not None:
            ended.set_exception(self._failure)
        else:
            ended.set_result(None)

    # ------------------------------------------------------------ dispatching
    def _dispatch(self, item: Item) -> None:
        if not isinstance(item, bytes):
            # Named and audited like the HTTP front's `http.body-size`. One record per frame is bounded:
            # each costs the client more than the limit in bytes.
            audit.record("stdio.refused", rule=SIZE_RULE, size=item.size, limit=self.max_bytes)
            self._hold(self.write(jsonrpc.error(item.probed_id, jsonrpc.INVALID_REQUEST,
                                                f"message of {item.size} bytes exceeds the "
                                                f"{self.max_bytes}-byte limit ([gateway] max_message_bytes)",
                                                {"rule": SIZE_RULE})))
            return
        message: JsonObj | None = None
        try:
            message = jsonrpc.decode(item, self.max_bytes)
            jsonrpc.check_forwardable(message, item)
            kind = jsonrpc.classify(message)
        except jsonrpc.ProtocolError as exc:
            # A parsed but invalid message is answered under its own id when it has a usable one.
            self._hold(self.write(exc.response(jsonrpc.usable_id(message))))
            return
        if kind is jsonrpc.Kind.RESPONSE:
            self._hold(self.conn.on_response(message))
        elif kind is jsonrpc.Kind.NOTIFICATION:
            self._hold(self.conn.on_notification(message))
        else:
            rid = message["id"]
            if rid in self.conn.running:
                self._hold(self.write(jsonrpc.error(rid, jsonrpc.INVALID_REQUEST,
                                                    f"request id {rid!r} is already in use")))
                return
            task = self._loop.create_task(self._answer(message))
            self.conn.running[rid] = task
            self._tasks.add(task)
            task.add_done_callback(self._request_done)

    def _hold(self, step: Coroutine[Any, Any, None]) -> None:
        """Run `step` before any later frame is dispatched."""
        task = self._loop.create_task(step)
        self._held = task
        self._tasks.add(task)
        task.add_done_callback(self._held_done)

    def _held_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._held is task:
            self._held = None
        if not task.cancelled() and (exc := task.exception()) is not None and self._failure is None:
            # As when a loop awaited each frame: a failed step (stdout gone) ends serve() with its error.
            self._failure = exc
            self._eof = True
        self._run_backlog()

    def _request_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Retrieved here, so asyncio logs no traceback; one line says what was lost.
            log.error("a request ended without its answer delivered: %s: %s", type(exc).__name__, exc)
        if self._paused or self._backlog:  # maybe it was the one over MAX_IN_FLIGHT
            self._run_backlog()

    async def _answer(self, message: JsonObj) -> None:
        try:
            reply = await self.conn.on_request(message)
        finally:
            self.conn.running.pop(message["id"], None)
        if reply is not None:
            await self.write(reply)
        after_reply.run()  # the reply is written: now the bookkeeping it did not wait for
