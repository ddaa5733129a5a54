"""T28 anonymous or unsigned requests on HTTP: no token, no service.

A gateway configured as an OAuth resource server, trusting a real issuer started by the test (its
keys generated here): a request without a token gets 401 with the RFC 9728 `WWW-Authenticate`
pointing at the gateway's Protected Resource Metadata; a token minted for another resource is
refused; a token without the scope a method needs gets 403 `insufficient_scope` (step-up); the
client's token never reaches an upstream; every refusal is in the audit log, without the token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.server.mcpserver import MCPServer

from tests.audit_reader import committed
from tests.fixtures.issuer import Issuer, running_issuer
from tests.test_http_link import serve
from tests.threats.identity_support import (
    MEMO_SERVER,
    Keys,
    audit_bytes,
    bearer,
    modern_call,
    oauth_config,
    reply_of,
    tool_text,
)


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with running_issuer() as found:
        yield found


def audit_rows(config_dir: Path, event: str, at_least: int) -> list[str]:
    return committed(config_dir / "mcpward-audit.sqlite", event, at_least)


def test_no_token_gets_401_pointing_at_the_resource_metadata(serve_gateway, issuer: Issuer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway(MEMO_SERVER + oauth_config(issuer))
    issuer.default_audience = url
    with httpx.Client(trust_env=False, timeout=30) as http:
        response = modern_call(http, url, "tools/list", {}, None)
        assert response.status_code == 401
        challenge = response.headers["www-authenticate"]
        origin = url.removesuffix("/mcp")
        metadata_url = f"{origin}/.well-known/oauth-protected-resource/mcp"
        assert challenge.startswith("Bearer ") and f'resource_metadata="{metadata_url}"' in challenge
        document = http.get(metadata_url).json()
        assert document["resource"] == url and document["authorization_servers"] == [issuer.url]
        assert http.get(f"{origin}/.well-known/oauth-protected-resource").json() == document

        good = issuer.mint()
        assert modern_call(http, url, "tools/list", {}, good).status_code == 200
        for bad in (issuer.mint(aud="https://other.example.com/mcp"),  # a token for another resource
                    issuer.mint(exp=1),  # long expired
                    issuer.mint(iss="https://evil.example.com"),
                    good[:-6] + ("AAAAAA" if not good.endswith("AAAAAA") else "BBBBBB")):  # signature broken
            response = modern_call(http, url, "tools/list", {}, bad)
            assert response.status_code == 401, response.text
            assert 'error="invalid_token"' in response.headers["www-authenticate"]
    refused = audit_rows(tmp_path, "auth.refused", 5)
    assert len(refused) == 5 and any("auth.wrong_audience" in row for row in refused)
    database = audit_bytes(tmp_path)
    assert good.encode() not in database and good.split(".")[2].encode() not in database


def test_a_method_that_needs_more_scope_gets_403_insufficient_scope(serve_gateway, issuer: Issuer) -> None:  # type: ignore[no-untyped-def]
    step_up = '[auth.oauth.method_scopes]\n"tools/call" = ["mcp:tools"]\n'
    url = serve_gateway(MEMO_SERVER + oauth_config(issuer, step_up))
    issuer.default_audience = url
    reader, caller = issuer.mint(scope="mcp:read"), issuer.mint(scope="mcp:read mcp:tools")
    with httpx.Client(trust_env=False, timeout=30) as http:
        assert modern_call(http, url, "tools/list", {}, reader).status_code == 200
        call = {"name": "memo__echo", "arguments": {"text": "hi"}}
        response = modern_call(http, url, "tools/call", call, reader)
        assert response.status_code == 403
        challenge = response.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge and 'scope="mcp:tools"' in challenge
        assert tool_text(modern_call(http, url, "tools/call", call, caller)) == "hi"


@pytest.fixture
def header_recording_upstream() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A real SDK server over Streamable HTTP whose every request's headers are kept."""
    seen: list[dict[str, str]] = []
    mcp = MCPServer("remote")

    @mcp.tool()
    async def ping_remote() -> str:
        return "pong"

    inner = mcp.streamable_http_app(host="127.0.0.1")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append({k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]})
        await inner(scope, receive, send)

    for base in serve(app):
        yield base + "/mcp", seen


def test_the_clients_token_never_reaches_an_upstream(serve_gateway, issuer: Issuer,  # type: ignore[no-untyped-def]
                                                      header_recording_upstream) -> None:
    upstream, seen = header_recording_upstream
    remote = f'[servers.remote]\nurl = "{upstream}"\nallow_http = true\nallow_private = true\n'
    url = serve_gateway(remote + oauth_config(issuer))
    issuer.default_audience = url
    token = issuer.mint()
    with httpx.Client(trust_env=False, timeout=30) as http:
        response = modern_call(http, url, "tools/call", {"name": "remote__ping_remote", "arguments": {}}, token)
        assert tool_text(response) == "pong"
        assert reply_of(modern_call(http, url, "tools/list", {}, token))["result"]["tools"]
    assert seen, "the upstream was never called"
    for headers in seen:
        assert "authorization" not in headers
        assert not any(token in value or token.split(".")[2] in value for value in headers.values())
    assert bearer(token)  # the token was real and used


def refused_flood(http: httpx.Client, url: str, prefix: str, sent: int) -> float:
    """`sent` requests with made-up credentials, each refused with 401; the seconds they took."""
    started = time.monotonic()
    for i in range(sent):
        assert modern_call(http, url, "tools/list", {}, f"{prefix}-{i}").status_code == 401
    return time.monotonic() - started


def test_a_flood_of_bad_credentials_cannot_flood_the_audit_log(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # No credentials are needed to fail authentication, so its records are bounded like the front's
    # other refusals: at most 20 a second one by one, the rest counted in a summary. None is lost.
    keys = Keys()
    url = serve_gateway(MEMO_SERVER + keys.table())
    sent = 80
    with httpx.Client(trust_env=False, timeout=30) as http:
        elapsed = refused_flood(http, url, "not-a-key", sent)
    time.sleep(1.5)  # the last second's summary is written by its timer
    one_by_one = audit_rows(tmp_path, "auth.refused", 1)
    summaries = [json.loads(body) for body in audit_rows(tmp_path, "auth.refused-summary", 0)]
    assert len(one_by_one) <= 20 * (int(elapsed) + 2)
    assert len(one_by_one) + sum(s["suppressed"] for s in summaries) == sent
    assert all(s["rules"] for s in summaries)


def test_a_flood_of_opaque_junk_tokens_cannot_flood_the_idp(serve_gateway, issuer: Issuer, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Every non-JWT token is introspected, and no credentials are needed to send one: the calls to the
    # IdP are capped (here 3 a second), the rest are refused as auth.introspection-busy and audited.
    from tests.fixtures.issuer import CLIENT_ID, CLIENT_SECRET

    monkeypatch.setenv("MCPWARD_TEST_IDP_SECRET", CLIENT_SECRET)  # the gateway process inherits it
    extra = (f'introspection_url = "{issuer.url}/introspect"\nclient_id = "{CLIENT_ID}"\n'
             'client_secret = "env:MCPWARD_TEST_IDP_SECRET"\nintrospection_rate = 3\n')
    url = serve_gateway(MEMO_SERVER + oauth_config(issuer, extra))
    issuer.default_audience = url
    sent = 60
    with httpx.Client(trust_env=False, timeout=30) as http:
        elapsed = refused_flood(http, url, "opaque-junk", sent)
        good = issuer.issue_opaque(sub="bob")
        time.sleep(1.1)  # the bucket refills: a real token gets in after the flood
        assert modern_call(http, url, "tools/list", {}, good).status_code == 200
    assert len(issuer.introspected) <= 3 * (elapsed + 2) + 1 < sent
    time.sleep(1.5)  # the last second's summary is written by its timer
    rules = [json.loads(body)["rule"] for body in audit_rows(tmp_path, "auth.refused", 1)]
    for summary in audit_rows(tmp_path, "auth.refused-summary", 0):
        rules += [rule for rule, n in json.loads(summary)["rules"].items() for _ in range(n)]
    assert len(rules) == sent and "auth.introspection-busy" in rules and "auth.inactive" in rules
    stored = audit_bytes(tmp_path)
    assert not any(f"opaque-junk-{i}".encode() in stored for i in range(sent))
