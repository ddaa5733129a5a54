"""The stdio front: what Claude Desktop and IDEs launch. One client, both eras."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any, BinaryIO

from mcpward.gateway import after_reply
from mcpward.gateway.context import Principal
from mcpward.gateway.core import Gateway
from mcpward.gateway.downstream import ClientConnection
from mcpward.protocol import jsonrpc
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.transport.lines import read_frames

log = logging.getLogger("mcpward.stdio")


class StdioFront:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.max_bytes = gateway.cfg.max_message_bytes
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self.conn = ClientConnection(gateway, "stdio", Principal.local_user(), self.write)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def write(self, message: JsonObj) -> None:
        assert self._writer is not None
        async with self._lock:
            self._writer.write(jsonrpc.encode(message) + b"\n")
            await self._writer.drain()

    async def serve(self, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self.max_bytes + 1)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin or sys.stdin.buffer)
        out = stdout or os.fdopen(os.dup(sys.stdout.fileno()), "wb")
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, out)
        self._writer = asyncio.StreamWriter(transport, protocol, None, loop)
        try:
            async for frame in read_frames(reader, self.max_bytes):
                if frame.oversized:
                    await self.write(jsonrpc.error(frame.probed_id, jsonrpc.INVALID_REQUEST,
                                                   f"message of {frame.size} bytes exceeds the "
                                                   f"{self.max_bytes}-byte limit"))
                    continue
                await self._on_frame(frame.data)
        finally:
            self.conn.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_frame(self, data: bytes) -> None:
        message: JsonObj | None = None
        try:
            message = jsonrpc.decode(data, self.max_bytes)
            kind = jsonrpc.classify(message)
        except jsonrpc.ProtocolError as exc:
            # A parsed but invalid message is answered under its own id when it has a usable one.
            candidate = message.get("id") if message is not None else None
            rid = candidate if isinstance(candidate, (str, int)) and not isinstance(candidate, bool) else None
            await self.write(exc.response(rid))
            return
        if kind is jsonrpc.Kind.RESPONSE:
            await self.conn.on_response(message)
        elif kind is jsonrpc.Kind.NOTIFICATION:
            await self.conn.on_notification(message)
        else:
            rid = message["id"]
            if rid in self.conn.running:
                await self.write(jsonrpc.error(rid, jsonrpc.INVALID_REQUEST, f"request id {rid!r} is already in use"))
                return
            task = asyncio.ensure_future(self._answer(message))
            self.conn.running[rid] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, message: JsonObj) -> None:
        try:
            reply = await self.conn.on_request(message)
        finally:
            self.conn.running.pop(message["id"], None)
        if reply is not None:
            await self.write(reply)
        after_reply.run()  # the reply is written: now the bookkeeping it did not wait for
