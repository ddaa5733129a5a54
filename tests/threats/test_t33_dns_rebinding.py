"""T33: DNS rebinding on the local HTTP front. Loopback by default; Host and Origin checked."""

from __future__ import annotations

import subprocess

import httpx

from mcpward.gateway.config import GatewayConfig
from tests.conftest import MCPWARD
from tests.threats.mcp_http import MODERN

BODY = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
    "io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}}}
HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/list"}


def test_rebound_host_and_foreign_origin_are_refused(serve_gateway) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway('[servers.t]\ncommand = "true"\nstart = "lazy"\n')
    port = url.split(":")[2].split("/")[0]
    with httpx.Client(trust_env=False, timeout=20) as http:
        # A page on evil.example whose name now resolves to 127.0.0.1: the Host header gives it away.
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.example:{port}"):
            assert http.post(url, json=BODY, headers={**HEADERS, "Host": host}).status_code == 421
        for origin in ("http://evil.example", f"http://evil.example:{port}", "null"):
            assert http.post(url, json=BODY, headers={**HEADERS, "Origin": origin}).status_code == 403
        same_origin = http.post(url, json=BODY, headers={**HEADERS, "Origin": f"http://localhost:{port}"})
        assert same_origin.status_code == 200


def test_loopback_by_default_and_wider_binds_need_opt_in(write_config) -> None:  # type: ignore[no-untyped-def]
    assert GatewayConfig().http_host == "127.0.0.1"
    path = write_config('[servers.t]\ncommand = "true"\n')
    proc = subprocess.run([MCPWARD, "serve", "-c", str(path), "--host", "0.0.0.0", "--port", "1"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "allow_non_loopback" in proc.stderr
