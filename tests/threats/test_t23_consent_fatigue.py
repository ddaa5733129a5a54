"""T23: consent fatigue. Approval is per pinned definition and per risk, never per call.

Under default (tofu) settings a server's ordinary tools are pinned on first sight without asking;
100 calls and repeated listings ask nothing. One new tool that declares itself destructive is held
once: one pending entry, one audit record, however often clients list or call it. One approval
releases it for good, and nothing is asked again.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import MCPWARD
from tests.threats.integrity_support import audit, client, described, names, tool

READS = [tool(f"get_{n}", f"Return the {n} record.", {"id": {"type": "string"}}, {"readOnlyHint": True})
         for n in ("user", "order", "invoice", "ticket", "shipment")]
DEFAULTS = '[integrity]\nmode = "tofu"\n'  # the defaults, said out loud (the suite's helper relaxes them)
DROP = tool("drop_records", "Delete every record of a kind.", {"kind": {"type": "string"}},
            {"readOnlyHint": False, "destructiveHint": True})


async def test_hundred_calls_ask_nothing_and_a_destructive_tool_asks_once(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway(described(tmp_path, "crm", [*READS, DROP]) + DEFAULTS)
    cfg = next(tmp_path.glob("gw-*.toml"))
    async with client(url) as c:
        assert await names(c) == {f"crm__{t['name']}" for t in READS}
        for i in range(100):
            result = await c.call_tool(f"crm__{READS[i % len(READS)]['name']}", {"id": str(i)})
            assert not result.is_error
            if i % 20 == 0:
                await names(c)
        for _ in range(3):
            with pytest.raises(MCPError) as refused:
                await c.call_tool("crm__drop_records", {"kind": "user"})
            assert refused.value.data == {"rule": "integrity.held-destructive"}
        held = audit(tmp_path, "integrity.held")
        assert [(r["name"], r["reason"]) for r in held] == [("drop_records", "held-destructive")]
        pending = subprocess.run([MCPWARD, "tools", "list", "-c", str(cfg), "--pending", "--json"],
                                 capture_output=True, text=True, timeout=60)
        assert [i["name"] for i in json.loads(pending.stdout)["items"]] == ["drop_records"]

        approved = subprocess.run([MCPWARD, "tools", "approve", "-c", str(cfg), "crm"], capture_output=True,
                                  text=True, timeout=60)
        assert approved.returncode == 0, approved.stderr
        deadline = time.monotonic() + 10
        while "crm__drop_records" not in await names(c):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        for _ in range(10):
            await c.call_tool("crm__drop_records", {"kind": "user"})
    assert len(audit(tmp_path, "integrity.held")) == 1
    assert {r["name"] for r in audit(tmp_path, "integrity.pinned")} == {t["name"] for t in READS}
