"""T32: an upstream never gets a capability the client did not declare.

Shown twice: the conformance check `input-required-result-capability-check` through the
gateway (a modern upstream), and a legacy upstream that pushes sampling to a client that
never declared it, which the gateway refuses with -32021 instead of passing on.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx

from tests.conftest import NODE_BIN, fixture_server, need_node, toml_list
from tests.threats.mcp_http import LEGACY_PUSHER, call


def test_conformance_capability_check_passes_through_gateway(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = need_node()
    cmd = fixture_server()
    url = serve_gateway(f'[servers.fixture]\ncommand = "{cmd[0]}"\nargs = {toml_list(cmd[1:])}\nprefix = ""\n')
    env = dict(os.environ, PATH=f"{NODE_BIN}:{os.environ.get('PATH', '')}")
    proc = subprocess.run([str(node), str(NODE_BIN / "conformance"), "server", "--url", url, "--scenario",
                           "input-required-result-capability-check", "--spec-version", "2026-07-28",
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120, env=env)
    checks = [c for f in (tmp_path / "out").glob("*/checks.json") for c in json.loads(f.read_text())]
    assert checks and all(c["status"] == "SUCCESS" for c in checks), proc.stdout[-2000:]


def test_legacy_push_for_an_undeclared_capability_is_refused(serve_gateway) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway(LEGACY_PUSHER)
    with httpx.Client(trust_env=False, timeout=30) as http:
        _, reply = call(http, url, "tools/call", {"name": "legacy__sample", "arguments": {"prompt": "x"}}, caps={})
    result = reply["result"]
    assert "inputRequests" not in result  # the client was never asked for sampling it did not declare
    pushed_back = json.loads(result["content"][0]["text"])  # what the server got back for its push
    assert pushed_back["code"] == -32021 and pushed_back["data"] == {"requiredCapabilities": {"sampling": {}}}
