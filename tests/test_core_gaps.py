"""Gateway core gaps from the second audit: each test failed before its fix.

- an upstream that cancels its own request to the client has the question withdrawn from the client;
- a client's notifications/roots/list_changed reaches only its own upstream sessions that declared roots;
- list cursors are bound to the principal and the list, expire, and do not show the upstream cursor;
- resource updates go by (server, URI), and from a per-principal connection only to that principal;
- a URI a server stops listing stops routing to it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from mcpward.gateway import config, listing
from mcpward.gateway.catalog import Catalog
from mcpward.gateway.context import Principal, RequestContext, SilentChannel
from mcpward.gateway.core import Gateway
from mcpward.gateway.listing import Lister
from mcpward.gateway.upstream_sessions import Session
from mcpward.guards.base import GuardChain
from mcpward.protocol.jsonrpc import JsonObj, ProtocolError
from mcpward.protocol.sealing import Sealer
from tests.conftest import PYTHON
from tests.rawclient import RawStdioClient

LEGACY = "2025-11-25"

# A legacy stdio server, one process per session: it writes what it saw (its initialize capabilities,
# every notification) to a log, and its `askcancel` tool asks the client, gives up on the question,
# and answers the call.
SERVER = r'''
import json, os, sys, threading, time
ME = os.urandom(8).hex()  # pids repeat across sandboxes (each has its own pid namespace)
LOG = os.path.join(sys.argv[1], ME + ".log")  # one file per process: each may run under its own uid
lock = threading.Lock()
def send(m):
    with lock:
        sys.stdout.write(json.dumps(m) + "\n"); sys.stdout.flush()
def log(m):
    with open(LOG, "a") as f:
        f.write(json.dumps(dict(m, process=ME)) + "\n")
def askcancel(rid):
    send({"jsonrpc": "2.0", "id": 9001, "method": "elicitation/create",
          "params": {"message": "name?", "requestedSchema": {"type": "object", "properties": {}}}})
    time.sleep(0.5)
    send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9001, "reason": "gave up"}})
    time.sleep(0.3)
    send({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": "done without asking"}]}})
for line in sys.stdin:
    m = json.loads(line)
    method, rid, p = m.get("method"), m.get("id"), m.get("params") or {}
    if method is None:
        log({"response": rid})
    elif rid is None:
        log({"notification": method})
    elif method == "initialize":
        log({"initialize": p.get("capabilities")})
        send({"jsonrpc": "2.0", "id": rid, "result": {"protocolVersion": p.get("protocolVersion"),
              "capabilities": {"tools": {}}, "serverInfo": {"name": "gaps", "version": "1"}}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": rid, "result": {"tools": [
            {"name": "askcancel", "inputSchema": {"type": "object"}},
            {"name": "echo", "inputSchema": {"type": "object"}}]}})
    elif method == "tools/call" and p.get("name") == "askcancel":
        threading.Thread(target=askcancel, args=(rid,)).start()
    elif method == "tools/call":
        send({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": "echo"}]}})
    else:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no"}})
'''


async def gaps_client(tmp_path: Path, write_config: Any, capabilities: JsonObj) -> tuple[RawStdioClient, Path]:
    place = tmp_path / "server"  # bound into the sandbox read-write (the config beside it must not be)
    place.mkdir()
    place.chmod(0o777)  # a root gateway runs the server under its own uid
    script = place / "gaps_server.py"
    script.write_text(SERVER)
    c = await RawStdioClient.start(write_config(
        f'[servers.s]\ncommand = "{PYTHON}"\nargs = ["{script}", "{place}"]\ntimeout = 20\n'
        f'[servers.s.sandbox]\nrw = ["{place}"]\n'))
    init = await c.request("initialize", {"protocolVersion": LEGACY, "capabilities": capabilities,
                                          "clientInfo": {"name": "t", "version": "1"}}, modern=False)
    assert "result" in init, init
    await c.send_raw(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    assert "result" in await c.request("tools/list", modern=False)  # a tool is called once it was listed
    return c, place


def server_log(place: Path) -> list[JsonObj]:
    """What every server process saw, each line tagged with the process."""
    return [json.loads(line) for log in place.glob("*.log") for line in log.read_text().splitlines()]


async def test_an_upstream_cancelling_its_question_withdraws_it_from_the_client(tmp_path: Path,
                                                                                write_config: Any) -> None:
    c, log = await gaps_client(tmp_path, write_config, {"elicitation": {}})
    try:
        reply = await c.request("tools/call", {"name": "s__askcancel", "arguments": {}}, modern=False)
        assert reply["result"]["content"][0]["text"] == "done without asking"
        deadline = time.monotonic() + 5
        while len(c.notifications) < 2:  # the question, then its withdrawal (the result may come between)
            assert time.monotonic() < deadline, c.notifications
            await asyncio.sleep(0.05)
        asked, withdrawn = c.notifications[:2]
        assert asked["method"] == "elicitation/create" and str(asked["id"]).startswith("mcpward-")
        # Before the fix the form stayed open until the gateway's own ask timeout.
        assert withdrawn == {"jsonrpc": "2.0", "method": "notifications/cancelled",
                             "params": {"requestId": asked["id"]}}
        await asyncio.sleep(0.3)
        assert not [m for m in server_log(log) if m.get("response") == 9001]  # a cancelled request gets no answer
    finally:
        await c.close()


async def test_roots_list_changed_reaches_only_the_clients_own_sessions_with_roots(tmp_path: Path,
                                                                                   write_config: Any) -> None:
    c, log = await gaps_client(tmp_path, write_config, {"roots": {"listChanged": True}})
    try:
        assert "result" in await c.request("tools/call", {"name": "s__echo", "arguments": {}}, modern=False)
        # A modern request on the same connection declares no roots: its upstream session is another one.
        assert "result" in await c.request("tools/call", {"name": "s__echo", "arguments": {}})
        await c.send_raw(b'{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}\n')
        await asyncio.sleep(0.5)
        seen = server_log(log)
        with_roots = {m["process"] for m in seen if "initialize" in m and "roots" in (m["initialize"] or {})}
        told = {m["process"] for m in seen if m.get("notification") == "notifications/roots/list_changed"}
        assert len({m["process"] for m in seen if "initialize" in m}) >= 2
        assert len(with_roots) == 1
        assert told == with_roots  # before the fix every session, the gateway's own included, was told
    finally:
        await c.close()


# ----------------------------------------------------------------------------- list cursors
class PagedUpstream:
    """Two pages of tools; records what each call asked for."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, JsonObj]] = []

    async def capabilities_for(self, ctx: RequestContext) -> JsonObj:
        return {"tools": {}, "prompts": {}}

    async def call(self, ctx: RequestContext, method: str, params: JsonObj, hints: Any = None) -> JsonObj:
        self.seen.append((ctx.principal.key, method, params))
        if method == "tools/list" and params.get("cursor") is None:
            return {"tools": [{"name": "t1", "inputSchema": {"type": "object"}}], "nextCursor": "alice-page-2"}
        if method == "tools/list":
            return {"tools": [{"name": "t2", "inputSchema": {"type": "object"}}]}
        return {"prompts": []}


def person(name: str) -> RequestContext:
    return RequestContext(era="modern", protocol_version="2026-07-28", capabilities={}, client_info=None,
                          principal=Principal(name, "api-key"), channel=SilentChannel(), transport="http")


def paged_lister() -> tuple[Lister, PagedUpstream]:
    cfg = config.parse({"servers": {"s": {"command": "true"}}}, "test")
    up = PagedUpstream()
    return Lister({"s": up}, Catalog(cfg.servers, "__"), GuardChain(), Sealer()), up  # type: ignore[dict-item]


async def test_a_cursor_works_only_for_its_principal_and_list_and_hides_the_upstream_cursor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    lister, up = paged_lister()
    cursor = (await lister.list(person("alice"), "tools", {}))["nextCursor"]
    body = cursor.split(".")[1]
    assert b"alice-page-2" not in base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))  # opaque
    calls = len(up.seen)
    with pytest.raises(ProtocolError, match="issued to another principal") as refused:
        await lister.list(person("bob"), "tools", {"cursor": cursor})
    assert refused.value.code == -32602
    with pytest.raises(ProtocolError, match="issued for another list"):
        await lister.list(person("alice"), "prompts", {"cursor": cursor})
    assert len(up.seen) == calls  # neither reached the upstream
    second = await lister.list(person("alice"), "tools", {"cursor": cursor})
    assert [t["name"] for t in second["tools"]] == ["s__t2"]
    assert up.seen[-1] == ("api-key:alice", "tools/list", {"cursor": "alice-page-2"})
    monkeypatch.setattr(listing, "CURSOR_TTL", -1.0)
    stale = (await lister.list(person("alice"), "tools", {}))["nextCursor"]
    with pytest.raises(ProtocolError, match="invalid cursor: expired"):
        await lister.list(person("alice"), "tools", {"cursor": stale})


# --------------------------------------------------------------------------- resource routing
class ResourceUpstream:
    def __init__(self, uris: list[str]) -> None:
        self.uris = uris

    async def capabilities_for(self, ctx: RequestContext) -> JsonObj:
        return {"resources": {}}

    async def call(self, ctx: RequestContext, method: str, params: JsonObj, hints: Any = None) -> JsonObj:
        return {"resources": [{"uri": uri, "name": uri} for uri in self.uris]}


async def test_a_uri_a_server_stops_listing_stops_routing_to_it() -> None:
    cfg = config.parse({"servers": {"a": {"command": "true", "priority": 10}, "b": {"command": "true"}}}, "test")
    catalog = Catalog(cfg.servers, "__")
    a, b = ResourceUpstream(["file:///shared", "file:///a-only"]), ResourceUpstream(["file:///shared"])
    lister = Lister({"a": a, "b": b}, catalog, GuardChain(), Sealer())  # type: ignore[dict-item]
    await lister.refresh(person("alice"), "resources")
    assert catalog.resolve_uri("file:///shared") == "a" and catalog.resolve_uri("file:///a-only") == "a"
    a.uris = []
    await lister.refresh(person("alice"), "resources", ["a"])
    assert catalog.resolve_uri("file:///shared") == "b"  # before the fix: still a, until a restart
    assert catalog.resolve_uri("file:///a-only") is None
    b.uris = []
    await lister.list(person("alice"), "resources", {})  # a client's complete listing counts too
    assert catalog.resolve_uri("file:///shared") is None


async def test_resource_updates_go_by_server_and_by_principal_for_per_principal_servers() -> None:
    cfg = config.parse({"servers": {
        "a": {"command": "true"}, "other": {"command": "true"},
        "mail": {"command": "true", "principals": {"api-key:alice": {"env": {"T": "1"}},
                                                   "api-key:bob": {"env": {"T": "2"}}}}}}, "test")
    gateway = Gateway(cfg, GuardChain())
    got: list[JsonObj] = []

    async def alice_send(message: JsonObj) -> None:
        got.append(message)

    gateway.subscriptions.add_session("alice-session", alice_send, "api-key:alice")
    gateway.subscriptions.add_resource("alice-session", "a", "mail://inbox")
    gateway.subscriptions.add_resource("alice-session", "mail", "mail://box")

    def update(server: str, uri: str, principal: str | None = None) -> None:
        gateway._on_resource_updated(server, {"uri": uri, "title": f"from {server}"}, principal)

    update("other", "mail://inbox")  # same URI, another server: before the fix Alice got it
    update("mail", "mail://box", "api-key:bob")  # Bob's own connection
    update("mail", "mail://box")  # the per-principal server's shared connection speaks for nobody
    update("a", "mail://inbox")
    # Through the upstream: Alice's own connection to the per-principal server tags what it sends.
    modern = Session(peer=None, era="modern", key="modern")  # type: ignore[arg-type]
    with gateway.upstreams["mail"]._for(person("alice")) as child:
        child._on_notification(modern, {"method": "notifications/resources/updated",
                                         "params": {"uri": "mail://box", "title": "alice: 1 new"}})
    await asyncio.sleep(0.05)  # deliveries run as tasks
    assert sorted(m["params"]["title"] for m in got) == ["alice: 1 new", "from a"]
