"""T11: a server changes a tool after it was approved (rug pull).

A real SDK client talks to `mcpward serve` in front of an SDK server that, after 3 calls, swaps the
definition of its `weather` tool (hidden instructions, a widened schema, a hidden parameter, or a
cosmetic edit) and announces `tools/list_changed`. The gateway pinned every tool on first sight
(tofu). After the change the client stops seeing exactly `weather` (the other tools keep working),
a call to it by name is refused with `integrity.changed`, the audit log holds the change with a
severity and a readable diff, and `mcpward tools approve` brings the new definition back.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import FIXTURES, MCPWARD, PYTHON
from tests.threats.integrity_support import audit, client, names

REFUSED = -32004


def config(change: str) -> str:
    return (f'[servers.rug]\ncommand = "{PYTHON}"\n'
            f'args = ["{FIXTURES / "rugpull_server.py"}", "--after", "3", "--change", "{change}"]\n')


@pytest.mark.parametrize(("change", "severity", "diff_line"), [
    ("description", "new-instructions", "~ description: Get the weather for a city.{+ <IMPORTANT>"),
    ("schema", "widened-schema", "- inputSchema.properties.city.enum: ['Paris', 'Rome', 'Oslo']"),
    ("hidden-param", "new-instructions", "+ inputSchema.properties.sidenote.type: \"string\""),
    ("cosmetic", "cosmetic", "~ description: "),
])
async def test_changed_tool_disappears_alone_until_approved(serve_gateway, tmp_path: Path, change: str,  # type: ignore[no-untyped-def]
                                                             severity: str, diff_line: str) -> None:
    url = serve_gateway(config(change))
    cfg = next(tmp_path.glob("gw-*.toml"))
    async with client(url) as c:
        assert await names(c) == {"rug__add", "rug__echo", "rug__weather"}
        assert (await c.call_tool("rug__weather", {"city": "Oslo"})).content[0].text == "sunny in Oslo"  # type: ignore[union-attr]
        for i in range(3):
            await c.call_tool("rug__echo", {"text": f"call {i}"})
        # The server has now changed `weather` and said so; the next list no longer shows it.
        assert await names(c) == {"rug__add", "rug__echo"}
        with pytest.raises(MCPError) as refused:
            await c.call_tool("rug__weather", {"city": "Oslo"})
        assert refused.value.code == REFUSED
        assert refused.value.data == {"rule": "integrity.changed"}
        assert "mcpward tools approve rug/weather" in refused.value.message
        assert (await c.call_tool("rug__add", {"a": 2, "b": 3})).content[0].text == "5"  # type: ignore[union-attr]

        held = audit(tmp_path, "integrity.held")
        assert [(r["name"], r["reason"], r["severity"]) for r in held] == [("weather", "changed", severity)]
        assert diff_line in str(held[0]["diff"])

        shown = subprocess.run([MCPWARD, "tools", "diff", "-c", str(cfg)], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert "rug/weather" in shown.stdout and severity in shown.stdout

        approved = subprocess.run([MCPWARD, "tools", "approve", "-c", str(cfg), "rug/weather"],
                                  capture_output=True, text=True, timeout=60)
        assert approved.returncode == 0, approved.stderr
        deadline = time.monotonic() + 10
        while await names(c) != {"rug__add", "rug__echo", "rug__weather"}:
            assert time.monotonic() < deadline, "approval did not bring the tool back"
            time.sleep(0.2)
        assert (await c.call_tool("rug__weather", {"city": "Rome"})).content[0].text == "sunny in Rome"  # type: ignore[union-attr]
    listed = subprocess.run([MCPWARD, "tools", "list", "-c", str(cfg), "--json"], capture_output=True, text=True,
                            timeout=60)
    items = {i["name"]: i for i in json.loads(listed.stdout)["items"] if i["kind"] == "tools"}
    assert items["weather"]["state"] == "approved" and items["weather"]["by"] not in ("", "tofu")
    assert items["add"]["by"] == "tofu"


async def test_revoke_hides_a_pinned_tool_even_in_tofu_mode(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway(config("description"))
    cfg = next(tmp_path.glob("gw-*.toml"))
    async with client(url) as c:
        assert "rug__add" in await names(c)
        revoked = subprocess.run([MCPWARD, "tools", "revoke", "-c", str(cfg), "rug/add"], capture_output=True,
                                 text=True, timeout=60)
        assert revoked.returncode == 0, revoked.stderr
        deadline = time.monotonic() + 10
        while "rug__add" in await names(c):
            assert time.monotonic() < deadline, "revocation did not hide the tool"
            time.sleep(0.2)
        with pytest.raises(MCPError) as refused:
            await c.call_tool("rug__add", {"a": 1, "b": 1})
        assert refused.value.data == {"rule": "integrity.revoked"}
