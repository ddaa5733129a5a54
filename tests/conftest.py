"""Shared test helpers: paths to real peers, free ports, and gateways run as processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
PYTHON = sys.executable
MCPWARD = str(Path(PYTHON).parent / "mcpward")
NODE_BIN = ROOT / ".tools" / "node" / "node_modules" / ".bin"
IN_CI = os.environ.get("CI") == "true"


def need_node() -> Path:
    """Node 22 from .tools (installed by the test script); CI must have it, so no skip there."""
    node = NODE_BIN / "node"
    if not node.exists():
        if IN_CI:
            pytest.fail("Node 22 is missing in CI: .ci/run must install it")
        pytest.skip("Node 22 not installed in .tools/node (run ./test to install it)")
    return node


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on port {port} within {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def fixture_server(*extra: str) -> list[str]:
    return [PYTHON, str(FIXTURES / "everything_server.py"), *extra]


# The gateway-core tests check transparency, so they run every tool under the permit-all policy
# and show destructive tools without a first approval, unless a test sets those tables itself;
# every other default guard (pinning and the poisoning scanner included) stays on.
PERMIT_ALL = '\n[policy]\nbase = "permit-all"\n'
NO_HOLD = '\n[integrity]\nhold_destructive = false\n'
SANDBOX_STATE = '\n[sandbox]\nstate_dir = "sandbox-state"\n'  # caches beside the test's config, not in $HOME
# The default bucket (100/min, burst 20) would throttle tests that are about something else, and
# tests of failing tools would trip the default breakers; the limits tests set their own [limits].
NO_RATE_LIMIT = '\n[limits]\nrate = 1000000\nburst = 100000\n\n[limits.breaker]\nenabled = false\n'


def with_policy(config_text: str) -> str:
    if "[policy]" not in config_text:
        config_text += PERMIT_ALL
    if "[integrity]" not in config_text:
        config_text += NO_HOLD
    if "[sandbox]" not in config_text:
        config_text += SANDBOX_STATE
    if "[limits" not in config_text:
        config_text += NO_RATE_LIMIT
    return config_text


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


@pytest.fixture
def write_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    def write(text: str, name: str = "mcpward.toml") -> Path:
        path = tmp_path / name
        path.write_text(with_policy(text))
        return path

    return write


@pytest.fixture
def serve_gateway(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """Start `mcpward serve` on a free port; yields a function(config_text) -> base URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(config_text: str) -> str:
        port = free_port()
        path = tmp_path / f"gw-{port}.toml"
        path.write_text(f"[gateway]\nport = {port}\n" + with_policy(config_text))
        with open(tmp_path / f"gw-{port}.log", "wb") as log:  # the child keeps its own copy of the fd
            proc = subprocess.Popen([MCPWARD, "serve", "-c", str(path)], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        procs.append(proc)
        wait_port(port, proc)
        return f"http://127.0.0.1:{port}/mcp"

    yield start
    for proc in procs:
        stop(proc)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Every audit record made in-process during the test, as (event, fields)."""
    from mcpward.audit import events

    out: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(events, "record", lambda event, **fields: out.append((event, fields)))
    return out
