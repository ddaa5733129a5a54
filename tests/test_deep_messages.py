"""A client's message nested deeper than the gateway can forward gets a precise error under its own id.

orjson reads 1,024 levels but writes only 254: a deeper request used to pass the guards and then
fail while being digested for the audit log, so the client got no answer at all (stdio) or an empty
202 (HTTP), and the request's own record was lost.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from mcpward.protocol import jsonrpc
from tests.conftest import fixture_server, toml_list
from tests.rawclient import MODERN_META, RawStdioClient

DEEP = 300


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"k": value}
    return value


def frame(rid: Any, depth: int, where: str = "arguments") -> dict[str, Any]:
    params: dict[str, Any] = {"name": "fx__test_simple_text", "arguments": {"text": "hi"}, "_meta": dict(MODERN_META)}
    if where == "arguments":
        params["arguments"] = {"text": "hi", "deep": nested(depth)}
    else:
        params["_meta"]["deep"] = nested(depth)
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


def config() -> str:
    cmd = fixture_server()
    return f'[servers.fx]\ncommand = "{cmd[0]}"\nargs = {toml_list(cmd[1:])}\n'


async def test_stdio_answers_a_too_deep_request_under_its_id_and_goes_on(write_config) -> None:  # type: ignore[no-untyped-def]
    client = await RawStdioClient.start(write_config(config()))
    try:
        for rid, where in ((41, "arguments"), ("m", "_meta")):
            waiting = client.expect(rid)
            await client.send_raw(json.dumps(frame(rid, DEEP, where)).encode() + b"\n")
            reply = await waiting
            assert reply["error"]["code"] == jsonrpc.INVALID_REQUEST
            assert reply["error"]["message"] == f"message nested deeper than {jsonrpc.MAX_NESTING} levels"
        # Deep but forwardable: reaches the guards, whose depth limit refuses it by name.
        waiting = client.expect(43)
        await client.send_raw(json.dumps(frame(43, 100)).encode() + b"\n")
        assert "args." in str((await waiting)["error"]["data"]["rule"])
        assert (await client.call("fx__test_simple_text"))["result"]
    finally:
        await client.close()


def test_http_answers_a_too_deep_or_invalid_request_under_its_id(serve_gateway) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway(config())
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "fx__test_simple_text"}
    with httpx.Client(trust_env=False, timeout=30) as http:
        reply = http.post(url, content=json.dumps(frame(7, DEEP)), headers=headers)
        assert reply.status_code == 400
        assert reply.json()["id"] == 7 and reply.json()["error"]["code"] == jsonrpc.INVALID_REQUEST
        invalid = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": [1]}
        reply = http.post(url, json=invalid, headers={**headers, "Mcp-Method": "tools/list"})
        assert reply.status_code == 400
        assert reply.json()["id"] == 1 and reply.json()["error"]["code"] == jsonrpc.INVALID_PARAMS
