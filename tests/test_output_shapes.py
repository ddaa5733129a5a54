"""The output guard on every shape a result can take: strings outside the usual fields, malformed
results, results that cannot be serialised, and the size cap on completions and unknown fields.
In process, and end to end through the gateway against a stdio server that answers with any JSON.

Secret-looking values are assembled at run time (no complete token is a literal in the repository).
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from mcpward.gateway.config import parse
from mcpward.gateway.context import Principal
from mcpward.gateway.core import Gateway
from mcpward.gateway.downstream import ClientConnection
from mcpward.guards.base import Refusal
from mcpward.guards.setup import build_chain
from mcpward.protocol.jsonrpc import JsonObj
from tests.test_output_guards import AWS, GH, call, guard, run, text_of


def deep(levels: int, leaf: Any) -> Any:
    for _ in range(levels):
        leaf = [leaf]
    return leaf


# Every place a string can sit in a valid result, with a secret in it.
LEAKS: list[tuple[str, str, dict[str, Any]]] = [
    ("resource_link uri", "tools/call", {"content": [
        {"type": "resource_link", "uri": f"https://x.example/?token={GH}", "name": "n"}]}),
    ("resource_link name", "tools/call", {"content": [{"type": "resource_link", "uri": "x://a", "name": AWS}]}),
    ("embedded resource uri", "tools/call", {"content": [
        {"type": "resource", "resource": {"uri": f"file:///{AWS}", "text": "x"}}]}),
    ("embedded resource extra key", "tools/call", {"content": [
        {"type": "resource", "resource": {"uri": "a://b", "text": "x", "title": AWS}}]}),
    ("unknown top-level field", "tools/call", {"content": [{"type": "text", "text": "ok"}], "detail": f"key {AWS}"}),
    ("unknown field, empty content", "tools/call", {"content": [], "extra": AWS}),
    ("unknown field beside text and structuredContent", "tools/call", {
        "content": [{"type": "text", "text": "ok"}], "structuredContent": {"ok": 1}, "isError": False, "x": AWS}),
    ("a secret as a top-level key", "tools/call", {"content": [{"type": "text", "text": "ok"}], AWS: 1}),
    ("annotations", "tools/call", {"content": [{"type": "text", "text": "ok", "annotations": {"audience": [AWS]}}]}),
    ("unknown block field", "tools/call", {"content": [{"type": "text", "text": "ok", "note": AWS}]}),
    ("image block other field", "tools/call", {"content": [
        {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png", "alt": AWS}]}),
    ("unknown block type", "tools/call", {"content": [{"type": "video", "caption": AWS}]}),
    ("_meta", "tools/call", {"content": [{"type": "text", "text": "ok"}], "_meta": {"debug": f"key {AWS}"}}),
    ("resources/read uri", "resources/read", {"contents": [{"uri": f"file:///{AWS}", "text": "x"}]}),
    ("resources/read name", "resources/read", {"contents": [{"uri": "a://b", "text": "x", "name": AWS}]}),
    ("resources/read unknown field", "resources/read", {"contents": [{"uri": "a://b", "text": "x"}], "note": AWS}),
    ("prompt message field", "prompts/get", {"messages": [
        {"role": "user", "content": {"type": "text", "text": "x"}, "name": AWS}]}),
    ("prompt message resource link", "prompts/get", {"messages": [
        {"role": "user", "content": {"type": "resource_link", "uri": f"x://{AWS}", "name": "n"}}]}),
    ("completion extra field", "completion/complete", {"completion": {"values": ["a"], "hint": AWS}}),
]


@pytest.mark.parametrize(("label", "method", "result"), LEAKS, ids=[leak[0] for leak in LEAKS])
async def test_every_string_of_a_result_is_scanned(label: str, method: str, result: dict[str, Any]) -> None:
    out = await run(guard(), result, call(method))
    assert out is not None, label
    flat = text_of(out)
    assert AWS not in flat and GH not in flat, label
    assert sum(out["_meta"]["mcpward/output"]["redacted"].values()) >= 1


async def test_base64_payloads_are_left_alone() -> None:
    payload = base64.b64encode(f"key {AWS}".encode()).decode()
    result = {"content": [{"type": "image", "data": payload, "mimeType": "image/png"},
                          {"type": "audio", "data": payload, "mimeType": "audio/wav"},
                          {"type": "resource", "resource": {"uri": "a://b", "blob": payload}}]}
    assert await run(guard(), result) is None
    assert await run(guard(), {"contents": [{"uri": "a://b", "blob": payload}]}, call("resources/read")) is None
    # `data` is a payload only in an image or audio block: anywhere else it is a field like any other.
    out = await run(guard(), {"content": [{"type": "text", "text": "x"}], "structuredContent": {"data": AWS}})
    assert out is not None and AWS not in text_of(out)


VALID: list[tuple[str, dict[str, Any]]] = [
    ("tools/call", {"content": [{"type": "text", "text": "plain words", "annotations": {"audience": ["user"]}},
                                {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"},
                                {"type": "audio", "data": "UklGRg==", "mimeType": "audio/wav"},
                                {"type": "resource_link", "uri": "file:///docs/a.md", "name": "a.md",
                                 "title": "A", "description": "the first file", "mimeType": "text/markdown"},
                                {"type": "resource", "resource": {"uri": "file:///b", "blob": "QUFB"}},
                                {"type": "resource", "resource": {"uri": "file:///c", "text": "c", "_meta": {}}}],
                    "structuredContent": {"files": ["a", "b"], "count": 2}, "isError": False,
                    "_meta": {"io.example/trace": "4bf92f3577b34da6"}}),
    ("tools/call", {"content": [], "structuredContent": {"nested": {"list": [1, 2.5, None, True]}}}),
    ("tools/call", {"content": [{"type": "text", "text": "failed"}], "isError": True}),
    ("resources/read", {"contents": [{"uri": "file:///a", "mimeType": "text/plain", "text": "hello"},
                                     {"uri": "file:///b", "blob": "QUFB", "_meta": {"size": 3}}]}),
    ("prompts/get", {"description": "a greeting", "messages": [
        {"role": "user", "content": {"type": "text", "text": "hi"}},
        {"role": "assistant", "content": {"type": "resource", "resource": {"uri": "x://y", "text": "doc"}}}]}),
    ("completion/complete", {"completion": {"values": ["python", "pytorch"], "total": 2, "hasMore": False}}),
]


@pytest.mark.parametrize(("method", "result"), VALID)
async def test_valid_results_of_every_shape_pass_unchanged(method: str, result: dict[str, Any]) -> None:
    before = copy.deepcopy(result)
    assert await run(guard(), result, call(method)) is None
    assert result == before


MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("tools/call", {"content": {"type": "text", "text": f"key {AWS}"}}, "content is not a list"),
    ("tools/call", {"content": AWS}, "content is not a list"),
    ("tools/call", {"content": [AWS]}, "an item of content is not an object"),
    ("tools/call", {"content": [{"type": "text", "text": [AWS]}]}, "a text block's text is not a string"),
    ("tools/call", {"content": [{"type": "text", "text": "x"}], "isError": AWS}, "isError is not a boolean"),
    ("resources/read", {"contents": {"uri": "a://b", "text": AWS}}, "contents is not a list"),
    ("prompts/get", {"messages": [{"role": "user", "content": AWS}]}, "a content block is not an object"),
    ("completion/complete", {"completion": {"values": [[AWS]]}}, "completion.values is not a list of strings"),
    ("completion/complete", {"completion": AWS}, "completion is not an object"),
]


@pytest.mark.parametrize("structured", [f"key {AWS}", [f"key {AWS}"], [{"k": AWS}], 42])
async def test_structured_content_of_any_json_type_passes_and_is_scanned(structured: Any) -> None:
    # 2026-07-28 allows any JSON value as structuredContent: never refused for its type, always scanned.
    result = {"content": [{"type": "text", "text": "done"}], "structuredContent": structured}
    out = await run(guard(), result, call("tools/call"))
    assert AWS not in str(out if out is not None else result)


@pytest.mark.parametrize(("method", "result", "problem"), MALFORMED)
async def test_malformed_results_are_refused(method: str, result: dict[str, Any], problem: str) -> None:
    with pytest.raises(Refusal) as caught:
        await run(guard(), result, call(method))
    assert caught.value.rule == "upstream.malformed-result"
    assert problem in caught.value.message and AWS not in caught.value.message
    assert caught.value.as_tool_error == (method == "tools/call")


@pytest.mark.parametrize("structured", [
    {"n": 2**70},  # beyond orjson's 64-bit integers: written exactly (protocol/exact.py)
    {"s": "half a pair: \ud800"},  # a lone surrogate, kept as its escape
])
async def test_big_integers_and_lone_surrogates_are_scanned_and_kept(structured: dict[str, Any]) -> None:
    out = await run(guard(), {"content": [{"type": "text", "text": AWS}], "structuredContent": structured})
    assert out is not None and out["structuredContent"] == structured and AWS not in str(out["content"])


@pytest.mark.parametrize("structured", [
    {"a": deep(300, AWS)},  # deeper than JSON serialisers go
])
async def test_a_result_that_cannot_be_serialised_is_refused_precisely(structured: dict[str, Any]) -> None:
    with pytest.raises(Refusal) as caught:
        await run(guard(), {"content": [{"type": "text", "text": "x"}], "structuredContent": structured})
    assert caught.value.rule == "output.unserialisable" and caught.value.as_tool_error
    assert "cannot be serialised" in caught.value.message and AWS not in caught.value.message
    # A string shortened ahead of the scan measures the result first: the same refusal there.
    with pytest.raises(Refusal) as caught:
        await run(guard(output={"max_result_bytes": 1024}),
                  {"content": [{"type": "text", "text": "y" * 100_000}], "structuredContent": structured})
    assert caught.value.rule == "output.unserialisable"


async def test_completions_are_capped() -> None:
    g = guard(output={"max_result_bytes": 4096})
    result = {"completion": {"values": ["short", "z" * 400_000, "after"], "total": 3}}
    out = await run(g, result, call("completion/complete"))
    assert out is not None and len(orjson.dumps(out)) <= 4096
    # Values are kept whole (a cut value would be a wrong completion): the long one is left out.
    assert out["completion"] == {"values": ["short", "after"], "total": 3, "hasMore": True}
    assert out["_meta"]["mcpward/output"]["truncated"]["dropped"] == 1
    small = {"completion": {"values": ["a", "b"], "hasMore": False}}
    assert await run(g, small, call("completion/complete")) is None


@pytest.mark.parametrize(("method", "result"), [
    ("tools/call", {"content": [{"type": "text", "text": "ok"}], "isError": True, "detail": "w" * 400_000}),
    ("resources/read", {"contents": [{"uri": "a://b", "text": "x"}], "detail": "w" * 400_000}),
    ("prompts/get", {"description": "d" * 400_000, "messages": [
        {"role": "user", "content": {"type": "text", "text": "hi"}}]}),
    ("prompts/get", {"messages": [{"role": "user", "content": {"type": "text", "text": "hi"},
                                   "note": "n" * 400_000}]}),
    ("completion/complete", {"completion": {"values": ["a"]}, "_meta": {"pad": "p" * 400_000}}),
])
async def test_fields_outside_the_capped_ones_are_capped_too(method: str, result: dict[str, Any]) -> None:
    out = await run(guard(output={"max_result_bytes": 4096}), result, call(method))
    assert out is not None and len(orjson.dumps(out)) <= 4096
    assert out["_meta"]["mcpward/output"]["truncated"]["limit"] == 4096
    if method == "tools/call":
        assert out["isError"] is True and out["content"][0]["text"] == "ok"  # a failed call stays one
        assert "1 other field(s) left out" in out["content"][-1]["text"]


# ------------------------------------------------------------------------------------------ end to end

# A stdio MCP server (modern era) whose one tool answers with the result at the index it is given, out
# of the JSON list in the file named by its first argument: it can send what no SDK server would.
SERVER = '''
import json, sys
RESULTS = json.load(open(sys.argv[1]))
TOOL = {"name": "shape", "inputSchema": {"type": "object", "properties": {"case": {"type": "integer"}}},
        "annotations": {"readOnlyHint": True}}
for line in sys.stdin:
    msg = json.loads(line)
    rid, method, params = msg.get("id"), msg.get("method"), msg.get("params") or {}
    if rid is None:
        continue
    if method == "server/discover":
        result = {"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}}, "resultType": "complete",
                  "ttlMs": 0, "cacheScope": "public",
                  "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "shapes", "version": "1"}}}
    elif method == "tools/list":
        result = {"tools": [TOOL]}
    elif method == "tools/call":
        result = RESULTS[params["arguments"]["case"]]
    else:
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": rid,
                                     "error": {"code": -32601, "message": "Method not found"}}) + "\\n")
        sys.stdout.flush()
        continue
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}) + "\\n")
    sys.stdout.flush()
'''

E2E_RESULTS: list[dict[str, Any]] = [
    {"content": {"type": "text", "text": f"key {AWS}"}},  # malformed: content is not a list
    {"content": [{"type": "text", "text": "ok"}], "detail": f"key {AWS}"},  # an unknown field
    {"content": [], "structuredContent": {"a": deep(300, AWS)}},  # deeper than orjson writes
    {"content": [{"type": "resource_link", "uri": f"https://x.example/?token={GH}", "name": "n"}]},
    {"content": [{"type": "text", "text": "fine"}]},
]
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


@pytest.fixture
async def gateway_conn(tmp_path: Path) -> AsyncIterator[ClientConnection]:
    # The sandboxed server runs as its own uid: its files sit in a directory it may read (pytest's
    # tmp_path is private to this user).
    shared = Path(tempfile.mkdtemp(prefix="mcpward-shapes-"))
    shared.chmod(0o755)
    script, results = shared / "shapes_server.py", shared / "results.json"
    script.write_text(SERVER)
    results.write_text(json.dumps(E2E_RESULTS))
    cfg = parse({"servers": {"s": {"command": sys.executable, "args": [str(script), str(results)]}},
                 "sandbox": {"state_dir": str(tmp_path / "sandbox-state")}, "policy": {"base": "permit-all"},
                 "integrity": {"hold_destructive": False, "lock": str(tmp_path / "mcpward.lock")},
                 "limits": {"rate": 1_000_000, "burst": 100_000, "breaker": {"enabled": False}}})
    gateway = Gateway(cfg, build_chain(cfg))
    await gateway.start()

    async def write(message: JsonObj) -> None:
        return None

    try:
        yield ClientConnection(gateway, "stdio", Principal.local_user(), write)
    finally:
        await gateway.stop()
        shutil.rmtree(shared)


async def call_case(conn: ClientConnection, case: int) -> JsonObj:
    reply = await conn.on_request({"jsonrpc": "2.0", "id": case + 1, "method": "tools/call",
                                   "params": {"name": "s__shape", "arguments": {"case": case}, "_meta": META}})
    assert reply is not None
    return reply


async def test_end_to_end_no_shape_of_result_leaks_and_none_crashes(
        gateway_conn: ClientConnection, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    listed = await gateway_conn.on_request({"jsonrpc": "2.0", "id": 0, "method": "tools/list",
                                            "params": {"_meta": META}})
    assert listed is not None and [t["name"] for t in listed["result"]["tools"]] == ["s__shape"]
    replies = [await call_case(gateway_conn, i) for i in range(len(E2E_RESULTS))]
    for reply in replies:
        assert AWS not in json.dumps(reply) and GH not in json.dumps(reply)
    malformed, unknown, too_deep, link, fine = (r["result"] for r in replies)
    # Refusals reach the client as tool errors naming their rule.
    assert malformed["isError"] is True and "refused by upstream.malformed-result" in malformed["content"][0]["text"]
    assert too_deep["isError"] is True and "refused by output.unserialisable" in too_deep["content"][0]["text"]
    assert unknown["detail"] == "key [REDACTED:aws-access-key-id]"
    assert link["content"][0]["uri"] == "https://x.example/?token=[REDACTED:github-token]"
    assert fine["content"] == [{"type": "text", "text": "fine"}] and "isError" not in fine
    # Audited, and no traceback: the gateway did not fail on any of them.
    refusals = [r.getMessage() for r in caplog.records if r.name == "mcpward.audit" and '"refusal"' in r.getMessage()]
    assert any("upstream.malformed-result" in r for r in refusals)
    assert any("output.unserialisable" in r for r in refusals)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
