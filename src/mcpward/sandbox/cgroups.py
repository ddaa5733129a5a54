"""Memory, process-count and CPU limits for one sandbox, through cgroups (v1 or v2).

Groups are created *under the cgroup the gateway itself runs in* (read from /proc/self/cgroup), never at an arbitrary
place in the tree, so that whatever limits and accounting apply to the gateway also apply to its sandboxes, and so that
a delegated v2 subtree (systemd `Delegate=yes`) is used as intended.

- v1 (root only, in practice): one directory per controller, `<mount>/<our path>/mcpward-<name>-<pid>-<random>`
  (`pid`: the gateway's, see LEAF).
  memory.limit_in_bytes plus memory.memsw.limit_in_bytes (the same value: no escaping the limit into swap), pids.max,
  cpu.cfs_quota_us/cfs_period_us.
- v2: one directory `<our cgroup>/mcpward-<name>-<pid>-<random>` with memory.max, memory.swap.max=0, memory.oom.group=1,
  pids.max and cpu.max. The controllers must be enabled in our cgroup's cgroup.subtree_control; v2 forbids that while
  our cgroup holds processes (unless it is the root), so when the gateway is alone there it moves itself into a leaf
  `mcpward-gateway` first, the usual arrangement inside a delegated unit.

The launcher's forked child joins the groups itself before it execs bwrap (join_files() and join_self()), so bwrap,
its sandbox and everything the server forks are born inside them; the barrier then checks with holds() and moves the
sandbox with attach() only if it is not listed. Why the child joins rather than the gateway moving it: a write of
another pid (or of a whole process, which `cgroup.procs` always is) takes the kernel's global
cgroup_threadgroup_rwsem for writing, which waits for an RCU grace period (5-16 ms measured on our VMs); a
single-threaded process writing "0" (itself) to a v1 `tasks` file migrates only its own thread and skips that lock
(about 0.5 ms for three controllers). v2 has no such file, so there the child writes "0" to `cgroup.procs` (the
slow path, but still before exec).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

__all__ = [
    "CONTROLLERS",
    "CgroupError",
    "CgroupLimits",
    "CgroupSet",
    "group_bases",
    "hierarchy_kind",
    "join_self",
    "writable_controllers",
]

log = logging.getLogger("mcpward.sandbox")

CONTROLLERS: tuple[str, ...] = ("memory", "pids", "cpu")
_PREFIX = "mcpward-"
_GATEWAY_LEAF = "mcpward-gateway"  # v2 only: where the gateway moves itself so its cgroup may delegate controllers
_CPU_PERIOD_US = 100_000
_MIN_CPU_QUOTA_US = 1_000  # the kernel's lower bound for cfs_quota_us / cpu.max
_MIN_MEMORY = 4 * 1024 * 1024  # below this not even bwrap starts; a smaller value is a config mistake
_REMOVE_TIMEOUT_S = 5.0
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
# A sandbox's group: mcpward-<server>-<gateway pid>-<random>. The pid names the gateway that made it, so
# a later gateway can tell the groups a killed one left behind (sandbox/cgroup_sweep.py).
LEAF = re.compile(r"mcpward-[A-Za-z0-9_.-]{1,40}-([0-9]{1,10})-[0-9a-f]{8}")


class CgroupError(RuntimeError):
    """A cgroup operation failed; the message names the file and the reason (errno kept for callers that care)."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


@dataclass(frozen=True)
class CgroupLimits:
    """Limits for one sandbox; None means "no limit from this controller". cpu is in cores (0.5 = half a core)."""

    memory_bytes: int | None = None
    pids: int | None = None
    cpu: float | None = None

    def __post_init__(self) -> None:
        if self.memory_bytes is not None and (
            isinstance(self.memory_bytes, bool) or not isinstance(self.memory_bytes, int)
            or self.memory_bytes < _MIN_MEMORY
        ):
            raise ValueError(f"memory limit must be an integer of at least {_MIN_MEMORY} bytes")
        if self.pids is not None and (isinstance(self.pids, bool) or not isinstance(self.pids, int) or self.pids < 1):
            raise ValueError("pids limit must be a positive integer")
        if self.cpu is not None and (
            isinstance(self.cpu, bool) or not isinstance(self.cpu, int | float) or not 0.01 <= self.cpu <= 4096
        ):
            raise ValueError("cpu limit must be a number of cores between 0.01 and 4096")

    def wanted(self) -> set[str]:
        """The controllers these limits need."""
        out: set[str] = set()
        if self.memory_bytes is not None:
            out.add("memory")
        if self.pids is not None:
            out.add("pids")
        if self.cpu is not None:
            out.add("cpu")
        return out


# --------------------------------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class _Place:
    """Where one controller lives for us: the hierarchy's version and our own cgroup directory in it."""

    version: Literal["v1", "v2"]
    base: Path
    is_root: bool = False  # the hierarchy's root cgroup (v2's "no internal processes" rule does not apply there)


def _unescape(field_: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def _cgroup_mounts() -> list[tuple[str, Path, str, set[str]]]:
    """(root within the hierarchy, mount point, fstype, super options) of every cgroup/cgroup2 mount."""
    out: list[tuple[str, Path, str, set[str]]] = []
    try:
        text = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        parts, rest = head.split(), tail.split()
        if not sep or len(parts) < 5 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
            continue
        out.append((_unescape(parts[3]), Path(_unescape(parts[4])), rest[0], set(rest[2].split(","))))
    return out


def _self_cgroups() -> list[tuple[set[str], str]]:
    """(controllers, path) per line of /proc/self/cgroup; the v2 line has an empty controller set."""
    out: list[tuple[set[str], str]] = []
    try:
        text = Path("/proc/self/cgroup").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((set(parts[1].split(",")) - {""}, parts[2]))
    return out


def _join(mount: Path, mount_root: str, path: str) -> Path:
    # A hierarchy can be mounted from a sub-directory (containers without a cgroup namespace): strip that part.
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root.rstrip("/") + "/")):
        path = path[len(mount_root):]
    return mount / path.lstrip("/")


def hierarchy_kind() -> Literal["v2", "v1", "hybrid", "none"]:
    """How this host mounts cgroups: pure v2, pure v1, both (hybrid), or not at all."""
    kinds = {fstype for _, _, fstype, _ in _cgroup_mounts()}
    if kinds == {"cgroup2"}:
        return "v2"
    if kinds == {"cgroup"}:
        return "v1"
    if kinds:
        return "hybrid"
    return "none"


def group_bases() -> set[Path]:
    """The directories this process creates its sandboxes' groups in (one per v1 controller, or the v2 one)."""
    return {place.base for place in _discover().values()}


def _discover() -> dict[str, _Place]:
    """For each of memory/pids/cpu that is mounted: where our own cgroup is in its hierarchy."""
    mounts = _cgroup_mounts()
    own = _self_cgroups()
    places: dict[str, _Place] = {}
    for root, mount, fstype, opts in mounts:
        if fstype != "cgroup":
            continue
        for controller in CONTROLLERS:
            if controller in opts and controller not in places:
                path = next((p for ctrls, p in own if controller in ctrls), None)
                if path is not None:
                    places[controller] = _Place("v1", _join(mount, root, path), path == "/")
    v2_path = next((p for ctrls, p in own if not ctrls), None)
    v2_mount = next(((root, mount) for root, mount, fstype, _ in mounts if fstype == "cgroup2"), None)
    if v2_path is not None and v2_mount is not None:
        base = _join(v2_mount[1], v2_mount[0], v2_path)
        if base.name == _GATEWAY_LEAF:  # we moved ourselves into a leaf earlier; our groups are its siblings
            base = base.parent
        available = set(_read(base / "cgroup.controllers").split()) if (base / "cgroup.controllers").exists() else set()
        for controller in CONTROLLERS:
            if controller in available and controller not in places:
                places[controller] = _Place("v2", base, base == v2_mount[1])
    return places


# --------------------------------------------------------------------------------------------------- file helpers


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return ""


def _write(path: Path, value: str) -> None:
    # One write(2) per value, so the kernel's verdict on exactly that value comes back as the error.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CgroupError(f"cannot open {path}: {exc.strerror}", exc.errno) from None
    try:
        os.write(fd, value.encode("ascii"))
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}", exc.errno) from None
    finally:
        os.close(fd)


def join_self(files: Iterable[str]) -> None:
    """Move the calling process into each group by writing "0" to the given files (CgroupSet.join_files()).

    Runs in a freshly forked, single-threaded child before exec, so it uses only os calls and raises OSError."""
    for path in files:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def _keyed(text: str) -> dict[str, int]:
    """Parse "key value" lines (memory.events, cpu.stat, memory.oom_control ...)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _int_file(path: Path) -> int | None:
    text = _read(path).strip()
    return int(text) if text.isdigit() else None


def _pids(group: Path) -> list[int]:
    return [int(x) for x in _read(group / "cgroup.procs").split() if x.isdigit()]


def _others_in(group: Path) -> list[int]:
    return [p for p in _pids(group) if p != os.getpid()]


def _v2_enable(base: Path, controllers: Iterable[str]) -> None:
    """Make sure `controllers` are enabled for children of `base` (cgroup v2)."""
    enabled = set(_read(base / "cgroup.subtree_control").split())
    missing = [c for c in controllers if c not in enabled]
    if not missing:
        return
    request = " ".join(f"+{c}" for c in missing)
    try:
        _write(base / "cgroup.subtree_control", request)
        return
    except CgroupError as exc:
        # EBUSY is v2's "no internal processes" rule: our cgroup holds processes. If it holds only us, step into a
        # leaf; any other error (EACCES: not delegated to us) is final.
        if exc.errno != errno.EBUSY:
            raise
        if _others_in(base) or os.getpid() not in _pids(base):
            raise CgroupError(
                f"cannot enable {' '.join(missing)} in {base}/cgroup.subtree_control: the group holds other "
                "processes; run the gateway in a delegated cgroup of its own (systemd Delegate=yes)", errno.EBUSY
            ) from None
    leaf = base / _GATEWAY_LEAF
    try:
        leaf.mkdir()
    except FileExistsError:
        pass
    except OSError as exc:
        raise CgroupError(f"cannot create {leaf}: {exc.strerror}") from None
    _write(leaf / "cgroup.procs", str(os.getpid()))
    log.info("cgroup v2: moved the gateway into %s so that %s can delegate controllers", leaf, base)
    _write(base / "cgroup.subtree_control", request)


def writable_controllers() -> dict[str, tuple[bool, str]]:
    """For memory/pids/cpu: can we create a child group there, and why (not)? Creates and removes a probe group."""
    places = _discover()
    out: dict[str, tuple[bool, str]] = {}
    for controller in CONTROLLERS:
        place = places.get(controller)
        if place is None:
            out[controller] = (False, "controller not mounted for this process")
            continue
        if place.version == "v2":
            enabled = set(_read(place.base / "cgroup.subtree_control").split())
            if controller not in enabled:
                if not os.access(place.base / "cgroup.subtree_control", os.W_OK):
                    out[controller] = (False, f"v2: {place.base} is not delegated to us (subtree_control not writable)")
                    continue
                if not place.is_root and _others_in(place.base):
                    out[controller] = (False, f"v2: {place.base} holds other processes, so it cannot delegate "
                                              f"{controller} (run the gateway in a cgroup of its own)")
                    continue
        probe = place.base / f"{_PREFIX}probe-{secrets.token_hex(4)}"
        try:
            probe.mkdir()
        except OSError as exc:
            out[controller] = (False, f"{place.version}: cannot create a group under {place.base}: {exc.strerror}")
            continue
        with contextlib.suppress(OSError):
            probe.rmdir()
        out[controller] = (True, f"{place.version}: groups go under {place.base}")
    return out


# --------------------------------------------------------------------------------------------------- the set


@dataclass
class CgroupSet:
    """The groups of one sandbox: one directory per v1 controller, or one v2 directory, or a mix on hybrid hosts."""

    name: str
    limits: CgroupLimits
    groups: dict[str, Path] = field(default_factory=dict)  # controller -> directory
    versions: dict[str, Literal["v1", "v2"]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # degradations worth showing (e.g. no swap accounting)
    removed: bool = False

    # Why the last create() returned None. Class level because create() returns None instead of an instance.
    last_problem: ClassVar[str | None] = None

    @classmethod
    def create(cls, name: str, limits: CgroupLimits) -> CgroupSet | None:
        """Create and configure the groups; None (reason in CgroupSet.last_problem) when a needed one is unavailable.

        Controllers without a limit are joined too when writable (for stats() and so remove() can kill everything),
        but only the ones with a limit are required.
        """
        cls.last_problem = None
        safe = _SAFE_NAME.sub("_", name)[:40] or "sandbox"
        leaf = f"{_PREFIX}{safe}-{os.getpid()}-{secrets.token_hex(4)}"
        made = cls(name=safe, limits=limits)
        try:
            made._build(leaf)
        except CgroupError as exc:
            made._rmdirs(deadline=time.monotonic() + 1.0)
            cls.last_problem = str(exc)
            return None
        return made

    def _build(self, leaf: str) -> None:
        places = _discover()
        wanted = self.limits.wanted()
        missing = sorted(c for c in wanted if c not in places)
        if missing:
            raise CgroupError(f"no {', '.join(missing)} cgroup controller is available to this process")
        v2 = [c for c in CONTROLLERS if c in places and places[c].version == "v2"]
        if v2:
            base = places[v2[0]].base
            try:
                _v2_enable(base, v2)
            except CgroupError as exc:
                if wanted & set(v2):
                    raise
                self.notes.append(str(exc))
                v2 = []
            else:
                directory = base / leaf
                self._mkdir(directory)
                for c in v2:
                    self.groups[c], self.versions[c] = directory, "v2"
        for controller in CONTROLLERS:
            place = places.get(controller)
            if place is None or place.version != "v1":
                continue
            directory = place.base / leaf
            try:
                self._mkdir(directory)
            except CgroupError as exc:
                if controller in wanted:
                    raise
                self.notes.append(str(exc))
                continue
            self.groups[controller], self.versions[controller] = directory, "v1"
        self._configure()

    def _mkdir(self, directory: Path) -> None:
        try:
            directory.mkdir(mode=0o755)
        except FileExistsError:
            return  # v2 shares one directory between controllers
        except OSError as exc:
            raise CgroupError(f"cannot create cgroup {directory}: {exc.strerror}") from None

    def _configure(self) -> None:
        lim = self.limits
        if lim.memory_bytes is not None:
            group = self.groups["memory"]
            if self.versions["memory"] == "v1":
                _write(group / "memory.limit_in_bytes", str(lim.memory_bytes))
                if (group / "memory.memsw.limit_in_bytes").exists():
                    _write(group / "memory.memsw.limit_in_bytes", str(lim.memory_bytes))
                else:
                    # No swap accounting: keep anonymous memory out of swap so the limit cannot be dodged there.
                    _write(group / "memory.swappiness", "0")
                    self.notes.append("memory: no swap accounting (memsw); swappiness set to 0 instead")
            else:
                _write(group / "memory.max", str(lim.memory_bytes))
                if (group / "memory.swap.max").exists():
                    _write(group / "memory.swap.max", "0")
                if (group / "memory.oom.group").exists():
                    _write(group / "memory.oom.group", "1")  # an OOM kills the whole sandbox, not one random child
        if lim.pids is not None:
            group = self.groups["pids"]
            _write(group / "pids.max", str(lim.pids))
        if lim.cpu is not None:
            group = self.groups["cpu"]
            quota = max(_MIN_CPU_QUOTA_US, round(lim.cpu * _CPU_PERIOD_US))
            if self.versions["cpu"] == "v1":
                _write(group / "cpu.cfs_period_us", str(_CPU_PERIOD_US))
                _write(group / "cpu.cfs_quota_us", str(quota))
            else:
                _write(group / "cpu.max", f"{quota} {_CPU_PERIOD_US}")

    def _directories(self) -> list[Path]:
        return list(dict.fromkeys(self.groups.values()))  # v2 controllers share a directory: visit it once

    def attach(self, pid: int) -> None:
        """Move `pid` (with all its threads) into every group. Raises CgroupError: the caller must not start it then."""
        if self.removed:
            raise CgroupError("this cgroup set was already removed")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise CgroupError(f"not a process id: {pid!r}")
        for directory in self._directories():
            _write(directory / "cgroup.procs", str(pid))

    def join_files(self) -> list[str]:
        """The files the launcher's child writes "0" to, to join every group itself (see the module docstring)."""
        if self.removed:
            raise CgroupError("this cgroup set was already removed")
        kinds = {directory: self.versions[controller] for controller, directory in self.groups.items()}  # v2: once
        return [str(directory / ("tasks" if kind == "v1" else "cgroup.procs")) for directory, kind in kinds.items()]

    def holds(self, pid: int) -> bool:
        """Is `pid` listed in every group? (A child is born in its parent's groups; this checks it, cheaply: no
        migration, so no wait on the kernel's cgroup_threadgroup_rwsem.)"""
        if self.removed or not self.groups:
            return False
        return all(pid in _pids(directory) for directory in self._directories())

    def stats(self) -> dict[str, int]:
        """Counters worth reporting after a run; keys appear only when the kernel provides them."""
        out: dict[str, int] = {}
        if self.removed:
            return out
        if "memory" in self.groups:
            group = self.groups["memory"]
            if self.versions["memory"] == "v1":
                oom = _keyed(_read(group / "memory.oom_control"))
                pairs = {"memory_current": "memory.usage_in_bytes", "memory_peak": "memory.max_usage_in_bytes",
                         "memory_max_hits": "memory.failcnt"}
            else:
                oom = _keyed(_read(group / "memory.events"))
                if "max" in oom:
                    out["memory_max_hits"] = oom["max"]
                pairs = {"memory_current": "memory.current", "memory_peak": "memory.peak"}
            if "oom_kill" in oom:
                out["oom_kill"] = oom["oom_kill"]
            for key, filename in pairs.items():
                value = _int_file(group / filename)
                if value is not None:
                    out[key] = value
        if "pids" in self.groups:
            group = self.groups["pids"]
            for key, filename in (("pids_current", "pids.current"), ("pids_peak", "pids.peak")):
                value = _int_file(group / filename)
                if value is not None:
                    out[key] = value
            events = _keyed(_read(group / "pids.events"))
            if "max" in events:
                out["pids_max_hits"] = events["max"]
        if "cpu" in self.groups:
            cpu = _keyed(_read(self.groups["cpu"] / "cpu.stat"))
            if "nr_throttled" in cpu:
                out["cpu_nr_throttled"] = cpu["nr_throttled"]
            if "throttled_usec" in cpu:
                out["cpu_throttled_usec"] = cpu["throttled_usec"]
            elif "throttled_time" in cpu:  # v1 reports nanoseconds
                out["cpu_throttled_usec"] = cpu["throttled_time"] // 1000
            if "usage_usec" in cpu:
                out["cpu_usage_usec"] = cpu["usage_usec"]
        return out

    def remove_members(self) -> None:
        """Kill every member and wait until the groups are empty (they stay, for the next member)."""
        self._kill_all(time.monotonic() + _REMOVE_TIMEOUT_S)

    def remove(self) -> None:
        """Kill whatever is still inside, then delete the groups. Idempotent; never raises (logs what is left)."""
        if self.removed:
            return
        deadline = time.monotonic() + _REMOVE_TIMEOUT_S
        self._kill_all(deadline)
        left = self._rmdirs(deadline)
        self.removed = True
        if left:
            log.warning("cgroup: could not remove %s", ", ".join(str(p) for p in left))

    def _kill_all(self, deadline: float) -> None:
        for directory in self._directories():
            if (directory / "cgroup.kill").exists():
                # v2 (5.14+): the kernel kills every member, including ones forked while we look
                with contextlib.suppress(CgroupError):
                    _write(directory / "cgroup.kill", "1")
        # v1 (and v2 without cgroup.kill): signal members until none remain; a forking child may need a few rounds
        while time.monotonic() < deadline:
            alive = False
            for directory in self._directories():
                if _pids(directory):
                    alive = True
                    _kill_members(directory)
            if not alive:
                return
            time.sleep(0.01)

    def _rmdirs(self, deadline: float) -> list[Path]:
        left: list[Path] = []
        for directory in self._directories():
            delay = 0.005
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # EBUSY for a moment after the last member exits: PID-namespace teardown is asynchronous
                    if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                        left.append(directory)
                        break
                    time.sleep(delay)
                    delay = min(delay * 2, 0.1)
        return left


def _kill_members(directory: Path) -> None:
    """SIGKILL every process listed in directory/cgroup.procs, without ever hitting a recycled pid outside it."""
    handles: dict[int, int] = {}
    try:
        for pid in _pids(directory):
            try:
                handles[pid] = os.pidfd_open(pid)  # pins the process: its pid cannot be reused while we hold this
            except OSError as exc:
                if exc.errno == errno.ENOSYS:  # kernel before 5.3: plain kill, with its tiny pid-reuse window
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        # A pid still listed now belongs to a member; if the pidfd points at an older process, the signal fails
        # harmlessly (ESRCH) and the next round picks the member up.
        still = set(_pids(directory))
        for pid, fd in handles.items():
            if pid in still:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
    finally:
        for fd in handles.values():
            os.close(fd)
