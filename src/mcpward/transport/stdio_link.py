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
import time
from collections.abc import Callable, Iterable
from typing import Protocol, SupportsIndex, runtime_checkable

from mcpward.protocol import jsonrpc
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.transport.base import LinkError, MessageLink, SendHints
from mcpward.transport.lines import Item, LineSplitter, reply_id

log = logging.getLogger("mcpward.upstream")

# What a child inherits from the gateway: enough to find interpreters and a home,
# nothing else. Credentials in the gateway's environment never reach a server
# unless its config declares them.
INHERITED_ENV = ("PATH", "HOME", "LOGNAME", "USER", "SHELL", "TERM", "LANG", "LC_ALL", "TZ")
PR_SET_PDEATHSIG = 1
# Whether a server's stdout is read by a tap in its pipe protocol (see _Tap); tests switch it off to run the
# plain stream-reading path, which is also what runs when the process's protocol is not asyncio's own.
TAP_PIPE = True
# A server's stderr goes to our log line by line. A line longer than this is cut (its end dropped and
# counted); at most STDERR_BUDGET lines per STDERR_WINDOW seconds are logged, the rest only counted.
STDERR_LINE_MAX = 4096
STDERR_BUDGET = 200
STDERR_WINDOW = 10.0
STDERR_CHUNK = 65536
# How often the link looks whether its server has exited. The stdout reader alone cannot tell: a leftover
# child holding stdout keeps it from ever reaching end-of-file, and a server that closed stdout runs on.
EXIT_POLL = 0.25


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


def uninherit_fds(keep: frozenset[int] = frozenset()) -> None:
    """In a child, before exec: no descriptor above stderr survives the exec except `keep`. uvloop (0.23)
    leaves the child its own copies of the stdio socket ends next to fds 0-2; a server that closes its
    stdout would then still hold the copy, and its stdout would never reach end-of-file for us."""
    if sys.platform == "linux":
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd not in keep:
                with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
                    os.set_inheritable(fd, False)


def plain_child_setup() -> None:
    """In a plainly spawned child, before exec: die with the gateway, keep no descriptor above stderr."""
    die_with_parent()
    uninherit_fds()


class Spawner(Protocol):
    """How a stdio server's process comes to be: plainly here, or inside a sandbox (sandbox/)."""

    def describe(self) -> str: ...

    async def spawn(self, limit: int) -> asyncio.subprocess.Process:
        """Start the process with stdin, stdout and stderr pipes; raise LinkError when it cannot."""
        ...

    async def cleanup(self) -> None:
        """After the process is gone: release what spawning took (cgroups, proxies, files)."""
        ...


@runtime_checkable
class WatchesStdout(Protocol):
    """A spawner whose server's stdout may never reach end-of-file when the server closes it, because a process of
    its own (a sandbox's monitor, bwrap's pid 1) holds a copy of the pipe. The link asks it every EXIT_POLL seconds."""

    def stdout_open(self) -> bool:
        """False once the server no longer holds its stdout: it can never answer again."""
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
                preexec_fn=plain_child_setup,
            )
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise LinkError(f"cannot start server {self.name!r}: {reason}") from None

    async def cleanup(self) -> None:
        return None


class StderrLog:
    """A server's stderr into our log. Sans-IO: fed whatever the pipe gives, it never fails on a long
    line or a flood, so the pipe is always drained and the server never blocks on a stderr write."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._log = logging.getLogger(f"mcpward.server.{name}")
        self._head = bytearray()  # the current line's first STDERR_LINE_MAX bytes
        self._cut = 0  # bytes of the current line past that, dropped
        self._window = time.monotonic()
        self._logged = 0  # lines logged in this window
        self.suppressed = 0  # lines of this window not logged (over budget)

    def feed(self, data: bytes) -> None:
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._take(data, start, end)
            self._emit()
            start = end + 1
        self._take(data, start, len(data))

    def finish(self) -> None:
        """The stream ended: the last unterminated line, and the count of what a flood left unlogged."""
        if self._head or self._cut:
            self._emit()
        self._summarise()

    def _take(self, data: bytes, start: int, end: int) -> None:
        room = STDERR_LINE_MAX - len(self._head)
        keep = min(room, end - start)
        self._head += data[start:start + keep]
        self._cut += end - start - keep

    def _emit(self) -> None:
        text = self._head.decode("utf-8", "replace").rstrip()
        if self._cut:
            text += f" [cut {self._cut} bytes]"
        self._head.clear()
        self._cut = 0
        now = time.monotonic()
        if now - self._window >= STDERR_WINDOW:
            self._summarise()
            self._window, self._logged = now, 0
        if self._logged < STDERR_BUDGET:
            self._logged += 1
            self._log.info("%s", text)
        else:
            self.suppressed += 1

    def _summarise(self) -> None:
        if self.suppressed:
            log.warning("server %s wrote %d stderr lines over the log budget (%d per %gs); not logged",
                        self.name, self.suppressed, STDERR_BUDGET, STDERR_WINDOW)
            self.suppressed = 0


class _Tap(asyncio.StreamReader):
    """Takes the place of a server's stdout StreamReader inside asyncio's pipe protocol, which calls
    feed_data, feed_eof and set_exception on it. Each chunk is split and its messages delivered right
    where the pipe hands it over, instead of being buffered for a task to wake up and read: that saves
    an event-loop iteration and a task step per reply. Nothing is buffered, so nothing needs pausing:
    the pipe is read no faster than its messages are handled."""

    def __init__(self, deliver: Callable[[Item], None], lines: LineSplitter) -> None:
        super().__init__()
        self._deliver = deliver
        self._lines = lines
        # Why stdout ended ("exited" or "stdout failed: ..."), or the error a delivery raised.
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:  # the pipe gives bytes; the signature is the base's
        if self.ended.done():  # stopped: the link is closing, or a delivery failed
            return
        try:
            for item in self._lines.feed(data if isinstance(data, bytes) else bytes(data)):
                self._deliver(item)
        except Exception as exc:  # the pump raises it, as it did when it read and delivered itself
            self.ended.set_exception(exc)

    def feed_eof(self) -> None:
        if self.ended.done():
            return
        try:
            for item in self._lines.feed_eof():
                self._deliver(item)
        except Exception as exc:
            self.ended.set_exception(exc)
            return
        self.ended.set_result("exited")

    def set_exception(self, exc: BaseException) -> None:
        if self.ended.done():
            return
        if isinstance(exc, ConnectionError):
            self.ended.set_result(f"stdout failed: {exc}")
        else:
            self.ended.set_exception(exc)

    def stop(self) -> None:
        if not self.ended.done():
            self.ended.cancel()


def _tap(proc: asyncio.subprocess.Process, stdout: asyncio.StreamReader, deliver: Callable[[Item], None],
         lines: LineSplitter) -> _Tap | None:
    """Put a _Tap in place of `stdout`, which must be empty, in the process's pipe protocol; None where
    that protocol is not asyncio's own or the stream has ended (the stream then stays, read in chunks)."""
    protocol = getattr(proc, "_protocol", None)  # where asyncio's Process keeps it (there is no public accessor)
    if type(protocol) is not asyncio.subprocess.SubprocessStreamProtocol or protocol.stdout is not stdout:
        return None
    if stdout.at_eof() or stdout.exception() is not None:
        return None  # the protocol has already reported the end to `stdout`; it would never reach the tap
    tap = _Tap(deliver, lines)
    protocol.stdout = tap
    return tap


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
        self._tasks: list[asyncio.Task[object]] = []
        self._write_lock = asyncio.Lock()  # senders queue here only while the pipe holds unsent data
        self._queued_writers = 0
        self._closing = False
        self.junk_lines = 0
        self.stderr = StderrLog(name)

    def describe(self) -> str:
        return self.spawner.describe()

    async def open(self) -> None:
        log.info("spawning server %s: %s", self.name, self.describe())
        self._proc = await self.spawner.spawn(self.max_message_bytes + 1)
        pump = asyncio.create_task(self._pump_stdout(), name=f"{self.name}-stdout")
        self._tasks = [
            pump,
            asyncio.create_task(self._pump_stderr(), name=f"{self.name}-stderr"),
            asyncio.create_task(self._supervise(pump), name=f"{self.name}-watch"),
        ]

    async def send(self, message: JsonObj, hints: SendHints | None = None) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None or self._closing:
            raise LinkError(f"server {self.name!r} is not running")
        data = jsonrpc.encode(message) + b"\n"
        stdin = proc.stdin
        try:
            if not self._queued_writers and not stdin.is_closing() and not stdin.transport.get_write_buffer_size():
                # The pipe is empty and nobody waits for it, so there is nothing to drain: skip the lock.
                # A write that leaves data behind makes the next sender wait for the pipe instead.
                stdin.write(data)
                return
            self._queued_writers += 1
            try:
                async with self._write_lock:
                    stdin.write(data)
                    await stdin.drain()
            finally:
                self._queued_writers -= 1
        except (ConnectionError, RuntimeError) as exc:
            raise LinkError(f"server {self.name!r} closed its input: {exc}") from None

    async def _pump_stdout(self) -> str:
        """Deliver the server's stdout until it ends; returns why it ended."""
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        lines = LineSplitter(self.max_message_bytes)
        tap: _Tap | None = None
        tapping = TAP_PIPE
        try:
            # Everything the stream holds, split here: one wake-up per chunk, not per message. The stream
            # pauses the pipe while more than its limit waits unread.
            while data := await stdout.read(sys.maxsize):
                for item in lines.feed(data):
                    self._deliver(item)
                if tapping:  # the stream is empty now: from here on, the pipe's chunks can skip it
                    tapping = False
                    tap = _tap(self._proc, stdout, self._deliver, lines)
                    if tap is not None:
                        return await tap.ended
            for item in lines.feed_eof():
                self._deliver(item)
        except ConnectionError as exc:
            return f"stdout failed: {exc}"
        finally:
            if tap is not None:
                tap.stop()  # cancelled (close): deliver nothing more, as a cancelled pump would
        return "exited"

    async def _supervise(self, pump: asyncio.Task[str]) -> None:
        """Ends the link when the server is gone, whichever way it goes: stdout ends (the process may live
        on, having closed it), the spawner sees it closed (a sandbox holds the pipe, see WatchesStdout), or
        the process exits while a leftover child still holds stdout open. Each way the process group is
        ended and on_closed fires, so the upstream restarts instead of hanging."""
        proc = self._proc
        assert proc is not None
        watch = self.spawner if isinstance(self.spawner, WatchesStdout) else None
        while not pump.done() and proc.returncode is None:
            await asyncio.wait({pump}, timeout=EXIT_POLL)
            if (watch is not None and not pump.done() and proc.returncode is None and not self._closing
                    and not watch.stdout_open()):
                # Closed, though its sandbox keeps the pipe open: end it, then read what it wrote before.
                log.warning("server %s closed its stdout but kept running; ending it", self.name)
                await self._end(proc)
                await asyncio.wait({pump}, timeout=self.shutdown_grace)
                pump.cancel()
                self._signal(proc, signal.SIGKILL)
                if not self._closing:
                    self.on_closed(f"closed its stdout (exit code {proc.returncode})")
                return
        if not pump.done():
            # Exited with stdout still open: a grace for what it wrote last, then its leftovers are killed,
            # which closes the pipe; a pipe held from outside the group is abandoned.
            await asyncio.wait({pump}, timeout=self.shutdown_grace)
            self._signal(proc, signal.SIGKILL)
            await asyncio.wait({pump}, timeout=self.shutdown_grace)
        if pump.done():
            reason = self._why(pump)
        else:
            pump.cancel()
            reason = "exited; a leftover process held its stdout open, killed"
        if proc.returncode is None and not await self._exited(proc, self.shutdown_grace):
            # stdout ended but the process runs on: it can never answer again, so it is ended as at close.
            log.warning("server %s closed its stdout but kept running; ending it", self.name)
            reason = "closed its stdout"
            await self._end(proc)
        self._signal(proc, signal.SIGKILL)  # the leader is gone: whatever is left of its group goes too
        if not self._closing:
            self.on_closed(f"{reason} (exit code {proc.returncode})")

    @staticmethod
    def _why(pump: asyncio.Task[str]) -> str:
        if pump.cancelled():
            return "stdout reader stopped"
        exc = pump.exception()
        if exc is not None:
            log.error("server stdout reader failed: %s: %s", type(exc).__name__, exc)
            return f"stdout reader failed ({type(exc).__name__})"
        return pump.result()

    def _deliver(self, item: Item) -> None:
        """One frame from the server's stdout: a message goes on, anything else is reported."""
        if not isinstance(item, bytes):
            log.error(
                "server %s sent a %d-byte message over the %d-byte limit; dropped",
                self.name, item.size, self.max_message_bytes,
            )
            if item.probed_id is not None:
                self.on_message(jsonrpc.gateway_error(
                    item.probed_id, jsonrpc.INTERNAL_ERROR,
                    f"upstream message exceeded the {self.max_message_bytes}-byte limit",
                ))
            return
        try:
            message = jsonrpc.decode(item, self.max_message_bytes)
        except jsonrpc.ProtocolError as exc:
            # stdout must carry only MCP; a stray print is the server's bug, not fatal.
            # Counted, and logged sparingly: a flooding server must not flood our logs.
            self.junk_lines += 1
            if self.junk_lines <= 5 or self.junk_lines % 1000 == 0:
                log.warning("server %s wrote a non-JSON-RPC line to stdout (%s); %d so far",
                            self.name, exc.message, self.junk_lines)
            # A reply we cannot parse (e.g. a lone surrogate escape, which Python's json writes) would leave
            # its request waiting for the timeout: when the line looks like JSON-RPC and its id is visible,
            # that request is answered now (a pending id only; any other id is ignored, as for oversized).
            rid = reply_id(item)
            if rid is not None:
                self.on_message(jsonrpc.gateway_error(
                    rid, jsonrpc.INTERNAL_ERROR, f"server {self.name!r} sent a reply that is not valid JSON "
                    f"({exc.message})"))
            return
        self.on_message(message)

    async def _pump_stderr(self) -> None:
        # Chunks, not readline: a line over the stream's limit would make readline raise and end the pump,
        # and a server whose stderr pipe is full blocks on its next write.
        assert self._proc is not None and self._proc.stderr is not None
        stderr = self._proc.stderr
        try:
            while data := await stderr.read(STDERR_CHUNK):
                self.stderr.feed(data)
        except ConnectionError:
            pass  # the process is gone; stdout's pump reports that
        finally:
            self.stderr.finish()

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
            if not await self._exited(proc, self.shutdown_grace):
                await self._end(proc)
        # The leader is gone; a child it left behind (in its group) would hold our pipes and outlive us.
        self._signal(proc, signal.SIGKILL)
        with contextlib.suppress(Exception):
            if proc.stdin is not None:
                proc.stdin.close()
        # The pipes end as the leftovers die: the readers see that, and asyncio then closes the process's
        # transport itself. Bounded, for a pipe held from outside the group.
        readers = [task for task in self._tasks[:2] if not task.done()]
        if readers:
            await asyncio.wait(readers, timeout=min(self.shutdown_grace, 1.0))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.spawner.cleanup()

    async def _end(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the group, a grace, then SIGKILL it."""
        self._signal(proc, signal.SIGTERM)
        if not await self._exited(proc, self.shutdown_grace):
            self._signal(proc, signal.SIGKILL)
            await self._exited(proc, self.shutdown_grace)

    @staticmethod
    async def _exited(proc: asyncio.subprocess.Process, within: float) -> bool:
        """Whether the process exits within `within` seconds. wait() wakes us at once where the loop reports the
        exit promptly; returncode, polled, covers a loop that waits for the pipes to close as well."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        waiter = asyncio.ensure_future(proc.wait())
        try:
            while proc.returncode is None:
                left = deadline - loop.time()
                if left <= 0:
                    return False
                await asyncio.wait({waiter}, timeout=min(EXIT_POLL, left))
            return True
        finally:
            waiter.cancel()

    @staticmethod
    def _signal(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        # The child leads its own process group (start_new_session), so this also
        # reaches grandchildren such as `npx` -> `node`.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
