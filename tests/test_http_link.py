"""HttpLink and the SSE codec, against real servers on 127.0.0.1: an `mcp` SDK server
(both eras, with its real header validation) and a raw Starlette app scripting the
awkward cases (ordering, hanging, oversized, dropped and resumed streams, error bodies).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mcpward.protocol.headers import encode_value as header_value
from mcpward.protocol.jsonrpc import INTERNAL_ERROR, UPSTREAM_UNAVAILABLE, JsonObj
from mcpward.transport.base import LinkError, SendHints
from mcpward.transport.http_link import HttpLink
from mcpward.transport.sse import SseEvent, SseLimitError, SseParser, encode_comment, encode_event

MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "mcpward-test", "version": "0"},
}
TIMEOUT = 5.0


def serve(app: Any) -> Iterator[str]:
    """Run `app` with uvicorn on a fresh loopback port in a thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # binding first means no race for the port
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, lifespan="auto")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


@pytest.fixture(scope="module")
def sdk_url() -> Iterator[str]:
    mcp = MCPServer("fixture")

    @mcp.tool()
    async def echo(text: str, ctx: Context) -> str:
        await ctx.report_progress(1, 2, "half way")
        return text

    @mcp.tool(name="grüße")
    async def greet() -> str:
        return "hallo"

    yield from (base + "/mcp" for base in serve(mcp.streamable_http_app(host="127.0.0.1")))


@dataclass
class Script:
    """What the raw app saw, shared across the server thread and the test."""

    requests: list[tuple[str, dict[str, str], JsonObj | None]] = field(default_factory=list)
    get_status: int = 200
    get_retry_only: bool = False  # the GET stream sends only `retry: 0` and ends
    disconnected: threading.Event = field(default_factory=threading.Event)


def sse(message: JsonObj, event_id: str | None = None) -> bytes:
    return encode_event(orjson.dumps(message), event_id)


def raw_app(script: Script) -> Starlette:
    async def post(request: Request) -> Response:
        body = orjson.loads(await request.body())
        script.requests.append(("POST", dict(request.headers), body))
        method, rid = body.get("method"), body.get("id")
        if ("id" in body and method is None) or method == "notifications/initialized":
            return Response(status_code=202)
        if method == "initialize":
            result = {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "raw"}}
            return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": result},
                                headers={"Mcp-Session-Id": "sess-1"})
        if method == "echo/headers":
            return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": {"headers": dict(request.headers)}})
        if method == "modern/error":
            error = {"code": -32022, "message": "unsupported", "data": {"supported": [MODERN]}}
            return JSONResponse({"jsonrpc": "2.0", "id": None, "error": error}, status_code=400)
        if method == "session/gone":
            return Response(status_code=404)

        async def stream() -> AsyncIterator[bytes]:
            progress = {"jsonrpc": "2.0", "method": "notifications/progress"}
            if method == "progress":
                yield b": keep-alive\n\n"
                for step in (1, 2):
                    yield sse({**progress, "params": {"progressToken": "t", "progress": step}})
                    await asyncio.sleep(0.02)
                frame = sse({"jsonrpc": "2.0", "id": rid, "result": {"done": True}})
                yield frame[:7]  # split mid-field to exercise chunk boundaries
                yield frame[7:]
            elif method == "hang":
                yield sse({**progress, "params": {"progressToken": "t", "progress": 1}})
                try:
                    await asyncio.sleep(30)
                    yield sse({"jsonrpc": "2.0", "id": rid, "result": {}})
                finally:
                    script.disconnected.set()
            elif method == "big":
                yield sse({"jsonrpc": "2.0", "id": rid, "result": {"blob": "x" * 4096}})
            elif method == "truncated":
                yield sse({**progress, "params": {"progressToken": "t", "progress": 1}})
            elif method == "resumable":
                yield encode_event(b"", "p1", retry=10)  # priming event, then the server hangs up
            elif method in ("undecodable", "shapeless"):
                # The reply, unusable (not JSON: a trailing comma; no result or error), then a stream that
                # stays open: the request must not wait for its end.
                bad = (b'{"jsonrpc": "2.0", "id": %d, "result": {"text": "x"},}' % rid
                       if method == "undecodable" else orjson.dumps({"jsonrpc": "2.0", "id": rid}))
                yield encode_event(bad)
                try:
                    await asyncio.sleep(30)
                finally:
                    script.disconnected.set()

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def get(request: Request) -> Response:
        headers = dict(request.headers)
        script.requests.append(("GET", headers, None))
        last = headers.get("last-event-id")
        if script.get_status != 200:
            return Response(status_code=script.get_status)
        if script.get_retry_only:
            return Response(b"retry: 0\n\n", media_type="text/event-stream")

        async def stream() -> AsyncIterator[bytes]:
            note = {"jsonrpc": "2.0", "method": "notifications/message"}
            if last is None:
                yield encode_event(b"", "g0", retry=20)
                yield sse({**note, "params": {"data": "n1"}}, "g1")
            elif last == "g1":
                yield sse({**note, "params": {"data": "n2"}}, "g2")
                yield sse({"jsonrpc": "2.0", "id": "s1", "method": "roots/list"}, "g3")
                try:
                    await asyncio.sleep(30)
                finally:
                    script.disconnected.set()
            elif last == "p1":
                yield sse({"jsonrpc": "2.0", "id": 7, "result": {"resumed": True}}, "p2")

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def delete(request: Request) -> Response:
        script.requests.append(("DELETE", dict(request.headers), None))
        return Response(status_code=405)

    return Starlette(routes=[
        Route("/mcp", post, methods=["POST"]),
        Route("/mcp", get, methods=["GET"]),
        Route("/mcp", delete, methods=["DELETE"]),
    ])


@pytest.fixture
def raw() -> Iterator[tuple[str, Script]]:
    script = Script()
    for base in serve(raw_app(script)):
        yield base + "/mcp", script


class Inbox:
    def __init__(self, link: HttpLink) -> None:
        self.queue: asyncio.Queue[JsonObj] = asyncio.Queue()
        self.closed: list[str] = []
        link.on_message = self.queue.put_nowait
        link.on_closed = self.closed.append

    async def next(self, timeout: float = TIMEOUT) -> JsonObj:
        return await asyncio.wait_for(self.queue.get(), timeout)


@pytest.fixture
async def link_factory() -> AsyncIterator[Any]:
    links: list[HttpLink] = []

    async def make(url: str, **kwargs: Any) -> tuple[HttpLink, Inbox]:
        kwargs.setdefault("loopback_ok", True)  # the test servers listen on 127.0.0.1
        link = HttpLink(url, kwargs.pop("headers", {}), **kwargs)
        inbox = Inbox(link)
        await link.open()
        links.append(link)
        return link, inbox

    yield make
    for link in links:
        await link.close()


def modern(rid: int, method: str, params: JsonObj | None = None) -> JsonObj:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": {**(params or {}), "_meta": META}}


async def initialize(link: HttpLink, inbox: Inbox, version: str = "2025-11-25") -> JsonObj:
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    await link.send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
    return await inbox.next()


INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


async def send_and_wait(link: HttpLink, message: JsonObj) -> None:
    """Send, then wait for that POST's task to finish (for messages that get no answer)."""
    before = set(link._tasks)
    await link.send(message)
    await asyncio.wait_for(asyncio.gather(*(set(link._tasks) - before)), TIMEOUT)


def parse_all(chunks: list[bytes], **kwargs: Any) -> list[SseEvent]:
    parser = SseParser(**kwargs)
    return [event for chunk in chunks for event in parser.feed(chunk)]


STREAM = (
    "\ufeff: comment\r\nevent: ping\r\ndata: a\r\ndata:b\r\n\r\n"
    "id: 7\nretry: 1500\ndata:  two spaces\n\n"
    "data: é€😀\r\rid\rdata: x\nfoo: ignored\n\n: trailing comment\n\n"
).encode()


def test_sse_parses_fields_and_line_endings() -> None:
    events = parse_all([STREAM])
    assert events == [
        SseEvent(data="a\nb", event="ping"),
        SseEvent(data=" two spaces", id="7", retry=1500),
        SseEvent(data="é€😀"),
        SseEvent(data="x", id=""),
    ]


def test_sse_chunk_boundaries_anywhere() -> None:
    whole = parse_all([STREAM])
    for size in (1, 2, 3, 5, 7):
        chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
        assert parse_all(chunks) == whole, size
    for cut in range(len(STREAM)):  # every two-piece split, including inside CRLF and UTF-8
        assert parse_all([STREAM[:cut], STREAM[cut:]]) == whole, cut


def test_sse_state_and_edge_cases() -> None:
    parser = SseParser()
    assert list(parser.feed("data: x\r")) == []  # a lone CR might be half a CRLF
    assert list(parser.feed("\n\n")) == [SseEvent(data="x")]
    assert list(parser.feed("id: 3\nretry: soon\n\ndata: y\n")) == [SseEvent(id="3")]
    assert parser.last_event_id == "3" and parser.retry is None  # "soon" is not a valid retry
    assert list(parser.feed("id: a\x00b\n\n")) == [SseEvent(data="y")]  # NUL: that id is ignored
    assert parser.last_event_id == "3"
    assert list(parser.feed("event: only\n\n\n\n")) == [SseEvent(event="only")]
    assert list(SseParser().feed("data: unterminated")) == []  # EOF mid-block: discarded
    parser = SseParser()
    parser.feed("data: buffered even if not iterated\n")
    assert list(parser.feed("\n")) == [SseEvent(data="buffered even if not iterated")]


def test_sse_limit() -> None:
    assert parse_all([b"data: " + b"x" * 10 + b"\n\n"], max_data_bytes=10)[0].data == "x" * 10
    with pytest.raises(SseLimitError):
        parse_all([b"data: " + b"x" * 6 + b"\ndata: " + b"y" * 6 + b"\n\n"], max_data_bytes=10)
    with pytest.raises(SseLimitError):  # an endless line is cut off before it ends
        parse_all([b"data: " + b"x" * 500], max_data_bytes=100)


def test_sse_encoder_round_trip() -> None:
    frame = encode_event(b"line1\nline2\r\n\nlast", "42", "message", retry=100)
    assert frame.startswith(b"id: 42\nevent: message\nretry: 100\ndata: line1\n")
    assert parse_all([frame]) == [SseEvent(data="line1\nline2\n\nlast", id="42", retry=100)]
    assert parse_all([encode_event(b'{"a":1}')]) == [SseEvent(data='{"a":1}')]
    assert encode_comment() == b":\n\n"
    with pytest.raises(ValueError):
        encode_event(b"x", "1\r\ndata: injected")
    with pytest.raises(ValueError):
        encode_event(b"x", event="a\nb")


def test_header_value_encoding() -> None:
    assert header_value("get_weather") == "get_weather"
    assert header_value("Hello, 世界") == "=?base64?SGVsbG8sIOS4lueVjA==?="
    assert header_value(" padded ") == "=?base64?IHBhZGRlZCA=?="
    assert header_value("=?base64?literal?=") == "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="


async def test_modern_round_trip(sdk_url: str, link_factory: Any) -> None:
    link, inbox = await link_factory(sdk_url)
    await link.send(modern(1, "server/discover"))
    discover = await inbox.next()
    assert discover["id"] == 1 and MODERN in discover["result"]["supportedVersions"]

    await link.send(modern(2, "tools/list"))
    tools = await inbox.next()
    assert {t["name"] for t in tools["result"]["tools"]} == {"echo", "grüße"}

    # The SDK rejects a tools/call whose Mcp-Name header is missing or wrong (-32020),
    # so a success proves the headers mirror the body.
    call = modern(3, "tools/call", {"name": "echo", "arguments": {"text": "hi"}})
    call["params"]["_meta"] = {**META, "progressToken": "p"}
    await link.send(call)
    progress, answer = await inbox.next(), await inbox.next()
    assert progress["method"] == "notifications/progress" and progress["params"]["progress"] == 1
    assert answer["id"] == 3 and answer["result"]["structuredContent"] == {"result": "hi"}

    await link.send(modern(4, "tools/call", {"name": "grüße", "arguments": {}}))  # base64 Mcp-Name
    assert (await inbox.next())["result"]["content"][0]["text"] == "hallo"
    assert link._session_id is None


async def test_legacy_round_trip_and_delete(sdk_url: str, link_factory: Any) -> None:
    link, inbox = await link_factory(sdk_url)
    assert (await initialize(link, inbox))["result"]["protocolVersion"] == "2025-11-25"
    session = link._session_id
    assert session is not None and link._legacy_version == "2025-11-25"

    await send_and_wait(link, INITIALIZED)
    assert inbox.queue.empty()  # a notification is answered by 202 and nothing else
    await link.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    assert (await inbox.next())["id"] == 2  # without the session id the SDK would answer 400
    assert link._listen_task is not None and not link._listen_task.done()  # GET stream is open

    await link.close()
    assert link._listen_task is not None and link._listen_task.done()
    with pytest.raises(LinkError):
        await link.send({"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
    async with httpx.AsyncClient() as client:  # the DELETE really ended the session
        gone = await client.post(sdk_url, json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"}, headers={
            "Mcp-Session-Id": session, "Accept": "application/json, text/event-stream"})
    assert gone.status_code == 404


async def test_legacy_session_expiry(sdk_url: str, link_factory: Any) -> None:
    link, inbox = await link_factory(sdk_url)
    await initialize(link, inbox, "2025-06-18")
    async with httpx.AsyncClient() as client:  # the server forgets the session behind our back
        await client.delete(sdk_url, headers={"Mcp-Session-Id": link._session_id or ""})
    await link.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    error = await inbox.next()
    assert error["id"] == 2 and error["error"]["code"] == UPSTREAM_UNAVAILABLE
    assert error["error"]["data"] == {"httpStatus": 404}
    assert inbox.closed == ["session expired"]
    assert link._session_id is None and link._legacy_version is None


async def test_wrong_path_gives_error_response(sdk_url: str, link_factory: Any) -> None:
    link, inbox = await link_factory(sdk_url.replace("/mcp", "/nowhere"))
    await link.send(modern(5, "tools/list"))
    error = await inbox.next()
    assert error == {"jsonrpc": "2.0", "id": 5, "error": {
        "code": UPSTREAM_UNAVAILABLE, "message": "upstream HTTP 404", "data": {"httpStatus": 404}}}


async def test_connection_refused_hides_secrets(link_factory: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before use: nothing listens there
    url = f"http://user:hunter2@127.0.0.1:{port}/mcp?token=s3cret"
    link, inbox = await link_factory(url, headers={"Authorization": "Bearer s3cret"})
    assert link.describe() == f"http://127.0.0.1:{port}/mcp"
    await link.send(modern(1, "tools/list"))
    error = await inbox.next()
    assert error["id"] == 1 and error["error"]["code"] == UPSTREAM_UNAVAILABLE
    assert error["error"]["data"] == {"transport": "ConnectError"}
    assert "hunter2" not in str(error) and "s3cret" not in str(error)


async def test_stream_order_and_headers(raw: tuple[str, Script], link_factory: Any) -> None:
    url, _ = raw
    link, inbox = await link_factory(url, headers={"Authorization": "Bearer k"})
    await link.send(modern(1, "progress"))
    got = [await inbox.next() for _ in range(3)]
    assert [m.get("params", {}).get("progress") for m in got[:2]] == [1, 2]
    assert got[2] == {"jsonrpc": "2.0", "id": 1, "result": {"done": True}}

    call = modern(2, "echo/headers", {"name": "x"})
    await link.send(call, SendHints(headers={"Mcp-Param-Region": "eu", "Mcp-Method": "forged"}))
    headers = (await inbox.next())["result"]["headers"]
    assert headers["mcp-protocol-version"] == MODERN and headers["mcp-method"] == "echo/headers"
    assert headers["mcp-param-region"] == "eu" and headers["authorization"] == "Bearer k"
    assert "mcp-name" not in headers and "mcp-session-id" not in headers


async def test_abandon_closes_the_stream(raw: tuple[str, Script], link_factory: Any) -> None:
    url, script = raw
    link, inbox = await link_factory(url)
    await link.send(modern(1, "hang"))
    assert (await inbox.next())["method"] == "notifications/progress"
    link.abandon(1)
    assert await asyncio.to_thread(script.disconnected.wait, TIMEOUT), "server never saw the disconnect"
    await asyncio.sleep(0.1)
    assert inbox.queue.empty() and not link._inflight


async def test_error_cases(raw: tuple[str, Script], link_factory: Any) -> None:
    url, _ = raw
    link, inbox = await link_factory(url, max_message_bytes=2048)
    await link.send(modern(1, "modern/error"))  # the server's own JSON-RPC error, re-keyed
    error = await inbox.next()
    assert error["id"] == 1 and error["error"]["code"] == -32022

    await link.send(modern(2, "big"))
    error = await inbox.next()
    assert error["id"] == 2 and error["error"]["code"] == INTERNAL_ERROR

    await link.send(modern(3, "truncated"))
    assert (await inbox.next())["method"] == "notifications/progress"
    error = await inbox.next()
    assert error["id"] == 3 and error["error"]["code"] == UPSTREAM_UNAVAILABLE

    await link.send(modern(4, "resumable"))  # modern streams are never resumed
    assert (await inbox.next())["error"]["code"] == UPSTREAM_UNAVAILABLE


@pytest.mark.parametrize(("method", "why"), [("undecodable", "parse error"),
                                            ("shapeless", "not a request, notification or response")])
async def test_an_unusable_reply_on_a_stream_answers_at_once(raw: tuple[str, Script], link_factory: Any,
                                                             method: str, why: str) -> None:
    url, _ = raw
    link, inbox = await link_factory(url)
    await link.send(modern(5, method))
    error = await inbox.next(timeout=2.0)  # the stream stays open for 30 s: this is not its end
    assert error["id"] == 5 and error["error"]["code"] == INTERNAL_ERROR
    message = error["error"]["message"]
    assert message.startswith("upstream sent an unusable reply (") and why in message


async def test_legacy_get_stream_resumes(raw: tuple[str, Script], link_factory: Any) -> None:
    url, script = raw
    link, inbox = await link_factory(url)
    assert (await initialize(link, inbox))["result"]["protocolVersion"] == "2025-06-18"
    await link.send(INITIALIZED)

    # GET #1 delivers n1 then drops; GET #2 resumes after g1 (honouring retry: 20).
    assert (await inbox.next())["params"]["data"] == "n1"
    assert (await inbox.next())["params"]["data"] == "n2"
    server_request = await inbox.next()
    assert server_request["method"] == "roots/list"
    gets = [headers for verb, headers, _ in script.requests if verb == "GET"]
    assert [h.get("last-event-id") for h in gets] == [None, "g1"]
    assert all(h["mcp-session-id"] == "sess-1" and h["accept"] == "text/event-stream" for h in gets)

    await send_and_wait(link, {"jsonrpc": "2.0", "id": "s1", "result": {"roots": []}})
    posted = script.requests[-1][1]
    assert posted["mcp-session-id"] == "sess-1" and posted["mcp-protocol-version"] == "2025-06-18"

    # A legacy request stream that ends early is resumed by GET with its last event id.
    await link.send({"jsonrpc": "2.0", "id": 7, "method": "resumable"})
    assert await inbox.next() == {"jsonrpc": "2.0", "id": 7, "result": {"resumed": True}}

    await link.close()
    assert await asyncio.to_thread(script.disconnected.wait, TIMEOUT)
    assert script.requests[-1][0] == "DELETE" and script.requests[-1][1]["mcp-session-id"] == "sess-1"


async def test_legacy_404_reports_expiry(raw: tuple[str, Script], link_factory: Any) -> None:
    url, _ = raw
    link, inbox = await link_factory(url)
    await initialize(link, inbox)
    await link.send({"jsonrpc": "2.0", "id": 2, "method": "session/gone"})
    assert (await inbox.next())["error"]["data"] == {"httpStatus": 404}
    assert inbox.closed == ["session expired"]


async def test_legacy_get_stream_405_is_fine(raw: tuple[str, Script], link_factory: Any) -> None:
    url, script = raw
    script.get_status = 405
    link, inbox = await link_factory(url)
    await initialize(link, inbox)
    await send_and_wait(link, INITIALIZED)
    assert link._listen_task is not None
    await asyncio.wait_for(link._listen_task, TIMEOUT)  # gave up at once: no retries
    assert [verb for verb, _, _ in script.requests] == ["POST", "POST", "GET"]
    assert inbox.closed == [] and inbox.queue.empty()
    with pytest.raises(LinkError):  # ids must be unique among requests in flight
        await link.send(modern(2, "hang"))
        await link.send(modern(2, "hang"))


async def test_get_stream_of_retry_0_only_backs_off_and_gives_up(raw: tuple[str, Script], link_factory: Any) -> None:
    """Audit gap 6: a stream of `retry: 0` alone is no progress, and 0 ms is no delay to honour: the link waits at
    least MIN_RECONNECT_DELAY between tries and gives up after MAX_RECONNECTS, instead of reconnecting in a loop."""
    from mcpward.transport.http_link import MAX_RECONNECTS, MIN_RECONNECT_DELAY

    url, script = raw
    script.get_retry_only = True
    link, inbox = await link_factory(url)
    await initialize(link, inbox)
    start = asyncio.get_running_loop().time()
    await send_and_wait(link, INITIALIZED)
    assert link._listen_task is not None
    await asyncio.wait_for(link._listen_task, TIMEOUT)
    gets = [verb for verb, _, _ in script.requests if verb == "GET"]
    assert len(gets) == MAX_RECONNECTS
    assert asyncio.get_running_loop().time() - start >= (MAX_RECONNECTS - 1) * MIN_RECONNECT_DELAY
