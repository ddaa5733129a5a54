"""Removing the cgroups a gateway left behind when it was killed.

A gateway removes its sandboxes' groups when they stop and at exit, but SIGKILL (or a crash) skips
both: the servers die with it (parent-death signal) and their groups stay, empty. On cgroup v1 an
abandoned memory group keeps kernel memory and one of the 65,535 memory-group ids, so a host whose
gateway is killed often would eventually fail to create groups at all.

So before its first sandbox, a gateway removes the groups under its own cgroup that:
- are named like a sandbox's group (cgroups.LEAF), by a gateway pid that is not running here;
- are empty (rmdir refuses a group with members, so nothing running is ever touched: a member is
  left alone and reported, never killed);
- were created at least MIN_AGE_S ago (another gateway in another PID namespace between creating a
  group and joining it must not lose it).
Anything else is left as it is. A pid that was reused by another process counts as running: the
group waits for a later sweep, the safe direction.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

from mcpward.sandbox.cgroups import LEAF, group_bases

log = logging.getLogger("mcpward.sandbox")

MIN_AGE_S = 60.0


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: running
    return True


def stale(bases: set[Path], min_age: float = MIN_AGE_S, now: float | None = None) -> list[Path]:
    """Groups under `bases` left by a gateway that is not running, created at least `min_age` seconds ago."""
    now = time.time() if now is None else now
    found: list[Path] = []
    for base in sorted(bases):
        try:
            children = list(base.iterdir())
        except OSError:
            continue
        for child in children:
            m = LEAF.fullmatch(child.name)
            if m is None or not child.is_dir():
                continue
            pid = int(m.group(1))
            if pid == os.getpid() or _running(pid):
                continue
            try:
                if now - child.stat().st_mtime < min_age:
                    continue
            except OSError:
                continue
            found.append(child)
    return found


def sweep(min_age: float = MIN_AGE_S) -> tuple[list[Path], list[Path]]:
    """Remove the stale groups: (removed, left because they still have members or could not be removed)."""
    try:
        bases = group_bases()
    except OSError:
        return [], []
    removed: list[Path] = []
    left: list[Path] = []
    for group in stale(bases, min_age):
        try:
            group.rmdir()
        except FileNotFoundError:
            continue  # its owner or another sweep got there first
        except OSError as exc:
            left.append(group)
            why = "it still has members" if exc.errno == errno.EBUSY else exc.strerror
            log.warning("cgroup %s was left by a gateway that is gone, but %s; not touched", group, why)
            continue
        removed.append(group)
    if removed:
        log.info("removed %d cgroup(s) left by gateways that are gone", len(removed))
    return removed, left
