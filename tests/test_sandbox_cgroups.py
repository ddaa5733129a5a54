"""cgroup limits around real sandboxes (bwrap's child moved in before it execs), and rlimits in real children.

Skips (with the reason) when a controller is not writable here, e.g. a non-root run without a delegated v2 subtree.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcpward.sandbox import cgroups
from mcpward.sandbox.cgroups import CgroupLimits, CgroupSet
from mcpward.sandbox.rlimits import Rlimits, apply

MiB = 1024 * 1024
BWRAP = shutil.which("bwrap")
BASE = [
    "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
    "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
]


@pytest.fixture(scope="module")
def writable() -> dict[str, tuple[bool, str]]:
    return cgroups.writable_controllers()


def need(writable: dict[str, tuple[bool, str]], *controllers: str) -> None:
    for controller in controllers:
        ok, why = writable[controller]
        if not ok:
            pytest.skip(f"cgroup {controller} controller not writable here: {why}")


@pytest.fixture
def made() -> Iterator[list[CgroupSet]]:
    """Every set a test creates is removed afterwards, even when the test fails."""
    sets: list[CgroupSet] = []
    yield sets
    for cg in sets:
        cg.remove()


def create(made: list[CgroupSet], name: str, limits: CgroupLimits) -> CgroupSet:
    cg = CgroupSet.create(name, limits)
    assert cg is not None, CgroupSet.last_problem
    made.append(cg)
    return cg


def start_sandboxed(argv: list[str], cg: CgroupSet) -> subprocess.Popen[str]:
    """bwrap with --info-fd/--block-fd: its child is moved into the groups before the program runs."""
    if BWRAP is None:
        pytest.skip("bwrap is not installed")
    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe()
    try:
        proc = subprocess.Popen([BWRAP, *BASE, "--info-fd", str(info_w), "--block-fd", str(block_r), "--", *argv],
                                pass_fds=[info_w, block_r], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin"})
    finally:
        os.close(info_w)
        os.close(block_r)
    try:
        with os.fdopen(info_r, "rb") as info:  # bwrap closes it after writing the JSON
            child = json.loads(info.read())["child-pid"]
        cg.attach(child)
        os.write(block_w, b"go")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        os.close(block_w)
    return proc


def test_limits_are_validated() -> None:
    for bad in ({"memory_bytes": 1}, {"memory_bytes": True}, {"pids": 0}, {"pids": 2.5}, {"cpu": 0},
                {"cpu": "1"}, {"cpu": 10_000}):
        with pytest.raises(ValueError, match="limit must be"):
            CgroupLimits(**bad)  # type: ignore[arg-type]
    assert CgroupLimits(memory_bytes=64 * MiB, cpu=0.5).wanted() == {"memory", "cpu"}


def test_hierarchy_matches_mounts() -> None:
    fstypes = {line.split(" - ")[1].split()[0] for line in Path("/proc/self/mountinfo").read_text().splitlines()
               if " - cgroup" in line}
    expected = {frozenset({"cgroup"}): "v1", frozenset({"cgroup2"}): "v2",
                frozenset({"cgroup", "cgroup2"}): "hybrid", frozenset(): "none"}[frozenset(fstypes)]
    assert cgroups.hierarchy_kind() == expected


def test_memory_hog_is_oom_killed(writable: dict[str, tuple[bool, str]], made: list[CgroupSet]) -> None:
    need(writable, "memory")
    cg = create(made, "memhog", CgroupLimits(memory_bytes=64 * MiB))
    before = cg.stats().get("oom_kill", 0)
    # 10 MiB chunks, each touched, up to 1 GiB: bounded even if the limit did not hold
    hog = ("chunks = []\n"
           "for i in range(100):\n"
           "    chunks.append(bytearray(b'x') * (10 * 1024 * 1024))\n"
           "print('survived', flush=True)\n")
    proc = start_sandboxed(["/usr/bin/python3", "-c", hog], cg)
    out, _ = proc.communicate(timeout=30)
    assert "survived" not in out
    assert proc.returncode in (137, -9)
    stats = cg.stats()
    assert stats["oom_kill"] >= before + 1
    assert stats["memory_peak"] <= 64 * MiB


def test_fork_bomb_is_stopped_and_remove_kills_the_rest(writable: dict[str, tuple[bool, str]],
                                                        made: list[CgroupSet]) -> None:
    need(writable, "pids")
    cg = create(made, "forkbomb", CgroupLimits(pids=32))
    # at most 200 children, each sleeping 5 s then leaving; the parent reports how far it got, then waits
    bomb = ("import os, sys, time\n"
            "n = 0\n"
            "for _ in range(200):\n"
            "    try:\n"
            "        pid = os.fork()\n"
            "    except OSError as exc:\n"
            "        print('stopped', n, exc.errno, flush=True)\n"
            "        break\n"
            "    if pid == 0:\n"
            "        time.sleep(5)\n"
            "        os._exit(0)\n"
            "    n += 1\n"
            "else:\n"
            "    print('all', n, 0, flush=True)\n"
            "time.sleep(30)\n")
    proc = start_sandboxed(["/usr/bin/python3", "-c", bomb], cg)
    try:
        assert proc.stdout is not None
        word, count, err = proc.stdout.readline().split()
        assert word == "stopped"
        assert int(count) < 32
        assert int(err) == errno.EAGAIN
        stats = cg.stats()
        assert stats["pids_max_hits"] >= 1
        assert stats["pids_current"] > int(count)  # the children are still there, sleeping
        directories = set(cg.groups.values())
        started = time.monotonic()
        cg.remove()
        assert time.monotonic() - started < 3
        assert not any(d.exists() for d in directories)
        assert proc.wait(timeout=5) in (137, -9)  # its whole tree was killed, long before the 30 s sleep ended
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_remove_kills_direct_children_and_leaves_no_directory(writable: dict[str, tuple[bool, str]],
                                                               made: list[CgroupSet]) -> None:
    need(writable, "memory", "pids", "cpu")
    cg = create(made, "plain child", CgroupLimits(memory_bytes=128 * MiB, pids=16, cpu=0.5))
    assert cg.name == "plain_child"  # sanitised for use in a path
    assert set(cg.groups) == {"memory", "pids", "cpu"}
    assert all(d.name.startswith("mcpward-plain_child-") for d in cg.groups.values())
    if cg.versions["cpu"] == "v1":
        assert (cg.groups["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (cg.groups["memory"] / "memory.limit_in_bytes").read_text().strip() == str(128 * MiB)
    sleeper = subprocess.Popen(["/usr/bin/sleep", "60"])
    try:
        cg.attach(sleeper.pid)
        for directory in set(cg.groups.values()):
            assert str(sleeper.pid) in (directory / "cgroup.procs").read_text().split()
        cg.remove()
        assert sleeper.wait(timeout=5) == -9
        assert not any(d.exists() for d in cg.groups.values())
        assert cg.stats() == {}
        cg.remove()  # idempotent
        with pytest.raises(cgroups.CgroupError, match="already removed"):
            cg.attach(sleeper.pid)
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_attach_refuses_bad_pids(writable: dict[str, tuple[bool, str]], made: list[CgroupSet]) -> None:
    need(writable, "pids")
    cg = create(made, "badpid", CgroupLimits(pids=8))
    with pytest.raises(cgroups.CgroupError, match="not a process id"):
        cg.attach(0)
    with pytest.raises(cgroups.CgroupError, match="cannot write"):
        cg.attach(2**22 + 12345)  # above pid_max: the kernel refuses it, and we say so


def test_a_child_joins_its_groups_itself_and_its_children_are_born_inside(
        writable: dict[str, tuple[bool, str]], made: list[CgroupSet]) -> None:
    need(writable, "pids", "memory")
    cg = create(made, "selfjoin", CgroupLimits(pids=8, memory_bytes=64 * 1024 * 1024))
    files = cg.join_files()
    assert len(files) == len(set(cg.groups.values()))  # one file per directory (v2 shares one)
    proc = subprocess.Popen([sys.executable, "-c", "import os, sys, time; pid = os.fork()\n"
                             "if pid == 0: time.sleep(30)\nprint(pid, flush=True); sys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: cgroups.join_self(files))
    try:
        assert proc.stdout is not None
        grandchild = int(proc.stdout.readline())
        assert cg.holds(proc.pid) and cg.holds(grandchild)
        assert not cg.holds(os.getpid())  # only the child moved, not the process that forked it
    finally:
        proc.kill()
        proc.wait()
        cg.remove()  # kills the grandchild too
    with pytest.raises(cgroups.CgroupError, match="already removed"):
        cg.join_files()


def test_joining_a_removed_group_fails_with_the_file_named(writable: dict[str, tuple[bool, str]],
                                                          made: list[CgroupSet]) -> None:
    need(writable, "pids")
    cg = create(made, "gone", CgroupLimits(pids=8))
    files = cg.join_files()
    cg.remove()
    with pytest.raises(OSError) as caught:
        cgroups.join_self(files)
    assert caught.value.filename == files[0]


def test_unavailable_controller_gives_none_with_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroups, "_discover", dict)
    assert CgroupSet.create("x", CgroupLimits(memory_bytes=64 * MiB, pids=10)) is None
    assert CgroupSet.last_problem == "no memory, pids cgroup controller is available to this process"


def test_failed_configuration_leaves_nothing_behind(writable: dict[str, tuple[bool, str]]) -> None:
    need(writable, "pids", "cpu")
    places = cgroups._discover()

    def ours() -> set[Path]:
        return {p for c in ("pids", "cpu") for p in places[c].base.glob("mcpward-broken-*")}

    before = ours()
    # the kernel refuses a pids.max above its own maximum (4M): creation must fail and undo the cpu group too
    assert CgroupSet.create("broken", CgroupLimits(pids=2**40, cpu=1.0)) is None
    assert "pids.max" in (CgroupSet.last_problem or "")
    assert ours() == before


def test_v2_layout_missing_a_knob_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # This host's v2 tree has no memory/pids/cpu (they are bound to v1), so a plain directory stands in for a
    # delegated v2 cgroup: requesting the controllers works, but memory.max does not exist in the new group, and
    # create() must refuse (naming the file) and leave nothing behind.
    base = tmp_path / "delegated"
    base.mkdir()
    (base / "cgroup.controllers").write_text("cpu memory pids\n")
    (base / "cgroup.subtree_control").write_text("")
    places = {c: cgroups._Place("v2", base) for c in cgroups.CONTROLLERS}
    monkeypatch.setattr(cgroups, "_discover", lambda: places)
    assert CgroupSet.create("v2", CgroupLimits(memory_bytes=64 * MiB)) is None
    assert "memory.max" in (CgroupSet.last_problem or "")
    assert (base / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert sorted(p.name for p in base.iterdir()) == ["cgroup.controllers", "cgroup.subtree_control"]


# ------------------------------------------------------------------------------------------------ rlimits


def run_limited(code: str, limits: Rlimits, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], preexec_fn=lambda: apply(limits), cwd=cwd,
                          capture_output=True, text=True, timeout=20, check=False)


def test_nofile_gives_emfile(tmp_path: Path) -> None:
    code = ("import errno, os\n"
            "fds = []\n"
            "try:\n"
            "    for _ in range(1000):\n"
            "        fds.append(os.open('/dev/null', os.O_RDONLY))\n"
            "except OSError as exc:\n"
            "    print(errno.errorcode[exc.errno], len(fds))\n")
    done = run_limited(code, Rlimits(nofile=64), tmp_path)
    assert done.returncode == 0, done.stderr
    name, opened = done.stdout.split()
    assert name == "EMFILE"
    assert 40 < int(opened) < 64


def test_address_space_stops_a_big_allocation(tmp_path: Path) -> None:
    code = ("try:\n"
            "    block = bytearray(1024 * 1024 * 1024)\n"
            "    print('allocated')\n"
            "except MemoryError:\n"
            "    print('MemoryError')\n")
    done = run_limited(code, Rlimits(nofile=256, address_space=512 * MiB), tmp_path)
    assert done.stdout.strip() == "MemoryError", done.stderr


def test_file_size_gives_efbig(tmp_path: Path) -> None:
    code = ("import errno, os\n"
            "fd = os.open('big', os.O_WRONLY | os.O_CREAT, 0o600)\n"
            "try:\n"
            "    for _ in range(4):\n"
            "        os.write(fd, b'x' * (1024 * 1024))\n"
            "    print('wrote')\n"
            "except OSError as exc:\n"
            "    print(errno.errorcode[exc.errno])\n")
    done = run_limited(code, Rlimits(nofile=256, file_size=MiB), tmp_path)
    # Python ignores SIGXFSZ, so the write fails with EFBIG; a program that does not would die of SIGXFSZ (25)
    assert done.stdout.strip() == "EFBIG" or done.returncode == -25, (done.stdout, done.stderr)
    assert (tmp_path / "big").stat().st_size == MiB


def test_limits_only_go_down_and_stick(tmp_path: Path) -> None:
    code = ("import resource\n"
            "print(*resource.getrlimit(resource.RLIMIT_NOFILE), *resource.getrlimit(resource.RLIMIT_CORE),"
            " *resource.getrlimit(resource.RLIMIT_CPU))\n"
            "try:\n"
            "    resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))\n"
            "    print('raised')\n"
            "except (ValueError, OSError):\n"
            "    print('refused')\n")

    def lowered_first() -> None:
        # the parent already had a lower hard limit: asking for more must clamp, not fail
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))
        apply(Rlimits(nofile=4096, cpu_seconds=30))

    done = subprocess.run([sys.executable, "-c", code], preexec_fn=lowered_first, cwd=tmp_path,
                          capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 0, done.stderr
    first, verdict = done.stdout.splitlines()
    assert first.split() == ["100", "100", "0", "0", "30", "31"]
    has_cap = bool(int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                            if line.startswith("CapEff:")), 16) & (1 << 24))
    assert verdict == ("raised" if has_cap else "refused")


def test_rlimits_are_validated() -> None:
    for bad in ({"nofile": 2}, {"nofile": -1}, {"nofile": 10, "nproc": 0}, {"nofile": 10, "cpu_seconds": 0},
                {"nofile": 10, "address_space": 1.5}, {"nofile": True}):
        with pytest.raises(ValueError, match="rlimit"):
            Rlimits(**bad)  # type: ignore[arg-type]
