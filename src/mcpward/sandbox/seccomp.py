"""The sandbox's seccomp filter, compiled to classic BPF for `bwrap --seccomp FD`.

The filter is a deny list on top of an allow-everything default (measured: ../shared/notes/sandbox.md section 5): MCP
servers run arbitrary interpreters (Python, Node, uv, npm), so an allow list would break them one release at a time. We
deny the kernel attack surface and the escape hatches a server never needs: namespaces, mounts, tracing other processes,
kernel modules and keys, io_uring (which bypasses seccomp for the operations it performs), clock setters and so on.
One part is an allow list: sockets may only be AF_UNIX, AF_INET or AF_INET6 (the network namespace does not isolate
families such as vsock, so "no network" would otherwise not hold).

libseccomp (through `pyseccomp`, ctypes over the preinstalled libseccomp.so.2) does the compiling, because it gets the
architecture checks right: system calls made through a non-native ABI (i386 `int 0x80`, x32) are killed by its default
bad-architecture action, which closes the classic "same call, other number" bypass.
"""

from __future__ import annotations

import errno
import functools
import importlib
import os
import tempfile
from typing import Any

__all__ = [
    "CONDITIONAL_RULES",
    "DENIED_SYSCALLS",
    "SeccompUnavailable",
    "filter_bpf",
]


class SeccompUnavailable(RuntimeError):
    """The filter cannot be built here (pyseccomp or libseccomp missing, or too old); the message says which."""


# Each of these returns EPERM whatever its arguments. Grouped by why a sandboxed server must not have them.
DENIED_SYSCALLS: tuple[str, ...] = (
    # reading or steering other processes (memory, registers, file descriptors)
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    # filesystem topology: the sandbox's view of the filesystem is fixed by bwrap before exec
    "mount", "umount2", "fsopen", "fsmount", "fsconfig", "fspick", "move_mount", "open_tree", "open_tree_attr",
    "mount_setattr", "pivot_root", "chroot",
    # namespaces: no nested user namespace (the door to most kernel privilege bugs), no joining another one
    "setns", "unshare",
    # the kernel itself: modules, kexec, eBPF, perf, keyrings, userfaultfd (a race-widening primitive for exploits)
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "create_module",
    "get_kernel_syms", "query_module", "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd",
    # io_uring performs I/O without passing through the syscall filter
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # execution domain tricks (e.g. READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE) and raw port I/O
    "personality", "iopl", "ioperm", "vm86", "vm86old", "modify_ldt",
    # host-wide state: clocks, accounting, swap, power, quotas
    "clock_settime", "settimeofday", "adjtimex", "clock_adjtime", "acct", "swapon", "swapoff", "reboot",
    "quotactl", "quotactl_fd", "sethostname", "setdomainname",
    # file handles bypass path-based checks (the "shocker" container escape)
    "open_by_handle_at", "name_to_handle_at",
    # obsolete or information-leaking interfaces nothing modern needs
    "lookup_dcookie", "vhangup", "syslog", "uselib", "ustat", "sysfs", "nfsservctl", "_sysctl",
)

# Flag bits of clone(2)'s first argument that create a namespace. CLONE_NEWTIME (0x80) is absent on purpose: in
# clone(2) the low byte is the exit signal, so 0x80 there is not a namespace flag (only unshare and clone3 take it,
# and both are covered: unshare is denied, clone3 returns ENOSYS).
_CLONE_NAMESPACE_FLAGS: dict[str, int] = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

_TIOCSTI = 0x5412  # push bytes into the terminal's input queue: typing commands into the user's shell
_TIOCLINUX = 0x541C  # on a virtual console, the same through the selection/paste subcommand
# socket(2) and socketpair(2) accept only these address families; every other one answers EAFNOSUPPORT. This part is
# an allow list, unlike the rest of the filter: a family the network namespace does not isolate is a way around "no
# network". AF_VSOCK (40) is one (it reaches the hypervisor and the host, and its port space is shared with the host),
# and so are AF_NETLINK (kernel configuration: routing, netfilter, audit), AF_PACKET (raw link layer), AF_ALG (kernel
# crypto attack surface), AF_BLUETOOTH, AF_CAN, AF_TIPC, AF_RDS... Node, Python, uv and npm need only these three.
_AF_UNIX, _AF_INET, _AF_INET6 = 1, 2, 10
_ALLOWED_FAMILIES = (_AF_UNIX, _AF_INET, _AF_INET6)
_LOW_32 = 0xFFFF_FFFF  # the kernel reads these arguments as 32-bit ints: compare only the low half (no high-bit bypass)

# Human-readable list of the argument-dependent rules, for documentation and `mcpward doctor`.
CONDITIONAL_RULES: tuple[tuple[str, str], ...] = (
    *((f"clone with {name}", "EPERM") for name in _CLONE_NAMESPACE_FLAGS),
    ("clone3", "ENOSYS (its flags live in memory a filter cannot read; libc then falls back to clone)"),
    ("ioctl TIOCSTI", "EPERM"),
    ("ioctl TIOCLINUX", "EPERM"),
    ("socket or socketpair with a family other than AF_UNIX, AF_INET, AF_INET6 (vsock, netlink, packet ...)",
     "EAFNOSUPPORT"),
    ("any system call through a non-native ABI", "process killed"),
)

# System calls newer than some libseccomp releases. On x86_64 and aarch64 every call numbered from 424 up uses the one
# asm-generic number, so we can still deny them by number when libseccomp does not know the name.
_GENERIC_NUMBERS: dict[str, int] = {"open_tree_attr": 467}
_GENERIC_ARCHES = ("X86_64", "AARCH64")


def _load_pyseccomp() -> Any:
    # pyseccomp ships no type information, and importing it raises when libseccomp.so.2 is missing, so import it
    # lazily and behind one error type.
    try:
        return importlib.import_module("pyseccomp")
    except ImportError as exc:
        raise SeccompUnavailable("the Python package 'pyseccomp' is not installed") from exc
    except (OSError, RuntimeError) as exc:
        raise SeccompUnavailable(f"libseccomp (libseccomp.so.2) cannot be loaded: {exc}") from exc


def _syscall_number(sc: Any, name: str) -> int:
    number = int(sc.resolve_syscall(sc.Arch.NATIVE, name))
    if number != -1:  # -1 is __NR_SCMP_ERROR; other negatives are libseccomp's "not on this arch" pseudo numbers
        return number
    native = int(sc.system_arch())
    if name in _GENERIC_NUMBERS and any(native == getattr(sc.Arch, arch) for arch in _GENERIC_ARCHES):
        return _GENERIC_NUMBERS[name]
    # Fail closed: a call we mean to deny but cannot name would silently stay allowed.
    raise SeccompUnavailable(f"this libseccomp does not know the system call {name!r}; a newer libseccomp is needed")


def _build(sc: Any) -> Any:
    flt = sc.SyscallFilter(sc.ALLOW)
    eperm = sc.ERRNO(errno.EPERM)
    for name in DENIED_SYSCALLS:
        flt.add_rule(eperm, _syscall_number(sc, name))

    clone = _syscall_number(sc, "clone")
    for bit in _CLONE_NAMESPACE_FLAGS.values():
        flt.add_rule(eperm, clone, sc.Arg(0, sc.MASKED_EQ, bit, bit))
    flt.add_rule(sc.ERRNO(errno.ENOSYS), _syscall_number(sc, "clone3"))

    ioctl = _syscall_number(sc, "ioctl")
    for request in (_TIOCSTI, _TIOCLINUX):
        flt.add_rule(eperm, ioctl, sc.Arg(1, sc.MASKED_EQ, _LOW_32, request))

    refuse_family = sc.ERRNO(errno.EAFNOSUPPORT)
    for name in ("socket", "socketpair"):
        number = _syscall_number(sc, name)
        # Every family below the highest allowed one that is not allowed, compared on the low 32 bits the kernel
        # reads; then everything above it, compared on all 64 bits, so a value with high bits set is refused too
        # (whatever the kernel would make of it).
        for family in range(max(_ALLOWED_FAMILIES)):
            if family not in _ALLOWED_FAMILIES:
                flt.add_rule(refuse_family, number, sc.Arg(0, sc.MASKED_EQ, _LOW_32, family))
        flt.add_rule(refuse_family, number, sc.Arg(0, sc.GT, max(_ALLOWED_FAMILIES)))
    return flt


def _export(flt: Any) -> bytes:
    # libseccomp writes the program to a file descriptor; an anonymous memory file keeps it off the disk.
    try:
        fd = os.memfd_create("mcpward-seccomp", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        with tempfile.TemporaryFile() as tmp:
            flt.export_bpf(tmp)
            tmp.seek(0)
            return tmp.read()
    try:
        with os.fdopen(fd, "w+b", closefd=False) as handle:
            flt.export_bpf(handle)
            handle.seek(0)
            return handle.read()
    finally:
        os.close(fd)


@functools.cache
def _cached() -> bytes | SeccompUnavailable:
    # The outcome, good or bad, is computed once per process: libseccomp and the kernel do not change under us.
    try:
        sc = _load_pyseccomp()
        program = _export(_build(sc))
    except SeccompUnavailable as exc:
        return exc
    except (OSError, ValueError, AttributeError) as exc:
        return SeccompUnavailable(f"libseccomp could not compile the filter: {exc}")
    # A classic BPF program is a sequence of 8-byte instructions; anything else means the export went wrong.
    if not program or len(program) % 8:
        return SeccompUnavailable(f"libseccomp exported a malformed filter ({len(program)} bytes)")
    return program


def filter_bpf() -> bytes:
    """The compiled filter (raw `struct sock_filter` array for the native architecture), built once per process.

    Raises SeccompUnavailable, with the reason, when it cannot be built.
    """
    outcome = _cached()
    if isinstance(outcome, SeccompUnavailable):
        raise SeccompUnavailable(str(outcome))
    return outcome
