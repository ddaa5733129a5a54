"""Warm slots (sandbox/warm.py): a restart's sandbox is born inside its cgroups, with limits exactly as strong.

Real bwrap sandboxes started through the launcher, twice per server: the first start takes the cold path and
prepares a slot; the second must use it. Skips (with the reason) when this is not a root run with writable
memory/pids cgroups and a working bwrap.
"""

from __future__ import annotations

import asyncio
import os
import resource
from pathlib import Path
from typing import Any

import pytest

from mcpward.audit import events
from mcpward.gateway.config import parse
from mcpward.sandbox import cgroups, probe, warm
from mcpward.sandbox.bwrap import BwrapSpawner
from mcpward.sandbox.launcher import Launcher
from mcpward.transport.base import LinkError

pytestmark = pytest.mark.timeout(120)
STREAM_LIMIT = (1 << 20) + 1
HOG = ("chunks = []\n"
       "for i in range(100):\n"
       "    chunks.append(bytearray(b'x') * (10 * 1024 * 1024))\n"
       "print('survived', flush=True)\n")
# Forks until refused, holding every child; prints how many it got. Bounded even if no limit held.
FORKER = ("import os, sys, time\n"
          "n = 0\n"
          "for _ in range(400):\n"
          "    try:\n"
          "        pid = os.fork()\n"
          "    except OSError:\n"
          "        break\n"
          "    if pid == 0:\n"
          "        time.sleep(30)\n"
          "        os._exit(0)\n"
          "    n += 1\n"
          "print(n, flush=True)\n")


@pytest.fixture(scope="module", autouse=True)
def need_warm_host() -> None:
    if os.geteuid() != 0:
        pytest.skip("warm slots need a root gateway (cgroup v1 groups and a per-server uid)")
    caps = probe.probe()
    if not caps.bwrap_works:
        pytest.skip(f"bubblewrap does not work here: {caps.bwrap_problem}")
    writable = cgroups.writable_controllers()
    for controller in ("memory", "pids"):
        ok, why = writable[controller]
        if not ok:
            pytest.skip(f"cgroup {controller} controller not writable here: {why}")


def launcher(tmp_path: Path, servers: dict[str, dict[str, Any]], warm_on: bool = True) -> Launcher:
    return Launcher(parse({"servers": servers,
                           "sandbox": {"state_dir": str(tmp_path / "state"), "warm": warm_on}}))


def python_server(code: str, **limits: Any) -> dict[str, Any]:
    return {"command": "/usr/bin/python3", "args": ["-c", code],
            "sandbox": {"backend": "bwrap", "cache": False, "limits": limits}}


async def spawn(launch: Launcher, name: str) -> tuple[BwrapSpawner, asyncio.subprocess.Process]:
    spawner = await launch._spawner(launch.cfg.servers[name], STREAM_LIMIT)
    assert isinstance(spawner, BwrapSpawner)
    proc = await spawner.spawn(STREAM_LIMIT)
    return spawner, proc


async def finish(spawner: BwrapSpawner, proc: asyncio.subprocess.Process) -> tuple[int, str]:
    out, _err = await asyncio.wait_for(proc.communicate(), 60)
    await spawner.cleanup()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def ready_slot(launch: Launcher) -> None:
    """Wait until the refill after a start has a slot ready."""
    assert launch.warm is not None
    for _ in range(400):
        if launch.warm.ready:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("no warm slot was prepared after a start")


def started_records(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    original = events.record

    def record(event: str, **fields: Any) -> None:
        if event == "sandbox.started":
            seen.append(fields)
        original(event, **fields)

    monkeypatch.setattr(events, "record", record)
    return seen


async def test_second_start_is_born_in_its_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = started_records(monkeypatch)
    launch = launcher(tmp_path, {"echo": python_server("import sys; print(sys.stdin.readline().strip())",
                                                       pids=64, memory="256M")})
    try:
        spawner, proc = await spawn(launch, "echo")
        proc.stdin.write(b"cold\n")  # type: ignore[union-attr]
        assert await finish(spawner, proc) == (0, "cold\n")
        await ready_slot(launch)
        spawner, proc = await spawn(launch, "echo")
        barrier_groups = spawner.on_child.__self__.cgroups  # type: ignore[attr-defined]
        assert barrier_groups is not None
        # bwrap itself (the stub's pid, exec'd) is a member: everything it clones is born inside
        assert barrier_groups.holds(proc.pid)
        pids_max = int((barrier_groups.groups["pids"] / "pids.max").read_text())
        assert pids_max == 64 + 1  # bwrap's monitor process is counted; the server keeps its 64
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert set(uid_line.split()[1:]) == {str(launch.settings.uid_for("echo"))}
        proc.stdin.write(b"warm\n")  # type: ignore[union-attr]
        assert await finish(spawner, proc) == (0, "warm\n")
        assert [r["warm"] for r in seen] == [False, True]
    finally:
        await launch.aclose()


async def test_memory_limit_holds_in_a_warm_start(tmp_path: Path) -> None:
    launch = launcher(tmp_path, {"hog": python_server(HOG, memory="64M")})
    try:
        for expect_warm in (False, True):
            if expect_warm:
                await ready_slot(launch)
            spawner, proc = await spawn(launch, "hog")
            barrier = spawner.on_child.__self__  # type: ignore[attr-defined]
            assert (barrier.warm is not None and barrier.warm.launched) == expect_warm
            groups = barrier.cgroups
            assert groups is not None
            out, _err = await asyncio.wait_for(proc.communicate(), 60)
            stats = groups.stats()
            await spawner.cleanup()
            assert "survived" not in out.decode()
            assert proc.returncode != 0
            assert stats.get("oom_kill", 0) >= 1
            assert stats["memory_peak"] <= 64 * 1024 * 1024
    finally:
        await launch.aclose()


async def second_fork_count(tmp_path: Path, name: str, warm_on: bool) -> tuple[int, bool]:
    """Run the forker twice under one launcher: (children the second run got, whether it used a warm slot)."""
    launch = launcher(tmp_path / name, {name: python_server(FORKER, pids=24)}, warm_on=warm_on)
    try:
        for round_ in range(2):
            if round_ and warm_on:
                await ready_slot(launch)
            spawner, proc = await spawn(launch, name)
            barrier = spawner.on_child.__self__  # type: ignore[attr-defined]
            code, out = await finish(spawner, proc)
            assert code == 0, out
    finally:
        await launch.aclose()
    return int(out.strip()), barrier.warm is not None and barrier.warm.launched


async def test_pids_limit_is_the_same_cold_and_warm(tmp_path: Path) -> None:
    # Second runs on both sides, each under its own uid: whatever the first run leaves behind (on this VM, PID 1
    # does not reap bwrap's orphaned init, which then counts against the uid's RLIMIT_NPROC) is the same for both.
    cold, cold_was_warm = await second_fork_count(tmp_path, "forkcold", warm_on=False)
    warm_count, warm_was_warm = await second_fork_count(tmp_path, "forkwarm", warm_on=True)
    assert (cold_was_warm, warm_was_warm) == (False, True)
    # bwrap's monitor, its pid 1, the server and its children share 24 (the cgroup's pids.max, one higher in the
    # warm case where the monitor is a member, and RLIMIT_NPROC of the dedicated uid)
    assert 0 < cold < 24
    assert warm_count == cold


async def test_rlimits_reach_a_warm_start(tmp_path: Path) -> None:
    code = ("import resource\n"
            "print(resource.getrlimit(resource.RLIMIT_NOFILE)[1], resource.getrlimit(resource.RLIMIT_CORE)[1])\n")
    launch = launcher(tmp_path, {"lim": python_server(code, nofile=321)})
    outs: list[str] = []
    try:
        for round_ in range(2):
            if round_:
                await ready_slot(launch)
            spawner, proc = await spawn(launch, "lim")
            status, out = await finish(spawner, proc)
            assert status == 0
            outs.append(out.split())  # type: ignore[arg-type]
    finally:
        await launch.aclose()
    assert outs[0] == outs[1] == ["321", "0"]


async def test_a_warm_start_works_when_the_gateways_descriptors_are_above_the_servers_limit(tmp_path: Path) -> None:
    """A busy gateway holds many descriptors, so the ones it hands to bwrap can be numbered above the
    server's RLIMIT_NOFILE; the stub must place them before it lowers its limits, or every warm start fails."""
    launch = launcher(tmp_path, {"lim": python_server("print('hi')", nofile=64)})
    held: list[int] = []
    try:
        spawner, proc = await spawn(launch, "lim")
        assert await finish(spawner, proc) == (0, "hi\n")
        await ready_slot(launch)
        held = [os.open(os.devnull, os.O_RDONLY) for _ in range(200)]  # what this start passes is numbered > 200
        spawner = await launch._spawner(launch.cfg.servers["lim"], STREAM_LIMIT)
        assert isinstance(spawner, BwrapSpawner) and spawner.warm is not None, "the start must take the warm slot"
        proc = await spawner.spawn(STREAM_LIMIT)
        assert await finish(spawner, proc) == (0, "hi\n")
    finally:
        for fd in held:
            os.close(fd)
        await launch.aclose()


async def test_a_cold_start_works_when_the_gateway_holds_more_descriptors_than_the_servers_limit(
        tmp_path: Path) -> None:
    """The cold start's child lowers its limits before bwrap's exec: whatever it still does after that must not
    need a new descriptor (a busy gateway's lowest free one is above the server's RLIMIT_NOFILE), or every
    start fails with EMFILE in the child."""
    launch = launcher(tmp_path, {"lim": python_server("print('hi')", nofile=64)})
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(200)]
    try:
        spawner, proc = await spawn(launch, "lim")
        assert await finish(spawner, proc) == (0, "hi\n")
    finally:
        for fd in held:
            os.close(fd)
        await launch.aclose()


async def test_a_slot_that_does_not_fit_falls_back_cold_with_exact_limits(tmp_path: Path) -> None:
    launch = launcher(tmp_path, {"echo": python_server("print('hi')", pids=40)})
    try:
        spawner, proc = await spawn(launch, "echo")
        await finish(spawner, proc)
        await ready_slot(launch)
        # A different stream limit than the slot was made for: the stub must go, the groups stay with pids at 41
        # (the cold start's bwrap joins them before it execs, so its monitor is a member as the stub was).
        spawner = await launch._spawner(launch.cfg.servers["echo"], STREAM_LIMIT)
        assert isinstance(spawner, BwrapSpawner) and spawner.warm is not None
        stub_pid = spawner.warm.proc.pid
        proc = await spawner.spawn(STREAM_LIMIT + 1)
        groups = spawner.on_child.__self__.cgroups  # type: ignore[attr-defined]
        assert int((groups.groups["pids"] / "pids.max").read_text()) == 41
        assert proc.pid != stub_pid
        assert groups.holds(proc.pid), "the cold start's bwrap must be born inside the groups"
        assert not Path(f"/proc/{stub_pid}").exists() or "Z" in Path(f"/proc/{stub_pid}/stat").read_text().split()[2]
        assert await finish(spawner, proc) == (0, "hi\n")
    finally:
        await launch.aclose()


async def test_aclose_removes_idle_slots_and_their_groups(tmp_path: Path) -> None:
    launch = launcher(tmp_path, {"echo": python_server("print('hi')")})
    spawner, proc = await spawn(launch, "echo")
    await finish(spawner, proc)
    await ready_slot(launch)
    assert launch.warm is not None
    slot = next(iter(launch.warm._slots.values()))
    directories = list(slot.cgroups.groups.values())
    assert all(d.exists() for d in directories)
    await launch.aclose()
    assert slot.proc.returncode is not None
    assert not any(d.exists() for d in directories)


async def test_warm_off_never_prepares_a_slot(tmp_path: Path) -> None:
    launch = launcher(tmp_path, {"echo": python_server("print('hi')")}, warm_on=False)
    assert launch.warm is None
    spawner, proc = await spawn(launch, "echo")
    assert await finish(spawner, proc) == (0, "hi\n")
    assert spawner.on_started is None


async def test_an_idle_stub_waits_as_root_inside_its_groups(tmp_path: Path) -> None:
    key = warm.SlotKey("stubcheck", 612345, cgroups.CgroupLimits(pids=16),
                       warm.rlimits.Rlimits(nofile=77, file_size=1 << 20), STREAM_LIMIT)
    slot = await warm.make_slot(key)
    try:
        pid = slot.proc.pid
        assert slot.cgroups.holds(pid)
        status = Path(f"/proc/{pid}/status").read_text()
        # idle, it stays root (not counted against the server uid's RLIMIT_NPROC); it drops at launch
        assert next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:] == ["0"] * 4
        # the key carries the groups' own limits (barrier.cgroup_limits already counts bwrap's monitor)
        assert int((slot.cgroups.groups["pids"] / "pids.max").read_text()) == 16
    finally:
        await slot.discard()
    assert not any(d.exists() for d in slot.cgroups.groups.values())
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] != 77  # the gateway's own limits are untouched


async def test_a_cold_start_is_born_inside_its_groups(tmp_path: Path) -> None:
    """The cold path: bwrap's forked child joins the groups before it execs, so no migration is needed."""
    launch = launcher(tmp_path, {"echo": python_server("import sys; print('hi', flush=True); sys.stdin.read()",
                                                       pids=40)}, warm_on=False)
    spawner = await launch._spawner(launch.cfg.servers["echo"], STREAM_LIMIT)
    assert isinstance(spawner, BwrapSpawner) and spawner.warm is None and spawner.join
    groups = spawner.on_child.__self__.cgroups  # type: ignore[attr-defined]
    attached: list[int] = []
    original = groups.attach
    groups.attach = lambda pid: (attached.append(pid), original(pid))  # type: ignore[method-assign]
    proc = await spawner.spawn(STREAM_LIMIT)
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"hi\n"
        assert groups.holds(proc.pid)  # bwrap's monitor
        members = set(cgroups._pids(groups.groups["pids"]))
        assert len(members) >= 2 and proc.pid in members  # the monitor and the sandbox, nothing else of ours
        assert os.getpid() not in members
        assert attached == []  # nothing had to be moved
        assert int((groups.groups["pids"] / "pids.max").read_text()) == 41  # the server keeps its 40
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        await finish(spawner, proc)


async def test_a_cold_start_that_cannot_join_its_groups_does_not_start(tmp_path: Path) -> None:
    launch = launcher(tmp_path, {"echo": python_server("print('ran')")}, warm_on=False)
    spawner = await launch._spawner(launch.cfg.servers["echo"], STREAM_LIMIT)
    assert isinstance(spawner, BwrapSpawner)
    groups = spawner.on_child.__self__.cgroups  # type: ignore[attr-defined]
    groups.remove()  # the groups vanish between planning and the start
    with pytest.raises(LinkError, match=r"cannot join its cgroup /sys/fs/cgroup/.*: No such file or directory"):
        await spawner.spawn(STREAM_LIMIT)
