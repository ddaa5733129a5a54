"""Warm slots: a server's cgroups, created and configured, with a launcher process already inside them.

Why: every cold start forks the gateway (its preexec work: joining the cgroups, credentials, rlimits)
and creates and configures the server's groups on the spawn path. A warm slot does both ahead of
time, so after a server's first start the gateway prepares the next one off the spawn path:

1. create the server's groups and write their limits (pids one higher than configured, as for a cold
   start: the launcher that becomes bwrap's monitor process is a member too);
2. start a small stub (`python -I -S -c STUB`) as root, without a preexec_fn (so CPython can vfork);
   it sets die-with-parent itself, joins the groups by writing "0" to each group's file (the fast,
   self-only migration: sandbox/cgroups.py), and reports ready on a SEQPACKET socket. It drops to
   the server's uid only when it is used (an idle stub under that uid would count against the uid's
   RLIMIT_NPROC while the server's current process runs), then arms the parent-death signal again
   (changing credentials clears it), sets the server's rlimits and execs bwrap;
3. check the stub is listed in every group.

A start takes the slot: the gateway sends bwrap's argv and descriptors (SCM_RIGHTS) to the stub,
which puts each descriptor at the number the flags name and execs bwrap. bwrap's monitor and the
sandbox it clones are then born inside the groups; the barrier still checks the sandbox's pid is
listed in every group (and migrates it if not) before it lets the server run. Nothing runs outside
its cgroups at any point: fail closed stays as it was.

A slot belongs to one event loop (its pipes do) and one stream limit; a slot that does not fit is
discarded. Idle slots cost one small Python process (a few MB, charged to the server's own memory
group) and its groups; `[sandbox] warm = false` turns them off.
"""

from __future__ import annotations

import array
import asyncio
import atexit
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass

from mcpward.sandbox import rlimits
from mcpward.sandbox.cgroups import CgroupError, CgroupLimits, CgroupSet

log = logging.getLogger("mcpward.sandbox")

READY_TIMEOUT = 10.0
# A refill waits this long after the start that triggered it: the stub's own start-up (a Python interpreter)
# must not compete for the CPUs with the server that just started and is answering its first request.
REFILL_DELAY = 0.25
MAX_PAYLOAD = 60_000  # a SEQPACKET datagram must fit the socket buffer; a longer command takes the cold path

# The stub. Runs with -I -S (no site, no environment, no user paths). It imports everything while still root:
# the interpreter may live where only root may search (/root/.pyenv). argv: the uid to drop to (-1: keep ours),
# the control socket's descriptor, the gateway's pid, the cgroup files to join (one per line), then the
# rlimits. It applies the parent-death signal and the rlimits itself, so the gateway spawns it without a
# preexec_fn: CPython can then use vfork, and the event loop is not held for a full fork of the gateway's
# address space.
STUB = r"""
import ctypes, fcntl, os, resource, socket, sys
uid, ctl_fd, parent = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
def die_with_parent():
    # PR_SET_PDEATHSIG, SIGKILL; a credential change clears it, so this runs again after setresuid.
    if libc.prctl(1, 9) != 0 or os.getppid() != parent:
        os._exit(125)
die_with_parent()
for path in filter(None, sys.argv[4].split("\n")):  # join the groups: "0" is this process (sandbox/cgroups.py)
    fd = os.open(path, os.O_WRONLY)
    os.write(fd, b"0")
    os.close(fd)
ctl = socket.socket(fileno=ctl_fd)
ctl.sendall(b"R")
msg, fds, _f, _a = socket.recv_fds(ctl, 65536, 256)
if not msg:
    os._exit(0)
if uid >= 0:
    # Only now: an idle stub must not count against the uid's RLIMIT_NPROC while the server's
    # previous process runs under that uid.
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    die_with_parent()
parts = msg.split(b"\0")
exe, targets, argv = parts[0], [int(t) for t in parts[1].split(b",") if t], parts[2:]
if len(targets) != len(fds):
    os._exit(126)
high = max([*targets, *fds, 2]) + 1
moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, high) for fd in fds]
for fd in fds:
    os.close(fd)
for fd, target in zip(moved, targets):
    os.dup2(fd, target)
low = 3
for target in sorted(set(targets)):
    os.closerange(low, target)
    low = target + 1
os.closerange(low, 1 << 20)
# The rlimits come last: the descriptors above were numbered by the gateway, which may hold more than
# the server's RLIMIT_NOFILE allows, and a lowered limit would refuse to place them (EINVAL).
for spec in sys.argv[5:]:  # "resource:soft:hard", only ever lowered (as rlimits.apply does)
    kind, soft, hard = (int(x) for x in spec.split(":"))
    cur = resource.getrlimit(kind)[1]
    if cur != resource.RLIM_INFINITY:
        soft, hard = min(soft, cur), min(hard, cur)
    resource.setrlimit(kind, (soft, hard))
try:
    os.execve(exe, [exe, *argv], {"PATH": "/usr/bin:/bin"})
except OSError as exc:
    os.write(2, b"mcpward stub: cannot run bwrap: " + str(exc).encode() + b"\n")
os._exit(127)
"""


@dataclass(frozen=True)
class SlotKey:
    """What a slot is fixed to: the server, its uid, limits and the gateway's stream limit."""

    server: str
    uid: int | None
    cgroup_limits: CgroupLimits
    rlimits: rlimits.Rlimits
    stream_limit: int


@dataclass
class WarmSlot:
    key: SlotKey
    cgroups: CgroupSet
    proc: asyncio.subprocess.Process
    ctl: socket.socket
    loop: asyncio.AbstractEventLoop
    used: bool = False  # taken out of play: launched, released or discarded
    launched: bool = False  # bwrap was started from it

    def fits(self, limit: int) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return (not self.used and loop is self.loop and not loop.is_closed() and limit == self.key.stream_limit
                and self.proc.returncode is None)

    def launch(self, exe: str, argv: list[str], fds: list[int]) -> asyncio.subprocess.Process:
        """Hand bwrap's argv and descriptors to the stub, which execs it; the stub's process becomes bwrap."""
        payload = b"\0".join([exe.encode(), ",".join(str(fd) for fd in fds).encode(),
                              *(arg.encode() for arg in argv)])
        if len(payload) > MAX_PAYLOAD or min(fds, default=3) < 3:
            raise ValueError("this command does not fit a warm slot")
        self.used = True
        self.ctl.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        self.launched = True
        self.ctl.close()
        return self.proc

    async def release(self) -> None:
        """Not used after all (a cold start follows in the same groups, its bwrap joining them as the stub did)."""
        self.used = True
        with contextlib.suppress(OSError):
            self.ctl.close()
        if self.proc.returncode is None:  # once reaped, its pid may belong to someone else
            with contextlib.suppress(OSError):
                os.kill(self.proc.pid, signal.SIGKILL)
            if asyncio.get_running_loop() is self.loop:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.proc.wait(), 5.0)
        await asyncio.to_thread(self.cgroups.remove_members)

    async def discard(self) -> None:
        """Kill the stub and remove its groups (idempotent)."""
        self.used = True
        with contextlib.suppress(OSError):
            self.ctl.close()
        if self.proc.returncode is None:
            with contextlib.suppress(OSError):
                os.kill(self.proc.pid, signal.SIGKILL)
            if asyncio.get_running_loop() is self.loop:  # its pipes and child watcher live on that loop
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.proc.wait(), 5.0)
        await asyncio.to_thread(self.cgroups.remove)  # kills whatever is still a member, then deletes


class WarmPool:
    """At most one ready slot per key, refilled in the background after each start."""

    def __init__(self) -> None:
        self._slots: dict[SlotKey, WarmSlot] = {}
        self._filling: dict[SlotKey, asyncio.Task[None]] = {}
        self._discarding: set[asyncio.Task[None]] = set()
        self._closed = False
        _live_pools.append(self)

    def take(self, key: SlotKey) -> WarmSlot | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        del self._slots[key]
        if not slot.fits(key.stream_limit):
            with contextlib.suppress(RuntimeError):  # no running loop: the atexit hook cleans up
                task = asyncio.get_running_loop().create_task(slot.discard())
                self._discarding.add(task)
                task.add_done_callback(self._discarding.discard)
            return None
        return slot

    def refill(self, key: SlotKey, delay: float = REFILL_DELAY) -> None:
        """Start preparing a slot for `key` unless one is ready or on its way (call from the event loop)."""
        if self._closed or key in self._slots or key in self._filling:
            return
        task = asyncio.get_running_loop().create_task(self._fill(key, delay), name=f"warm-{key.server}")
        self._filling[key] = task
        task.add_done_callback(lambda _t: self._filling.pop(key, None))

    async def _fill(self, key: SlotKey, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._closed:
            return
        try:
            slot = await make_slot(key)
        except (OSError, CgroupError, TimeoutError, ValueError) as exc:
            log.info("server %s: no warm sandbox slot (%s); starts take the cold path", key.server, exc)
            return
        if self._closed or key in self._slots:
            await slot.discard()
            return
        self._slots[key] = slot

    async def close(self) -> None:
        """Discard every idle slot and wait for refills in flight."""
        self._closed = True
        with contextlib.suppress(ValueError):
            _live_pools.remove(self)  # the exit hook has nothing left to do for this pool
        for task in [*self._filling.values(), *self._discarding]:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            await slot.discard()

    def remove_all_now(self) -> None:
        """At interpreter exit, with no loop left: kill idle stubs and delete their groups synchronously."""
        for slot in self._slots.values():
            if slot.proc.returncode is None:
                with contextlib.suppress(OSError):
                    os.kill(slot.proc.pid, signal.SIGKILL)
                with contextlib.suppress(OSError):  # reap it: an unreaped child would outlive us as a zombie
                    os.waitpid(slot.proc.pid, 0)
            slot.cgroups.remove()
        self._slots.clear()

    @property
    def ready(self) -> int:
        return len(self._slots)


# Pools that may still hold idle slots; strong references, so that the exit hook finds a launcher's idle stubs and
# groups even after the launcher itself is gone.
_live_pools: list[WarmPool] = []


@atexit.register
def _at_exit() -> None:
    for pool in _live_pools:
        pool.remove_all_now()


async def make_slot(key: SlotKey) -> WarmSlot:
    """Groups plus a stub inside them; raises (and leaves nothing behind) when any step fails."""
    cg = await asyncio.to_thread(CgroupSet.create, key.server, key.cgroup_limits)
    if cg is None:
        raise CgroupError(CgroupSet.last_problem or "cgroups unavailable")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc: asyncio.subprocess.Process | None = None
    try:
        os.set_inheritable(theirs.fileno(), True)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", "-c", STUB, str(-1 if key.uid is None else key.uid), str(theirs.fileno()),
            str(os.getpid()), "\n".join(cg.join_files()),
            *(f"{kind}:{soft}:{hard}" for kind, soft, hard in rlimits.settings(key.rlimits)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin"}, cwd="/", limit=key.stream_limit, start_new_session=True,
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        ready = await asyncio.wait_for(loop.sock_recv(ours, 1), READY_TIMEOUT)
        if ready != b"R":
            raise OSError(f"the stub did not come up (exit code {await _code(proc)})")
        if not cg.holds(proc.pid):
            raise CgroupError(f"stub {proc.pid} is not listed in its groups after joining them")
        ours.setblocking(True)
        return WarmSlot(key, cg, proc, ours, loop)
    except BaseException:
        ours.close()
        theirs.close()
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await proc.wait()
        await asyncio.to_thread(cg.remove)
        raise


async def _code(proc: asyncio.subprocess.Process) -> int | None:
    with contextlib.suppress(Exception):
        return await asyncio.wait_for(proc.wait(), 1.0)
    return proc.returncode
