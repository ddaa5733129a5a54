"""What this host can do for sandboxing: a cheap probe, cached per process, that never raises.

Every field comes from a real check (running bwrap, compiling the seccomp filter, asking the kernel for the Landlock
ABI, creating and removing a cgroup, asking the container engines), not from version guesses, and every negative answer
carries its reason so `mcpward doctor` can say what to fix.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mcpward.sandbox import cgroups, seccomp

__all__ = ["HostCapabilities", "probe", "summary_rows"]

_CAP_SYS_RESOURCE = 24
_BWRAP_TIMEOUT_S = 5.0
_ENGINE_TIMEOUT_S = 3.0
# The probe the bwrap backend's profile depends on: a new user namespace with nested ones disabled, every other
# namespace unshared, only /usr visible.
_BWRAP_PROBE = (
    "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
    "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64", "--", "/usr/bin/true",
)
# Trusted system directories first: a writable directory early in PATH must not choose our sandbox binary.
_SYSTEM_DIRS = ("/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin", "/sbin")
# Environment passed to the engines' CLIs: only what selects the engine; never the gateway's secrets.
_ENGINE_ENV = ("HOME", "DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY",
               "CONTAINER_HOST", "CONTAINER_CONNECTION", "CONTAINERS_CONF", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME")
_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture that has Landlock, except alpha
_LANDLOCK_CREATE_RULESET_VERSION = 1


@dataclass(frozen=True)
class HostCapabilities:
    is_root: bool
    has_cap_sys_resource: bool
    bwrap: str | None
    bwrap_version: str | None
    bwrap_works: bool
    bwrap_problem: str | None
    user_namespaces: bool
    max_user_namespaces: int | None
    seccomp: bool
    seccomp_problem: str | None
    landlock_abi: int | None
    cgroup: Literal["v2", "v1", "hybrid", "none"]
    cgroup_writable: dict[str, bool]
    docker: str | None
    podman: str | None
    docker_problem: str | None
    podman_problem: str | None
    # Per controller, why it is (not) writable and where groups would go; for `doctor`.
    cgroup_detail: dict[str, str] = field(default_factory=dict)
    userns_problem: str | None = None
    landlock_problem: str | None = None


def _first_line(text: str, limit: int = 200) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line[:limit] + ("..." if len(line) > limit else "")


def _find(program: str) -> str | None:
    path = os.pathsep.join([*_SYSTEM_DIRS, os.environ.get("PATH", "")])
    return shutil.which(program, path=path)


def _caps_effective() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def _user_namespaces(is_root: bool) -> tuple[bool, int | None, str | None]:
    maximum = _read_int("/proc/sys/user/max_user_namespaces")
    if maximum is None:
        return False, None, "/proc/sys/user/max_user_namespaces is missing: kernel built without user namespaces"
    if maximum == 0:
        return False, 0, "user.max_user_namespaces is 0"
    if not is_root:
        # Distribution switches that stop unprivileged users only (Debian's sysctl, Ubuntu's AppArmor restriction).
        if _read_int("/proc/sys/kernel/unprivileged_userns_clone") == 0:
            return False, maximum, "kernel.unprivileged_userns_clone is 0 (unprivileged user namespaces disabled)"
        if _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == 1:
            why = "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1)"
            return False, maximum, why
    return True, maximum, None


def _seccomp() -> tuple[bool, str | None]:
    actions = Path("/proc/sys/kernel/seccomp/actions_avail")
    try:
        available = set(actions.read_text(encoding="ascii").split())
    except OSError:
        return False, "kernel has no seccomp filter mode (CONFIG_SECCOMP_FILTER) or /proc/sys is not mounted"
    if not {"errno", "allow", "kill_thread"} <= available:
        return False, f"kernel seccomp lacks needed actions (has: {' '.join(sorted(available))})"
    try:
        seccomp.filter_bpf()
    except seccomp.SeccompUnavailable as exc:
        return False, str(exc)
    return True, None


def _landlock() -> tuple[int | None, str | None]:
    if platform.system() != "Linux" or platform.machine() == "alpha":
        return None, "Landlock is Linux-only (and numbered differently on alpha)"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        abi = int(libc.syscall(_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                               ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION)))
    except (OSError, AttributeError) as exc:
        return None, f"cannot call landlock_create_ruleset: {exc}"
    if abi >= 1:
        return abi, None
    err = ctypes.get_errno()
    if err == 38:  # ENOSYS
        return None, "kernel built without Landlock"
    if err == 95:  # EOPNOTSUPP
        return None, "Landlock is built in but not enabled (add it to the lsm= boot parameter)"
    return None, f"landlock_create_ruleset failed: {os.strerror(err)}"


def _start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str] | str:
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="replace", env=env, close_fds=True, start_new_session=True)
    except OSError as exc:
        return f"cannot run {argv[0]}: {exc.strerror}"


def _kill(proc: subprocess.Popen[str]) -> None:
    """Kill the program and whatever it started (it leads its own session), then reap it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired, ValueError, OSError):
        proc.communicate(timeout=1)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1)


def _finish(proc: subprocess.Popen[str] | str, timeout: float) -> tuple[int | None, str, str]:
    """(returncode, stdout, problem); returncode None when it did not run or timed out."""
    if isinstance(proc, str):
        return None, "", proc
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return None, "", f"no answer within {timeout:g} s"
    return proc.returncode, out, _first_line(err) or f"exit status {proc.returncode}"


def _engine_env() -> dict[str, str]:
    env = {"PATH": os.pathsep.join(_SYSTEM_DIRS), "LC_ALL": "C"}
    env.update({k: os.environ[k] for k in _ENGINE_ENV if k in os.environ})
    return env


def _bwrap_version(bwrap: str) -> str | None:
    rc, out, _ = _finish(_start([bwrap, "--version"], {"PATH": "/usr/bin:/bin"}), _BWRAP_TIMEOUT_S)
    if rc != 0:
        return None
    words = out.split()
    return words[-1] if words else None


def _bwrap_outcome(bwrap: str | None, proc: subprocess.Popen[str] | str | None) -> tuple[bool, str | None, str | None]:
    """(works, problem, version)"""
    if bwrap is None or proc is None:
        return False, "bwrap not found (install the 'bubblewrap' package)", None
    rc, _, problem = _finish(proc, _BWRAP_TIMEOUT_S)
    if rc != 0:
        return False, f"bwrap probe failed: {problem}", _bwrap_version(bwrap)
    return True, None, _bwrap_version(bwrap)


def _engine_outcome(name: str, proc: subprocess.Popen[str] | str | None) -> tuple[str | None, str | None]:
    """(version, problem)"""
    if proc is None:
        return None, f"{name} not found on PATH"
    rc, out, problem = _finish(proc, _ENGINE_TIMEOUT_S)
    version = out.strip()
    if rc == 0 and version and "<no value>" not in version:
        return _first_line(version, 40), None
    return None, f"{name} engine did not answer: {problem}"


@functools.cache
def _probe() -> HostCapabilities:
    is_root = os.geteuid() == 0
    has_sys_resource = bool(_caps_effective() & (1 << _CAP_SYS_RESOURCE))

    userns, max_userns, userns_problem = _user_namespaces(is_root)
    sc_ok, sc_problem = _seccomp()
    landlock_abi, landlock_problem = _landlock()
    kind = cgroups.hierarchy_kind()
    try:
        writable = cgroups.writable_controllers() if kind != "none" else {}
    except Exception as exc:  # the probe must never raise; report instead
        writable = {c: (False, f"probe failed: {exc}") for c in cgroups.CONTROLLERS}
    if kind == "none":
        writable = {c: (False, "no cgroup filesystem is mounted") for c in cgroups.CONTROLLERS}

    # The slow checks are external programs: start them together, then collect.
    bwrap = _find("bwrap")
    # `docker version` asks the daemon; `podman info` sets up storage and the runtime, which is podman's "engine".
    engine_args = {"docker": ["version", "--format", "{{.Server.Version}}"],
                   "podman": ["info", "--format", "{{.Version.Version}}"]}
    started: list[subprocess.Popen[str]] = []

    def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str] | str:
        proc = _start(argv, env)
        if not isinstance(proc, str):
            started.append(proc)
        return proc

    try:
        bwrap_proc = start([bwrap, *_BWRAP_PROBE], {"PATH": "/usr/bin:/bin"}) if bwrap else None
        engines: dict[str, subprocess.Popen[str] | str | None] = {}
        for name, args in engine_args.items():
            path = _find(name)
            engines[name] = start([path, *args], _engine_env()) if path else None
        bwrap_works, bwrap_problem, bwrap_version = _bwrap_outcome(bwrap, bwrap_proc)
        answers = {name: _engine_outcome(name, proc) for name, proc in engines.items()}
    finally:
        for proc in started:  # only after an unexpected error is anything still running
            _kill(proc)

    return HostCapabilities(
        is_root=is_root,
        has_cap_sys_resource=has_sys_resource,
        bwrap=bwrap,
        bwrap_version=bwrap_version,
        bwrap_works=bwrap_works,
        bwrap_problem=bwrap_problem,
        user_namespaces=userns,
        max_user_namespaces=max_userns,
        seccomp=sc_ok,
        seccomp_problem=sc_problem,
        landlock_abi=landlock_abi,
        cgroup=kind,
        cgroup_writable={c: ok for c, (ok, _) in writable.items()},
        docker=answers["docker"][0],
        podman=answers["podman"][0],
        docker_problem=answers["docker"][1],
        podman_problem=answers["podman"][1],
        cgroup_detail={c: why for c, (_, why) in writable.items()},
        userns_problem=userns_problem,
        landlock_problem=landlock_problem,
    )


def probe(refresh: bool = False) -> HostCapabilities:
    """The host's capabilities; computed once per process unless refresh=True. Never raises."""
    if refresh:
        _probe.cache_clear()
    try:
        return _probe()
    except Exception as exc:  # a bug in a check must not take the gateway down: report "nothing works" with why
        reason = f"host probe failed: {type(exc).__name__}: {exc}"
        return HostCapabilities(
            is_root=os.geteuid() == 0, has_cap_sys_resource=False, bwrap=None, bwrap_version=None,
            bwrap_works=False, bwrap_problem=reason, user_namespaces=False, max_user_namespaces=None,
            seccomp=False, seccomp_problem=reason, landlock_abi=None, cgroup="none",
            cgroup_writable=dict.fromkeys(cgroups.CONTROLLERS, False), docker=None, podman=None,
            docker_problem=reason, podman_problem=reason, landlock_problem=reason,
        )


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def summary_rows(caps: HostCapabilities) -> list[tuple[str, str, str]]:
    """(item, value, meaning) rows for `mcpward doctor`."""
    rows: list[tuple[str, str, str]] = []
    if caps.is_root:
        meaning = ("root: sandboxes must run as a dedicated uid (root in a sandbox is host root for file access)")
    else:
        meaning = "not root: cgroups need a delegated v2 subtree; RLIMIT_NPROC counts all processes of our uid"
    rows.append(("running as root", _yes(caps.is_root), meaning))
    rows.append(("CAP_SYS_RESOURCE", _yes(caps.has_cap_sys_resource),
                 "rlimits can be raised" if caps.has_cap_sys_resource
                 else "rlimits can only be lowered (rootful podman needs explicit --ulimit)"))
    bwrap_value = f"{caps.bwrap} ({caps.bwrap_version or 'version unknown'})" if caps.bwrap else "not found"
    rows.append(("bubblewrap", bwrap_value, "the default sandbox backend" if caps.bwrap else "install 'bubblewrap'"))
    rows.append(("bubblewrap works", _yes(caps.bwrap_works),
                 "namespaces, nested user namespaces disabled" if caps.bwrap_works
                 else caps.bwrap_problem or "not probed"))
    userns_value = _yes(caps.user_namespaces)
    if caps.max_user_namespaces is not None:
        userns_value += f" (max {caps.max_user_namespaces})"
    rows.append(("user namespaces", userns_value,
                 "available to this user" if caps.user_namespaces else caps.userns_problem or "unavailable"))
    rows.append(("seccomp filter", _yes(caps.seccomp),
                 f"{len(seccomp.DENIED_SYSCALLS)} system calls denied plus argument rules" if caps.seccomp
                 else caps.seccomp_problem or "unavailable"))
    rows.append(("Landlock", f"ABI {caps.landlock_abi}" if caps.landlock_abi else "no",
                 "filesystem rules available (defence in depth)" if caps.landlock_abi
                 else caps.landlock_problem or "unavailable"))
    cgroup_meaning = {
        "v2": "unified hierarchy", "v1": "legacy hierarchies (need root)",
        "hybrid": "v1 controllers plus a v2 tree", "none": "no cgroups: only rlimits limit resources",
    }[caps.cgroup]
    rows.append(("cgroups", caps.cgroup, cgroup_meaning))
    for controller in cgroups.CONTROLLERS:
        ok = caps.cgroup_writable.get(controller, False)
        rows.append((f"cgroup {controller}", "writable" if ok else "not writable",
                     caps.cgroup_detail.get(controller, "") or ("limits enforced" if ok else "limit not enforceable")))
    for engine, version, problem in (("docker", caps.docker, caps.docker_problem),
                                     ("podman", caps.podman, caps.podman_problem)):
        rows.append((engine, version or "unavailable",
                     "engine answers; usable with a configured image" if version else problem or "unavailable"))
    return rows
