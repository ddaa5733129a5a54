"""The guard pipeline: allow, refuse with a rule id, transform requests, results and lists."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from mcpward.gateway import config
from mcpward.gateway.context import Principal
from mcpward.gateway.core import Gateway
from mcpward.gateway.downstream import ClientConnection
from mcpward.guards.base import Call, Guard, GuardChain, Listed, Refusal
from mcpward.guards.timing import TimingGuard
from mcpward.protocol.jsonrpc import JsonObj
from tests.conftest import fixture_server

META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


class NoErrors(Guard):
    name = "no-errors"

    async def on_request(self, call: Call) -> JsonObj | None:
        if call.target == "test_error_handling":
            raise Refusal("demo.no-error-tool", "this tool is not allowed", as_tool_error=call.ctx.era == "modern")
        if call.target == "test_prompt_with_arguments":
            return {**call.params, "arguments": {"arg1": "rewritten", "arg2": "by guard"}}
        return None

    async def on_result(self, call: Call, result: JsonObj) -> JsonObj | None:
        if call.target == "test_simple_text":
            return {**result, "content": [{"type": "text", "text": "[checked] " + result["content"][0]["text"]}]}
        return None

    async def on_list(self, call: Call, kind: str, items: list[Listed]) -> list[Listed] | None:
        return [i for i in items if "error" not in i.name] if kind == "tools" else None


@pytest.fixture
async def conn() -> AsyncIterator[ClientConnection]:
    cmd = fixture_server()
    cfg = config.parse({"servers": {"fx": {"command": cmd[0], "args": cmd[1:]}}}, "test")
    timing = TimingGuard()
    gateway = Gateway(cfg, GuardChain([timing, NoErrors()]))
    await gateway.start()
    sent: list[JsonObj] = []

    async def write(message: JsonObj) -> None:
        sent.append(message)

    try:
        yield ClientConnection(gateway, "stdio", Principal.local_user(), write)
    finally:
        await gateway.stop()


async def ask(conn: ClientConnection, method: str, params: dict[str, Any]) -> JsonObj:
    reply = await conn.on_request({"jsonrpc": "2.0", "id": 1, "method": method,
                                   "params": {**params, "_meta": META}})
    assert reply is not None
    return reply


async def test_guards_refuse_transform_and_filter(conn: ClientConnection) -> None:
    listed = await ask(conn, "tools/list", {})
    names = [t["name"] for t in listed["result"]["tools"]]
    assert "fx__test_simple_text" in names and "fx__test_error_handling" not in names
    assert listed["result"]["cacheScope"] == "private"  # a guard filtered it

    refused = await ask(conn, "tools/call", {"name": "fx__test_error_handling", "arguments": {}})
    assert refused["result"]["isError"] is True
    assert "refused by demo.no-error-tool" in refused["result"]["content"][0]["text"]

    text = await ask(conn, "tools/call", {"name": "fx__test_simple_text", "arguments": {}})
    assert text["result"]["content"][0]["text"].startswith("[checked] ")

    prompt = await ask(conn, "prompts/get", {"name": "fx__test_prompt_with_arguments",
                                             "arguments": {"arg1": "a", "arg2": "b"}})
    assert "rewritten" in str(prompt["result"]["messages"])
    timing = conn.gateway.guards.guards[0]
    assert isinstance(timing, TimingGuard) and timing.count["fx/test_simple_text"] == 1


async def test_refusal_as_jsonrpc_error_names_the_rule(conn: ClientConnection) -> None:
    conn.initialized = True  # a legacy session: the guard refuses with a JSON-RPC error there
    conn.capabilities = {}
    reply = await conn.on_request({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                   "params": {"name": "fx__test_error_handling", "arguments": {}}})
    assert reply is not None and reply["error"]["code"] == -32004
    assert reply["error"]["data"] == {"rule": "demo.no-error-tool"}
