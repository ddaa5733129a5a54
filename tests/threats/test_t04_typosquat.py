"""T04: a dependency typosquat or an unpinned launcher in a client config is reported by `mcpward scan`.

The real CLI as a subprocess, HOME pointed at tmp_path (the real home is never read), on a Claude
Desktop config it discovers by itself: `npx -y @modelcontextprotocol/server-filesytem` (one letter
dropped) is a high typosquat finding and an unpinned one, and the scan exits 1; the correctly
spelled, pinned package next to it is clean.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_scan import mcp_json, run_scan, write


def test_typosquatted_package_is_reported(tmp_path: Path) -> None:
    write(tmp_path / ".config/Claude/claude_desktop_config.json", mcp_json({
        "filesystem": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesytem", "/tmp"]},
        "fetch": {"command": "uvx", "args": ["mcp-server-fecth"]},
        "real": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem@2026.8.31", "/tmp"]},
    }))
    proc = run_scan(tmp_path, "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    found = {(f["server"], f["rule"], f["severity"], f["path"]) for f in report["findings"]}
    assert ("filesystem", "scan.typosquat", "high", "$.mcpServers.filesystem.args[1]") in found
    assert ("filesystem", "scan.unpinned-package", "medium", "$.mcpServers.filesystem.args[1]") in found
    assert ("fetch", "scan.typosquat", "high", "$.mcpServers.fetch.args[0]") in found
    assert not [f for f in report["findings"] if f["server"] == "real"]
    typo = next(f for f in report["findings"] if f["server"] == "filesystem" and f["rule"] == "scan.typosquat")
    assert "@modelcontextprotocol/server-filesystem" in typo["message"]
    assert typo["client"] == "claude-desktop" and typo["line"] == 3
