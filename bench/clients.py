"""Raw MCP benchmark clients: subprocess stdio (newline-delimited JSON) and http.client keep-alive.

No MCP SDK on the client side, so the client's own cost is a few tens of microseconds and
identical for every target; it cancels out of "added = through proxy - direct".
Every blocking read is bounded: stdio by a watchdog that kills the target's process group,
HTTP by socket timeouts.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Literal

Era = Literal["modern", "legacy"]
JsonObj = dict[str, Any]
MODERN = "2026-07-28"
LEGACY = "2025-11-25"
MODERN_META: JsonObj = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "mcpward-bench", "version": "1"},
}
CLIENT_INFO = {"name": "mcpward-bench", "version": "1"}


class BenchError(RuntimeError):
    pass


class Proc:
    """A target process in its own process group; `stop()` always reaps the whole group."""

    def __init__(self, argv: list[str], log: Path, stdio: bool, env: dict[str, str] | None = None) -> None:
        self.log = log.open("wb")
        pipe = subprocess.PIPE if stdio else subprocess.DEVNULL
        self.popen = subprocess.Popen(argv, stdin=pipe, stdout=pipe, stderr=self.log, start_new_session=True,
                                      env={**os.environ, **(env or {})})

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_ns(self) -> int:
        """On-CPU time of the process so far (all its live threads), from /proc/PID/task/*/schedstat."""
        total = 0
        for stat in Path(f"/proc/{self.popen.pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that just ended
                total += int(stat.read_text().split()[0])
        return total

    def kill_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def stop(self) -> None:
        try:
            if self.popen.stdin is not None:
                with contextlib.suppress(OSError):  # a dead child: nothing left to flush into
                    self.popen.stdin.close()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(3)
            if self.alive():
                self.kill_group(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(5)
            self.kill_group(signal.SIGKILL)  # stragglers left in the group, if any
            self.popen.wait(5)
        finally:
            if self.popen.stdout is not None:
                self.popen.stdout.close()
            self.log.close()


class Watchdog:
    """Kills a process group when a time budget runs out, so a hung read ends with EOF."""

    def __init__(self, proc: Proc, seconds: float) -> None:
        self.fired = False
        self.timer = threading.Timer(seconds, self._fire, args=(proc,))
        self.timer.daemon = True
        self.timer.start()

    def _fire(self, proc: Proc) -> None:
        self.fired = True
        proc.kill_group(signal.SIGKILL)

    def cancel(self) -> None:
        self.timer.cancel()


def call_msg(rid: int, era: Era, text: str) -> JsonObj:
    params: JsonObj = {"name": "echo", "arguments": {"text": text}}
    if era == "modern":
        params["_meta"] = MODERN_META
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


def check_echo(reply: JsonObj, rid: int, text: str) -> None:
    if reply.get("id") != rid:
        raise BenchError(f"reply id {reply.get('id')!r} != {rid}")
    content = (reply.get("result") or {}).get("content") or [{}]
    if content[0].get("text") != text:
        raise BenchError(f"bad tools/call reply: {json.dumps(reply)[:300]}")


class _Client:
    """The handshake and timed call, shared by both transports; subclasses move the bytes."""

    era: Era
    ids: itertools.count[int]

    def _roundtrip(self, msg: JsonObj) -> JsonObj | None:
        raise NotImplementedError

    def _notify(self, msg: JsonObj) -> None:
        raise NotImplementedError

    def request(self, method: str, params: JsonObj) -> JsonObj:
        reply = self._roundtrip({"jsonrpc": "2.0", "id": next(self.ids), "method": method, "params": params})
        if reply is None or "error" in reply:
            raise BenchError(f"{method}: {reply}")
        return reply

    def connect(self) -> None:
        if self.era == "modern":
            self.request("server/discover", {"_meta": MODERN_META})
            self.request("tools/list", {"_meta": MODERN_META})
        else:
            self.request("initialize", {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": CLIENT_INFO})
            self._notify({"jsonrpc": "2.0", "method": "notifications/initialized"})
            self.request("tools/list", {})

    def call_ns(self, text: str) -> int:
        rid = next(self.ids)
        t0 = time.perf_counter_ns()
        reply = self._roundtrip(call_msg(rid, self.era, text))
        elapsed = time.perf_counter_ns() - t0
        check_echo(reply or {}, rid, text)
        return elapsed


class StdioClient(_Client):
    """One MCP connection over a child's stdin/stdout."""

    def __init__(self, proc: Proc, era: Era) -> None:
        assert proc.popen.stdin is not None and proc.popen.stdout is not None
        self.proc, self.era = proc, era
        self.w, self.r = proc.popen.stdin, proc.popen.stdout
        self.ids = itertools.count(1)

    def _send(self, msg: JsonObj) -> None:
        self.w.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        self.w.flush()

    def _recv(self) -> JsonObj:
        while True:
            line = self.r.readline()
            if not line:
                raise BenchError("target closed stdout (crashed, or killed by the watchdog)")
            msg: JsonObj = json.loads(line)
            if "id" in msg and "method" not in msg:
                return msg  # skip notifications and server->client requests

    def _roundtrip(self, msg: JsonObj) -> JsonObj | None:
        self._send(msg)
        return self._recv()

    def _notify(self, msg: JsonObj) -> None:
        self._send(msg)

    def pipelined(self, total: int, window: int, deadline: float) -> tuple[int, float]:
        """Keep `window` calls in flight; returns (completed, seconds)."""
        t0 = time.perf_counter()
        sent = done = 0
        while sent < min(window, total):
            self._send(call_msg(next(self.ids), self.era, "p"))
            sent += 1
        while done < sent:
            reply = self._recv()
            if "error" in reply:
                raise BenchError(f"pipelined call failed: {reply['error']}")
            done += 1
            if sent < total and time.perf_counter() < deadline:
                self._send(call_msg(next(self.ids), self.era, "p"))
                sent += 1
        return done, time.perf_counter() - t0


class HttpClient(_Client):
    """One keep-alive Streamable HTTP connection (a legacy client keeps its session id)."""

    def __init__(self, port: int, era: Era, timeout: float = 30.0, token: str | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.era = era
        self.session: str | None = None
        self.ids = itertools.count(1)
        self.base = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        if token:
            self.base["authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.conn.close()

    def _post(self, msg: JsonObj) -> JsonObj | None:
        headers = dict(self.base)
        method = msg["method"]
        if self.era == "modern":
            headers.update({"mcp-protocol-version": MODERN, "mcp-method": method})
            if method == "tools/call":
                headers["mcp-name"] = msg["params"]["name"]
        else:
            if self.session:
                headers.update({"mcp-session-id": self.session, "mcp-protocol-version": LEGACY})
        self.conn.request("POST", "/mcp", json.dumps(msg, separators=(",", ":")), headers)
        resp = self.conn.getresponse()
        body = resp.read()
        if method == "initialize":
            self.session = resp.getheader("mcp-session-id")
        if resp.status == 202:
            return None
        if resp.status != 200:
            raise BenchError(f"{method}: HTTP {resp.status} {body[:300]!r}")
        if (resp.getheader("content-type") or "").startswith("text/event-stream"):
            return _from_sse(body, msg.get("id"))
        reply: JsonObj = json.loads(body)
        return reply

    def _roundtrip(self, msg: JsonObj) -> JsonObj | None:
        return self._post(msg)

    def _notify(self, msg: JsonObj) -> None:
        self._post(msg)


def _from_sse(body: bytes, rid: Any) -> JsonObj:
    for block in body.decode().split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in block.splitlines() if line.startswith("data:"))
        if data:
            msg: JsonObj = json.loads(data)
            if msg.get("id") == rid and "method" not in msg:
                return msg
    raise BenchError(f"no reply for id {rid!r} in SSE body {body[:300]!r}")


def http_concurrent(port: int, era: Era, clients: int, total: int, deadline: float,
                    token: str | None = None) -> tuple[int, float]:
    """`clients` threads, each with its own connection, share `total` calls; returns (completed, seconds)."""
    conns = [HttpClient(port, era, token=token) for _ in range(clients)]
    counts = [0] * clients
    errors: list[BaseException] = []
    try:
        for c in conns:
            c.connect()

        def work(i: int) -> None:
            try:
                for _ in range(total // clients):
                    if time.perf_counter() >= deadline:
                        return
                    conns[i].call_ns("p")
                    counts[i] += 1
            except BaseException as exc:  # reported by the caller
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join(max(0.0, deadline - time.perf_counter()) + 35)
        seconds = time.perf_counter() - t0
    finally:
        for c in conns:
            c.close()
    if errors:
        raise BenchError(f"concurrent HTTP client failed: {errors[0]!r}")
    return sum(counts), seconds
