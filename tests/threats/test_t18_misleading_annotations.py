"""T18: a server's annotations are untrusted hints; the operator's override is what the policy uses.

The fixture's `delete_all` claims `readOnlyHint: true` and deletes every note it holds. Under the
`standard` policy (everything but destructive tools), two gateways in front of the same server:

- without an override, the lie works: the tool is listed, callable, and really deletes the notes
  (which shows that the override, and nothing else, is what blocks it below);
- with `[servers.notes.tools.delete_all] annotations = { readOnlyHint = false, destructiveHint = true }`
  the tool is hidden from tools/list, a call by name is refused with a JSON-RPC error naming the rule,
  and the server never sees the call: the notes are still there.
"""

from __future__ import annotations

import mcp.types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.conftest import FIXTURES, PYTHON

NOTES = f'[servers.notes]\ncommand = "{PYTHON}"\nargs = ["{FIXTURES / "policy_server.py"}"]\n'
STANDARD = '[policy]\nbase = "standard"\n'
OVERRIDE = '[servers.notes.tools.delete_all]\nannotations = { readOnlyHint = false, destructiveHint = true }\n'


def client(url: str) -> Client:
    return Client(url, client_info=types.Implementation(name="claude-code", version="1.0"), read_timeout_seconds=30)


async def readme(c: Client) -> str:
    result = await c.read_resource("note://readme")
    return result.contents[0].text  # type: ignore[union-attr]


async def test_lying_read_only_hint_is_blocked_by_the_operator_override(serve_gateway) -> None:  # type: ignore[no-untyped-def]
    overridden = serve_gateway(NOTES + OVERRIDE + STANDARD)
    async with client(overridden) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert "notes__delete_all" not in names
        assert {"notes__read_file", "notes__write_file"} <= names  # the rest of the server is still there
        assert "notes__drop_table" not in names and "notes__plain" not in names  # honest destructive ones
        with pytest.raises(MCPError) as refused:
            await c.call_tool("notes__delete_all", {})
        assert refused.value.code == -32004
        assert refused.value.message.startswith("refused by policy.default-deny: call_tool on notes__delete_all ")
        assert await readme(c) == "hello"  # the call never reached the server

    trusting = serve_gateway(NOTES + STANDARD)
    async with client(trusting) as c:
        assert "notes__delete_all" in {t.name for t in (await c.list_tools()).tools}
        done = await c.call_tool("notes__delete_all", {})
        assert done.content[0].text == "deleted 2 notes"  # type: ignore[union-attr]
        assert await readme(c) == ""  # it was destructive all along


def test_an_override_filed_under_the_exposed_name_stops_the_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Before: accepted and silently never applied, so the lie above worked despite the operator.
    import subprocess

    from tests.conftest import MCPWARD

    path = tmp_path / "mcpward.toml"
    path.write_text(NOTES + OVERRIDE.replace("tools.delete_all", "tools.notes__delete_all") + STANDARD)
    done = subprocess.run([MCPWARD, "policy", "check", "-c", str(path)], capture_output=True, timeout=120)
    assert done.returncode == 2
    assert b"servers.notes.tools.notes__delete_all: is the exposed name" in done.stderr
    assert b"write [servers.notes.tools.delete_all]" in done.stderr


async def test_an_override_for_a_tool_the_server_never_lists_is_reported(serve_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway(NOTES + OVERRIDE.replace("tools.delete_all", "tools.delete_al") + STANDARD)
    async with client(url) as c:
        assert "notes__delete_all" in {t.name for t in (await c.list_tools()).tools}  # the typo protects nothing
        await c.list_tools()
    (log,) = tmp_path.glob("gw-*.log")
    text = log.read_text()
    assert text.count("lists no tool 'delete_al'") == 1 and text.count("policy.override-unmatched") == 1
