"""The HTTP front's per-request stream and its legacy session cap.

A request's notifications wait in a queue until its client reads them: a server that floods progress
while the client reads slowly must not grow that queue without bound. And the number of legacy
sessions one principal may hold is the operator's setting, not a constant.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from mcpward.gateway import config
from mcpward.gateway.config import ConfigError
from mcpward.gateway.core import Gateway
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.transport import http_front
from mcpward.transport.sse import SseParser

MODERN = "2026-07-28"
ACCEPT = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "x", "arguments": {}}}
FLOOD = 20_000


def flooding_front(monkeypatch: pytest.MonkeyPatch, method: str, count: int = FLOOD) -> http_front.HttpFront:
    """A front whose every modern request sends `count` notifications `method`, then its reply, with no
    pause between them: the client cannot have read any of them before the last is queued."""
    front = http_front.HttpFront(Gateway(config.GatewayConfig()))

    async def no_ladder(*_args: Any, **_kwargs: Any) -> None:
        return None

    async def flood(message: JsonObj, stream: Any, *_args: Any) -> JsonObj:
        for i in range(count):
            await stream({"jsonrpc": "2.0", "method": method,
                          "params": {"progressToken": "t", "progress": i, "uri": f"file:///{i}", "data": "x" * 100}})
        return {"jsonrpc": "2.0", "id": message["id"], "result": {"content": []}}

    monkeypatch.setattr(http_front, "check_modern_headers", no_ladder)
    monkeypatch.setattr(front.gateway, "serves", lambda *_args: True)
    monkeypatch.setattr(front.modern, "on_request", flood)
    return front


async def post_modern(front: http_front.HttpFront) -> list[JsonObj]:
    headers = {**ACCEPT, "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "x"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front), base_url="http://127.0.0.1:8811") as http:
        reply = await http.post("/mcp", json=CALL, headers=headers)
    assert reply.status_code == 200 and reply.headers["content-type"] == "text/event-stream"
    return [json.loads(e.data) for e in SseParser().feed(reply.content) if e.data]


async def test_a_progress_flood_is_bounded_and_the_reply_still_arrives(
        monkeypatch: pytest.MonkeyPatch, recorded: list[tuple[str, dict[str, Any]]]) -> None:
    from mcpward.transport import http_exchange

    messages = await post_modern(flooding_front(monkeypatch, "notifications/progress"))
    progress = [m for m in messages if m.get("method") == "notifications/progress"]
    assert messages[-1] == {"jsonrpc": "2.0", "id": 7, "result": {"content": []}}  # never dropped
    assert 0 < len(progress) <= http_exchange.MAX_QUEUED  # the oldest went first: the newest are kept
    assert progress[-1]["params"]["progress"] == FLOOD - 1
    dropped = [fields for event, fields in recorded if event == "http.stream-dropped"]
    assert len(dropped) == 1  # one record for the whole request, not one per dropped message
    assert dropped[0]["rule"] == http_exchange.RULE
    assert dropped[0]["dropped"] == {"notifications/progress": FLOOD - len(progress)}


async def test_the_byte_bound_holds_for_large_notifications(monkeypatch: pytest.MonkeyPatch) -> None:
    from mcpward.transport import http_exchange

    monkeypatch.setattr(http_exchange, "MAX_QUEUED_BYTES", 64 * 1024)
    messages = await post_modern(flooding_front(monkeypatch, "notifications/message", 5_000))
    logs = [m for m in messages if m.get("method") == "notifications/message"]
    assert 0 < sum(len(json.dumps(m)) for m in logs) <= 64 * 1024
    assert messages[-1]["id"] == 7 and "result" in messages[-1]


async def test_a_flood_that_may_not_be_dropped_ends_the_stream_with_a_named_error(
        monkeypatch: pytest.MonkeyPatch, recorded: list[tuple[str, dict[str, Any]]]) -> None:
    from mcpward.transport import http_exchange

    messages = await post_modern(flooding_front(monkeypatch, "notifications/resources/updated"))
    final = messages[-1]
    assert final["id"] == 7 and final["error"]["data"] == {"rule": http_exchange.RULE}
    assert f"refused by {http_exchange.RULE}" in final["error"]["message"]
    assert len(messages) <= http_exchange.MAX_QUEUED + 1
    ended = [fields for event, fields in recorded if event == "http.stream-dropped"]
    assert len(ended) == 1 and ended[0]["ended"] is True


async def test_a_short_exchange_is_untouched(monkeypatch: pytest.MonkeyPatch,
                                             recorded: list[tuple[str, dict[str, Any]]]) -> None:
    messages = await post_modern(flooding_front(monkeypatch, "notifications/progress", 3))
    assert [m.get("params", {}).get("progress") for m in messages[:-1]] == [0, 1, 2]
    assert messages[-1]["id"] == 7
    assert not [event for event, _ in recorded if event == "http.stream-dropped"]


# ----------------------------------------------------------------- the legacy session cap per principal
async def test_the_session_cap_per_principal_is_a_setting() -> None:
    cfg = config.parse({"gateway": {"max_sessions_per_principal": 2}})
    front = http_front.HttpFront(Gateway(cfg))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front), base_url="http://127.0.0.1:8811") as http:
        statuses = [(await http.post("/mcp", json=INIT, headers=ACCEPT)).status_code for _ in range(3)]
        refused = await http.post("/mcp", json=INIT, headers=ACCEPT)
    # Without [auth] every local client is the one principal `anonymous`: they share the two sessions.
    assert statuses == [200, 200, 429]
    assert refused.json()["error"]["data"]["rule"] == "limits.sessions"


@pytest.mark.parametrize("value", [0, 100_001, "8", True])
def test_a_bad_session_cap_is_a_config_error(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"gateway\.max_sessions_per_principal"):
        config.parse({"gateway": {"max_sessions_per_principal": value}})


def test_the_session_cap_defaults_to_32() -> None:
    assert config.parse({}).max_sessions_per_principal == 32
