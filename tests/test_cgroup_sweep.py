"""The groups a killed gateway leaves behind are removed by the next one, and nothing else is.

The selection is tested on a plain directory tree; the removal on real cgroups (skipped, with the
reason, where no controller is writable here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcpward.sandbox import cgroup_sweep, cgroups
from mcpward.sandbox.cgroups import CgroupLimits, CgroupSet


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make(base: Path, name: str, age: float = 3600.0) -> Path:
    path = base / name
    path.mkdir()
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_only_old_groups_of_gateways_that_are_gone_are_stale(tmp_path: Path) -> None:
    gone = dead_pid()
    old_and_gone = make(tmp_path, f"mcpward-files-{gone}-0123abcd")
    dashed_name = make(tmp_path, f"mcpward-my-server.v2-{gone}-deadbeef")
    make(tmp_path, f"mcpward-files-{gone}-89abcdef", age=5)  # too new: maybe another namespace's, mid-start
    make(tmp_path, f"mcpward-files-{os.getpid()}-0123abcd")  # ours
    make(tmp_path, "mcpward-files-1-0123abcd")  # pid 1 is running (init, or this container's first process)
    make(tmp_path, "mcpward-files-0123abcd")  # the old naming, without an owner: left alone
    make(tmp_path, "mcpward-gateway")  # where a v2 gateway moves itself
    make(tmp_path, f"other-{gone}-0123abcd")
    (tmp_path / f"mcpward-file-{gone}-01234567").write_text("not a directory")
    assert sorted(cgroup_sweep.stale({tmp_path})) == sorted([old_and_gone, dashed_name])
    assert cgroup_sweep.stale({tmp_path / "missing"}) == []


def test_a_new_group_names_its_gateway() -> None:
    assert cgroups.LEAF.fullmatch(f"mcpward-files-{os.getpid()}-0123abcd")
    assert not cgroups.LEAF.fullmatch("mcpward-files-0123abcd")


# ------------------------------------------------------------------------------ real cgroups
@pytest.fixture
def bases() -> Iterator[set[Path]]:
    writable = cgroups.writable_controllers()
    if not any(ok for ok, _ in writable.values()):
        why = "; ".join(f"{c}: {w}" for c, (_, w) in writable.items())
        pytest.skip(f"no cgroup controller is writable here: {why}")
    found = {b for b in cgroups.group_bases() if os.access(b, os.W_OK)}
    if not found:
        pytest.skip("no writable cgroup directory for this process")
    yield found


def test_sweep_removes_what_a_killed_gateway_left_and_spares_members(bases: set[Path]) -> None:
    gone = dead_pid()
    empty = [make(base, f"mcpward-leftover-{gone}-0123abcd", age=0) for base in bases]
    busy_dirs = [make(base, f"mcpward-busy-{gone}-0123abcd", age=0) for base in bases]
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        for directory in busy_dirs:
            (directory / "cgroup.procs").write_text(str(sleeper.pid))
        removed, left = cgroup_sweep.sweep(min_age=0)
        assert set(empty) <= set(removed) and not any(p.exists() for p in empty)
        assert set(busy_dirs) <= set(left) and all(p.exists() for p in busy_dirs)
        assert sleeper.poll() is None  # a member is never killed
    finally:
        sleeper.kill()
        sleeper.wait()
        deadline = time.monotonic() + 5
        for directory in busy_dirs:
            while directory.exists():
                try:
                    directory.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)


def test_doctor_reports_what_a_killed_gateway_left(bases: set[Path], tmp_path: Path) -> None:
    from tests.conftest import MCPWARD

    gone = dead_pid()
    left = [make(base, f"mcpward-leftover-{gone}-89abcdef") for base in bases]  # an hour old
    try:
        doctor = subprocess.run([MCPWARD, "doctor", "--json", "-c", str(tmp_path / "none.toml")],
                                capture_output=True, text=True, timeout=60)
        rows = {row["item"]: row for row in json.loads(doctor.stdout)["host"]}
        assert int(rows["stale cgroups"]["value"]) >= len(left), rows["stale cgroups"]
        assert "gone" in rows["stale cgroups"]["meaning"]
    finally:
        for directory in left:
            directory.rmdir()


def test_sweep_leaves_this_gateways_own_groups(bases: set[Path]) -> None:
    mine = CgroupSet.create("sweep-own", CgroupLimits())
    if mine is None:
        pytest.skip(f"cannot create cgroups here: {CgroupSet.last_problem}")
    try:
        assert all(f"-{os.getpid()}-" in d.name for d in mine.groups.values())
        removed, _ = cgroup_sweep.sweep(min_age=0)
        assert not set(mine.groups.values()) & set(removed)
        assert all(d.exists() for d in mine.groups.values())
    finally:
        mine.remove()
