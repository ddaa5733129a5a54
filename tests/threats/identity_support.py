"""Shared pieces for the identity threat tests: a gateway behind OAuth and API keys, and raw calls with a token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from mcpward.auth.api_keys import key_digest, new_key
from tests.conftest import FIXTURES, PYTHON
from tests.fixtures.issuer import Issuer
from tests.threats.mcp_http import post, reply_of

LEGACY_VERSION = "2025-11-25"
# A stdio server with memory: `remember` keeps a note, `recall` returns every note it holds.
MEMO_SERVER = f'[servers.memo]\ncommand = "{PYTHON}"\nargs = ["{FIXTURES / "fault_server.py"}", "--legacy"]\n'


class Keys:
    """Two API keys (alice in group "staff", bob) as config text, and their secret values for the test."""

    def __init__(self) -> None:
        self.alice, self.bob = new_key(), new_key()

    def table(self) -> str:
        return (f'[auth.api_keys.alice]\nsha256 = "{key_digest(self.alice)}"\ngroups = ["staff"]\n\n'
                f'[auth.api_keys.bob]\nsha256 = "{key_digest(self.bob)}"\n\n')


def audit_bytes(config_dir: Path) -> bytes:
    """Every byte of the audit database, its write-ahead log included (recent records live there)."""
    return b"".join(p.read_bytes() for p in sorted(config_dir.glob("mcpward-audit.sqlite*")))


def oauth_config(issuer: Issuer, extra: str = "") -> str:
    return (f'[auth.oauth]\nissuer = "{issuer.url}"\njwks_url = "{issuer.url}/jwks"\nallow_private = true\n'
            f'scopes_supported = ["mcp:tools", "mcp:read"]\n{extra}\n')


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def modern_call(http: httpx.Client, url: str, method: str, params: dict[str, Any], token: str | None,
                rid: Any = 1, caps: dict[str, Any] | None = None) -> httpx.Response:
    return post(http, url, method, params, caps, rid, bearer(token))


def tool_text(response: httpx.Response, rid: int = 1) -> str:
    reply = reply_of(response, rid)
    assert "result" in reply, reply
    text: str = reply["result"]["content"][0]["text"]
    return text


class LegacyClient:
    """A raw 2025-11-25 session over HTTP: initialize, then requests carrying the session id."""

    def __init__(self, http: httpx.Client, url: str, token: str | None) -> None:
        self.http, self.url, self.token = http, url, token
        self.session: str | None = None
        self.rid = 0

    def headers(self, token: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                   **bearer(token)}
        if self.session is not None:
            headers["Mcp-Session-Id"] = self.session
            headers["MCP-Protocol-Version"] = LEGACY_VERSION
        return headers

    def post(self, method: str, params: dict[str, Any], token: str | None = None,
             notification: bool = False) -> httpx.Response:
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
        if not notification:
            self.rid += 1
            body["id"] = self.rid
        return self.http.post(self.url, json=body, headers=self.headers(token if token is not None else self.token))

    def open(self) -> dict[str, Any]:
        """Initialize the session; the initialize reply."""
        response = self.post("initialize", {"protocolVersion": LEGACY_VERSION, "capabilities": {},
                                            "clientInfo": {"name": "threat-test", "version": "1"}})
        assert response.status_code == 200, response.text
        self.session = response.headers["mcp-session-id"]
        assert self.post("notifications/initialized", {}, notification=True).status_code == 202
        return reply_of(response, self.rid)
