"""T10 (scan part): a client config that mounts the Docker socket or a sensitive host path into a
server's container is reported by `mcpward scan`, with the exact argument it comes from.

The real CLI as a subprocess on a Cursor config it discovers under a HOME pointed at tmp_path. A
container with only a scratch directory mounted is clean.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_scan import mcp_json, run_scan, write

DIGEST = "@sha256:" + "c" * 64


def test_docker_socket_and_host_paths_are_reported(tmp_path: Path) -> None:
    write(tmp_path / ".cursor/mcp.json", mcp_json({
        "docker-admin": {"command": "docker", "args": ["run", "-i", "--rm", "-v",
                                                       "/var/run/docker.sock:/var/run/docker.sock",
                                                       "mcp/docker" + DIGEST]},
        "keys": {"command": "docker", "args": ["run", "-i", "--rm", "--mount",
                                               "type=bind,source=~/.ssh,target=/root/.ssh,readonly",
                                               "-v", "/:/host", "--privileged", "--pid=host", "acme/tool" + DIGEST]},
        "scratch": {"command": "docker", "args": ["run", "-i", "--rm", "-v", "/tmp/mcp-scratch:/work",
                                                  "--cap-drop", "ALL", "acme/tool" + DIGEST]},
    }))
    proc = run_scan(tmp_path, "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    found = {(f["server"], f["rule"], f["path"]) for f in report["findings"] if f["severity"] == "high"}
    assert found == {
        ("docker-admin", "scan.docker-socket", "$.mcpServers.docker-admin.args[4]"),
        ("keys", "scan.sensitive-mount", "$.mcpServers.keys.args[4]"),
        ("keys", "scan.sensitive-mount", "$.mcpServers.keys.args[6]"),
        ("keys", "scan.privileged", "$.mcpServers.keys.args[7]"),
        ("keys", "scan.host-namespace", "$.mcpServers.keys.args[8]"),
    }
    assert not [f for f in report["findings"] if f["server"] == "scratch"]
    table = run_scan(tmp_path)
    assert table.returncode == 1 and "scan.docker-socket" in table.stdout
