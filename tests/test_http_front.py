"""The HTTP front at the HTTP level: rebinding checks, statuses, legacy sessions, resumable streams."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from mcpward.transport.sse import SseParser
from tests.conftest import fixture_server, toml_list

MODERN = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
ACCEPT = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@pytest.fixture
def url(serve_gateway) -> str:  # type: ignore[no-untyped-def]
    cmd = fixture_server()
    return str(serve_gateway(f'[servers.fx]\ncommand = "{cmd[0]}"\nargs = {toml_list(cmd[1:])}\n'))


def modern_headers(method: str, name: str | None = None) -> dict[str, str]:
    headers = {**ACCEPT, "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


def events(body: bytes) -> list[Any]:
    return [(e.id, json.loads(e.data) if e.data else None) for e in SseParser().feed(body)]


def test_rebinding_and_method_checks(url: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
    with httpx.Client(trust_env=False, timeout=20) as http:
        assert http.post(url, json=body, headers={**modern_headers("tools/list"), "Host": "evil.example"}
                         ).status_code == 421
        assert http.post(url, json=body, headers={**modern_headers("tools/list"), "Origin": "http://evil.example"}
                         ).status_code == 403
        ok = http.post(url, json=body, headers={**modern_headers("tools/list"), "Origin": "http://localhost"})
        assert ok.status_code == 200 and ok.json()["result"]["tools"]
        assert http.get(url, headers={"MCP-Protocol-Version": MODERN}).status_code == 405
        assert http.post(url.replace("/mcp", "/other"), json=body, headers=modern_headers("tools/list")
                         ).status_code == 404
        assert http.post(url, content=b"x", headers={**modern_headers("tools/list"), "Content-Type": "text/plain"}
                         ).status_code == 415
        assert http.post(url, content=b"{" + b" " * (5 * 1024 * 1024) + b"}", headers=modern_headers("tools/list")
                         ).status_code == 413
        mismatch = http.post(url, json=body, headers=modern_headers("tools/call"))
        assert mismatch.status_code == 400 and mismatch.json()["error"]["code"] == -32020
        unknown = {"jsonrpc": "2.0", "id": 2, "method": "nope/nope", "params": {"_meta": META}}
        reply = http.post(url, json=unknown, headers=modern_headers("nope/nope"))
        assert reply.status_code == 404 and reply.json()["error"]["code"] == -32601
        note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}}
        assert http.post(url, json=note, headers=modern_headers("notifications/cancelled")).status_code == 202


def test_legacy_session_lifecycle(url: str) -> None:
    init = INIT
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    with httpx.Client(trust_env=False, timeout=20) as http:
        assert http.post(url, json=listing, headers=ACCEPT).status_code == 400  # no session
        assert http.post(url, json=listing, headers={**ACCEPT, "Mcp-Session-Id": "made-up"}).status_code == 404
        reply = http.post(url, json=init, headers=ACCEPT)
        session = reply.headers["mcp-session-id"]
        assert reply.json()["result"]["serverInfo"]["name"] == "mcpward"
        headers = {**ACCEPT, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
        assert http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                         headers=headers).status_code == 202
        stream = events(http.post(url, json=listing, headers=headers).content)
        assert stream[0][1] is None and stream[0][0]  # the priming event: an id, no data
        assert any(m and m.get("id") == 2 and m["result"]["tools"] for _i, m in stream)
        assert http.delete(url, headers=headers).status_code == 200
        assert http.post(url, json=listing, headers=headers).status_code == 404


def test_legacy_stream_resumes_after_disconnect(url: str) -> None:
    init = INIT
    with httpx.Client(trust_env=False, timeout=20) as http:
        session = http.post(url, json=init, headers=ACCEPT).headers["mcp-session-id"]
        headers = {**ACCEPT, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
        call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                "params": {"name": "fx__test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": "p"}}}
        parser = SseParser()
        with http.stream("POST", url, json=call, headers=headers) as response:
            first = next(e for chunk in response.iter_bytes() for e in parser.feed(chunk))
        assert first.data == "" and first.id and first.retry is not None  # priming, then we hang up
        replay = http.get(url, headers={**headers, "Accept": "text/event-stream", "Last-Event-ID": first.id})
        replayed = events(replay.content)
        progress = [m for _i, m in replayed if m and m.get("method") == "notifications/progress"]
        final = [m for _i, m in replayed if m and m.get("id") == 5]
        assert progress and progress[0]["params"]["progressToken"] == "p"
        assert final and final[0]["result"]["content"]
        bad = http.get(url, headers={**headers, "Accept": "text/event-stream", "Last-Event-ID": "nope.3"})
        assert bad.status_code == 404


async def test_legacy_sessions_are_capped_and_expire(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mcpward.gateway.config import GatewayConfig
    from mcpward.gateway.core import Gateway
    from mcpward.transport import http_front, http_sessions

    front = http_front.HttpFront(Gateway(GatewayConfig()))
    front.room.total = 3
    transport = httpx.ASGITransport(app=front)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8811") as http:
        statuses = [(await http.post("/mcp", json=INIT, headers=ACCEPT)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 503]
        full = await http.post("/mcp", json=INIT, headers=ACCEPT)
        assert full.json()["error"]["data"] == {"rule": "http.sessions"}
        oldest = next(iter(front.sessions.values()))
        oldest.last_seen -= http_sessions.SESSION_IDLE_SECONDS + 1
        assert (await http.post("/mcp", json=INIT, headers=ACCEPT)).status_code == 200
        assert oldest.conn.session_id not in front.sessions


def test_one_principal_cannot_take_every_legacy_session(serve_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mcpward.transport.http_sessions import MAX_SESSIONS_PER_PRINCIPAL
    from tests.audit_reader import committed
    from tests.threats.identity_support import MEMO_SERVER, Keys

    keys = Keys()
    url = serve_gateway(MEMO_SERVER + keys.table())

    def initialize(http: httpx.Client, key: str) -> httpx.Response:
        return http.post(url, json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {key}"})

    with httpx.Client(trust_env=False, timeout=30) as http:
        # initialize is exempt from the rate limits, so only the session cap stops alice here
        replies = [initialize(http, keys.alice) for _ in range(MAX_SESSIONS_PER_PRINCIPAL + 3)]
        assert [r.status_code for r in replies] == [200] * MAX_SESSIONS_PER_PRINCIPAL + [429] * 3
        refused = initialize(http, keys.alice)
        error = refused.json()["error"]
        assert error["data"]["rule"] == "limits.sessions" and error["data"]["retryAfter"] > 0
        assert "limits.sessions" in error["message"] and int(refused.headers["retry-after"]) > 0
        # bob is not locked out by alice's sessions
        bob = initialize(http, keys.bob)
        assert bob.status_code == 200 and bob.headers["mcp-session-id"]
        # alice closing one of her sessions makes room for one more
        closed = http.delete(url, headers={**ACCEPT, "Authorization": f"Bearer {keys.alice}",
                                           "Mcp-Session-Id": replies[0].headers["mcp-session-id"],
                                           "MCP-Protocol-Version": "2025-11-25"})
        assert closed.status_code == 200
        assert initialize(http, keys.alice).status_code == 200
    records = [json.loads(b) for b in committed(tmp_path / "mcpward-audit.sqlite", "http.refused", 4)]
    mine = [r for r in records if r.get("rule") == "limits.sessions"]
    assert len(mine) == 4 and all(r["status"] == 429 and r["principal"] for r in mine)
    assert keys.alice not in json.dumps(records)


def test_metrics_are_served_only_to_listed_principals(serve_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.audit_reader import committed
    from tests.conftest import FIXTURES, PYTHON
    from tests.threats.identity_support import MEMO_SERVER, Keys, modern_call, reply_of

    keys = Keys()
    leaky = f'[servers.leaky]\ncommand = "{PYTHON}"\nargs = ["{FIXTURES / "leaky_server.py"}"]\n'
    policy = tmp_path / "alice.cedar"
    policy.write_text('@id("alice-all")\npermit (principal == User::"alice", action, resource);\n')
    url = serve_gateway(MEMO_SERVER + leaky + keys.table() + f'[policy]\nbase = "none"\nfiles = ["{policy}"]\n'
                        + '[telemetry]\nmetrics_principals = ["api-key:alice"]\n')
    metrics_url = url.removesuffix("/mcp") + "/metrics"
    with httpx.Client(trust_env=False, timeout=30) as http:
        assert "result" in reply_of(modern_call(http, url, "tools/call", {"name": "leaky__aws_key", "arguments": {}},
                                                keys.alice))
        assert reply_of(modern_call(http, url, "tools/list", {}, keys.bob, rid=2), 2)["result"]["tools"] == []
        # bob sees no tools, so the metrics (which name them and count alice's calls) are not his either
        bob = http.get(metrics_url, headers={"Authorization": f"Bearer {keys.bob}"})
        assert bob.status_code == 403 and "leaky" not in bob.text
        assert bob.json()["error"]["data"] == {"rule": "telemetry.metrics-principals"}
        assert http.get(metrics_url).status_code == 401
        alice = http.get(metrics_url, headers={"Authorization": f"Bearer {keys.alice}"})
        assert alice.status_code == 200 and 'gen_ai_tool_name="leaky__aws_key"' in alice.text
    records = [json.loads(b) for b in committed(tmp_path / "mcpward-audit.sqlite", "http.refused", 1)]
    assert [r["principal"] for r in records if r.get("rule") == "telemetry.metrics-principals"] == ["api-key:bob"]


def test_refusals_at_the_door_name_their_rule_and_are_audited(url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.audit_reader import committed

    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
    secret = "Bearer not-for-the-audit-log-4711"
    with httpx.Client(trust_env=False, timeout=20) as http:
        host = http.post(url, json=body, headers={**modern_headers("tools/list"), "Host": "evil.example",
                                                  "Authorization": secret})
        assert host.status_code == 421 and "http.host" in host.text
        origin = http.post(url, json=body, headers={**modern_headers("tools/list"), "Origin": "http://evil.example",
                                                    "Authorization": secret})
        assert origin.status_code == 403 and origin.json()["error"]["data"] == {"rule": "http.origin"}
        mismatch = http.post(url, json=body, headers={**modern_headers("tools/call"), "Authorization": secret})
        assert mismatch.status_code == 400
        error = mismatch.json()["error"]
        assert error["code"] == -32020 and error["data"] == {"rule": "http.header-mismatch"}
        version = http.post(url, json={**body, "params": {"_meta": {**META, "io.modelcontextprotocol/protocolVersion":
                                                                         "2099-01-01"}}},
                            headers={**modern_headers("tools/list"), "MCP-Protocol-Version": "2099-01-01"})
        assert version.json()["error"]["data"]["rule"] == "http.protocol-version"
        assert version.json()["error"]["data"]["supported"]  # the rule is added, nothing taken away
    rows = [json.loads(r) for r in committed(tmp_path / "mcpward-audit.sqlite", "http.refused", 4)]
    by_rule = {r["rule"]: r for r in rows}
    assert len(rows) == 4 and set(by_rule) == {"http.host", "http.origin", "http.header-mismatch",
                                               "http.protocol-version"}
    assert by_rule["http.host"]["status"] == 421 and by_rule["http.host"]["host"] == "evil.example"
    assert by_rule["http.origin"]["status"] == 403 and by_rule["http.origin"]["origin"] == "http://evil.example"
    assert by_rule["http.header-mismatch"]["status"] == 400
    assert "Mcp-Method" in by_rule["http.header-mismatch"]["detail"]
    assert all(r["source_ip"] == "127.0.0.1" for r in rows)
    dumped = json.dumps(rows)
    assert "not-for-the-audit-log" not in dumped and "user-agent" not in dumped.lower()


def test_a_flood_of_refusals_is_summarised_not_recorded_one_by_one(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mcpward.transport import http_front

    records: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(http_front.audit, "record", lambda event, **fields: records.append((event, fields)))
    now = [100.0]
    refusals = http_front.RefusalAudit(clock=lambda: now[0], per_second=3)
    for i in range(50):  # one second's flood, from 25 addresses
        refusals.refused("http.host", 421, f"10.0.0.{i % 25}", host="evil.example")
    assert [e for e, _ in records] == ["http.refused"] * 3  # the rest only counted so far
    now[0] += 1.0
    refusals.refused("http.origin", 403, "10.0.0.1")  # the next second: first the summary, then this one
    assert [e for e, _ in records[3:]] == ["http.refused-summary", "http.refused"]
    summary = records[3][1]
    assert summary["suppressed"] == 47 and summary["rules"] == {"http.host": 47}
    assert len(summary["sources"]) == http_front.SUMMARY_SOURCES
    assert sum(summary["sources"].values()) + summary["unlisted_sources"] == 47
    refusals.flush()
    assert len(records) == 5  # nothing was held back, so nothing more to write


async def test_unknown_tool_names_cannot_make_every_request_relist(monkeypatch: pytest.MonkeyPatch) -> None:
    # The routing-header check needs the tool's schema before the request is counted against its
    # principal; an unknown name used to list every server again for every such request.
    from mcpward.gateway import core
    from mcpward.gateway.config import GatewayConfig
    from mcpward.transport import http_front

    gateway = core.Gateway(GatewayConfig())
    relists: list[str] = []

    async def counting_relist(kind: str, principal: Any = None) -> None:
        relists.append(kind)

    monkeypatch.setattr(gateway, "relist", counting_relist)
    front = http_front.HttpFront(gateway)
    transport = httpx.ASGITransport(app=front)

    async def call_unknown(http: httpx.AsyncClient, n: int) -> dict[str, Any]:
        name = f"made_up_{n}"
        body = {"jsonrpc": "2.0", "id": n, "method": "tools/call",
                "params": {"name": name, "arguments": {}, "_meta": META}}
        reply: dict[str, Any] = (await http.post("/mcp", json=body, headers=modern_headers("tools/call", name))).json()
        return reply

    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8811") as http:
        replies = [await call_unknown(http, n) for n in range(20)]
        assert all("unknown tool" in r["error"]["message"] for r in replies)
        assert relists == ["tools"]  # once for twenty requests
        monkeypatch.setattr(core, "SCHEMA_RELIST_SECONDS", 0.0)
        await call_unknown(http, 21)
        assert relists == ["tools", "tools"]  # throttled, not switched off
