"""Malformed JSON-RPC, oversized frames, unknown methods, invalid params: a precise error, never a hang."""

from __future__ import annotations

import asyncio
import json

from tests.conftest import fixture_server, toml_list
from tests.rawclient import MODERN_META, RawStdioClient

CONFIG = """
[gateway]
max_message_bytes = 65536
[servers.fx]
command = "{py}"
args = {args}
"""


def _config(write_config):  # type: ignore[no-untyped-def]
    cmd = fixture_server()
    return write_config(CONFIG.format(py=cmd[0], args=toml_list(cmd[1:])))


async def test_stdio_front_answers_bad_input_precisely(write_config) -> None:  # type: ignore[no-untyped-def]
    client = await RawStdioClient.start(_config(write_config))
    try:
        await client.send_raw(b"{not json\n")
        reply = await client.read()
        assert reply["id"] is None and reply["error"]["code"] == -32700

        await client.send_raw(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]\n')
        assert (await client.read())["error"]["code"] == -32600

        await client.send_raw(b'{"jsonrpc":"1.0","id":7,"method":"tools/list"}\n')
        reply = await client.read()
        assert reply["id"] == 7 and reply["error"]["code"] == -32600

        await client.send_raw(b'{"jsonrpc":"2.0","id":8,"method":"tools/list","params":[1]}\n')
        assert (await client.read())["error"]["code"] == -32602

        big = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                          "params": {"name": "x", "arguments": {"s": "a" * 100_000}}})
        await client.send_raw(big.encode() + b"\n")
        reply = await client.read()
        assert reply["id"] == 9 and reply["error"]["code"] == -32600 and "65536-byte limit" in reply["error"]["message"]

        reply = await client.request("no/such/method")
        assert reply["error"]["code"] == -32601

        reply = await client.request("tools/call", {"arguments": {}})
        assert reply["error"]["code"] == -32602 and "'name'" in reply["error"]["message"]

        reply = await client.request("tools/call", {"name": "fx__nope"})
        assert reply["error"]["code"] == -32602

        reply = await client.request("tools/list", {"_meta": {"io.modelcontextprotocol/protocolVersion": "2099-01-01"}})
        assert reply["error"]["code"] == -32022 and reply["error"]["data"]["supported"] == ["2026-07-28"]

        reply = await client.request("tools/list", modern=False)
        assert reply["error"]["code"] == -32602 and "initialize" in reply["error"]["message"]

        # After all that, the gateway still works.
        reply = await client.call("fx__test_simple_text")
        assert reply["result"]["content"][0]["type"] == "text"
    finally:
        await client.close()


async def test_duplicate_in_flight_id_is_refused(write_config) -> None:  # type: ignore[no-untyped-def]
    client = await RawStdioClient.start(_config(write_config))
    try:
        slow = {"jsonrpc": "2.0", "id": "same", "method": "tools/call",
                "params": {"name": "fx__test_tool_with_progress", "arguments": {}, "_meta": MODERN_META}}
        line = json.dumps(slow).encode() + b"\n"
        futures = [client.expect("same"), client.expect("same")]
        await client.send_raw(line + line)
        replies = [await f for f in futures]
        errors = [r for r in replies if "error" in r]
        assert len(errors) == 1 and "already in use" in errors[0]["error"]["message"]
    finally:
        await client.close()


async def test_a_malformed_listen_filter_is_invalid_params(write_config) -> None:  # type: ignore[no-untyped-def]
    # A listen the gateway cannot read would otherwise be acknowledged for nothing and the client
    # would wait on it forever.
    client = await RawStdioClient.start(_config(write_config))
    try:
        for bad in (5, {"toolsListChanged": "yes"}, {"resourceSubscriptions": "file:///a"},
                    {"resourceSubscriptions": [1]}):
            reply = await client.request("subscriptions/listen", {"notifications": bad})
            assert reply["error"]["code"] == -32602 and "subscriptions/listen" in reply["error"]["message"], bad
        # A well-formed listen is acknowledged with what the gateway agreed to.
        rid = 999
        body = {"notifications": {"toolsListChanged": True}, "_meta": MODERN_META}
        await client.send_raw(json.dumps({"jsonrpc": "2.0", "id": rid, "method": "subscriptions/listen",
                                          "params": body}).encode() + b"\n")
        for _ in range(200):
            acks = [n for n in client.notifications if n["method"] == "notifications/subscriptions/acknowledged"]
            if acks:
                break
            await asyncio.sleep(0.05)
        ack = acks[0]
        assert ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == rid
        assert ack["params"]["notifications"] == {"toolsListChanged": True}
    finally:
        await client.close()
