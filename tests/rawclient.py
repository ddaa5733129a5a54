"""A raw newline-delimited JSON-RPC client for `mcpward run`: sends exactly the bytes a test chooses."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

from tests.conftest import MCPWARD

MODERN_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
               "io.modelcontextprotocol/clientCapabilities": {},
               "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"}}


class RawStdioClient:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.ids = itertools.count(1)
        self.notifications: list[dict[str, Any]] = []
        self.waiters: dict[Any, list[asyncio.Future[dict[str, Any]]]] = {}
        self.inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.reader = asyncio.ensure_future(self._read_loop())

    async def _read_loop(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            message = json.loads(line)
            waiting = self.waiters.get(message.get("id")) if "method" not in message else None
            if waiting:
                waiting.pop(0).set_result(message)
                continue
            if "method" in message:
                self.notifications.append(message)
            self.inbox.put_nowait(message)
        self.inbox.put_nowait(None)

    @classmethod
    async def start(cls, config: Path, limit: int = 64 * 1024 * 1024) -> RawStdioClient:
        proc = await asyncio.create_subprocess_exec(
            MCPWARD, "run", "-c", str(config), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, limit=limit)
        return cls(proc)

    async def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    async def read(self, timeout: float = 20.0) -> dict[str, Any]:
        """The next message no request is waiting for (errors with id null, notifications)."""
        while True:
            message = await asyncio.wait_for(self.inbox.get(), timeout)
            if message is None:
                raise EOFError("gateway closed stdout")
            if "method" not in message:
                return message

    def expect(self, rid: Any) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(rid, []).append(future)
        return future

    async def reply_to(self, rid: Any, timeout: float = 20.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.expect(rid), timeout)

    async def request(self, method: str, params: dict[str, Any] | None = None, modern: bool = True,
                      timeout: float = 20.0) -> dict[str, Any]:
        rid = next(self.ids)
        body = dict(params or {})
        if modern:
            body["_meta"] = {**MODERN_META, **body.get("_meta", {})}
        reply = self.expect(rid)
        await self.send_raw(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": body}).encode()
                            + b"\n")
        return await asyncio.wait_for(reply, timeout)

    async def call(self, tool: str, arguments: dict[str, Any] | None = None, timeout: float = 20.0) -> dict[str, Any]:
        return await self.request("tools/call", {"name": tool, "arguments": arguments or {}}, timeout=timeout)

    async def close(self) -> None:
        self.reader.cancel()
        await end(self.proc)


async def end(proc: asyncio.subprocess.Process, timeout: float = 15.0) -> None:
    """Close the gateway's stdin (it exits at EOF) and wait for it; killed if it takes longer."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
