"""T14 (scan part): plaintext secrets in a client config's env, arguments, headers and URLs are
reported by `mcpward scan`, without the scan output ever repeating them; references such as
`${GITHUB_TOKEN}`, `${env:X}` and `secret:NAME` are fine.

The real CLI as a subprocess on a VS Code `mcp.json` (JSONC) and a Codex `config.toml` it discovers
under a HOME pointed at tmp_path. Secret-looking values are assembled at run time.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_scan import run_scan, write

GH_TOKEN = "ghp_" + "Q7sWk29LmX04vBn8" + "TzRy61PaHdE3uJcF5oGi"
API_KEY = "sk-proj-" + "Lm4Xq9Wz2Rt7" + "Bv6Ny1Kc8Hd3"
PASSWORD = "Tr0ub4dor" + "&3x"


def test_plaintext_secrets_are_reported_and_never_echoed(tmp_path: Path) -> None:
    write(tmp_path / ".config/Code/User/mcp.json", f"""{{
  // VS Code user MCP config (JSONC)
  "servers": {{
    "github": {{"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github@2025.4.8"],
                "env": {{"GITHUB_PERSONAL_ACCESS_TOKEN": "{GH_TOKEN}"}}}},
    "github-ref": {{"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github@2025.4.8"],
                    "env": {{"GITHUB_PERSONAL_ACCESS_TOKEN": "${{input:github_token}}"}}}},
    "db": {{"command": "node", "args": ["db.js", "--password", "{PASSWORD}"]}},
    "remote": {{"type": "http", "url": "https://mcp.example.com/mcp?access_token={API_KEY}",
                "headers": {{"Authorization": "Bearer {API_KEY}"}}}},
  }},
}}
""")
    write(tmp_path / ".codex/config.toml", f"""
[mcp_servers.llm]
command = "node"
args = ["llm.js"]
env = {{ OPENAI_API_KEY = "{API_KEY}", GITHUB_TOKEN = "${{GITHUB_TOKEN}}", DB_PASSWORD = "secret:db" }}
""")
    for extra in ((), ("--json",), ("--sarif", "-")):
        proc = run_scan(tmp_path, *extra)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        for secret in (GH_TOKEN, API_KEY, PASSWORD):
            assert secret not in proc.stdout and secret not in proc.stderr
    report = json.loads(run_scan(tmp_path, "--json").stdout)
    found = {(f["client"], f["server"], f["rule"], f["path"]) for f in report["findings"] if f["severity"] == "high"}
    assert found == {
        ("vscode", "github", "scan.plaintext-secret", "$.servers.github.env.GITHUB_PERSONAL_ACCESS_TOKEN"),
        ("vscode", "db", "scan.plaintext-secret", "$.servers.db.args[2]"),
        ("vscode", "remote", "scan.url-credentials", "$.servers.remote.url"),
        ("vscode", "remote", "scan.plaintext-secret", "$.servers.remote.headers.Authorization"),
        ("codex", "llm", "scan.plaintext-secret", "$.mcp_servers.llm.env.OPENAI_API_KEY"),
    }
