"""Legacy upstream sessions stay apart, and a lost session comes back as it was.

Each legacy client gets its own server process (tests/fixtures/session_server.py). One of them must
not reach another's request through progress tokens or resource updates; a crashing one is
restarted with backoff, not on every request; and a restarted one is subscribed again and gets the
last log level.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from mcpward.gateway import config
from mcpward.gateway.context import Principal, RequestContext
from mcpward.gateway.peer import PeerError
from mcpward.gateway.upstream import MAX_BACKOFF, Upstream, UpstreamEvents
from mcpward.protocol import jsonrpc
from mcpward.protocol.jsonrpc import JsonObj
from tests.conftest import FIXTURES, PYTHON
from tests.rawclient import RawStdioClient

SERVER = str(FIXTURES / "session_server.py")
LEGACY = "2025-11-25"


class Recorder:
    """A client connection that keeps what the gateway sends it."""

    can_ask = False

    def __init__(self) -> None:
        self.sent: list[JsonObj] = []

    async def notify(self, message: JsonObj) -> None:
        self.sent.append(message)

    async def ask(self, method: str, params: JsonObj, timeout: float) -> JsonObj:
        raise AssertionError("no push is expected")


def client(name: str, channel: Recorder, token: Any = None) -> RequestContext:
    return RequestContext(era="legacy", protocol_version=LEGACY, capabilities={}, client_info=None,
                          principal=Principal(name, "anonymous"), channel=channel, transport="http",
                          session_id=f"session-{name}", connection_id=f"conn-{name}", progress_token=token)


async def shut(up: Upstream) -> None:
    """Stop the server and the launcher's idle warm sandbox slot (the gateway does both on stop)."""
    await up.stop()
    await up.launcher.aclose()


def upstream(tmp_path: Path, timeout: float = 10) -> Upstream:
    cfg = config.parse({"sandbox": {"state_dir": str(tmp_path / "sandbox-state")},
                        "servers": {"s": {"command": PYTHON, "args": [SERVER], "timeout": timeout}}}, "test")
    return Upstream(cfg.servers["s"], cfg, UpstreamEvents())


async def test_progress_from_another_session_never_reaches_the_request(tmp_path: Path) -> None:
    up = upstream(tmp_path)
    await up.start()
    victim, attacker = Recorder(), Recorder()
    try:
        slow = asyncio.ensure_future(up.call(client("a", victim, "victim-token"), "tools/call",
                                             {"name": "slow", "arguments": {}}))
        deadline = time.monotonic() + 10
        while not up._progress:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        token = next(iter(up._progress))
        # The other client's server knows the token (the worst case) and guesses counters besides.
        spied = await up.call(client("b", attacker), "tools/call",
                              {"name": "spy", "arguments": {"tokens": [token], "prefix": "s"}})
        assert spied["content"][0]["text"] == "spied"
        assert (await slow)["content"][0]["text"] == "slow done"
        await asyncio.sleep(0.2)  # deliveries run as tasks
        messages = [m["params"]["message"] for m in victim.sent if m["method"] == "notifications/progress"]
        assert messages == ["own progress"]
        assert all(m["params"]["progressToken"] == "victim-token" for m in victim.sent)
        assert attacker.sent == []
        assert up.stray_messages >= 50  # each injected one dropped and counted
        assert len(token.split("-", 1)[1]) >= 16  # random, not a counter another server could walk
    finally:
        await shut(up)


async def test_resource_update_counts_only_from_the_session_that_subscribed(tmp_path: Path) -> None:
    updates: list[str] = []
    up = upstream(tmp_path)
    up.events = UpstreamEvents(resource_updated=lambda _server, params, _principal: updates.append(params["uri"]))
    await up.start()
    a, b = client("a", Recorder()), client("b", Recorder())
    try:
        await up.subscribe(a, {"test://watched"})
        await up.call(b, "tools/call", {"name": "echo", "arguments": {"text": "hi"}})
        session_b = next(s for s in up._sessions.values() if s.key.endswith("conn-b"))
        up._on_notification(session_b, {"method": "notifications/resources/updated",
                                        "params": {"uri": "test://watched"}})
        assert updates == [] and up.stray_messages == 1
        await up.call(a, "tools/call", {"name": "update", "arguments": {}})
        await asyncio.sleep(0.2)
        assert updates == ["test://watched"]
    finally:
        await shut(up)


async def test_one_clients_log_level_never_reaches_another_clients_session(tmp_path: Path) -> None:
    up = upstream(tmp_path)
    await up.start()
    a, b = client("a", Recorder()), client("b", Recorder())

    async def level(ctx: RequestContext) -> str:
        reply = await up.call(ctx, "tools/call", {"name": "level", "arguments": {}})
        text: str = reply["content"][0]["text"]
        return text

    try:
        assert await level(a) == "none" and await level(b) == "none"
        a.log_level = "emergency"
        await up.set_log_level(a, "emergency")
        assert await level(a) == "emergency"
        assert await level(b) == "none"  # b keeps every log line it asked for
        b.log_level = "debug"
        await up.set_log_level(b, "debug")
        assert (await level(a), await level(b)) == ("emergency", "debug")
        # A client's new session (here: a new connection of the same client) starts at its own level.
        again = client("a", Recorder())
        again.connection_id, again.log_level = "conn-a2", "error"
        assert await level(again) == "error"
    finally:
        await shut(up)


async def test_roots_changed_reaches_only_that_connections_sessions_that_declared_roots(tmp_path: Path) -> None:
    up = upstream(tmp_path)
    await up.start()
    a, b = client("a", Recorder()), client("b", Recorder())
    a.capabilities = b.capabilities = {"roots": {"listChanged": True}}
    a_plain = client("a", Recorder())  # the same connection, no roots declared: its own session
    try:
        for ctx in (a, a_plain, b):
            await up.call(ctx, "tools/call", {"name": "echo", "arguments": {"text": "hi"}})
        told: list[str] = []
        for session in up._sessions.values():
            async def notify(method: str, params: JsonObj | None = None, key: str = session.key) -> None:
                told.append(key)
            session.peer.notify = notify  # type: ignore[method-assign]
        await up.roots_changed(a)
        # Before the fix every legacy session was told: b's (another principal's) and a's without roots.
        assert len(up._sessions) >= 3
        own = f"|{a.principal.key}|conn-a"
        assert told == [k for k in up._sessions if k.endswith(own) and '"roots"' in k]
        assert len(told) == 1
        told.clear()
        await up.roots_changed(client("c", Recorder()))  # a connection with no session here tells nobody
        assert told == []
    finally:
        await shut(up)


def test_backoff_doubles_from_half_a_second_to_the_cap(tmp_path: Path) -> None:
    up = upstream(tmp_path)
    delays = [up._failed() for _ in range(10)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert delays[-1] == MAX_BACKOFF and max(delays) == MAX_BACKOFF


async def legacy_client(write_config: Any, extra: str = "", gateway: str = "") -> RawStdioClient:
    text = f'{gateway}[servers.s]\ncommand = "{PYTHON}"\nargs = ["{SERVER}"{extra}]\ntimeout = 10\n'
    c = await RawStdioClient.start(write_config(text))
    init = await c.request("initialize", {"protocolVersion": LEGACY, "capabilities": {},
                                          "clientInfo": {"name": "t", "version": "1"}}, modern=False)
    assert "result" in init, init
    await c.send_raw(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    return c


async def call(c: RawStdioClient, tool: str, arguments: JsonObj | None = None) -> JsonObj:
    return await c.request("tools/call", {"name": f"s__{tool}", "arguments": arguments or {}}, modern=False)


async def until_restarted(c: RawStdioClient, tool: str = "echo") -> JsonObj:
    """Call until the backoff lets a new process start; every refusal on the way says when to retry."""
    deadline = time.monotonic() + 15
    while True:
        reply = await call(c, tool)
        if "result" in reply:
            return reply
        error = reply["error"]
        assert error["code"] == -32001 and "restarting; retry in" in error["message"], error
        assert time.monotonic() < deadline
        await asyncio.sleep(error["data"]["retryAfterSeconds"])


async def test_crashing_legacy_server_is_restarted_with_backoff(write_config: Any) -> None:
    c = await legacy_client(write_config)
    try:
        assert (await c.request("tools/list", modern=False))["result"]["tools"]
        crash = await call(c, "crash")
        assert crash["error"]["code"] == -32001 and "went away" in crash["error"]["message"]
        # At once: refused, no new process (before the fix, each request spawned one).
        refused = await call(c, "echo")
        assert refused["error"]["code"] == -32001 and "restarting; retry in" in refused["error"]["message"]
        assert 0 < refused["error"]["data"]["retryAfterSeconds"] <= 0.5
        await until_restarted(c)
        # A successful initialize reset the count: the next crash waits 0.5 s again, not 1 s.
        assert "went away" in (await call(c, "crash"))["error"]["message"]
        assert (await call(c, "echo"))["error"]["data"]["retryAfterSeconds"] <= 0.5
    finally:
        await c.close()


async def test_subscription_and_log_level_survive_a_restart(write_config: Any) -> None:
    c = await legacy_client(write_config)

    def updates() -> int:
        return sum(1 for n in c.notifications if n["method"] == "notifications/resources/updated")

    try:
        assert (await c.request("tools/list", modern=False))["result"]["tools"]
        assert (await c.request("resources/subscribe", {"uri": "test://watched"}, modern=False))["result"] == {}
        assert (await c.request("logging/setLevel", {"level": "warning"}, modern=False))["result"] == {}
        assert (await call(c, "update"))["result"]["content"][0]["text"] == "subscribed=1"
        await asyncio.sleep(0.3)
        assert updates() == 1
        assert "went away" in (await call(c, "crash"))["error"]["message"]
        restarted = await until_restarted(c, "update")
        assert restarted["result"]["content"][0]["text"] == "subscribed=1"  # the new process was subscribed again
        await asyncio.sleep(0.3)
        assert updates() == 2
        assert (await call(c, "level"))["result"]["content"][0]["text"] == "warning"
    finally:
        await c.close()


async def test_long_stderr_line_and_flood_do_not_stall_the_server(write_config: Any) -> None:
    # One stderr line three times the stream limit, then ~200 KB of lines (more than a pipe holds):
    # before the fix the stderr pump ended on the long line and every call timed out.
    c = await legacy_client(write_config, ', "--stderr-line", "200000", "--stderr-lines", "400"',
                            gateway="[gateway]\nmax_message_bytes = 65536\n")
    try:
        for _ in range(3):
            started = time.monotonic()
            assert (await call(c, "stderr", {"bytes": 300000}))["result"]["content"][0]["text"] == "written"
            assert time.monotonic() - started < 5
    finally:
        await c.close()


async def two_http_sessions(http: httpx.AsyncClient, url: str) -> list[dict[str, str]]:
    heads = []
    for name in ("victim", "attacker"):
        base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        r = await http.post(url, headers=base, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": name, "version": "1"}}})
        head = {**base, "Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": LEGACY}
        await http.post(url, headers=head, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        heads.append(head)
    return heads


@pytest.mark.timeout(120)
async def test_another_clients_server_cannot_inject_progress_end_to_end(serve_gateway: Any) -> None:
    url = serve_gateway(f'[servers.s]\ncommand = "{PYTHON}"\nargs = ["{SERVER}"]\ntimeout = 10\n')
    async with httpx.AsyncClient(timeout=30) as http:
        victim, attacker = await two_http_sessions(http, url)

        async def slow() -> str:
            params = {"name": "s__slow", "arguments": {}, "_meta": {"progressToken": "victim-token"}}
            r = await http.post(url, headers=victim, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                                           "params": params})
            return r.text

        async def spy() -> str:
            await asyncio.sleep(0.5)
            # Guesses the old counter tokens ("s-1", "s-2", ...) from another client's process.
            params = {"name": "s__spy", "arguments": {"prefix": "s"}}
            r = await http.post(url, headers=attacker, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                                             "params": params})
            return r.text

        stream, spied = await asyncio.gather(slow(), spy())
    assert "spied" in spied
    events = [json.loads(line[5:]) for line in stream.splitlines() if line.startswith("data:") and line[5:].strip()]
    progress = [e["params"]["message"] for e in events if e.get("method") == "notifications/progress"]
    assert progress == ["own progress"]
    assert events[-1]["result"]["content"][0]["text"] == "slow done"


async def test_timeout_is_its_own_code_and_says_so(tmp_path: Path) -> None:
    up = upstream(tmp_path, timeout=1)
    await up.start()
    try:
        with pytest.raises(PeerError) as raised:
            await up.call(client("a", Recorder()), "tools/call", {"name": "hang", "arguments": {}})
    finally:
        await shut(up)
    # -32002 is "Resource not found" to a legacy client; -32000/-32001 mean other things in the SDKs.
    assert raised.value.code == jsonrpc.REQUEST_TIMEOUT == -32005
    assert raised.value.error["data"] == {"reason": "timeout", "timeoutSeconds": 1}
    assert "did not answer tools/call" in str(raised.value)
