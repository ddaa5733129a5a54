"""Pagination across servers, lazy start, stderr capture, and `mcpward check`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import FIXTURES, MCPWARD, PYTHON
from tests.rawclient import RawStdioClient

FAULT = FIXTURES / "fault_server.py"


def config(write_config, start: str = "eager") -> Path:  # type: ignore[no-untyped-def]
    return write_config(f"""
[servers.one]
command = "{PYTHON}"
args = ["{FAULT}", "--page-size", "2"]
start = "{start}"
[servers.two]
command = "{PYTHON}"
args = ["{FAULT}", "--page-size", "4"]
start = "{start}"
""")


async def test_pagination_walks_every_server_with_an_opaque_cursor(write_config) -> None:  # type: ignore[no-untyped-def]
    client = await RawStdioClient.start(config(write_config))
    try:
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            reply = await client.request("tools/list", {"cursor": cursor} if cursor else {})
            seen += [t["name"] for t in reply["result"]["tools"]]
            pages += 1
            cursor = reply["result"].get("nextCursor")
            if cursor is None:
                break
            assert cursor.startswith("mcpward1.")  # sealed: neither server index nor upstream cursor readable
            assert pages < 20
        tools = ("echo", "crash", "hang", "flood", "huge", "pid", "remember", "recall", "fail", "slow", "malformed",
                 "surrogate", "shapeless")
        expected = [f"{s}__{t}" for s in ("one", "two") for t in tools]
        assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))
        assert pages > 2
        reply = await client.request("tools/list", {"cursor": cursor or "mcpward1.e30.forged"})
        assert reply["error"]["code"] == -32602 and "cursor" in reply["error"]["message"]
    finally:
        await client.close()


async def test_an_unprefixed_server_paging_its_tools_keeps_every_page_callable(write_config) -> None:  # type: ignore[no-untyped-def]
    # Each page used to replace the one before in the name map: after listing, the tools of the first
    # pages of an unprefixed server were unknown names.
    client = await RawStdioClient.start(write_config(f"""
[servers.one]
command = "{PYTHON}"
args = ["{FAULT}", "--page-size", "2"]
prefix = ""
"""))
    try:
        cursor, seen = None, []
        for _ in range(20):
            reply = await client.request("tools/list", {"cursor": cursor} if cursor else {})
            seen += [t["name"] for t in reply["result"]["tools"]]
            cursor = reply["result"].get("nextCursor")
            if cursor is None:
                break
        assert "echo" in seen and "shapeless" in seen
        for tool, args in (("echo", {"text": "first page"}), ("pid", {})):  # pages 1 and 3
            reply = await client.call(tool, args)
            assert "result" in reply and not reply["result"].get("isError"), reply
    finally:
        await client.close()


async def test_lazy_servers_start_on_first_use(write_config, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = await RawStdioClient.start(config(write_config, start="lazy"))
    try:
        reply = await client.call("two__pid")
        assert int(reply["result"]["content"][0]["text"]) > 0
    finally:
        await client.close()


def test_check_json_reports_servers_and_tools(write_config) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run([MCPWARD, "check", "-c", str(config(write_config)), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    by_name = {s["name"]: s for s in report["servers"]}
    assert by_name["one"]["era"] == "modern" and by_name["one"]["transport"] == "stdio"
    assert "one__echo" in by_name["one"]["tools"] and "two__pid" in by_name["two"]["tools"]
    assert report["http"] == "http://127.0.0.1:8811/mcp"


def test_check_reports_a_server_that_cannot_start(write_config) -> None:  # type: ignore[no-untyped-def]
    path = write_config('[servers.ghost]\ncommand = "/nonexistent/server"\n')
    proc = subprocess.run([MCPWARD, "check", "-c", str(path), "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "cannot start server 'ghost': No such file or directory" in json.loads(proc.stdout)["servers"][0]["error"]


async def test_upstream_stderr_is_captured_per_server(write_config, tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "gw.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([MCPWARD, "run", "-c", str(config(write_config))], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err)
        message = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}}}
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(message).encode() + b"\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["id"] == 1
        proc.stdin.close()
        proc.wait(20)
    text = log.read_text()
    assert "mcpward.server.one: fault server got tools/list" in text
    assert "mcpward.server.two: fault server got server/discover" in text
