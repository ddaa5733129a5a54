"""Gateway process lifecycle with real upstream processes: era probing of slow starters, and
no upstream process outliving the gateway however the gateway is ended.

Upstreams that ignore stdin EOF are the interesting case: server-everything does once a client
declared `roots`, and `slow_server.py --ignore-eof` does always. Only a signal ends them, and the
gateway starts every upstream in its own session, so nobody else will send one: the gateway must,
on stdin EOF, on SIGTERM (SDK clients send it 2 s after closing the server's stdin, the same grace
the gateway gives its upstreams, so the gateway is usually still shutting down) and even when it
is killed outright.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    MCPWARD,
    MODERN,
    alive,
    descendants,
    http_gateway,
    kill_survivors,
    live_client,
    slow_server,
    stdio_gateway,
    tagged_pids,
    text_of,
    time_server,
    write_gateway_config,
)


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return {p for p in pids if alive(p)}


class RawStdioGateway:
    """`mcpward run` on raw pipes: a legacy client that sends exactly what the test says."""

    def __init__(self, config: Path, log: Path) -> None:
        self._log = log.open("wb")
        self.proc = subprocess.Popen([str(MCPWARD), "run", "-c", str(config)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log)
        self.ids = 0

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.ids += 1
        self.proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": self.ids, "method": method,
                                          "params": params or {}}).encode() + b"\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + 30
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"no answer to {method} within 30 s")
            message: dict[str, Any] = json.loads(self.proc.stdout.readline())
            if message.get("id") == self.ids and "method" not in message:
                return message

    def initialize(self) -> None:
        self.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                    "clientInfo": {"name": "e2e-raw", "version": "0"}})
        assert self.proc.stdin is not None
        self.proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        self.proc.stdin.flush()

    def children(self) -> set[int]:
        return descendants(self.proc.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()


@pytest.fixture
def eof_ignoring_config(tmp_path: Path) -> Path:
    return write_gateway_config(tmp_path / "mcpward.toml", {"stubborn": slow_server("--ignore-eof")})


def _started_gateway(config: Path, log: Path) -> tuple[RawStdioGateway, set[int]]:
    gateway = RawStdioGateway(config, log)
    gateway.initialize()
    reply = gateway.request("tools/call", {"name": "stubborn__echo", "arguments": {"text": "up"}})
    assert reply["result"]["content"][0]["text"] == "up"
    children = gateway.children()
    assert children, "the upstream should be a child of the gateway"
    return gateway, children


# ------------------------------------------------------------------------- shutdown paths
def _close_stdin(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()  # a patient client: close stdin and wait


ENDINGS: dict[str, Callable[[subprocess.Popen[bytes]], None]] = {
    "stdin-close": _close_stdin,
    "sigterm": lambda proc: proc.send_signal(signal.SIGTERM),
    "sigkill": lambda proc: proc.kill(),  # no chance to clean up: PR_SET_PDEATHSIG must do it
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_stdio_gateway_takes_its_upstreams_along(ending: str, eof_ignoring_config: Path, tmp_path: Path) -> None:
    gateway, children = _started_gateway(eof_ignoring_config, tmp_path / "run.log")
    try:
        ENDINGS[ending](gateway.proc)
        gateway.proc.wait(15)
        leaked = wait_gone(children, 5)
        assert not leaked, f"upstream pids {sorted(leaked)} outlived `mcpward run` after {ending}"
    finally:
        gateway.close()
        kill_survivors(children)


def test_sdk_client_exit_leaves_no_upstream_running(eof_ignoring_config: Path) -> None:
    """The everyday case: an SDK client closes stdin, waits 2 s, then SIGTERMs `mcpward run`."""
    children: set[int] = set()
    try:
        with live_client(stdio_gateway(eof_ignoring_config), "legacy", "stdio") as live:  # no reaping here
            assert text_of(live.run(live.client.call_tool("stubborn__echo", {"text": "x"}))) == "x"
            children = tagged_pids(eof_ignoring_config)
            assert children
        leaked = wait_gone(children, 5)
        assert not leaked, f"upstream pids {sorted(leaked)} outlived the gateway"
    finally:
        kill_survivors(children)


def test_http_gateway_cleans_up_on_sigterm(eof_ignoring_config: Path, tmp_path: Path) -> None:
    with http_gateway(eof_ignoring_config, tmp_path / "serve.log") as gateway:
        with live_client(gateway.url, "legacy", "http") as live:
            assert text_of(live.run(live.client.call_tool("stubborn__echo", {"text": "up"}))) == "up"
        children = descendants(gateway.proc.pid)
        assert children
        survivors = gateway.stop()  # SIGTERM, then reports (and kills) children that outlived it
    assert not survivors, f"upstream pids {sorted(survivors)} outlived `mcpward serve` after SIGTERM"


# ---------------------------------------------------------------------------- era probing
@pytest.mark.parametrize("mode", ["legacy", MODERN])
def test_modern_server_slower_than_the_probe_timeout(tmp_path: Path, mode: str) -> None:
    # mcp-server-time needs ~1 s to import the SDK; with 0.1 s the probe always times out. With the
    # default 5 s this happened for real when five upstreams started together on 2 cores.
    config = write_gateway_config(tmp_path / "mcpward.toml", {"time": time_server()}, probe_timeout=0.1)
    with live_client(stdio_gateway(config), mode, "stdio", reap_config=config) as live:
        names = {t.name for t in live.run(live.client.list_tools()).tools}
        assert "time__get_current_time" in names, "the slow server's tools are missing"
        result = live.run(live.client.call_tool("time__get_current_time", {"timezone": "UTC"}))
        assert not result.is_error and '"timezone": "UTC"' in text_of(result)
