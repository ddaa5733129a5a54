"""A deliberately tiny MCP upstream for benchmarks: one `echo` tool, both protocol eras.

    python bench/raw_server.py                # stdio, newline-delimited JSON
    python bench/raw_server.py --http 3191    # Streamable HTTP on http://127.0.0.1:3191/mcp (JSON responses)

Plain Python plus `json`, no MCP SDK, so the upstream's own per-call cost stays around
tens of microseconds and the numbers measured through a proxy are dominated by the proxy.
It answers `server/discover` (modern, 2026-07-28) and `initialize` (legacy) alike; it does
no validation beyond what a benchmark needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
from typing import Any

JsonObj = dict[str, Any]
MODERN = "2026-07-28"
LEGACY = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
INFO = {"name": "bench-raw", "version": "1.0"}
ECHO_TOOL: JsonObj = {
    "name": "echo",
    "description": "Echo the text back.",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
}
CAPABILITIES: JsonObj = {"tools": {"listChanged": False}}


def _result(rid: Any, result: JsonObj) -> JsonObj:
    return {"jsonrpc": "2.0", "id": rid, "result": result}


def _error(rid: Any, code: int, message: str) -> JsonObj:
    return {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}


def handle(msg: JsonObj) -> JsonObj | None:
    """Answer one JSON-RPC message; None for notifications and responses."""
    method = msg.get("method")
    rid = msg.get("id")
    if method is None or rid is None:
        return None
    params = msg.get("params") or {}
    meta = params.get("_meta") or {}
    modern = "io.modelcontextprotocol/protocolVersion" in meta
    if method == "tools/call":
        args = params.get("arguments") or {}
        if params.get("name") != "echo":
            return _error(rid, -32602, f"unknown tool: {params.get('name')}")
        result: JsonObj = {"content": [{"type": "text", "text": str(args.get("text", ""))}], "isError": False}
        if modern:
            result["resultType"] = "complete"
        return _result(rid, result)
    if method == "tools/list":
        listed: JsonObj = {"tools": [ECHO_TOOL]}
        if modern:
            listed.update(ttlMs=0, cacheScope="public", resultType="complete")
        return _result(rid, listed)
    if method == "server/discover":
        return _result(rid, {"supportedVersions": [MODERN], "capabilities": CAPABILITIES, "resultType": "complete",
                             "ttlMs": 0, "cacheScope": "public",
                             "_meta": {"io.modelcontextprotocol/serverInfo": INFO}})
    if method == "initialize":
        asked = params.get("protocolVersion")
        version = asked if asked in LEGACY else LEGACY[0]
        return _result(rid, {"protocolVersion": version, "capabilities": CAPABILITIES, "serverInfo": INFO})
    if method == "ping":
        return _result(rid, {})
    return _error(rid, -32601, f"method not found: {method}")


def serve_stdio() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    for line in stdin:
        if not line.strip():
            continue
        try:
            reply = handle(json.loads(line))
        except (ValueError, AttributeError):
            reply = _error(None, -32700, "parse error")
        if reply is not None:
            stdout.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
            stdout.flush()


# ------------------------------------------------------------------------------------- HTTP
async def _read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method = lines[0].split(" ", 1)[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(length) if length else b""
    return method, headers, body


def _response(status: int, body: bytes, extra: list[tuple[str, str]] | None = None) -> bytes:
    reason = {200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}[status]
    head = [f"HTTP/1.1 {status} {reason}", f"content-length: {len(body)}"]
    if body:
        head.append("content-type: application/json")
    head += [f"{k}: {v}" for k, v in extra or []]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def http_reply(method: str, body: bytes) -> bytes:
    """One Streamable HTTP exchange (POST only; JSON responses; sessions issued but not enforced)."""
    if method == "DELETE":
        return _response(200, b"")
    if method != "POST":
        return _response(405, b"", [("allow", "POST, DELETE")])
    try:
        msg = json.loads(body)
        reply = handle(msg)
    except (ValueError, AttributeError):
        return _response(400, json.dumps(_error(None, -32700, "parse error")).encode())
    if reply is None:
        return _response(202, b"")
    extra = [("mcp-session-id", secrets.token_hex(16))] if msg.get("method") == "initialize" else []
    status = 404 if reply.get("error", {}).get("code") == -32601 else 200
    return _response(status, json.dumps(reply, separators=(",", ":")).encode(), extra)


async def _connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            request = await _read_request(reader)
            if request is None:
                break
            method, headers, body = request
            writer.write(http_reply(method, body))
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve_http(port: int) -> None:
    server = await asyncio.start_server(_connection, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        asyncio.run(serve_http(int(sys.argv[2])))
    else:
        serve_stdio()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        main()
