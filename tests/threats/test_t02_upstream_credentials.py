"""T02 confused deputy, credential part: one upstream credential reused across users.

A server configured with per-principal credentials gets, for each principal, its own process (stdio)
or its own connection (remote HTTP) holding only that principal's credential. A principal the
config gives no credential is refused with the rule `credentials.per-principal` and audited: it
never borrows someone else's, and it does not even see the server's tools. The gateway's own
requests carry no credential either, and no credential value reaches the log or the audit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.server.mcpserver import Context, MCPServer

from mcpward.auth.api_keys import key_digest, new_key
from tests.audit_reader import committed
from tests.conftest import FIXTURES, PYTHON
from tests.test_http_link import serve
from tests.threats.identity_support import LegacyClient, audit_bytes, modern_call, reply_of, tool_text

RULE = "credentials.per-principal"
WHOAMI = {"name": "vault__whoami", "arguments": {}}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


class Principals:
    """Three API keys: alice and bob have upstream credentials, carol has none."""

    def __init__(self) -> None:
        self.keys = {name: new_key() for name in ("alice", "bob", "carol")}
        self.upstream = {name: f"upstream-token-of-{name}-{new_key()[:12]}" for name in ("alice", "bob")}

    def auth(self) -> str:
        return "".join(f'[auth.api_keys.{name}]\nsha256 = "{key_digest(key)}"\n\n' for name, key in self.keys.items())


def stdio_config(people: Principals, tmp_path: Path, legacy: bool) -> str:
    alice_file = tmp_path / "alice.token"
    alice_file.write_text(people.upstream["alice"])
    alice_file.chmod(0o600)
    bob_file = tmp_path / "bob.token"
    bob_file.write_text(people.upstream["bob"])
    bob_file.chmod(0o600)
    args = [str(FIXTURES / "credential_server.py"), *(["--legacy"] if legacy else [])]
    return (f'[servers.vault]\ncommand = "{PYTHON}"\nargs = {args!r}\n'.replace("'", '"')
            # alice's arrives as a file (/run/secrets/TOKEN), bob's as an environment variable.
            + f'[servers.vault.principals."api-key:alice".secrets]\nTOKEN = "file:{alice_file}"\n'
            + f'[servers.vault.principals."api-key:bob".env]\nTOKEN = "${{file:{bob_file}}}"\n'
            + people.auth())


def whoami(http: httpx.Client, url: str, key: str) -> tuple[str, str]:
    process, found = tool_text(modern_call(http, url, "tools/call", WHOAMI, key)).split()
    return process, found


def refused_rule(response: httpx.Response) -> str:
    reply = reply_of(response)
    assert "error" in reply, reply
    rule: str = reply["error"]["data"]["rule"]
    return rule


def listed(http: httpx.Client, url: str, key: str) -> list[str]:
    return [t["name"] for t in reply_of(modern_call(http, url, "tools/list", {}, key))["result"]["tools"]]


@pytest.mark.parametrize("legacy", [False, True], ids=["modern-server", "legacy-server"])
def test_each_principal_reaches_a_stdio_server_with_only_its_own_credential(
        serve_gateway, tmp_path: Path, legacy: bool) -> None:  # type: ignore[no-untyped-def]
    people = Principals()
    url = serve_gateway(stdio_config(people, tmp_path, legacy))
    keys = people.keys
    with httpx.Client(trust_env=False, timeout=30) as http:
        alice_process, alice_sees = whoami(http, url, keys["alice"])
        bob_process, bob_sees = whoami(http, url, keys["bob"])
        assert alice_sees == digest(people.upstream["alice"])
        assert bob_sees == digest(people.upstream["bob"])
        assert alice_process != bob_process  # two processes: nothing one principal leaves is the other's
        assert whoami(http, url, keys["alice"]) == (alice_process, alice_sees)  # and each keeps its own

        # carol has no credential here: refused by name, and the server is not in her list.
        assert refused_rule(modern_call(http, url, "tools/call", WHOAMI, keys["carol"])) == RULE
        assert "vault__whoami" not in listed(http, url, keys["carol"])
        assert "vault__whoami" in listed(http, url, keys["alice"])

        # A legacy client of carol's fares no better than a stateless one.
        carol = LegacyClient(http, url, keys["carol"])
        carol.open()
        answer = reply_of(carol.post("tools/call", WHOAMI), carol.rid)
        assert answer["error"]["data"]["rule"] == RULE, answer

    refusals = committed(tmp_path / "mcpward-audit.sqlite", "refusal", at_least=2)
    mine = [body for body in refusals if RULE in body]
    assert len(mine) >= 2 and all('"carol"' in body for body in mine), refusals
    everything = audit_bytes(tmp_path) + b"".join(p.read_bytes() for p in tmp_path.glob("gw-*.log"))
    for token in people.upstream.values():
        assert token.encode() not in everything


@pytest.fixture
def auth_recording_upstream() -> Iterator[tuple[str, list[str | None]]]:
    """A real SDK server over Streamable HTTP that keeps the Authorization header of every request;
    its `whoami` tool answers with the digest of the header its own call came with."""
    seen: list[str | None] = []
    mcp = MCPServer("remote")

    @mcp.tool()
    async def whoami(ctx: Context) -> str:
        found = (ctx.headers or {}).get("authorization")
        return "none" if found is None else digest(found)

    inner = mcp.streamable_http_app(host="127.0.0.1")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            found = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
            seen.append(found.get("authorization"))
        await inner(scope, receive, send)

    for base in serve(app):
        yield base + "/mcp", seen


def test_each_principal_reaches_a_remote_server_with_only_its_own_header(
        serve_gateway, auth_recording_upstream: tuple[str, list[str | None]]) -> None:  # type: ignore[no-untyped-def]
    upstream, seen = auth_recording_upstream
    people = Principals()
    config = (f'[servers.vault]\nurl = "{upstream}"\nallow_http = true\nallow_private = true\n'
              f'[servers.vault.principals."api-key:alice".headers]\n'
              f'Authorization = "Bearer {people.upstream["alice"]}"\n'
              f'[servers.vault.principals."api-key:bob".headers]\n'
              f'Authorization = "Bearer {people.upstream["bob"]}"\n' + people.auth())
    url = serve_gateway(config)
    keys = people.keys
    with httpx.Client(trust_env=False, timeout=30) as http:
        assert not seen, "the gateway must not reach a per-principal server without a principal"
        for name in ("alice", "bob", "alice"):
            answer = tool_text(modern_call(http, url, "tools/call", WHOAMI, keys[name]))
            assert answer == digest(f"Bearer {people.upstream[name]}")
        assert refused_rule(modern_call(http, url, "tools/call", WHOAMI, keys["carol"])) == RULE
        assert "vault__whoami" not in listed(http, url, keys["carol"])
    # Every request the server got (calls, lists, probes, listen streams) came with alice's or bob's.
    assert seen and set(seen) == {f"Bearer {people.upstream[n]}" for n in ("alice", "bob")}, set(seen)


async def test_over_stdio_the_local_user_is_the_principal_that_holds_credentials(
        write_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`mcpward run` serves the local OS user: a server bound to another user's credentials refuses it,
    one bound to this user's reaches the server with them."""
    import getpass

    from tests.rawclient import RawStdioClient

    me = f"local-user:{getpass.getuser()}"
    token = tmp_path / "mine.token"
    token.write_text("upstream-token-of-the-local-user")
    token.chmod(0o600)
    server = f'command = "{PYTHON}"\nargs = ["{FIXTURES / "credential_server.py"}"]\n'
    config = write_config(f'[servers.mine]\n{server}[servers.mine.principals."{me}".secrets]\n'
                          f'TOKEN = "file:{token}"\n'
                          f'[servers.theirs]\n{server}[servers.theirs.principals."local-user:someone-else".env]\n'
                          'TOKEN = "theirs"\n')
    client = await RawStdioClient.start(config)
    try:
        mine = await client.call("mine__whoami")
        assert mine["result"]["content"][0]["text"].split()[1] == digest("upstream-token-of-the-local-user")
        theirs = await client.call("theirs__whoami")
        assert theirs["error"]["data"]["rule"] == RULE, theirs
        names = [t["name"] for t in (await client.request("tools/list"))["result"]["tools"]]
        assert "mine__whoami" in names and "theirs__whoami" not in names
    finally:
        await client.close()
