"""A sandboxed server that closes its stdout but keeps running is ended and restarted, as an unsandboxed one is.

Under bwrap the gateway never sees end-of-file on such a server's stdout: bwrap's monitor (outside) and its pid 1
(inside) hold copies of the pipe for the sandbox's whole life. Before StdoutWatch (sandbox/bwrap.py), every call
to that server waited for its timeout. Real bwrap sandboxes; skipped (with the reason) where bwrap does not work.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from mcpward.gateway.config import parse
from mcpward.sandbox import cgroups
from mcpward.sandbox.launcher import Launcher
from mcpward.transport.stdio_link import StdioLink
from tests.conftest import FIXTURES, PYTHON
from tests.threats.sandbox_support import Gateway, need_bwrap

pytestmark = pytest.mark.timeout(120)
MUTE = FIXTURES / "mute_server.py"


@pytest.fixture(autouse=True)
def bwrap_here() -> None:
    need_bwrap()


def _text(reply: dict[str, Any]) -> str:
    assert "result" in reply, reply
    return str(reply["result"]["content"][0]["text"])


def warm_slots_work() -> bool:
    """What the warm path needs (tests/test_sandbox_warm.py): a root gateway with writable memory and pids groups."""
    writable = cgroups.writable_controllers()
    return os.geteuid() == 0 and all(writable[c][0] for c in ("memory", "pids"))


async def wait_for_log(gw: Gateway, text: str, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while gw.log().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged {count} time(s) within {within}s:\n{gw.log()[-3000:]}"
        await asyncio.sleep(0.1)


async def answer_from_new_process(gw: Gateway, old: set[str], within: float) -> str:
    """whoami from a process other than `old`: the gateway restarted the server (with its backoff)."""
    deadline = time.monotonic() + within
    while True:
        reply = await gw.call("mute__whoami", timeout=10)
        if "result" in reply and _text(reply) not in old:
            return _text(reply)
        assert time.monotonic() < deadline, f"no answer from a restarted server within {within}s: {reply}"
        await asyncio.sleep(0.2)


async def test_server_that_closes_stdout_is_ended_audited_and_restarted(tmp_path: Path) -> None:
    config = f"""
[servers.mute]
command = "{PYTHON}"
args = ["{MUTE}", "--mute-after", "1"]
timeout = 60
"""
    gw = await Gateway.launch(tmp_path, config)
    try:
        seen = {_text(await gw.call("mute__whoami"))}  # its one answer; then it closes stdout and lives on
        # Twice: the first restart is a cold start that leaves a warm slot behind, the second start uses it.
        for round_ in (1, 2):
            start = time.monotonic()
            await wait_for_log(gw, "closed its stdout but kept running; ending it", round_, within=10)
            # Well under the server's 60 s timeout: noticed by the watch, not by a call timing out.
            assert time.monotonic() - start < 10
            seen.add(await answer_from_new_process(gw, seen, within=20))
        assert len(seen) == 3
        closed = [r for r in gw.audit("sandbox.stdout-closed") if r.get("server") == "mute"]
        assert len(closed) == 2 and all("closed its stdout" in r["reason"] for r in closed)
        assert gw.log().count("server mute stopped (closed its stdout") == 2  # why it restarted, in the log
        started = [r for r in gw.audit("sandbox.started") if r.get("server") == "mute"]
        assert len(started) == 3 and started[0]["backend"] == "bwrap"
        if warm_slots_work():
            assert any(r["warm"] for r in started[1:]), started  # the warm path is watched too
    finally:
        await gw.close()


def launcher(tmp_path: Path, code: str) -> Launcher:
    return Launcher(parse({"servers": {"s": {"command": "/usr/bin/python3", "args": ["-c", code],
                                             "sandbox": {"backend": "bwrap", "cache": False}}},
                           "sandbox": {"state_dir": str(tmp_path / "state"), "warm": False}}))


async def run_link(tmp_path: Path, code: str, within: float) -> tuple[str, list[dict[str, Any]], float]:
    """Start `code` sandboxed, send it one line; (why the link closed, what it delivered, seconds taken)."""
    launch = launcher(tmp_path, code)
    link = await launch.link(launch.cfg.servers["s"], 1 << 20)
    assert isinstance(link, StdioLink)
    link.shutdown_grace = 0.5
    closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    got: list[dict[str, Any]] = []
    link.on_message = got.append
    link.on_closed = closed.set_result
    await link.open()
    start = time.monotonic()
    try:
        await link.send({"jsonrpc": "2.0", "method": "notifications/go"})
        reason = await asyncio.wait_for(closed, within)
    finally:
        await link.close()
        await launch.aclose()
    return reason, got, time.monotonic() - start


# Closes fd 1 but keeps a copy at fd 7, writes a message on it 2 s later, then closes that too and lives on.
KEEPS_A_COPY = (
    "import os, sys, time\n"
    "sys.stdin.readline()\n"
    "os.dup2(1, 7)\n"
    "os.close(1)\n"
    "time.sleep(2)\n"
    "os.write(7, b'{\"jsonrpc\": \"2.0\", \"method\": \"notifications/late\"}\\n')\n"
    "os.close(7)\n"
    "time.sleep(60)\n"
)


async def test_stdout_held_on_another_descriptor_is_still_open(tmp_path: Path) -> None:
    """As with a plain pipe, the stdout ends when the server's last descriptor for it closes, not its fd 1."""
    reason, got, took = await run_link(tmp_path, KEEPS_A_COPY, within=15)
    assert reason.startswith("closed its stdout (exit code ")
    assert [m.get("method") for m in got] == ["notifications/late"]  # written after fd 1 closed, delivered
    assert 2 <= took < 10


# Exits at once, leaving a child in its own session that inherited stdout and would live for a minute.
EXITS_LEAVING_A_CHILD = (
    "import os, sys, time\n"
    "sys.stdin.readline()\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    time.sleep(60)\n"
    "    os._exit(0)\n"
    "os._exit(4)\n"
)


async def test_server_exit_ends_the_sandbox_and_its_leftovers(tmp_path: Path) -> None:
    """bwrap's pid 1 exits with the server, which ends its pid namespace: no leftover keeps stdout open."""
    reason, _got, took = await run_link(tmp_path, EXITS_LEAVING_A_CHILD, within=15)
    assert reason == "exited (exit code 4)"
    assert took < 5
