"""Transport edge cases from the third audit: upstreams that end badly, clients that go half away, and the
HTTP door's bounds. Each test stops by itself; all traffic stays on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from mcpward.transport.stdio_link import PlainSpawner, StdioLink

# Reads one line, closes its stdout, and lives on (ignoring stdin's end): it can never answer again.
CLOSES_STDOUT = "import os, sys, time\nsys.stdin.readline()\nos.close(1)\ntime.sleep(60)\n"
# Starts a grandchild in its own process group that inherits stdout, then exits.
LEAVES_GRANDCHILD = (
    "import subprocess, sys\nsys.stdin.readline()\n"
    "p = subprocess.Popen(['sleep', '{secs}'])\nprint(p.pid, flush=True)\n"
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent reaps it later).
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


async def closes_stdout_link_reports_and_ends_it() -> None:
    link = StdioLink("c", PlainSpawner("c", sys.executable, ["-c", CLOSES_STDOUT], {}, None), 1 << 20,
                     shutdown_grace=0.3)
    closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    link.on_closed = closed.set_result
    await link.open()
    assert link._proc is not None
    pid = link._proc.pid
    try:
        await link.send({"jsonrpc": "2.0", "method": "notifications/go"})
        reason = await asyncio.wait_for(closed, 10)
    finally:
        await link.close()
    assert reason.startswith("closed its stdout (exit code ")
    assert not alive(pid)


async def grandchild_holding_stdout_link_reports_and_kills_it() -> None:
    link = StdioLink("g", PlainSpawner("g", sys.executable, ["-c", LEAVES_GRANDCHILD.format(secs=37)], {}, None),
                     1 << 20, shutdown_grace=0.3)
    closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    got: list[dict[str, Any]] = []
    link.on_message = got.append
    link.on_closed = closed.set_result
    grandchild: int | None = None
    # The grandchild prints nothing MCP: its pid arrives as a junk line, so it is read from /proc instead.
    await link.open()
    assert link._proc is not None
    leader = link._proc.pid
    try:
        await link.send({"jsonrpc": "2.0", "method": "notifications/go"})
        for _ in range(100):
            out = subprocess.run(["pgrep", "-g", str(leader), "-x", "sleep"], capture_output=True, text=True)
            if out.stdout.split():
                grandchild = int(out.stdout.split()[0])
                break
            await asyncio.sleep(0.05)
        assert grandchild is not None
        start = time.monotonic()
        reason = await asyncio.wait_for(closed, 10)
        assert time.monotonic() - start < 5
    finally:
        await link.close()
    assert "exit code 0" in reason
    for _ in range(50):
        if not alive(grandchild):
            break
        await asyncio.sleep(0.05)
    assert not alive(grandchild)


@pytest.mark.parametrize("case", [closes_stdout_link_reports_and_ends_it,
                                  grandchild_holding_stdout_link_reports_and_kills_it])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_stdio_link_ends_a_server_that_cannot_answer_any_more(
        case: Callable[[], Coroutine[Any, Any, None]], loop: str) -> None:
    """Audit gaps 2 and 3: stdout closed while the process lives on, or held open by a leftover grandchild after
    the server exits. Either way the link reports the close promptly (so the upstream restarts) and nothing of
    the server's process group is left."""
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        new_loop = uvloop.new_event_loop()
    else:
        new_loop = asyncio.new_event_loop()
    try:
        new_loop.run_until_complete(asyncio.wait_for(case(), 30))
    finally:
        new_loop.close()


def test_close_kills_what_an_exited_server_left_in_its_group(tmp_path: Path) -> None:
    """Audit gap 3, at close: the leader has exited already; its grandchild must not outlive the link."""
    async def run() -> int:
        link = StdioLink("g", PlainSpawner("g", sys.executable, ["-c", LEAVES_GRANDCHILD.format(secs=38)], {},
                                           None), 1 << 20, shutdown_grace=30)  # the watcher waits; close does not
        await link.open()
        assert link._proc is not None
        leader = link._proc.pid
        await link.send({"jsonrpc": "2.0", "method": "notifications/go"})
        pid = None
        for _ in range(100):
            out = subprocess.run(["pgrep", "-g", str(leader), "-x", "sleep"], capture_output=True, text=True)
            if out.stdout.split() and link._proc.returncode is not None:
                pid = int(out.stdout.split()[0])
                break
            await asyncio.sleep(0.05)
        assert pid is not None
        await asyncio.wait_for(link.close(), 10)
        return pid

    pid = asyncio.run(run())
    for _ in range(50):
        if not alive(pid):
            break
        time.sleep(0.05)
    assert not alive(pid)


# ------------------------------------------------------------- legacy SSE replay log (gaps 4 and 10)

# A small legacy stdio MCP server: `flood` sends `n` progress notifications before its reply.
FLOOD_SERVER = r'''
import json, sys
def send(m):
    sys.stdout.write(json.dumps(m) + "\n"); sys.stdout.flush()
TOOLS = [{"name": "flood", "description": "flood", "inputSchema": {"type": "object"}}]
for line in sys.stdin:
    msg = json.loads(line)
    rid, method, params = msg.get("id"), msg.get("method"), msg.get("params") or {}
    if rid is None:
        continue
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": rid, "result": {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
              "serverInfo": {"name": "flood", "version": "1"}}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": rid, "result": {"tools": TOOLS}})
    elif method == "tools/call":
        token = (params.get("_meta") or {}).get("progressToken")
        n = int(params["arguments"]["n"])
        for i in range(n):
            send({"jsonrpc": "2.0", "method": "notifications/progress",
                  "params": {"progressToken": token, "progress": i}})
        send({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": f"done after {n}"}]}})
    else:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "Method not found"}})
'''


def test_legacy_sse_reply_survives_a_notification_flood(serve_gateway: Any, tmp_path: Path) -> None:
    """Audit gap 4, end to end: 3000 progress notifications before the reply; the reply must still arrive."""
    import httpx

    from mcpward.transport.event_store import MAX_EVENTS
    from mcpward.transport.sse import SseParser

    (tmp_path / "srv").mkdir()  # its own directory: the sandbox will not bind one holding the gateway's config
    server = tmp_path / "srv" / "flood.py"
    server.write_text(FLOOD_SERVER)
    url = serve_gateway(f'[servers.fl]\ncommand = "{sys.executable}"\nargs = ["{server}"]\ntimeout = 30\n')
    accept = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    n = MAX_EVENTS + 1000
    with httpx.Client(trust_env=False, timeout=60) as http:
        session = http.post(url, json=init, headers=accept).headers["mcp-session-id"]
        headers = {**accept, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
        http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=headers)  # lists the tool
        call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "fl__flood", "arguments": {"n": n}, "_meta": {"progressToken": "tk"}}}
        reply = http.post(url, json=call, headers=headers)
    messages = [json.loads(e.data) for e in SseParser().feed(reply.content) if e.data]
    final = [m for m in messages if m.get("id") == 3]
    assert final and "result" in final[0], final
    assert final[0]["result"]["content"][0]["text"] == f"done after {n}"


def test_replay_log_keeps_the_reply_and_counts_what_it_drops() -> None:
    """Audit gap 4, in the log itself: over MAX_EVENTS the oldest go, sequence numbers stay, the reply stays."""
    from mcpward.transport import event_store

    store = event_store.EventStore()
    stream = store.open()
    for i in range(event_store.MAX_EVENTS + 10):
        stream.append({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": i}})
    stream.append({"jsonrpc": "2.0", "id": 7, "result": {}})
    stream.finish()
    assert len(stream.events) == event_store.MAX_EVENTS and stream.dropped == 12  # the priming event and 11 more
    assert stream.end == event_store.MAX_EVENTS + 12
    last = stream.events[-1]
    assert last is not None and json.loads(last)["id"] == 7
    # A resume from a dropped event continues at the oldest one kept.
    point = store.resume_point(stream.event_id(0))
    assert point is not None
    index, data = stream.at(point[1])
    assert index == stream.first and data is not None and json.loads(data)["params"]["progress"] == 11


def test_replay_logs_are_bounded_by_bytes_and_finished_ones_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Audit gap 10: a session's logs hold at most MAX_BYTES; finished streams are evicted before running ones,
    and a stream fully delivered is not kept at all."""
    from mcpward.transport import event_store

    monkeypatch.setattr(event_store, "MAX_BYTES", 100_000)
    store = event_store.EventStore()
    big = {"jsonrpc": "2.0", "id": 1, "result": {"text": "x" * 30_000}}
    running = store.open()
    running.append({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"pad": "p" * 30_000}})
    finished = []
    for _ in range(5):
        stream = store.open()
        stream.append(big)
        stream.finish()
        finished.append(stream)
        assert store.size <= event_store.MAX_BYTES
    # The running stream is still resumable; the oldest finished ones were evicted.
    assert store.resume_point(running.event_id(0)) is not None
    assert store.resume_point(finished[0].event_id(0)) is None
    assert store.resume_point(finished[-1].event_id(0)) is not None
    finished[-1].delivered()
    assert store.resume_point(finished[-1].event_id(0)) is None
    assert store.size == sum(s.size for s in store._streams.values())
    # Only running streams over the budget: their oldest events go, never a stream's newest.
    for _ in range(5):
        running.append(big)
    assert store.size <= event_store.MAX_BYTES
    newest = running.events[-1]
    assert newest is not None and json.loads(newest)["id"] == 1 and running.dropped > 0


# ------------------------------------------------------------- the stdio front's stdout closed (gap 8)

async def test_stdio_front_ends_when_the_client_closes_its_stdout(caplog: pytest.LogCaptureFixture) -> None:
    """Audit gap 8: the client closes the gateway's stdout but keeps stdin open. No answer can be delivered, so
    the front ends (serve() returns), cancels what runs, and later requests are never run."""
    from tests.test_stdio_framing import Pipes, request

    pipes = Pipes()
    pipes.conn.block_requests = True
    await pipes.send(request(1))
    for _ in range(100):
        if pipes.conn.events:
            break
        await asyncio.sleep(0.01)
    running = list(pipes.front._tasks)
    assert running
    os.close(pipes.out_r)  # the client's read end of our stdout; stdin stays open
    try:
        await asyncio.wait_for(pipes.serving, 5)  # before the fix: served on, until stdin's end
        assert all(task.cancelled() for task in running)  # the blocked request: cancelled, not left running
        await pipes.send(request(2))
        await asyncio.sleep(0.2)
        assert "request 2" not in pipes.conn.events  # nothing more is read, so nothing more runs
        assert "the client closed the gateway's stdout" in caplog.text
        assert "Task exception was never retrieved" not in caplog.text
    finally:
        os.close(pipes.in_w)


async def test_stdio_front_logs_a_failed_request_once_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """Audit gap 8: a request task that fails has its exception retrieved and logged as one line."""
    from tests.test_stdio_framing import Pipes, request

    pipes = Pipes()

    async def broken(message: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("handler is closed")

    pipes.conn.on_request = broken  # type: ignore[method-assign]
    await pipes.send(request(1))
    for _ in range(100):
        if "handler is closed" in caplog.text:
            break
        await asyncio.sleep(0.01)
    await pipes.close()
    assert "a request ended without its answer delivered: RuntimeError: handler is closed" in caplog.text
    assert "Traceback" not in caplog.text


# ------------------------------------------------------------- refusals at the HTTP door (gap 9, 408 of gap 5)

@pytest.mark.parametrize(("method", "headers", "body", "status", "rule"), [
    ("POST", {"Content-Type": "text/plain", "Accept": "application/json"}, b"{}", 415, "http.content-type"),
    ("POST", {"Content-Type": "application/json", "Accept": "text/html"}, b"{}", 406, "http.accept"),
    ("POST", {"Content-Type": "application/json", "Accept": "application/json"}, b"[" + b" " * (5 << 20) + b"]",
     413, "http.body-size"),
    ("PUT", {"Content-Type": "application/json", "Accept": "application/json"}, b"{}", 405, "http.method"),
    ("GET", {"Accept": "application/json"}, b"", 406, "http.accept"),
])
async def test_door_refusals_name_their_rule_and_are_audited(
        recorded: list[tuple[str, dict[str, Any]]], method: str, headers: dict[str, str], body: bytes,
        status: int, rule: str) -> None:
    import httpx

    from mcpward.gateway.config import GatewayConfig
    from mcpward.gateway.core import Gateway
    from mcpward.transport.http_front import HttpFront

    front = HttpFront(Gateway(GatewayConfig()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front), base_url="http://127.0.0.1:8811") as http:
        reply = await http.request(method, "/mcp", content=body, headers=headers)
    assert reply.status_code == status
    assert reply.json()["error"]["data"] == {"rule": rule}
    assert ("http.refused", {"rule": rule, "status": status, "source_ip": "127.0.0.1", "http_method": method,
                             "path": "/mcp"}) in recorded


async def test_a_trickled_body_gets_408(recorded: list[tuple[str, dict[str, Any]]],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Audit gap 5: a body that does not arrive within BODY_SECONDS is refused (408, http.body-timeout)."""
    from mcpward.gateway.config import GatewayConfig
    from mcpward.gateway.core import Gateway
    from mcpward.transport import http_limits
    from mcpward.transport.http_front import HttpFront

    monkeypatch.setattr(http_limits, "BODY_SECONDS", 0.3)
    front = HttpFront(Gateway(GatewayConfig()))
    sent: list[dict[str, Any]] = []
    chunks = [b"{", b'"jsonrpc"']

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.2)  # a byte now and then: each receive in time, the whole body not
        return {"type": "http.request", "body": chunks.pop(0) if chunks else b" ", "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/mcp", "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"127.0.0.1:8811"), (b"content-type", b"application/json"),
                         (b"accept", b"application/json, text/event-stream")]}
    await asyncio.wait_for(front(scope, receive, send), 5)
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"]["data"] == {"rule": "http.body-timeout"}
    assert any(event == "http.refused" and fields["rule"] == "http.body-timeout" for event, fields in recorded)


# ------------------------------------------------------------- the HTTP server's own bounds (gap 5)

async def test_http_server_closes_silent_and_trickling_connections_and_caps_heads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Audit gap 5: a connection that sends nothing, or trickles its request head, is closed after HEAD_SECONDS;
    a head over MAX_HEAD_BYTES is refused instead of buffered."""
    import uvicorn

    from mcpward.transport import http_limits

    monkeypatch.setattr(http_limits, "HEAD_SECONDS", 0.5)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = http_limits.uvicorn_config(app, "127.0.0.1", port)
    config.lifespan = "off"
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.01)

        async def closed_within(writes: list[bytes], seconds: float) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for data in writes:
                writer.write(data)
                await asyncio.sleep(0.05)
            try:
                got = await asyncio.wait_for(reader.read(), seconds)  # read() returns at the server's close
            except ConnectionResetError:
                got = b"RESET"  # closed with our bytes unread: ended all the same
            writer.close()
            return got

        assert await closed_within([], 3) == b""  # silent
        assert await closed_within([b"GET / HTTP/1.1\r\n", b"Host: a\r\n", b"X-a: 1\r\n"], 3) == b""  # trickled
        big = await closed_within([b"GET / HTTP/1.1\r\nHost: a\r\nX-big: " + b"a" * 200_000 + b"\r\n\r\n"], 3)
        assert big == b"RESET" or big.split(b" ")[1] in (b"400", b"431")
        # A well-behaved request is served, and its connection kept alive no longer than the deadline.
        ok = await closed_within([b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], 3)
        assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(b"ok")
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        sock.close()


# ------------------------------------------------------------- `mcpward serve` (gaps 1 and 7)

def test_serve_refuses_a_port_out_of_range(tmp_path: Path) -> None:
    """Audit gap 7: --port 70000 is refused, not silently wrapped to another port."""
    from tests.conftest import MCPWARD

    done = subprocess.run([MCPWARD, "serve", "-c", str(tmp_path / "none.toml"), "--port", "70000"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert "--port" in done.stderr and "65535" in done.stderr


def test_serve_stops_on_sigterm_while_a_get_stream_is_open(tmp_path: Path) -> None:
    """Audit gap 1: a legacy client holding its GET stream open no longer keeps `mcpward serve` from stopping."""
    import signal
    import threading

    import httpx

    from tests.conftest import MCPWARD, free_port, stop, wait_port, with_policy

    port = free_port()
    config = tmp_path / "gw.toml"
    config.write_text(f"[gateway]\nport = {port}\n" + with_policy(""))
    with open(tmp_path / "gw.log", "wb") as log:
        proc = subprocess.Popen([MCPWARD, "serve", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        url = f"http://127.0.0.1:{port}/mcp"
        accept = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        opened = threading.Event()

        def hold() -> None:
            with httpx.Client(trust_env=False, timeout=httpx.Timeout(5, read=30)) as http:
                session = http.post(url, json=init, headers=accept).headers["mcp-session-id"]
                headers = {"Accept": "text/event-stream", "Mcp-Session-Id": session,
                           "MCP-Protocol-Version": "2025-11-25"}
                try:
                    with http.stream("GET", url, headers=headers) as stream:
                        opened.set()
                        for _chunk in stream.iter_bytes():
                            pass
                except httpx.HTTPError:
                    pass  # cut by the shutdown: expected

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        assert opened.wait(20)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        assert time.monotonic() - start < 15
        holder.join(10)
    finally:
        stop(proc)
