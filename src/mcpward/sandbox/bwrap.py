"""The bubblewrap backend: the Linux default.

What the measurements in our notes settled:
- bwrap's own argv and environment are readable inside the sandbox (`/proc/1/cmdline`,
  `/proc/1/environ`), so bwrap starts with an environment of just PATH and every flag, every
  variable and every secret goes through file descriptors: `--args FD` (a memfd), secret files
  with `--ro-bind-data FD`, binds with `--ro-bind-fd FD` (opened by the gateway, so a directory
  the sandbox uid could not reach by path is still bound, and only what was checked is bound).
- A root gateway runs bwrap as the server's dedicated uid: inside a user namespace that root
  created, uid 0 is still host root for file permissions.
- `--info-fd`/`--block-fd` are a barrier: the sandbox is built but the server has not started
  while the gateway moves it into cgroups and plants the egress listener.
- bwrap resolves bind sources by path, as the uid it runs as; a root gateway's runtimes often sit
  under a directory only root may search (`/root/.pyenv`). So a root gateway holds bwrap at
  `--userns-block-fd` and writes the user namespace's maps itself: the server's uid to itself, and
  root to root, so bwrap's mount setup (full capabilities inside that namespace) may traverse
  root-owned directories. The server then runs as its uid with every capability dropped, no new
  privileges, nosuid mounts and a seccomp filter that refuses setns, unshare and new user
  namespaces, so the root mapping is never reachable from inside.
- A bind is what was checked: the plan records each checked path's (st_dev, st_ino); here the path
  is opened again one component at a time with O_NOFOLLOW and its identity compared, so a path
  swapped for a symlink (or another directory) between plan and start is refused, never bound.
- bwrap's monitor (outside) and its pid 1 (inside) keep their own copies of the server's stdout, so a
  server that closes its stdout and lives on never gives the gateway end-of-file. StdoutWatch looks
  through /proc instead: once no process in the sandbox but bwrap's pid 1 holds the pipe, the link
  ends the server, as it does an unsandboxed one whose stdout ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

from mcpward.audit import events
from mcpward.sandbox import cgroups, rlimits
from mcpward.sandbox.cgroups import CgroupError
from mcpward.sandbox.paths import Bind, BindRefused, merged_usr_links, open_exact, system_binds
from mcpward.sandbox.plan import CACHE_DIR, SANDBOX_HOME, SECRETS_DIR, SandboxPlan
from mcpward.transport.base import LinkError
from mcpward.transport.stdio_link import die_with_parent, uninherit_fds

if TYPE_CHECKING:
    from mcpward.sandbox.warm import WarmSlot

log = logging.getLogger("mcpward.sandbox")
BARRIER_TIMEOUT = 10.0
# StdoutWatch reads at most this many /proc entries in one search for the stdout pipe's holder; a sandbox
# with more (processes times descriptors) counts as holding it, so a search never stalls the event loop.
WATCH_BUDGET = 4096
_HOSTS = b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


class FdBag:
    """File descriptors handed to bwrap: written memfds and O_PATH handles, closed after spawn."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def data(self, content: bytes, label: str = "mcpward") -> int:
        fd = os.memfd_create(label, os.MFD_CLOEXEC)
        self.fds.append(fd)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def path(self, path: str) -> int:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        self.fds.append(fd)
        return fd

    def bind(self, bind: Bind) -> int:
        """An O_PATH handle on exactly what the plan checked; BindRefused if the path now names anything else."""
        try:
            fd = open_exact(bind.path)
        except OSError as exc:
            raise BindRefused(f"{bind.path}: changed since it was checked ({exc.strerror}); not bound") from None
        self.fds.append(fd)
        st = os.fstat(fd)
        if bind.ident is None or (st.st_dev, st.st_ino) != bind.ident:
            raise BindRefused(f"{bind.path}: is no longer what was checked (replaced or made a symlink since the "
                              "plan); not bound")
        return fd

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


class _CannotTell(Exception):
    """/proc does not show what a sandbox's processes hold (no permission, or over WATCH_BUDGET)."""


class StdoutWatch:
    """Whether any process in a sandbox still holds the server's stdout, the pipe the gateway reads.

    End-of-file cannot tell: bwrap's monitor and its pid 1 hold the pipe for the sandbox's whole life. So the
    link asks this every EXIT_POLL seconds (off the call path). A look is one readlink, of the holder found
    last (at first: the server's fd 1). Only when that holder let go are the sandbox's processes searched:
    pid 1's descendants (in a pid namespace every orphan is re-parented to pid 1), fd 1 of each first, then
    every descriptor. "Closed" needs two looks in a row that found no holder, so a descriptor in flight
    (a dup2 over fd 1, one passed to another process) is not mistaken for a close. What /proc will not show
    counts as held: the server is then left running, as before, never ended on a guess."""

    MISSES = 2

    def __init__(self, init_pid: int, pipe: str) -> None:
        self.init, self.pipe = init_pid, pipe
        self._holder: tuple[int, int] | None = None  # (pid, fd) last seen holding the pipe
        self._misses = 0

    @classmethod
    def at_barrier(cls, init_pid: int) -> StdoutWatch | None:
        """While bwrap waits at the barrier nothing inside has run, so pid 1's fd 1 is the pipe; None when
        /proc does not show it (then nothing is watched)."""
        try:
            pipe = os.readlink(f"/proc/{init_pid}/fd/1")
        except OSError as exc:
            log.info("sandbox pid %d: its stdout cannot be watched (%s)", init_pid, exc.strerror)
            return None
        # "pipe:[inode]", or "socket:[inode]" under uvloop, which gives a child socket pairs for its stdio.
        return cls(init_pid, pipe) if pipe.startswith(("pipe:", "socket:")) else None

    def held(self) -> bool:
        try:
            found = (self._holder is not None and self._holds(*self._holder)) or self._search()
        except _CannotTell:
            found = True
        self._misses = 0 if found else self._misses + 1
        return self._misses < self.MISSES

    def _search(self) -> bool:
        self._holder = None
        procs = self._processes()
        if not procs:
            return True  # the server is not forked yet, or pid 1 is gone: its exit is seen without us
        budget = WATCH_BUDGET - len(procs)
        for pid in procs:
            if self._holds(pid, 1):
                self._holder = (pid, 1)
                return True
        for pid in procs:
            try:
                fds = [int(name) for name in os.listdir(f"/proc/{pid}/fd")]
            except PermissionError:
                raise _CannotTell from None
            except OSError:
                continue  # exited since it was listed
            budget -= len(fds)
            if budget < 0:
                raise _CannotTell
            for fd in fds:
                if fd != 1 and self._holds(pid, fd):
                    self._holder = (pid, fd)
                    return True
        return False

    def _processes(self) -> list[int]:
        """Host pids of pid 1's descendants (every thread's children: a thread's forks are listed under it)."""
        out: list[int] = []
        todo = [self.init]
        while todo:
            pid = todo.pop()
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except PermissionError:
                raise _CannotTell from None
            except OSError:
                continue
            for tid in tids:
                try:
                    with open(f"/proc/{pid}/task/{tid}/children") as f:
                        kids = [int(k) for k in f.read().split()]
                except PermissionError:
                    raise _CannotTell from None
                except OSError:
                    continue
                out += kids
                todo += kids
                if len(out) > WATCH_BUDGET:
                    raise _CannotTell
        return out

    def _holds(self, pid: int, fd: int) -> bool:
        try:
            return os.readlink(f"/proc/{pid}/fd/{fd}") == self.pipe
        except PermissionError:
            raise _CannotTell from None
        except OSError:
            return False  # closed, or the process is gone


def build_args(plan: SandboxPlan, bag: FdBag, seccomp_bpf: bytes | None) -> list[str]:
    """bwrap's flags for `plan`, passed through `--args`: namespaces, mounts, environment."""
    uid = plan.uid if plan.uid is not None else os.geteuid()
    gid = plan.uid if plan.uid is not None else os.getegid()
    a = ["--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
         "--cap-drop", "ALL", "--hostname", "sandbox", "--clearenv"]
    if plan.uid is None:
        # Unprivileged gateway: bwrap maps our uid and nests a second user namespace with
        # max_user_namespaces=0. (A root gateway writes the maps itself, see _map_ids; the seccomp
        # filter refuses new user namespaces either way.)
        a.append("--disable-userns")
    for path in system_binds():
        a += ["--ro-bind", str(path), str(path)]
    for link, target in merged_usr_links().items():
        a += ["--symlink", target, link]
    a += ["--proc", "/proc", "--dev", "/dev",
          "--size", str(plan.limits.tmp_size), "--perms", "1777", "--tmpfs", "/tmp",
          "--perms", "0700", "--dir", SANDBOX_HOME]
    passwd = f"root:x:0:0::/nonexistent:/usr/sbin/nologin\nsandbox:x:{uid}:{gid}::{SANDBOX_HOME}:/usr/sbin/nologin\n"
    group = f"root:x:0:\nsandbox:x:{gid}:\n"
    for name, content in (("passwd", passwd.encode()), ("group", group.encode()), ("hosts", _HOSTS)):
        a += ["--perms", "0444", "--ro-bind-data", str(bag.data(content, name)), f"/etc/{name}"]
    if plan.files:
        a += ["--perms", "0755", "--dir", SECRETS_DIR]
        for name, secret in sorted(plan.files.items()):
            a += ["--perms", "0400", "--ro-bind-data", str(bag.data(secret, "secret")), f"{SECRETS_DIR}/{name}"]
    for bind in plan.binds:
        flag = "--bind-fd" if bind.writable else "--ro-bind-fd"
        a += [flag, str(bag.bind(bind)), str(bind.path)]
    if plan.cache_dir is not None:
        a += ["--bind-fd", str(bag.path(str(plan.cache_dir))), CACHE_DIR]
    if seccomp_bpf is not None:
        a += ["--seccomp", str(bag.data(seccomp_bpf, "seccomp"))]
    for key, value in sorted(plan.env.items()):
        a += ["--setenv", key, value]
    a += ["--chdir", plan.cwd]
    return a  # the command itself follows `--` on bwrap's own argv (bwrap reads no command from --args)


def _encode_args(args: list[str]) -> bytes:
    for arg in args:
        if "\0" in arg:
            raise LinkError("a sandbox argument contains a NUL byte")
    return b"".join(arg.encode() + b"\0" for arg in args)


class BwrapSpawner:
    """Spawns one sandboxed server per `spawn()`; `on_child` runs at the barrier, `on_exit` after.

    `warm`: a slot whose stub, already inside the server's cgroups, execs bwrap (sandbox/warm.py);
    when it does not fit this start, it is released and bwrap is spawned directly. `on_started`
    runs once the server is released from the barrier (the launcher prepares the next slot there).
    """

    def __init__(self, plan: SandboxPlan, bwrap: str, seccomp_bpf: bytes | None,
                 on_child: Callable[[int], Awaitable[None]], on_exit: Callable[[], Awaitable[None]],
                 limits: rlimits.Rlimits, warm: WarmSlot | None = None,
                 on_started: Callable[[], None] | None = None, join: Sequence[str] = ()) -> None:
        self.plan, self.bwrap, self.seccomp_bpf = plan, bwrap, seccomp_bpf
        self.on_child, self.on_exit, self.rlimits = on_child, on_exit, limits
        self.warm, self.on_started = warm, on_started
        self.join = tuple(join)  # cgroup files a cold start's child writes "0" to before it execs bwrap
        self._watch: StdoutWatch | None = None

    def stdout_open(self) -> bool:
        """False once no process in the sandbox holds the server's stdout any more (see StdoutWatch); the link then
        ends the server. Audited once, here, where the sandbox is known."""
        if self._watch is None or self._watch.held():
            return True
        events.record("sandbox.stdout-closed", server=self.plan.server, backend="bwrap",
                      reason="the server closed its stdout but kept running; ended")
        self._watch = None
        return False

    def describe(self) -> str:
        return f"[bwrap] {shlex.join(self.plan.argv)}"

    def _preexec(self, keep: frozenset[int] = frozenset()) -> None:
        # The cgroups first, while still the gateway's user (sandbox/cgroups.py: joining by itself skips the
        # kernel's slow global lock). A child that cannot join never execs bwrap: the reason goes to its stderr,
        # which the spawn reports.
        try:
            cgroups.join_self(self.join)
        except OSError as exc:
            os.write(2, f"cannot join its cgroup {exc.filename}: {exc.strerror}".encode(errors="replace"))
            os._exit(126)
        # Here rather than Popen's user=/group= (uvloop has neither): groups, gid, then uid, and the
        # parent-death signal after them, because changing credentials clears it.
        uid = self.plan.uid
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        die_with_parent()
        # Before the limits: listing /proc/self/fd needs a new descriptor, and a busy gateway's lowest free
        # one can be above the server's RLIMIT_NOFILE (EMFILE, and no server would start).
        uninherit_fds(keep)  # only the descriptors bwrap is given on purpose cross the exec
        rlimits.apply(self.rlimits)

    async def spawn(self, limit: int) -> asyncio.subprocess.Process:
        bag = FdBag()
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        proc: asyncio.subprocess.Process | None = None
        try:
            try:
                args = build_args(self.plan, bag, self.seccomp_bpf)
            except BindRefused as exc:
                events.record("sandbox.refused", server=self.plan.server, rule="sandbox.bind-changed",
                              reason=f"refused to bind {exc}")
                raise LinkError(f"server {self.plan.server!r} not started: refused to bind {exc}") from None
            args_fd = bag.data(_encode_args(args), "bwrap-args")
            barrier = ["--info-fd", str(info_w), "--block-fd", str(block_r)]
            if self.plan.uid is not None:
                # One pipe for both waits: bwrap's outer process reads the first byte (maps written),
                # the sandbox reads the second (ready to exec) and closes it, so no descriptor of
                # ours outlives the barrier inside the sandbox.
                barrier += ["--userns-block-fd", str(block_r)]
            argv = [*barrier, "--args", str(args_fd), "--", *self.plan.argv]
            fds = [*bag.fds, info_w, block_r]
            proc = await self._warm_launch(argv, fds, limit)
            if proc is None:
                proc = await asyncio.create_subprocess_exec(
                    self.bwrap, *argv,
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                    env={"PATH": "/usr/bin:/bin"}, cwd="/", limit=limit, start_new_session=True,
                    pass_fds=fds, preexec_fn=partial(self._preexec, frozenset(fds)),
                )
            os.close(info_w)
            os.close(block_r)
            info_w = block_r = -1
            bag.close()  # bwrap holds its own copies; closing ours keeps secrets out of the gateway's fd table
            child = await self._child_pid(proc, info_r)
            self._watch = StdoutWatch.at_barrier(child)
            if self.plan.uid is not None:
                _map_ids(child, self.plan.uid)
                os.write(block_w, b"1")
            await self.on_child(child)
            try:
                os.write(block_w, b"1")
            except BrokenPipeError:
                detail = await _stderr_of(proc)
                raise LinkError(f"server {self.plan.server!r}: the sandbox ended before the server started: "
                                f"{detail}") from None
            if self.on_started is not None:
                self.on_started()
            return proc
        except BaseException as exc:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await proc.wait()
            await self.on_exit()
            if isinstance(exc, (LinkError, asyncio.CancelledError)):
                raise
            if isinstance(exc, OSError):
                raise LinkError(f"cannot start server {self.plan.server!r} in its sandbox: "
                                f"{exc.strerror or exc}") from None
            raise
        finally:
            bag.close()
            for fd in (info_r, info_w, block_r, block_w):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    async def _warm_launch(self, argv: list[str], fds: list[int], limit: int) -> asyncio.subprocess.Process | None:
        """bwrap started by the warm slot's stub (inside the cgroups already), or None: spawn it directly."""
        slot, self.warm = self.warm, None
        if slot is None:
            return None
        if slot.fits(limit):
            try:
                return slot.launch(self.bwrap, argv, fds)
            except (OSError, ValueError) as exc:
                log.info("server %s: warm slot not used (%s)", self.plan.server, exc)
        try:
            await slot.release()
        except CgroupError as exc:
            raise LinkError(f"server {self.plan.server!r}: cannot apply its resource limits: {exc}") from None
        return None

    async def _child_pid(self, proc: asyncio.subprocess.Process, info_r: int) -> int:
        loop = asyncio.get_running_loop()
        try:
            raw = await asyncio.wait_for(loop.run_in_executor(None, _read_all, info_r), BARRIER_TIMEOUT)
        except TimeoutError:
            raise LinkError(f"server {self.plan.server!r}: the sandbox did not come up "
                            f"in {BARRIER_TIMEOUT:.0f}s") from None
        try:
            pid = int(json.loads(raw)["child-pid"])
        except (ValueError, KeyError, TypeError):
            detail = await _stderr_of(proc)
            raise LinkError(f"server {self.plan.server!r}: bwrap failed to build the sandbox: {detail}") from None
        return pid

    async def cleanup(self) -> None:
        await self.on_exit()


def _map_ids(pid: int, uid: int) -> None:
    """The maps of the sandbox's user namespace (root gateway): the server's uid and root, each to itself."""
    for kind in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{kind}", "w") as f:
            f.write(f"0 0 1\n{uid} {uid} 1\n")


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


async def _stderr_of(proc: asyncio.subprocess.Process) -> str:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), 2.0)
    if proc.stderr is None:
        return "no detail"
    with contextlib.suppress(Exception):
        data = await asyncio.wait_for(proc.stderr.read(2000), 1.0)
        return data.decode(errors="replace").strip() or f"exit code {proc.returncode}"
    return f"exit code {proc.returncode}"
