"""The MCP Inspector CLI (@modelcontextprotocol/inspector 2.12, a TS SDK 2.x client) against the
gateway, over stdio (the Inspector launches `mcpward run`) and over HTTP (`mcpward serve`).

Upstreams: server-everything (legacy) and mcp-server-time (2026-07-28). Every invocation is one
Inspector process (~2-4 s); its JSON output on stdout is what we assert on.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    MCPWARD,
    NAME_RE,
    NODE,
    NODE_MODULES,
    HttpGateway,
    everything,
    http_gateway,
    reap,
    time_server,
    write_gateway_config,
)

INSPECTOR = NODE_MODULES / "@modelcontextprotocol" / "inspector" / "clients" / "launcher" / "build" / "index.js"
pytestmark = [
    pytest.mark.skipif(not NODE.exists(), reason=f"node 22 not found at {NODE} (run ./test to install it)"),
    pytest.mark.skipif(not INSPECTOR.exists(), reason=f"MCP Inspector CLI not installed at {INSPECTOR}"),
]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inspector")
    servers = {"everything": everything(), "time": time_server()}
    return {front: write_gateway_config(root / f"{front}.toml", servers) for front in ("stdio", "http")}


@pytest.fixture(scope="module")
def http_front(config: dict[str, Path]) -> Iterator[HttpGateway]:
    with http_gateway(config["http"], config["http"].parent / "serve.log") as gateway:
        yield gateway


class Inspector:
    """Runs `mcp-inspector --cli <target> ...` and returns its parsed JSON output."""

    def __init__(self, target: list[str], home: Path, stdio_config: Path | None) -> None:
        self.target = target
        self.home = home
        self.stdio_config = stdio_config

    def run(self, *args: str, expect_rc: int = 0) -> Any:
        env = {**os.environ, "HOME": str(self.home), "MCP_CATALOG_PATH": str(self.home / "catalog.json"),
               "PATH": f"{NODE.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        try:
            done = subprocess.run([str(NODE), str(INSPECTOR), "--cli", *self.target, *args], env=env,
                                  capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        finally:
            if self.stdio_config is not None:
                reap(self.stdio_config)  # the Inspector SIGTERMs the gateway it launched
        stderr = done.stderr.decode(errors="replace")
        assert done.returncode == expect_rc, f"inspector exited {done.returncode}:\n{stderr[-3000:]}"
        return json.loads(done.stdout) if done.stdout.strip() else None


@pytest.fixture(params=["stdio", "http"])
def inspector(request: pytest.FixtureRequest, config: dict[str, Path], tmp_path: Path) -> Inspector:
    if request.param == "stdio":
        return Inspector([str(MCPWARD), "run", "-c", str(config["stdio"])], tmp_path, config["stdio"])
    return Inspector([request.getfixturevalue("http_front").url], tmp_path, None)


def texts(result: dict[str, Any]) -> list[str]:
    return [block["text"] for block in result["content"] if block.get("type") == "text"]


def test_tools_list(inspector: Inspector) -> None:
    # --strict: exit 6 if any tool schema has an error-severity portability problem.
    tools = inspector.run("--method", "tools/list", "--strict")["tools"]
    names = [t["name"] for t in tools]
    assert {"everything__echo", "everything__get-sum", "time__get_current_time", "time__convert_time"} <= set(names)
    assert all(re.fullmatch(NAME_RE, n) for n in names), names
    assert all(n.split("__", 1)[0] in ("everything", "time") for n in names)
    echo = next(t for t in tools if t["name"] == "everything__echo")
    assert echo["inputSchema"]["required"] == ["message"]
    assert echo["annotations"]["readOnlyHint"] is True, "annotations pass through"


def test_call_legacy_upstream_tool(inspector: Inspector) -> None:
    result = inspector.run("--method", "tools/call", "--tool-name", "everything__echo", "--tool-arg", "message=hello")
    assert texts(result) == ["Echo: hello"]
    result = inspector.run("--method", "tools/call", "--tool-name", "everything__get-sum",
                           "--tool-arg", "a=19", "b=23")
    assert texts(result) == ["The sum of 19 and 23 is 42."]


def test_call_modern_upstream_tool(inspector: Inspector) -> None:
    result = inspector.run("--method", "tools/call", "--tool-name", "time__convert_time", "--tool-arg",
                           "source_timezone=UTC", "time=08:30", "target_timezone=America/New_York")
    assert not result.get("isError")
    data = result.get("structuredContent") or json.loads(texts(result)[0])
    assert data["target"]["timezone"] == "America/New_York"
    assert data["target"]["datetime"][11:16] in ("03:30", "04:30")  # EST or EDT


def test_read_resource(inspector: Inspector) -> None:
    uri = "demo://resource/static/document/features.md"
    contents = inspector.run("--method", "resources/read", "--uri", uri)["contents"]
    assert contents[0]["uri"] == uri and "Everything Server - Features" in contents[0]["text"]


def test_get_prompt(inspector: Inspector) -> None:
    result = inspector.run("--method", "prompts/get", "--prompt-name", "everything__args-prompt",
                           "--prompt-args", "city=Paris")
    assert [m["content"]["text"] for m in result["messages"]] == ["What's weather in Paris?"]
