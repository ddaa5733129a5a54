"""One gateway in front of five real reference servers, driven by the SDK client.

Upstreams: server-everything, server-filesystem (tmp dir), server-memory (tmp file) — legacy,
TS SDK — and mcp-server-time, mcp-server-git (tmp repo) — 2026-07-28, Python SDK.
Each test runs four ways: {stdio front, HTTP front} x {legacy client, 2026-07-28 client}.
A connection is shared by the tests of one (front, mode) pair.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.types import PromptReference

from .conftest import (
    NAME_RE,
    HttpGateway,
    LiveClient,
    combos,
    everything,
    filesystem,
    git_server,
    http_gateway,
    live_client,
    make_git_repo,
    memory,
    needs_node,
    sandbox_owned,
    stdio_gateway,
    text_of,
    time_server,
    write_gateway_config,
)

pytestmark = [needs_node]
SERVERS = ("everything", "filesystem", "memory", "time", "git")


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


class Peers:
    def __init__(self, root: Path) -> None:
        # Each server's directory is declared read-write in its sandbox and owned by its uid.
        self.files = sandbox_owned(_mkdir(root / "files"), "filesystem")
        self.memory_file = sandbox_owned(_mkdir(root / "memory"), "memory") / "memory.jsonl"
        self.repo = sandbox_owned(make_git_repo(root / "repo"), "git")
        servers = {
            "everything": everything(),
            "filesystem": filesystem(self.files),
            "memory": memory(self.memory_file),
            "time": time_server(),
            "git": git_server(self.repo),
        }
        # One config per front: the same servers, but each front's processes are told apart.
        self.config = {front: write_gateway_config(root / f"{front}.toml", servers) for front in ("stdio", "http")}


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Peers:
    return Peers(tmp_path_factory.mktemp("peers"))


@pytest.fixture(scope="module")
def http_front(peers: Peers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpGateway]:
    with http_gateway(peers.config["http"], tmp_path_factory.mktemp("logs") / "serve.log") as gateway:
        yield gateway


@pytest.fixture(scope="module")
def live(request: pytest.FixtureRequest, peers: Peers) -> Iterator[LiveClient]:
    front, mode = request.param
    if front == "stdio":
        config = peers.config["stdio"]
        with live_client(stdio_gateway(config), mode, front, reap_config=config) as client:
            yield client
    else:
        gateway: HttpGateway = request.getfixturevalue("http_front")
        with live_client(gateway.url, mode, front) as client:
            yield client


def call(live: LiveClient, tool: str, args: dict[str, Any]) -> Any:
    result = live.run(live.client.call_tool(tool, args))
    assert not result.is_error, f"{tool} failed: {text_of(result)}"
    return result


def unique(live: LiveClient) -> str:
    return f"{live.front}-{live.mode}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------ listing
@pytest.mark.parametrize("live", combos(), indirect=True)
def test_tools_from_every_server_are_namespaced(live: LiveClient) -> None:
    tools = live.run(live.client.list_tools()).tools
    names = [t.name for t in tools]
    assert len(names) == len(set(names)), "duplicate tool names"
    bad = [n for n in names if not re.fullmatch(NAME_RE, n)]
    assert not bad, f"names outside {NAME_RE}: {bad}"
    by_server = {s: {n.split("__", 1)[1] for n in names if n.startswith(f"{s}__")} for s in SERVERS}
    assert {"echo", "get-sum", "trigger-long-running-operation"} <= by_server["everything"]
    assert {"read_text_file", "write_file", "list_directory"} <= by_server["filesystem"]
    assert {"create_entities", "open_nodes", "read_graph"} <= by_server["memory"]
    assert {"get_current_time", "convert_time"} == by_server["time"]
    assert {"git_status", "git_log", "git_diff"} <= by_server["git"]
    assert all("__" in n and n.split("__", 1)[0] in SERVERS for n in names), "an un-namespaced tool leaked"
    schema = next(t for t in tools if t.name == "filesystem__write_file").input_schema
    assert schema["required"] == ["path", "content"], "the upstream schema must pass through"


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_prompts_and_resources_are_listed(live: LiveClient) -> None:
    prompts = {p.name for p in live.run(live.client.list_prompts()).prompts}
    assert {"everything__simple-prompt", "everything__args-prompt"} <= prompts
    assert all(re.fullmatch(NAME_RE, p) for p in prompts)
    uris = {str(r.uri) for r in live.run(live.client.list_resources()).resources}
    assert "demo://resource/static/document/features.md" in uris, "resources keep their upstream URIs"
    templates = {t.uri_template for t in live.run(live.client.list_resource_templates()).resource_templates}
    assert "demo://resource/dynamic/text/{resourceId}" in templates


# --------------------------------------------------------------------- one call per server
@pytest.mark.parametrize("live", combos(), indirect=True)
def test_everything_echo_and_sum(live: LiveClient) -> None:
    assert text_of(call(live, "everything__echo", {"message": "héllo gateway"})) == "Echo: héllo gateway"
    assert "The sum of 2 and 40 is 42." in text_of(call(live, "everything__get-sum", {"a": 2, "b": 40}))


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_filesystem_write_then_read(live: LiveClient, peers: Peers) -> None:
    name = f"{unique(live)}.txt"
    body = f"written through mcpward by {name}\nsecond line\n"
    call(live, "filesystem__write_file", {"path": str(peers.files / name), "content": body})
    assert (peers.files / name).read_text() == body, "the write must reach the real file"
    assert text_of(call(live, "filesystem__read_text_file", {"path": str(peers.files / name)})) == body
    listing = text_of(call(live, "filesystem__list_directory", {"path": str(peers.files)}))
    assert f"[FILE] {name}" in listing


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_filesystem_refuses_paths_outside_its_root(live: LiveClient, peers: Peers) -> None:
    result = live.run(live.client.call_tool("filesystem__read_text_file", {"path": "/usr/share/outside.txt"}))
    assert result.is_error and "outside allowed directories" in text_of(result).lower()


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_memory_create_then_open(live: LiveClient, peers: Peers) -> None:
    entity = f"entity-{unique(live)}"
    call(live, "memory__create_entities", {"entities": [
        {"name": entity, "entityType": "test", "observations": ["made by the e2e suite"]}]})
    opened = json.loads(text_of(call(live, "memory__open_nodes", {"names": [entity]})))
    assert opened == {"entities": [{"name": entity, "entityType": "test", "observations": ["made by the e2e suite"]}],
                      "relations": []}
    assert entity in peers.memory_file.read_text(), "memory must persist to MEMORY_FILE_PATH"


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_time_conversion(live: LiveClient) -> None:
    result = call(live, "time__convert_time",
                  {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"})
    data = result.structured_content or json.loads(text_of(result))
    assert data["target"]["timezone"] == "Asia/Tokyo"
    assert data["target"]["datetime"].endswith("T21:00:00+09:00")
    assert data["time_difference"] == "+9.0h"


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_git_status_and_log(live: LiveClient, peers: Peers) -> None:
    status = text_of(call(live, "git__git_status", {"repo_path": str(peers.repo)}))
    assert "On branch main" in status and "nothing to commit" in status
    log = text_of(call(live, "git__git_log", {"repo_path": str(peers.repo)}))
    assert "first commit" in log


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_unknown_tool_is_an_error_not_a_hang(live: LiveClient) -> None:
    with pytest.raises(Exception, match=r"(?i)unknown tool|not found"):
        live.run(live.client.call_tool("nosuch__tool", {}), timeout=10)


# ------------------------------------------------------------------ resources and prompts
@pytest.mark.parametrize("live", combos(), indirect=True)
def test_read_resource_from_everything(live: LiveClient) -> None:
    uri = "demo://resource/static/document/features.md"
    static = live.run(live.client.read_resource(uri))
    assert [str(c.uri) for c in static.contents] == [uri]
    assert "Everything Server - Features" in text_of(static)
    dynamic = live.run(live.client.read_resource("demo://resource/dynamic/text/7"))  # from a URI template
    assert text_of(dynamic).startswith("Resource 7: This is a plaintext resource")


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_get_prompt_from_everything(live: LiveClient) -> None:
    simple = live.run(live.client.get_prompt("everything__simple-prompt"))
    assert text_of(simple) == "This is a simple prompt without arguments."
    args = live.run(live.client.get_prompt("everything__args-prompt", {"city": "Paris", "state": "TX"}))
    assert text_of(args) == "What's weather in Paris, TX?"


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_prompt_argument_completion(live: LiveClient) -> None:
    ref = PromptReference(type="ref/prompt", name="everything__completable-prompt")
    done = live.run(live.client.complete(ref, {"name": "department", "value": "Eng"}))
    assert "Engineering" in done.completion.values


# ------------------------------------------------------------------------ identity
@pytest.mark.parametrize("live", combos(), indirect=True)
def test_results_do_not_name_the_upstream_server(live: LiveClient) -> None:
    # mcp-server-time stamps _meta io.modelcontextprotocol/serverInfo = mcp-time on its results.
    result = call(live, "time__get_current_time", {"timezone": "UTC"})
    stamp = (result.meta or {}).get("io.modelcontextprotocol/serverInfo")
    if live.modern:
        assert stamp is not None and stamp["name"] == "mcpward", f"a modern result must name the gateway: {stamp}"
    else:
        assert stamp is None, f"upstream identity leaked to a legacy client: {stamp}"
