"""End-to-end harness: real MCP peers behind a real `mcpward` process.

* Configs are written into tmp dirs; every HTTP port comes from binding port 0.
* `mcpward serve` runs as a subprocess (`HttpGateway`), `mcpward run` is launched by the
  SDK's stdio client (`stdio_gateway`).
* SDK clients live in a background event loop (`LiveClient`, an anyio blocking portal), so
  one connection can be shared by the tests of a module, and each await is time-bounded.
* Every upstream carries an env tag naming its config file, so teardown can kill exactly what a
  gateway started and left behind (by pid) without touching anyone else's processes; the leak
  itself is asserted in test_process_lifecycle.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import pytest
from mcp import Client, StdioServerParameters

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the project venv's bin (mcpward, mcp-server-*)
MCPWARD = BIN / "mcpward"
NODE_MODULES = ROOT / ".tools" / "node" / "node_modules"
NODE = NODE_MODULES / ".bin" / "node"
NPM_SERVERS = NODE_MODULES / "@modelcontextprotocol"
FIXTURE = ROOT / "tests" / "fixtures" / "everything_server.py"
SLOW_SERVER = Path(__file__).resolve().parent / "slow_server.py"
MODERN = "2026-07-28"
NAME_RE = r"[A-Za-z0-9_.-]{1,128}"
CALL_TIMEOUT = 30.0
# Python servers import `mcp` (~1 s alone); several starting at once on 2 cores take longer than
# the gateway's 5 s default probe. The probe-timeout fallback itself is tested separately.
PROBE_TIMEOUT = 60
TAG = "MCPWARD_E2E_CONFIG"

needs_node = pytest.mark.skipif(not NODE.exists(), reason=f"node 22 not found at {NODE}")
T = TypeVar("T")


# --------------------------------------------------------------------------- config
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def npm_server(package: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    return {"command": str(NODE), "args": [str(NPM_SERVERS / package / "dist" / "index.js"), *args],
            **({"env": env} if env else {})}


def everything() -> dict[str, Any]:
    return npm_server("server-everything", "stdio")


def sandbox_owned(path: Path, server: str) -> Path:
    """A directory a sandboxed server may write: a root gateway runs `server` as its own uid."""
    if os.geteuid() == 0:
        from mcpward.sandbox.settings import SandboxSettings

        uid = SandboxSettings().uid_for(server)
        for p in [path, *path.rglob("*")]:
            os.lchown(p, uid, uid)
    return path


def filesystem(root: Path) -> dict[str, Any]:
    return {**npm_server("server-filesystem", str(root)), "sandbox": {"rw": [str(root)]}}


def memory(path: Path) -> dict[str, Any]:
    return {**npm_server("server-memory", env={"MEMORY_FILE_PATH": str(path)}),
            "sandbox": {"rw": [str(path.parent)]}}


def time_server() -> dict[str, Any]:
    return {"command": str(BIN / "mcp-server-time"), "args": ["--local-timezone", "UTC"]}


def git_server(repo: Path) -> dict[str, Any]:
    return {"command": str(BIN / "mcp-server-git"), "args": ["--repository", str(repo)],
            "sandbox": {"rw": [str(repo)]}}


def fixture_server() -> dict[str, Any]:
    return {"command": sys.executable, "args": [str(FIXTURE)]}


def slow_server(*args: str) -> dict[str, Any]:
    return {"command": sys.executable, "args": [str(SLOW_SERVER), *args]}


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # strings, numbers, arrays: JSON spelling is valid TOML here


def write_gateway_config(path: Path, servers: dict[str, dict[str, Any]], **gateway: Any) -> Path:
    """Write a gateway config; every server gets env TAG=<this path>, so `tagged_pids(path)` finds
    the upstreams started from this config even after their gateway is gone."""
    gateway.setdefault("probe_timeout", PROBE_TIMEOUT)
    lines = ["[gateway]", *(f"{k} = {_toml(v)}" for k, v in gateway.items())]
    for name, table in servers.items():
        table = {**table, "env": {**table.get("env", {}), TAG: str(path)}}
        lines += ["", f"[servers.{name}]", *(f"{k} = {_toml(v)}" for k, v in table.items())]
    # Transparency tests: every tool callable and destructive ones shown without a first approval;
    # the other default guards (pinning and the scanner included) stay on.
    lines += ["", "[policy]", 'base = "permit-all"', "", "[integrity]", "hold_destructive = false",
              "", "[sandbox]", f"state_dir = {_toml(str(path.parent / 'sandbox-state'))}",
              "", "[limits]", "rate = 1000000", "burst = 100000"]  # transparency, not the default bucket
    path.write_text("\n".join(lines) + "\n")
    return path


def make_git_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@example.invalid",
           "GIT_COMMITTER_NAME": "e2e", "GIT_COMMITTER_EMAIL": "e2e@example.invalid"}
    for cmd in (["init", "-q", "-b", "main"], ["add", "README.md"], ["commit", "-q", "-m", "first commit"]):
        if cmd[0] == "add":
            (path / "README.md").write_text("hello from the e2e repo\n")
        subprocess.run(["git", *cmd], cwd=path, env=env, check=True, timeout=30)
    return path


# -------------------------------------------------------------------------- processes
def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> set[int]:
    """Every live process below `root` (children first found by parent pid)."""
    found: set[int] = set()
    frontier = {root}
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    while frontier:
        frontier = {p for p in pids if _ppid(p) in frontier} - found
        found |= frontier
    return found


def tagged_pids(config: Path) -> set[int]:
    """Processes started from `config` (see write_gateway_config), wherever they are now.

    Only processes running one of the servers this suite configures are looked at (by command
    line), and their environment is only searched for the tag."""
    needle = f"{TAG}={config}\0".encode()
    ours = tuple(str(p).encode() for p in (NODE_MODULES, BIN, FIXTURE, SLOW_SERVER))
    found = set()
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) != os.getpid():
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
                if any(prefix in cmdline for prefix in ours) and needle in Path(f"/proc/{p}/environ").read_bytes():
                    found.add(int(p))
    return {p for p in found if alive(p)}


def reap(config: Path) -> None:
    """Kill whatever the gateway started from `config` and left behind."""
    time.sleep(0.3)
    kill_survivors(tagged_pids(config))


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_survivors(pids: set[int], grace: float = 3.0) -> set[int]:
    """SIGTERM, then SIGKILL, the given pids that are still alive; returns who had survived."""
    survivors = {p for p in pids if alive(p)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(p) for p in survivors):
            time.sleep(0.05)
    return survivors


class HttpGateway:
    """`mcpward serve` as a subprocess on a free loopback port."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen([str(MCPWARD), "serve", "-c", str(config), "--port", str(self.port)],
                                     stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mcpward serve exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return  # uvicorn binds only after lifespan startup (the upstream probes) is done
            time.sleep(0.1)
        raise TimeoutError(f"mcpward serve not listening after {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> set[int]:
        """Stop the gateway like a service manager (SIGTERM); return children it left behind."""
        children = descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log_file.close()
        return kill_survivors(children | tagged_pids(self.config))


@contextlib.contextmanager
def http_gateway(config: Path, log: Path) -> Iterator[HttpGateway]:
    for attempt in range(3):
        gateway = HttpGateway(config, log.with_name(f"{log.stem}-{attempt}{log.suffix}"))
        try:
            gateway.wait_ready()
            break
        except BaseException:
            gateway.stop()
            # Another process may take the free port between our probe and uvicorn's bind.
            if attempt == 2 or "Errno 98" not in gateway.tail():
                raise
    try:
        yield gateway
    finally:
        gateway.stop()


def stdio_gateway(config: Path) -> StdioServerParameters:
    return StdioServerParameters(command=str(MCPWARD), args=["run", "-c", str(config)])


# ----------------------------------------------------------------------------- clients
@dataclass
class LiveClient:
    """An SDK `Client` running in a background event loop; `run` awaits one call, bounded."""

    client: Client
    portal: anyio.from_thread.BlockingPortal
    front: str
    mode: str
    recorder: Any = None  # whatever the test module's callbacks record into

    def run(self, call: Awaitable[T], timeout: float = CALL_TIMEOUT) -> T:
        async def bounded() -> T:
            with anyio.fail_after(timeout):
                return await call

        return self.portal.call(bounded)

    @property
    def modern(self) -> bool:
        return self.mode != "legacy"


@contextlib.contextmanager
def live_client(target: StdioServerParameters | str, mode: str, front: str,
                reap_config: Path | None = None, **client_kwargs: Any) -> Iterator[LiveClient]:
    """Connect an SDK client to `target` in a background loop. With `reap_config` (a stdio gateway's
    config), kill what that gateway started and left behind once the client has closed."""
    try:
        with anyio.from_thread.start_blocking_portal() as portal:
            client = Client(target, mode="legacy" if mode == "legacy" else MODERN, **client_kwargs)
            with portal.wrap_async_context_manager(_bounded_enter(client)) as connected:
                yield LiveClient(connected, portal, front, mode)
    finally:
        if reap_config is not None:
            reap(reap_config)


@contextlib.asynccontextmanager
async def _bounded_enter(client: Client) -> Any:
    """`async with client`, but give up if connecting takes over 120 s (a stdio gateway probes
    every upstream before it answers initialize)."""
    with anyio.CancelScope(deadline=anyio.current_time() + 120) as scope:
        async with client:
            scope.deadline = math.inf
            yield client
    if scope.cancelled_caught:
        raise TimeoutError("the client did not connect within 120 s")


def text_of(result: Any) -> str:
    """All text blocks of a tool/prompt/resource result, joined."""
    blocks = getattr(result, "content", None) or getattr(result, "contents", None) or []
    if hasattr(result, "messages"):
        blocks = [m.content for m in result.messages]
    return "\n".join(b.text for b in blocks if getattr(b, "text", None) is not None)


def combos(fronts: tuple[str, ...] = ("stdio", "http")) -> list[Any]:
    """(front, mode) params for the module-scoped, indirectly parametrized client fixtures."""
    return [pytest.param((front, mode), id=f"{front}-{mode}") for front in fronts for mode in ("legacy", "modern")]
