"""A raw 2026-07-28 HTTP client for threat tests: every header and byte is the test's choice."""

from __future__ import annotations

import json
from typing import Any

import httpx

from mcpward.transport.sse import SseParser
from tests.conftest import FIXTURES, PYTHON

MODERN = "2026-07-28"
# A legacy server whose `sample` tool pushes sampling/createMessage to the client.
LEGACY_PUSHER = f'[servers.legacy]\ncommand = "{PYTHON}"\nargs = ["{FIXTURES / "fault_server.py"}", "--legacy"]\n'


def post(http: httpx.Client, url: str, method: str, params: dict[str, Any], caps: dict[str, Any] | None = None,
         rid: Any = 1, headers: dict[str, str] | None = None) -> httpx.Response:
    """One 2026-07-28 request with matching routing headers (plus any the test adds, e.g. Authorization)."""
    body = {**params, "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
                                "io.modelcontextprotocol/clientCapabilities": caps or {}}}
    sent = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": MODERN, "Mcp-Method": method, **(headers or {})}
    if "name" in params:
        sent["Mcp-Name"] = params["name"]
    return http.post(url, json={"jsonrpc": "2.0", "id": rid, "method": method, "params": body}, headers=sent)


def reply_of(response: httpx.Response, rid: Any = 1) -> dict[str, Any]:
    """The reply to request `rid`, from a JSON body or from an SSE stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        replies = [json.loads(e.data) for e in SseParser().feed(response.content) if e.data]
        found: dict[str, Any] = next(r for r in replies if r.get("id") == rid and "method" not in r)
        return found
    reply: dict[str, Any] = response.json()
    return reply


def call(http: httpx.Client, url: str, method: str, params: dict[str, Any], caps: dict[str, Any] | None = None,
         rid: int = 1) -> tuple[int, dict[str, Any]]:
    response = post(http, url, method, params, caps, rid)
    return response.status_code, reply_of(response, rid)
