"""An upstream MCP server run as a child process, spoken to over its stdio."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shlex
import signal
import sys
from typing import Protocol

from mcpward.protocol import jsonrpc
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.transport.base import LinkError, MessageLink, SendHints
from mcpward.transport.lines import read_frames

log = logging.getLogger("mcpward.upstream")

# What a child inherits from the gateway: enough to find interpreters and a home,
# nothing else. Credentials in the gateway's environment never reach a server
# unless its config declares them.
INHERITED_ENV = ("PATH", "HOME", "LOGNAME", "USER", "SHELL", "TERM", "LANG", "LC_ALL", "TZ")
PR_SET_PDEATHSIG = 1


def minimal_env(extra: dict[str, str]) -> dict[str, str]:
    """What a child process gets: a few harmless variables of ours plus what it is declared to get."""
    env = {k: v for k in INHERITED_ENV if (v := os.environ.get(k)) is not None}
    env.update(extra)
    return env


def die_with_parent() -> None:
    """In the child, before exec: if the gateway dies (even by SIGKILL), the kernel ends the server."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Spawner(Protocol):
    """How a stdio server's process comes to be: plainly here, or inside a sandbox (sandbox/)."""

    def describe(self) -> str: ...

    async def spawn(self, limit: int) -> asyncio.subprocess.Process:
        """Start the process with stdin, stdout and stderr pipes; raise LinkError when it cannot."""
        ...

    async def cleanup(self) -> None:
        """After the process is gone: release what spawning took (cgroups, proxies, files)."""
        ...


class PlainSpawner:
    """The server runs as our child with a minimal environment, no isolation."""

    def __init__(self, name: str, command: str, args: list[str], env: dict[str, str], cwd: str | None) -> None:
        self.name, self.command, self.args, self.env, self.cwd = name, command, args, env, cwd

    def describe(self) -> str:
        return shlex.join([self.command, *self.args])

    async def spawn(self, limit: int) -> asyncio.subprocess.Process:
        try:
            return await asyncio.create_subprocess_exec(
                self.command,
                *self.args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=minimal_env(self.env),
                cwd=self.cwd,
                limit=limit,
                start_new_session=True,  # our signals, not the terminal's, end it
                preexec_fn=die_with_parent,
            )
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise LinkError(f"cannot start server {self.name!r}: {reason}") from None

    async def cleanup(self) -> None:
        return None


class StdioLink(MessageLink):
    def __init__(
        self,
        name: str,
        spawner: Spawner,
        max_message_bytes: int,
        shutdown_grace: float = 2.0,
    ) -> None:
        super().__init__()
        self.name = name
        self.spawner = spawner
        self.max_message_bytes = max_message_bytes
        self.shutdown_grace = shutdown_grace
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._write_lock = asyncio.Lock()
        self._closing = False
        self.junk_lines = 0

    def describe(self) -> str:
        return self.spawner.describe()

    async def open(self) -> None:
        log.info("spawning server %s: %s", self.name, self.describe())
        self._proc = await self.spawner.spawn(self.max_message_bytes + 1)
        self._tasks = [
            asyncio.create_task(self._pump_stdout(), name=f"{self.name}-stdout"),
            asyncio.create_task(self._pump_stderr(), name=f"{self.name}-stderr"),
        ]

    async def send(self, message: JsonObj, hints: SendHints | None = None) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None or self._closing:
            raise LinkError(f"server {self.name!r} is not running")
        data = jsonrpc.encode(message) + b"\n"
        async with self._write_lock:
            try:
                proc.stdin.write(data)
                await proc.stdin.drain()
            except (ConnectionError, RuntimeError) as exc:
                raise LinkError(f"server {self.name!r} closed its input: {exc}") from None

    async def _pump_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        reason = "exited"
        try:
            async for frame in read_frames(self._proc.stdout, self.max_message_bytes):
                if frame.oversized:
                    log.error(
                        "server %s sent a %d-byte message over the %d-byte limit; dropped",
                        self.name, frame.size, self.max_message_bytes,
                    )
                    if frame.probed_id is not None:
                        self.on_message(jsonrpc.gateway_error(
                            frame.probed_id, jsonrpc.INTERNAL_ERROR,
                            f"upstream message exceeded the {self.max_message_bytes}-byte limit",
                        ))
                    continue
                try:
                    message = jsonrpc.decode(frame.data, self.max_message_bytes)
                except jsonrpc.ProtocolError as exc:
                    # stdout must carry only MCP; a stray print is the server's bug, not fatal.
                    # Counted, and logged sparingly: a flooding server must not flood our logs.
                    self.junk_lines += 1
                    if self.junk_lines <= 5 or self.junk_lines % 1000 == 0:
                        log.warning("server %s wrote a non-JSON-RPC line to stdout (%s); %d so far",
                                    self.name, exc.message, self.junk_lines)
                    continue
                self.on_message(message)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            reason = f"stdout failed: {exc}"
        finally:
            if not self._closing:
                code = await self._proc.wait()
                self.on_closed(f"{reason} (exit code {code})")

    async def _pump_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        server_log = logging.getLogger(f"mcpward.server.{self.name}")
        while True:
            line = await self._proc.stderr.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            server_log.info("%s", text)

    async def close(self) -> None:
        self._closing = True
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            # The spec's order: close stdin, wait, SIGTERM, wait, SIGKILL.
            with contextlib.suppress(Exception):
                if proc.stdin is not None:
                    proc.stdin.close()
            if not await self._wait(proc):
                self._signal(proc, signal.SIGTERM)
                if not await self._wait(proc):
                    self._signal(proc, signal.SIGKILL)
                    await self._wait(proc)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.spawner.cleanup()

    async def _wait(self, proc: asyncio.subprocess.Process) -> bool:
        try:
            await asyncio.wait_for(proc.wait(), self.shutdown_grace)
            return True
        except TimeoutError:
            return False

    @staticmethod
    def _signal(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        # The child leads its own process group (start_new_session), so this also
        # reaches grandchildren such as `npx` -> `node`.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
