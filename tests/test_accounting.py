"""The per-request audit record written by `gateway/accounting.py`: what it holds, what is cleaned,
and that the reply waits for it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from mcpward.audit import events
from mcpward.audit.chain import verify
from mcpward.audit.settings import AuditSettings
from mcpward.audit.store import AuditLog, RedactWith
from mcpward.gateway import config as config_mod
from mcpward.gateway.accounting import Accounting
from mcpward.gateway.context import Principal, RequestContext, SilentChannel
from mcpward.guards import output
from mcpward.guards.base import Call

GH_TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


@pytest.fixture
def audit_log(tmp_path: Path) -> Any:
    redactor = output.redactor_for(config_mod.parse({}))
    log = AuditLog(AuditSettings(path=tmp_path / "a.sqlite"), redact=RedactWith(redactor))
    events.install(log)
    yield log
    events.install(None)
    log.close()


def stored(log: AuditLog) -> list[dict[str, Any]]:
    log.flush()
    with sqlite3.connect(log.path) as db:
        return [json.loads(body) for (body,) in db.execute("SELECT body FROM records WHERE event = 'request'")]


def context(**extra: Any) -> RequestContext:
    return RequestContext(era="modern", protocol_version="2026-07-28", capabilities={},
                          client_info={"name": "bench\u202eclient", "version": "1"},
                          principal=Principal(subject="alice", kind="api-key"), channel=SilentChannel(),
                          transport="http", **extra)


async def test_a_request_record_holds_the_facts_and_cleans_what_peers_wrote(audit_log: AuditLog) -> None:
    acct = Accounting(config_mod.parse({}), policy_hash=lambda: "sha256:feed")
    message = {"jsonrpc": "2.0", "id": 41, "method": "tools/call",
               "params": {"name": "echo", "arguments": {"text": "hi", "a": 1}}}
    ticket = acct.begin(message, "http", None)
    ctx = context(remote="127.0.0.1", user_agent=f"curl {GH_TOKEN}\r\nINFO forged", session_id="sess-1")
    acct.attach(ticket, ctx)
    call = Call(ctx, "tools/call", message["params"], server="raw", target="echo", exposed="raw__echo",
                definition={"name": "echo", "annotations": {"readOnlyHint": True}})
    ctx.call = call
    call.notes.update(redactions=2, pin="pinned", flags=["b", "a"], argument_flags=["a"])
    await acct.finish(ticket, {"jsonrpc": "2.0", "id": 41, "result": {"content": []}}, "api-key:alice", "alice")
    [record] = stored(audit_log)
    assert GH_TOKEN not in json.dumps(record) and "\r" not in record["user_agent"]
    assert record["user_agent"].startswith("curl [REDACTED:") and record["user_agent"].endswith("\\r\\nINFO forged")
    assert record["client"] == "bench\\u202eclient"  # a bidi control from the client, made visible
    assert {k: record[k] for k in ("principal", "subject", "method", "outcome", "transport", "request_id", "server",
                                   "target", "policy_hash", "redactions", "pin", "labels", "flags")} == {
        "principal": "api-key:alice", "subject": "alice", "method": "tools/call", "outcome": "success",
        "transport": "http", "request_id": 41, "server": "raw", "target": "raw__echo", "policy_hash": "sha256:feed",
        "redactions": 2, "pin": "pinned", "labels": ["read-only"], "flags": ["a", "b"]}
    canonical_args = orjson.dumps(message["params"]["arguments"], option=orjson.OPT_SORT_KEYS)
    assert record["args_sha256"] == hashlib.sha256(canonical_args).hexdigest()
    assert record["session"] == hashlib.sha256(b"sess-1").hexdigest()[:16]
    assert isinstance(record["duration_ms"], float) and record["duration_ms"] >= 0
    assert len(repr(record["duration_ms"]).partition(".")[2]) <= 3  # milliseconds to the microsecond
    assert verify(audit_log.path).ok


async def test_a_refusal_and_a_client_made_method_are_recorded_cleaned(audit_log: AuditLog) -> None:
    acct = Accounting(config_mod.parse({}))
    odd = f"tools/\u2028{GH_TOKEN}"
    ticket = acct.begin({"jsonrpc": "2.0", "id": "r\n1", "method": odd}, "http", None)
    reply = {"jsonrpc": "2.0", "id": "r\n1",
             "error": {"code": -32004, "message": "refused", "data": {"rule": "limits.rate\x1b"}}}
    await acct.finish(ticket, reply, "anonymous:anonymous", "anonymous")
    [record] = stored(audit_log)
    assert GH_TOKEN not in json.dumps(record) and "\u2028" not in record["method"]
    assert record["method"].startswith("tools/\\u2028[REDACTED:")
    assert (record["outcome"], record["rule"], record["error_code"], record["request_id"]) == (
        "denied", "limits.rate\\x1b", -32004, "r\\n1")


async def test_the_reply_waits_for_its_record(tmp_path: Path) -> None:
    log = AuditLog(AuditSettings(path=tmp_path / "a.sqlite", fsync="always"))
    events.install(log)
    try:
        acct = Accounting(config_mod.parse({}))
        ticket = acct.begin({"jsonrpc": "2.0", "id": 1, "method": "ping"}, "stdio", None)
        await acct.finish(ticket, {"jsonrpc": "2.0", "id": 1, "result": {}}, "local-user:me", "me")
        assert log.settled() and log.pending == 0  # committed before finish returned
        with sqlite3.connect(log.path) as db:
            assert db.execute("SELECT count(*) FROM records WHERE event = 'request'").fetchone() == (1,)
    finally:
        events.install(None)
        log.close()


async def metrics_for_call(name: str, definition: dict[str, Any] | None, reply: dict[str, Any],
                           refused: str | None = None) -> str:
    """One tools/call through an Accounting with metrics only; the /metrics text afterwards."""
    from mcpward.gateway import after_reply
    from mcpward.telemetry import Telemetry
    from mcpward.telemetry.settings import TelemetrySettings

    telemetry = Telemetry(TelemetrySettings(metrics=True, traces=False), redact=lambda t: t)
    acct = Accounting(config_mod.parse({}), telemetry)
    message = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": {}}}
    ticket = acct.begin(message, "http", None)
    ctx = context()
    acct.attach(ticket, ctx)
    server, _, target = name.partition("__")
    ctx.call = Call(ctx, "tools/call", message["params"], server=server, target=target, exposed=name,
                    definition=definition)
    if refused:
        ctx.call.notes["refused"] = refused
    await acct.finish(ticket, {"jsonrpc": "2.0", "id": 7, **reply}, "anon", "anon")
    after_reply.run()
    return telemetry.render_metrics()[0].decode()


async def test_metrics_alone_get_the_request_without_a_record_being_built(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    events.install(None)
    monkeypatch.setattr(events.log, "isEnabledFor", lambda level: level > logging.INFO)  # request lines not logged
    built: list[str] = []
    monkeypatch.setattr(events, "record_parts", lambda event, *a: built.append(event))
    text = await metrics_for_call("raw__rm", {"name": "rm"}, {"result": {"content": [], "isError": True}},
                                  refused="policy.forbid-destructive")
    assert built == []  # nobody reads a request record: none is made
    assert 'mcpward_refusals_total{mcpward_rule="policy.forbid-destructive"} 1.0' in text
    assert 'gen_ai_tool_name="raw__rm"' in text


async def test_a_routed_name_the_server_never_listed_is_not_a_metric_label() -> None:
    # A made-up name behind a real prefix routes to the server, but clients choose such names without
    # limit: only a listed tool's name becomes the metric's target label.
    events.install(None)
    text = await metrics_for_call("raw__made_up", None, {"error": {"code": -32602, "message": "unknown"}})
    assert "made_up" not in text and 'mcp_method_name="tools/call"' in text


async def test_a_real_gateway_records_the_size_of_each_reply_the_client_reads(tmp_path: Path) -> None:
    """`response_bytes` is the length of the JSON-RPC reply exactly as the stdio client receives it
    (the line without its newline), for a result, a bigger result and an error alike."""
    import asyncio

    from tests.audit_reader import committed
    from tests.conftest import MCPWARD, fixture_server, toml_list, with_policy
    from tests.rawclient import MODERN_META, end

    cmd = fixture_server()
    path = tmp_path / "mcpward.toml"
    path.write_text(with_policy(f'[servers.fx]\ncommand = "{cmd[0]}"\nargs = {toml_list(cmd[1:])}\n\n'
                                '[audit]\npath = "audit.sqlite"\n'))
    proc = await asyncio.create_subprocess_exec(MCPWARD, "run", "-c", str(path), stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
                                                limit=16 * 1024 * 1024)
    assert proc.stdin is not None and proc.stdout is not None
    requests = [("tools/list", {}), ("tools/call", {"name": "fx__test_simple_text", "arguments": {}}),
                ("tools/call", {"name": "fx__test_multiple_content_types", "arguments": {}}),
                ("tools/call", {"name": "fx__no_such_tool", "arguments": {}})]
    received: dict[int, int] = {}
    try:
        for rid, (method, params) in enumerate(requests, 1):
            message = {"jsonrpc": "2.0", "id": rid, "method": method, "params": {**params, "_meta": MODERN_META}}
            proc.stdin.write(orjson.dumps(message) + b"\n")
            await proc.stdin.drain()
            while rid not in received:
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                assert line, "the gateway closed stdout"
                reply = orjson.loads(line)
                if "method" not in reply:
                    received[reply["id"]] = len(line.rstrip(b"\n"))
    finally:
        await end(proc)
    records = {r["request_id"]: r for r in map(json.loads, committed(tmp_path / "audit.sqlite", "request", 4))}
    assert {rid: records[rid].get("response_bytes") for rid in received} == received
    assert received[3] > received[2] > 0 and records[4]["outcome"] != "success"  # sizes differ, an error counts too
