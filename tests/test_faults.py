"""Fault tests: an upstream that crashes mid-call, hangs, floods or sends a huge frame.

The gateway stays up, answers every request with a precise error, restarts the
crashed server, and the healthy server next to it never notices.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.conftest import FIXTURES, PYTHON, fixture_server, toml_list
from tests.rawclient import RawStdioClient

CONFIG = """
[gateway]
max_message_bytes = 1048576
[servers.bad]
command = "{py}"
args = ["{fault}"]
timeout = 2
max_in_flight = 4
[servers.good]
command = "{py}"
args = {good}
"""


async def _client(write_config) -> RawStdioClient:  # type: ignore[no-untyped-def]
    cmd = fixture_server()
    text = CONFIG.format(py=PYTHON, fault=FIXTURES / "fault_server.py", good=toml_list(cmd[1:]))
    return await RawStdioClient.start(write_config(text))


def _text(reply: dict) -> str:  # type: ignore[type-arg]
    return str(reply["result"]["content"][0]["text"])


def descendants(pid: int) -> set[int]:
    """Host pids of every process under `pid` (a sandboxed server's own pid is 2 in its namespace)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


async def test_crash_mid_call_is_an_error_then_restart(write_config) -> None:  # type: ignore[no-untyped-def]
    client = await _client(write_config)
    try:
        assert _text(await client.call("bad__pid"))
        first = descendants(client.proc.pid)
        reply = await client.call("bad__crash")
        assert reply["error"]["code"] == -32001 and "went away" in reply["error"]["message"]
        assert _text(await client.call("good__test_simple_text"))
        # Restarted with backoff: within a few seconds the server answers again, as a new process.
        deadline = time.monotonic() + 15
        while True:
            reply = await client.call("bad__pid")
            if "result" in reply:
                break
            assert reply["error"]["code"] == -32001 and time.monotonic() < deadline
            await asyncio.sleep(0.2)
        assert descendants(client.proc.pid) - first  # a new process answers
    finally:
        await client.close()


async def test_hanging_call_times_out_and_others_keep_working(write_config) -> None:  # type: ignore[no-untyped-def]
    client = await _client(write_config)
    try:
        hang = asyncio.ensure_future(client.call("bad__hang", timeout=30))
        assert _text(await client.call("good__test_simple_text"))
        assert _text(await client.call("bad__echo", {"text": "still here"})) == "still here"
        started = time.monotonic()
        reply = await hang
        assert reply["error"]["code"] == -32005 and "did not answer" in reply["error"]["message"]
        assert reply["error"]["data"] == {"reason": "timeout", "timeoutSeconds": 2}  # not "Resource not found"
        assert time.monotonic() - started < 5
    finally:
        await client.close()


async def test_in_flight_limit_applies_backpressure_not_drops(write_config) -> None:  # type: ignore[no-untyped-def]
    client = await _client(write_config)
    try:
        assert _text(await client.call("bad__echo", {"text": "ready"})) == "ready"
        hangs = [asyncio.ensure_future(client.call("bad__hang", timeout=30)) for _ in range(4)]
        await asyncio.sleep(0.5)
        # The fifth call waits for a slot (max_in_flight = 4); once the hung ones time out, it runs.
        started = time.monotonic()
        reply = await client.call("bad__echo", {"text": "queued"}, timeout=30)
        assert _text(reply) == "queued"
        assert time.monotonic() - started > 1.0  # it really waited
        for reply in await asyncio.gather(*hangs):
            assert reply["error"]["code"] == -32005
    finally:
        await client.close()


async def test_flood_of_junk_and_notifications(write_config) -> None:  # type: ignore[no-untyped-def]
    client = await _client(write_config)
    try:
        reply = await client.call("bad__flood", {"lines": 20000}, timeout=30)
        assert _text(reply) == "flooded"
        # Log lines were not asked for (no logLevel), so none reached the client.
        assert not [n for n in client.notifications if n.get("method") == "notifications/message"]
        assert _text(await client.call("good__test_simple_text"))
    finally:
        await client.close()


async def test_oversized_upstream_frame_is_refused(write_config) -> None:  # type: ignore[no-untyped-def]
    client = await _client(write_config)
    try:
        reply = await client.call("bad__huge", {"bytes": 4 * 1024 * 1024})
        assert reply["error"]["code"] == -32603 and "1048576-byte limit" in reply["error"]["message"]
        assert _text(await client.call("bad__echo", {"text": "ok"})) == "ok"
    finally:
        await client.close()


async def test_a_reply_the_gateway_cannot_use_is_an_error_at_once(write_config) -> None:  # type: ignore[no-untyped-def]
    # Not the 2 s timeout: the request is answered when its broken reply arrives, and says why.
    client = await _client(write_config)
    try:
        reply = await client.call("bad__malformed")
        assert reply["error"]["code"] == -32603
        assert "server 'bad' sent a reply that is not valid JSON" in reply["error"]["message"]
        # A lone surrogate escape is valid JSON that strict parsers refuse: it passes through as it came.
        assert _text(await client.call("bad__surrogate")) == "half a pair: \ud800"
        reply = await client.call("bad__shapeless")
        assert reply["error"]["code"] == -32603
        assert reply["error"]["message"] == ("server 'bad' sent an invalid reply "
                                             "(not a request, notification or response)")
        assert _text(await client.call("bad__echo", {"text": "still here"})) == "still here"
    finally:
        await client.close()


async def test_gateway_exits_cleanly_and_stops_children(write_config) -> None:  # type: ignore[no-untyped-def]
    client = await _client(write_config)
    assert _text(await client.call("bad__pid"))
    servers = descendants(client.proc.pid)
    assert servers
    await client.close()
    assert client.proc.returncode == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = {p for p in servers if Path(f"/proc/{p}").exists()}
        if not alive:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"upstream processes {sorted(alive)} outlived the gateway")
