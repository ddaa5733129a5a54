"""Per-principal upstream connections are stopped when idle and capped in number.

A server with per-principal credentials starts one process per principal. Before, each was kept for
the gateway's whole life; now one idle for `principal_idle_timeout` is stopped (never one with a call
in flight), at most `max_principal_connections` live at once, a new principal over the cap is refused
by name when all are busy, and the principal's next call starts a new one.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from mcpward.gateway import config
from mcpward.gateway.config import ConfigError
from mcpward.gateway.context import Principal
from mcpward.gateway.peer import PeerError
from mcpward.gateway.principal_pool import EVICTED, FULL_RULE, PrincipalPool
from mcpward.gateway.upstream import Upstream, UpstreamEvents
from tests.conftest import FIXTURES, PYTHON
from tests.test_upstream_isolation import Recorder, client, shut

SERVER = str(FIXTURES / "session_server.py")


class FakeChild:
    def __init__(self, key: str) -> None:
        self.key = key
        self.stopped = False
        self.watches_resources = False

    async def stop(self) -> None:
        self.stopped = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(clock: Clock, cap: int = 2, idle: float = 60) -> PrincipalPool:
    return PrincipalPool("srv", idle, cap, FakeChild, clock)  # type: ignore[arg-type]


async def test_an_idle_child_is_stopped_and_a_later_call_gets_a_new_one(
        recorded: list[tuple[str, dict[str, Any]]]) -> None:
    clock = Clock()
    p = pool(clock)
    with p.using("api-key:alice") as first:
        pass
    clock.now += 59
    p.sweep()
    assert p.get("api-key:alice") is first  # not idle long enough yet
    clock.now += 2
    p.sweep()
    await asyncio.sleep(0)
    assert p.get("api-key:alice") is None and first.stopped
    assert (EVICTED, {"server": "srv", "principal": "api-key:alice", "reason": "idle", "idle_seconds": 61.0}) \
        in recorded
    with p.using("api-key:alice") as second:
        assert second is not first and not second.stopped
    await p.stop()


async def test_a_child_with_a_call_in_flight_or_subscriptions_is_never_evicted() -> None:
    clock = Clock()
    p = pool(clock)
    with p.using("api-key:alice") as busy:
        clock.now += 3600
        p.sweep()
        assert p.get("api-key:alice") is busy and not busy.stopped
    with p.using("api-key:bob") as watching:
        watching.watches_resources = True
    clock.now += 3600
    p.sweep()
    assert p.get("api-key:bob") is watching and p.get("api-key:alice") is None
    await p.stop()
    assert watching.stopped  # the gateway's stop still stops it


async def test_over_the_cap_the_least_recently_used_idle_child_goes_else_a_named_refusal() -> None:
    clock = Clock()
    p = pool(clock, cap=2)
    with p.using("api-key:a") as a:
        pass
    clock.now += 1
    with p.using("api-key:b"):
        pass
    clock.now += 1
    with p.using("api-key:c"):  # a is the least recently used: it makes room
        assert p.get("api-key:a") is None and p.get("api-key:b") is not None
        # b and c both in use: nothing can go
        with p.using("api-key:b"), pytest.raises(PeerError) as refused, p.using("api-key:d"):
            pass
    await asyncio.sleep(0)
    assert a.stopped
    assert refused.value.error["data"] == {"rule": FULL_RULE}
    assert f"refused by {FULL_RULE}" in refused.value.error["message"]
    assert p.get("api-key:d") is None and len(p.entries) == 2
    await p.stop()


def test_the_settings_are_validated_and_only_for_per_principal_servers() -> None:
    base = {"command": "x", "principals": {"api-key:a": {"env": {"T": "1"}}}}
    cfg = config.parse({"servers": {"s": base}})
    assert (cfg.servers["s"].principal_idle_timeout, cfg.servers["s"].max_principal_connections) == (600.0, 16)
    for key, value in (("principal_idle_timeout", 0), ("max_principal_connections", 0),
                       ("max_principal_connections", "4")):
        with pytest.raises(ConfigError, match=key):
            config.parse({"servers": {"s": {**base, key: value}}})
    with pytest.raises(ConfigError, match="per-principal"):
        config.parse({"servers": {"s": {"command": "x", "principal_idle_timeout": 30}}})


def principal_upstream(tmp_path: Path, **settings: Any) -> Upstream:
    cfg = config.parse({"sandbox": {"state_dir": str(tmp_path / "sandbox-state")},
                        "servers": {"s": {"command": PYTHON, "args": [SERVER], "timeout": 10, **settings,
                                          "principals": {"api-key:alice": {"env": {"WHO": "alice"}},
                                                         "api-key:bob": {"env": {"WHO": "bob"}}}}}}, "test")
    return Upstream(cfg.servers["s"], cfg, UpstreamEvents())


def alice(channel: Recorder) -> Any:
    ctx = client("alice", channel)
    ctx.principal = Principal("alice", "api-key")
    return ctx


def pid_of(child: Upstream) -> int:
    (session,) = child._sessions.values()
    proc = session.peer.link._proc  # type: ignore[attr-defined]
    assert proc is not None
    return int(proc.pid)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


async def test_a_principals_idle_process_is_stopped_and_restarted_on_its_next_call(tmp_path: Path) -> None:
    up = principal_upstream(tmp_path, principal_idle_timeout=1)
    channel = Recorder()
    try:
        echoed = await up.call(alice(channel), "tools/call", {"name": "echo", "arguments": {"text": "one"}})
        assert "one" in str(echoed)
        assert up._pool is not None
        child = up._pool.get("api-key:alice")
        assert child is not None
        pid = pid_of(child)
        # A call in flight for longer than the idle timeout keeps it.
        slow = await up.call(alice(channel), "tools/call", {"name": "slow", "arguments": {}})
        assert "slow done" in str(slow) and up._pool.get("api-key:alice") is child
        deadline = time.monotonic() + 10  # the pool's own sweeper stops it (every 0.5 s here)
        while not gone(pid):
            assert time.monotonic() < deadline, "the idle process was not stopped"
            await asyncio.sleep(0.1)
        assert up._pool.get("api-key:alice") is None
        again = await up.call(alice(channel), "tools/call", {"name": "echo", "arguments": {"text": "two"}})
        assert "two" in str(again)
        fresh = up._pool.get("api-key:alice")
        assert fresh is not None and pid_of(fresh) != pid
    finally:
        await shut(up)
