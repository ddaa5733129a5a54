"""stdio framing and the callback-driven stdio front and upstream link.

The splitter replaced `asyncio.StreamReader.readuntil` with a limit; the randomised test below keeps a
reference built on a StreamReader the same way (what the transports did before) and checks that both
cut every stream into the same frames, however the stream is chunked.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mcpward.protocol import jsonrpc
from mcpward.transport import stdio_front, stdio_link
from mcpward.transport.lines import PROBE_BYTES, Item, LineSplitter, Oversized, probe_id, reply_id
from mcpward.transport.stdio_front import StdioFront
from mcpward.transport.stdio_link import PlainSpawner, StdioLink

MAX = 200
NL = b"\n"


def split_all(data: bytes, chunks: list[int], max_bytes: int = MAX) -> list[Item]:
    """Feed `data` cut at the given sizes (the rest in one piece), then EOF."""
    splitter = LineSplitter(max_bytes)
    items: list[Item] = []
    pos = 0
    for size in chunks:
        items += splitter.feed(data[pos:pos + size])
        pos += size
    items += splitter.feed(data[pos:])
    return items + splitter.feed_eof()


async def reference_frames(data: bytes, max_bytes: int) -> list[Item]:
    """What the StreamReader-based reader gave for the same bytes (readuntil with a limit of max + 1)."""
    reader = asyncio.StreamReader(limit=max_bytes + 1)
    reader.feed_data(data)
    reader.feed_eof()
    items: list[Item] = []
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                items.append(exc.partial.strip())
            return items
        except asyncio.LimitOverrunError as exc:
            whole = await reader.readexactly(exc.consumed)
            while True:
                try:
                    whole += await reader.readuntil(b"\n")
                    break
                except asyncio.LimitOverrunError as more:
                    whole += await reader.readexactly(more.consumed)
                except asyncio.IncompleteReadError as end:
                    whole += end.partial
                    break
            body = whole.removesuffix(b"\n")  # the probe sees the line's first and last bytes, not its newline
            items.append(Oversized(len(whole), probe_id(body[:PROBE_BYTES], body[-PROBE_BYTES:])))
            continue
        stripped = line.strip()
        if stripped and len(stripped) > max_bytes:
            items.append(Oversized(len(stripped), probe_id(stripped[:PROBE_BYTES], stripped[-PROBE_BYTES:])))
        elif stripped:
            items.append(stripped)


def random_stream(rng: random.Random) -> bytes:
    lines = []
    for n in range(rng.randint(0, 12)):
        kind = rng.choice(["json", "json", "blank", "space", "big", "big_ts", "edge", "crlf"])
        if kind == "json":
            params = {"s": "x" * rng.randint(0, 50)}
            lines.append(json.dumps({"jsonrpc": "2.0", "id": n, "method": "m", "params": params}))
        elif kind == "blank":
            lines.append("")
        elif kind == "space":
            lines.append(" \t ")
        elif kind == "crlf":
            lines.append(f'{{"id": "r{n}"}}\r')
        elif kind == "big_ts":  # the id last, as the TypeScript SDK writes it, and a decoy id inside params
            pad = "y" * rng.randint(MAX, 3 * MAX)
            lines.append(f'{{"params":{{"id":9{n},"pad":"{pad}"}},"jsonrpc":"2.0","id":{n}}}')
        elif kind == "big":  # the id first, as JSON-RPC clients write it
            lines.append(f'{{"id": {n}, "pad": "' + "y" * rng.randint(MAX, 3 * MAX) + '"}')
        else:  # around the cap, with or without whitespace that stripping removes
            body = f'{{"id":"e{n}","p":"' + "z" * (MAX - 20) + '"}'
            body = body[: MAX + rng.randint(-1, 2)]
            lines.append(rng.choice(["", " ", "  "]) + body + rng.choice(["", " "]))
    text = "\n".join(lines)
    if rng.random() < 0.6:
        text += "\n"  # else the stream ends inside its last line
    return text.encode()


async def test_same_frames_as_the_stream_reader_however_chunked() -> None:
    rng = random.Random(20261121)
    for _ in range(400):
        data = random_stream(rng)
        expected = await reference_frames(data, MAX)
        assert split_all(data, []) == expected
        assert split_all(data, [1] * len(data)) == expected  # byte by byte
        cuts = [rng.randint(1, 90) for _ in range(len(data) // 30 + 1)]
        assert split_all(data, cuts) == expected


def test_frames_blank_lines_and_whitespace() -> None:
    data = b'{"a":1}\n\n   \n\t{"b":2}\r\n{"c":'
    splitter = LineSplitter(MAX)
    assert splitter.feed(data) == [b'{"a":1}', b'{"b":2}']
    assert splitter.feed(b"3}\n") == [b'{"c":3}']
    assert splitter.feed_eof() == []


def test_unterminated_last_line_is_a_frame_at_eof() -> None:
    splitter = LineSplitter(MAX)
    assert splitter.feed(b'{"x":1}\n  {"y":2}  ') == [b'{"x":1}']
    assert splitter.feed_eof() == [b'{"y":2}']


def test_oversized_line_reports_size_and_id_and_the_stream_goes_on() -> None:
    big = b'{"jsonrpc":"2.0","id":"big-1","params":"' + b"q" * 5000 + b'"}'
    splitter = LineSplitter(1024)
    items = splitter.feed(big + b'\n{"ok":1}\n')
    assert items == [Oversized(len(big) + 1, "big-1"), b'{"ok":1}']


def test_oversized_line_streamed_in_is_dropped_not_buffered() -> None:
    splitter = LineSplitter(1024)
    assert splitter.feed(b'{"id": 77, "s": "') == []
    total = len(b'{"id": 77, "s": "')
    for _ in range(2000):  # 8 MB with no newline
        assert splitter.feed(b"w" * 4096) == []
        total += 4096
        assert len(splitter._partial) <= 1025  # never more than the cap held
    assert splitter.feed(b'"}\n{"after":true}\n') == [Oversized(total + 3, 77), b'{"after":true}']


def test_eof_while_dropping_reports_what_was_dropped() -> None:
    splitter = LineSplitter(1024)
    assert splitter.feed(b'{"id":"cut",' + b" " * 3000) == []
    assert splitter.feed_eof() == [Oversized(12 + 3000, "cut")]


def test_oversized_id_written_last_is_found_and_a_nested_id_never_is() -> None:
    # The TypeScript SDK writes {method, params, jsonrpc, id}: the id is in the last bytes, and a tool
    # argument called "id" comes first. Before, the first "id" anywhere won: the error went to 7.
    ts_order = (b'{"method":"tools/call","params":{"arguments":{"id":7,"s":"' + b"a" * 9000
                + b'"}},"jsonrpc":"2.0","id":41}')
    assert split_all(ts_order + b"\n", [], max_bytes=1024) == [Oversized(len(ts_order) + 1, 41)]
    assert split_all(ts_order + b"\r\n", [100] * 95, max_bytes=1024) == [Oversized(len(ts_order) + 2, 41)]
    assert split_all(ts_order, [333] * 30, max_bytes=1024) == [Oversized(len(ts_order), 41)]  # EOF, no newline
    # A nested id and no top-level one visible at either end: no id rather than somebody else's.
    nested_only = b'{"method":"m","params":{"id":7,"s":"' + b"a" * 9000 + b'","inner":{"id":8}}}'
    assert split_all(nested_only + b"\n", [], max_bytes=1024) == [Oversized(len(nested_only) + 1, None)]
    # The top-level id early wins over anything at the end, and string contents never count as keys.
    early = b'{"note":"\\"id\\":5","id":"r-1","params":{"s":"' + b"a" * 9000 + b'","id":6}}'
    assert probe_id(early[:PROBE_BYTES], early[-PROBE_BYTES:]) == "r-1"
    # An unparsable (not oversized) frame is answered under its id at either end too.
    assert reply_id(b'{"method":"m","params":{"id":7,"x":nope},"jsonrpc":"2.0","id":"q"}') == "q"
    assert reply_id(b'{"method":"m","params":{"id":7,"x":nope}}') is None


def test_cap_boundary() -> None:
    at_cap = b"{" + b"a" * (MAX - 2) + b"}"
    assert split_all(at_cap + b"\n", []) == [at_cap]
    assert split_all(b" " + at_cap + b"\n", []) == [at_cap]  # a body of cap + 1, stripped to the cap: accepted
    assert split_all(b" " + at_cap + b" \n", []) == [Oversized(MAX + 3)]  # a body over cap + 1 never is
    over = b"{" + b"a" * (MAX - 1) + b"}"
    assert split_all(over + b"\n", []) == [Oversized(MAX + 1)]


# ------------------------------------------------------------------ the front


class FakeConnection:
    """Stands in for ClientConnection: records what the front hands it, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.running: dict[Any, asyncio.Task[Any]] = {}
        self.release = asyncio.Event()
        self.block_requests = False

    async def on_notification(self, message: dict[str, Any]) -> None:
        self.events.append(f"notification {message['method']} start")
        await asyncio.sleep(0.05)  # suspends: later frames must still wait for it
        self.events.append(f"notification {message['method']} done")

    async def on_response(self, message: dict[str, Any]) -> None:
        self.events.append(f"response {message['id']}")

    async def on_request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.events.append(f"request {message['id']}")
        if self.block_requests:
            await self.release.wait()
        return jsonrpc.result(message["id"], {"echo": message["method"]})

    def close(self) -> None:
        self.events.append("closed")


class Pipes:
    """A StdioFront serving on two OS pipes, driven from the test."""

    def __init__(self, max_bytes: int = 1024) -> None:
        gateway = SimpleNamespace(cfg=SimpleNamespace(max_message_bytes=max_bytes))
        self.front = StdioFront(gateway)  # type: ignore[arg-type]
        self.conn = FakeConnection()
        self.front.conn = self.conn  # type: ignore[assignment]
        in_r, self.in_w = os.pipe()
        self.out_r, out_w = os.pipe()
        os.set_blocking(self.in_w, False)
        os.set_blocking(self.out_r, False)
        self.serving = asyncio.ensure_future(self.front.serve(os.fdopen(in_r, "rb"), os.fdopen(out_w, "wb")))
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        while data:
            try:
                data = data[os.write(self.in_w, data):]
            except BlockingIOError:
                await asyncio.sleep(0.01)

    async def replies(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.buffer.count(b"\n") < count:
            assert loop.time() < deadline, f"only {self.buffer.count(NL)} of {count} replies"
            try:
                self.buffer += os.read(self.out_r, 65536)
            except BlockingIOError:
                await asyncio.sleep(0.01)
        lines = self.buffer.split(b"\n")
        self.buffer = b"\n".join(lines[count:])
        return [json.loads(line) for line in lines[:count]]

    async def close(self) -> None:
        os.close(self.in_w)
        await asyncio.wait_for(self.serving, 10)
        os.close(self.out_r)


def request(rid: Any, method: str = "tools/call") -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": method}).encode() + b"\n"


def notification(method: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": method}).encode() + b"\n"


async def test_front_finishes_a_notification_before_the_frames_after_it() -> None:
    pipes = Pipes()
    # One write, so the frames arrive in one chunk and are split in one data_received.
    answer = b'{"jsonrpc":"2.0","id":"mcpward-1","result":{}}\n'
    await pipes.send(notification("notifications/initialized") + request(1) + answer
                     + notification("notifications/cancelled") + request(2))
    replies = await pipes.replies(2)
    assert sorted(r["id"] for r in replies) == [1, 2]
    await pipes.close()
    assert pipes.conn.events == [
        "notification notifications/initialized start", "notification notifications/initialized done",
        "request 1", "response mcpward-1",
        "notification notifications/cancelled start", "notification notifications/cancelled done",
        "request 2", "closed"]


async def test_front_answers_bad_frames_in_order_and_keeps_going() -> None:
    pipes = Pipes(max_bytes=1024)
    big = b'{"jsonrpc":"2.0","id":"huge","method":"x","params":"' + b"p" * 4000 + b'"}'
    await pipes.send(b"{not json\n\n" + big + b"\n" + b'{"jsonrpc":"1.0","id":7,"method":"m"}\n' + request(8)
                     + b'{"jsonrpc":"2.0","id":9,"method":"last"}')  # no newline: EOF ends it
    os.close(pipes.in_w)
    replies = await pipes.replies(5)
    await asyncio.wait_for(pipes.serving, 10)
    os.close(pipes.out_r)
    assert replies[0]["id"] is None and replies[0]["error"]["code"] == jsonrpc.PARSE_ERROR
    assert replies[1]["id"] == "huge" and replies[1]["error"]["message"] == (
        f"message of {len(big) + 1} bytes exceeds the 1024-byte limit ([gateway] max_message_bytes)")
    assert replies[1]["error"]["data"] == {"rule": "stdio.message-size"}
    assert replies[2]["id"] == 7 and replies[2]["error"]["code"] == jsonrpc.INVALID_REQUEST
    assert {replies[3]["id"], replies[4]["id"]} == {8, 9}


async def test_front_answers_an_oversized_ts_order_request_under_its_own_id() -> None:
    pipes = Pipes(max_bytes=1024)
    big = (b'{"method":"tools/call","params":{"name":"t","arguments":{"id":7,"s":"' + b"p" * 4000
           + b'"}},"jsonrpc":"2.0","id":41}')
    await pipes.send(big + b"\n" + request(8))
    replies = await pipes.replies(2)
    await pipes.close()
    refused = next(r for r in replies if "error" in r)
    assert refused["id"] == 41 and refused["error"]["code"] == jsonrpc.INVALID_REQUEST  # not 7, not null
    assert [r["id"] for r in replies if "result" in r] == [8]


async def test_front_refuses_a_duplicate_running_id() -> None:
    pipes = Pipes()
    pipes.conn.block_requests = True
    await pipes.send(request("same") + request("same"))
    [refusal] = await pipes.replies(1)
    assert refusal["error"]["message"] == "request id 'same' is already in use"
    pipes.conn.release.set()
    [answer] = await pipes.replies(1)
    assert answer["result"] == {"echo": "tools/call"}
    await pipes.close()


async def test_front_stops_reading_while_too_many_requests_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stdio_front, "MAX_IN_FLIGHT", 4)
    pipes = Pipes()
    pipes.conn.block_requests = True
    await pipes.send(b"".join(request(i) for i in range(10)))
    await asyncio.sleep(0.2)
    assert pipes.conn.events == [f"request {i}" for i in range(4)]  # the rest waits, unread or in the backlog
    pipes.conn.release.set()
    replies = await pipes.replies(10)
    assert sorted(r["id"] for r in replies) == list(range(10))
    await pipes.close()


async def test_front_stops_reading_stdin_while_stdout_is_full() -> None:
    """A client that floods bad lines and never reads the errors: the gateway stops reading, holds nothing unbounded."""
    pipes = Pipes()
    line = b"x\n"  # each answered with a ~100-byte parse error
    written = 0
    blocked_since: float | None = None
    loop = asyncio.get_running_loop()
    while written < 20_000_000:
        try:
            written += os.write(pipes.in_w, line * 4096)
            blocked_since = None
        except BlockingIOError:
            blocked_since = blocked_since or loop.time()
            if loop.time() - blocked_since > 0.5:
                break
        await asyncio.sleep(0)
    assert written < 20_000_000, "stdin was read on although stdout was full"
    # Now the client reads: every line gets its answer, none was dropped.
    replies = await pipes.replies(written // len(line), timeout=60)
    assert all(r["error"]["code"] == jsonrpc.PARSE_ERROR for r in replies)
    await pipes.close()


# ------------------------------------------------------------- the upstream link

SERVER = r"""
import json, sys, time
out = sys.stdout.buffer
def msg(**m): return json.dumps({"jsonrpc": "2.0", **m}).encode() + b"\n"
out.write(b"banner: not json\n" + msg(method="notifications/one") + b"\n  \n" + msg(id=1, result={}))
out.flush()
sys.stdin.readline()  # the gateway has read the above; the rest arrives in later chunks
out.write(b'{"jsonrpc":"2.0","id":2,"result":{"pad":"' + b"p" * 3000 + b'"}}\n')
out.flush()
time.sleep(0.05)
out.write(msg(id=3, result={"half": True})[:10]); out.flush()
time.sleep(0.05)
out.write(msg(id=3, result={"half": True})[10:] + b"more junk\n" + msg(id=4, result={"last": True}).rstrip())
out.flush()
"""


@pytest.mark.parametrize("tap", [True, False], ids=["tap", "stream"])
async def test_link_delivers_messages_reports_oversized_and_counts_junk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tap: bool) -> None:
    monkeypatch.setattr(stdio_link, "TAP_PIPE", tap)
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    link = StdioLink("fake", PlainSpawner("fake", sys.executable, [str(script)], {}, None), max_message_bytes=1024)
    messages: list[dict[str, Any]] = []
    closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    link.on_message = messages.append
    link.on_closed = closed.set_result
    await link.open()
    for _ in range(200):
        if len(messages) == 2:
            break
        await asyncio.sleep(0.02)
    # The first chunk came through the stream reader; with the tap on, the pipe now feeds the tap.
    protocol = link._proc._protocol  # type: ignore[union-attr]
    assert (type(protocol.stdout) is stdio_link._Tap) is tap
    await link.send({"jsonrpc": "2.0", "method": "notifications/go"})
    reason = await asyncio.wait_for(closed, 10)
    await link.close()
    assert reason == "exited (exit code 0)"
    assert link.junk_lines == 2
    assert [m.get("method") or m.get("id") for m in messages] == ["notifications/one", 1, 2, 3, 4]
    assert messages[2]["error"]["message"] == "upstream message exceeded the 1024-byte limit"
    assert messages[3]["result"] == {"half": True} and messages[4]["result"] == {"last": True}


@pytest.mark.parametrize("tap", [True, False], ids=["tap", "stream"])
async def test_link_sends_in_order_when_the_pipe_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         tap: bool) -> None:
    """The child reads nothing for a while: senders wait for the pipe instead of losing or reordering lines."""
    script = tmp_path / "slow_reader.py"
    script.write_text("import sys, time\ntime.sleep(0.5)\nfor line in sys.stdin.buffer:\n"
                      "    sys.stdout.buffer.write(line)\nsys.stdout.flush()\n")
    monkeypatch.setattr(stdio_link, "TAP_PIPE", tap)
    link = StdioLink("slow", PlainSpawner("slow", sys.executable, [str(script)], {}, None), max_message_bytes=1 << 20)
    seen: list[dict[str, Any]] = []
    link.on_message = seen.append
    await link.open()
    sends: list[Callable[[], Any]] = [
        lambda i=i: link.send({"jsonrpc": "2.0", "id": i, "result": {"pad": "x" * 20000}}) for i in range(40)]
    for send in sends:  # 800 KB: far more than a pipe holds, so drains really wait
        await send()
    for _ in range(200):
        if len(seen) == 40:
            break
        await asyncio.sleep(0.05)
    await link.close()
    assert [m["id"] for m in seen] == list(range(40))


# ------------------------------------------------------------- under uvloop, as `mcpward run` runs

def test_the_same_under_uvloop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop's pipe transports and subprocess plumbing differ from asyncio's (they are not asyncio.ReadTransport
    subclasses, for one), and the gateway runs on uvloop when it is installed."""
    uvloop = pytest.importorskip("uvloop")
    cases: list[Callable[[], Coroutine[Any, Any, None]]] = [
        test_front_finishes_a_notification_before_the_frames_after_it,
        test_front_answers_bad_frames_in_order_and_keeps_going,
        lambda: test_front_stops_reading_while_too_many_requests_run(monkeypatch),
        test_front_stops_reading_stdin_while_stdout_is_full,
        lambda: test_link_delivers_messages_reports_oversized_and_counts_junk(tmp_path, monkeypatch, tap=True),
        lambda: test_link_sends_in_order_when_the_pipe_is_full(tmp_path, monkeypatch, tap=True),
    ]
    for case in cases:
        loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(asyncio.wait_for(case(), 60))
        finally:
            loop.close()
