"""T16: tools are not visible to every client: the policy decides what each client sees and calls.

A real SDK client talks to `mcpward serve` in front of an SDK server whose tools carry honest,
missing and lying annotations. Under `base = "readonly"` a client never sees a tool that is not
read-only in tools/list, and calling one by name is refused with a JSON-RPC error naming the rule;
the list is marked private. One operator rule gives a client named `trusted-ide` a wider view of
the same gateway (per-client views), still without the destructive tools.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import mcp.types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.conftest import FIXTURES, PYTHON
from tests.threats.mcp_http import call

NOTES = f'[servers.notes]\ncommand = "{PYTHON}"\nargs = ["{FIXTURES / "policy_server.py"}"]\n'
VIEWS = """
@id("views.trusted-ide-writes")
permit (principal, action == Action::"call_tool", resource)
when { context.client == "trusted-ide" && !resource.destructive };
"""
REFUSED = -32004


def client(url: str, name: str) -> Client:
    return Client(url, client_info=types.Implementation(name=name, version="1.0"), read_timeout_seconds=30)


async def tool_names(c: Client) -> set[str]:
    return {t.name for t in (await c.list_tools()).tools}


async def test_readonly_client_never_sees_or_calls_a_non_read_only_tool(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "views.cedar").write_text(VIEWS)
    url = serve_gateway(NOTES + '[policy]\nbase = "readonly"\nfiles = ["views.cedar"]\n')

    async with client(url, "claude-code") as c:
        # delete_all claims readOnlyHint: true; without an override the claim is all there is (see T18).
        assert await tool_names(c) == {"notes__read_file", "notes__delete_all"}
        for name, args in (("notes__drop_table", {"name": "users"}), ("notes__plain", {}),
                           ("notes__write_file", {"path": "/tmp/x", "text": "y"})):
            with pytest.raises(MCPError) as refused:
                await c.call_tool(name, args)
            assert refused.value.code == REFUSED
            assert re.fullmatch(rf"refused by policy\.default-deny: call_tool on {name} is not permitted for \S+",
                                refused.value.message)
            assert refused.value.data == {"rule": "policy.default-deny"}
        read = await c.call_tool("notes__read_file", {"path": "/srv/notes/today.txt"})
        assert read.content[0].text == "contents of /srv/notes/today.txt"  # type: ignore[union-attr]
        # Prompts and resources stay readable under readonly.
        assert [p.name for p in (await c.list_prompts()).prompts] == ["notes__summarize"]
        assert "note://readme" in {str(r.uri) for r in (await c.list_resources()).resources}

    # The filtered list is private to this client: no shared cache may hand it to another one.
    with httpx.Client(trust_env=False, timeout=30) as http:
        _status, listed = call(http, url, "tools/list", {})
    assert listed["result"]["cacheScope"] == "private"
    assert {t["name"] for t in listed["result"]["tools"]} == {"notes__read_file", "notes__delete_all"}

    async with client(url, "trusted-ide") as trusted:
        names = await tool_names(trusted)
        assert names == {"notes__read_file", "notes__delete_all", "notes__write_file"}
        wrote = await trusted.call_tool("notes__write_file", {"path": "/tmp/x", "text": "abc"})
        assert wrote.content[0].text == "wrote 3 characters to /tmp/x"  # type: ignore[union-attr]
        with pytest.raises(MCPError) as refused:
            await trusted.call_tool("notes__drop_table", {"name": "users"})
        assert refused.value.code == REFUSED and "policy.default-deny" in refused.value.message
