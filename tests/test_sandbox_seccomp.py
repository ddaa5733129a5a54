"""The seccomp filter, loaded by a real bwrap (`--seccomp FD`) around small programs: what it blocks and allows."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from typing import NoReturn

import pytest

from mcpward.sandbox import seccomp
from tests.conftest import NODE_BIN

BWRAP = shutil.which("bwrap")
# The profile of ../shared/notes/sandbox.md section 2, reduced to what these programs need.
BASE = [
    "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
    "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
]
SIGSYS = 31


def _bpf() -> bytes:
    try:
        return seccomp.filter_bpf()
    except seccomp.SeccompUnavailable as exc:
        pytest.skip(f"seccomp filter cannot be built here: {exc}")


def sandboxed(argv: list[str], *, extra: tuple[str, ...] = (), with_filter: bool = True,
              timeout: float = 20) -> subprocess.CompletedProcess[str]:
    if BWRAP is None:
        pytest.skip("bwrap is not installed")
    fds: list[int] = []
    args = [BWRAP, *BASE, *extra]
    if with_filter:
        read_end, write_end = os.pipe()
        os.write(write_end, _bpf())  # under 1 KiB: fits in the pipe buffer, no writer thread needed
        os.close(write_end)
        fds.append(read_end)
        args += ["--seccomp", str(read_end)]
    try:
        return subprocess.run([*args, "--", *argv], pass_fds=fds, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, env={"PATH": "/usr/bin:/bin"}, check=False)
    finally:
        for fd in fds:
            os.close(fd)


# A probe run inside the sandbox: each line is "<name> <errno name or OK>".
PROBE = r"""
import ctypes, errno, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def report(name, rc):
    print(name, "OK" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()), flush=True)
report("ptrace_traceme", libc.ptrace(0, 0, None, None))
report("ptrace_attach", libc.ptrace(16, 1, None, None))
report("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
report("umount2", libc.umount2(b"/tmp", 0))
report("unshare_user", libc.unshare(0x10000000))
report("io_uring_setup", libc.syscall(425, 1, ctypes.create_string_buffer(120)))
report("clone3", libc.syscall(435, None, 0))
report("bpf", libc.syscall(321, 0, None, 0))
report("keyctl", libc.syscall(250, 0, 0, 0, 0, 0))
report("tiocsti", libc.ioctl(0, 0x5412, b"x"))
# The kernel reads the ioctl request as 32 bits: a request with high bits set must not slip past the rule.
report("tiocsti_high_bits", libc.syscall(16, 0, 0x1_0000_5412, b"x"))
# Socket families other than unix/inet/inet6. Creation only: nothing here ever connects (a vsock connect would
# reach the hypervisor). Raw socket(2) so the family number reaches the kernel as written.
for name, family, kind in (("netlink", 16, 3), ("packet", 17, 3), ("vsock", 40, 1), ("alg", 38, 5),
                           ("bluetooth", 31, 3), ("can", 29, 3), ("tipc", 30, 5), ("rds", 21, 5),
                           ("family_zero", 0, 1), ("family_huge", 0x7FFF_FFFF, 1),
                           ("vsock_high_bits", 0x1_0000_0028, 1), ("inet_high_bits", 0x1_0000_0002, 1)):
    fd = libc.syscall(41, ctypes.c_long(family), kind, 0)
    report(name, fd)
    if fd >= 0:
        os.close(fd)
pair = (ctypes.c_int * 2)()
report("socketpair_vsock", libc.syscall(53, 40, 1, 0, pair))
report("socketpair_unix", libc.syscall(53, 1, 1, 0, pair))
# raw clone(2) with a namespace flag; if it ever succeeded, the child leaves at once
r = libc.syscall(56, 0x10000000 | 17, None, None, None, None)
if r == 0:
    os._exit(0)
report("clone_newuser", r)
r = libc.syscall(56, 17, None, None, None, None)  # the same call without a namespace flag is an ordinary fork
if r == 0:
    os._exit(0)
if r > 0:
    os.waitpid(r, 0)
report("clone_plain", r)
socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
for end in socket.socketpair():
    end.close()
print("inet_unix OK", flush=True)
"""


@pytest.fixture(scope="module")
def probe_results() -> Iterator[dict[str, str]]:
    done = sandboxed(["/usr/bin/python3", "-c", PROBE])
    assert done.returncode == 0, done.stderr
    yield dict(line.split(" ", 1) for line in done.stdout.splitlines())


def test_filter_is_bpf_and_built_once() -> None:
    program = _bpf()
    assert program and len(program) % 8 == 0
    assert seccomp.filter_bpf() is program  # cached per process
    # first instruction loads seccomp_data.arch (offset 4): libseccomp's architecture check comes first
    code, _jt, _jf, k = struct.unpack("HBBI", program[:8])
    assert (code, k) == (0x20, 4)


def test_deny_list_is_clean() -> None:
    assert len(set(seccomp.DENIED_SYSCALLS)) == len(seccomp.DENIED_SYSCALLS)
    required = {"ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "fsopen", "fsmount", "fsconfig",
                "fspick", "move_mount", "open_tree", "mount_setattr", "pivot_root", "chroot", "kexec_load",
                "kexec_file_load", "init_module", "finit_module", "delete_module", "bpf", "perf_event_open", "keyctl",
                "add_key", "request_key", "userfaultfd", "setns", "unshare", "personality", "io_uring_setup",
                "io_uring_enter", "io_uring_register", "clock_settime", "settimeofday", "adjtimex", "clock_adjtime",
                "acct", "swapon", "swapoff", "reboot", "quotactl", "open_by_handle_at", "name_to_handle_at",
                "lookup_dcookie", "vhangup", "syslog", "uselib", "ustat", "sysfs", "nfsservctl"}
    assert required <= set(seccomp.DENIED_SYSCALLS)
    assert not {"clone", "clone3", "ioctl", "socket", "execve", "fork"} & set(seccomp.DENIED_SYSCALLS)


def test_filter_is_active_in_bwrap() -> None:
    done = sandboxed(["/bin/sh", "-c", "grep '^Seccomp:' /proc/self/status"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Seccomp:", "2"]  # 2 = filter mode


def test_unshare_command_fails() -> None:
    done = sandboxed(["/bin/sh", "-c", "unshare -U true"])
    assert done.returncode != 0
    assert "Operation not permitted" in done.stderr


@pytest.mark.parametrize(("name", "expected"), [
    ("ptrace_traceme", "EPERM"), ("ptrace_attach", "EPERM"), ("mount", "EPERM"), ("umount2", "EPERM"),
    ("unshare_user", "EPERM"), ("io_uring_setup", "EPERM"), ("bpf", "EPERM"), ("keyctl", "EPERM"),
    ("clone3", "ENOSYS"), ("tiocsti", "EPERM"), ("tiocsti_high_bits", "EPERM"),
    ("netlink", "EAFNOSUPPORT"), ("packet", "EAFNOSUPPORT"), ("vsock", "EAFNOSUPPORT"), ("alg", "EAFNOSUPPORT"),
    ("bluetooth", "EAFNOSUPPORT"), ("can", "EAFNOSUPPORT"), ("tipc", "EAFNOSUPPORT"), ("rds", "EAFNOSUPPORT"),
    ("family_zero", "EAFNOSUPPORT"), ("family_huge", "EAFNOSUPPORT"), ("vsock_high_bits", "EAFNOSUPPORT"),
    ("inet_high_bits", "EAFNOSUPPORT"), ("socketpair_vsock", "EAFNOSUPPORT"), ("socketpair_unix", "OK"),
    ("clone_newuser", "EPERM"),
    ("clone_plain", "OK"), ("inet_unix", "OK"),
])
def test_probe_inside_sandbox(probe_results: dict[str, str], name: str, expected: str) -> None:
    assert probe_results[name] == expected


CONTROL = r"""
import ctypes, errno, socket
libc = ctypes.CDLL(None, use_errno=True)
def report(name, rc):
    print(name, "OK" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()), flush=True)
report("unshare_user", libc.unshare(0x10000000))
report("clone3", libc.syscall(435, None, 0))
report("tiocsti", libc.ioctl(0, 0x5412, b"x"))
socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
print("netlink OK", flush=True)
socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()  # created and closed, never connected
print("vsock OK", flush=True)
"""


def test_without_filter_the_answers_differ() -> None:
    # Control: the same bwrap profile without --seccomp gives other answers, so the filter is what produced them.
    # (Only harmless calls here: without the filter ptrace(TRACEME) would succeed and stop the probe.)
    done = sandboxed(["/usr/bin/python3", "-c", CONTROL], with_filter=False)
    assert done.returncode == 0, done.stderr
    results = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert results == {"unshare_user": "ENOSPC", "clone3": "EINVAL", "tiocsti": "ENOTTY", "netlink": "OK",
                       "vsock": "OK"}


def test_foreign_abi_is_killed() -> None:
    # getpid through the x32 ABI (syscall number | 0x40000000): not the native architecture, so the process dies
    done = sandboxed(["/usr/bin/python3", "-c",
                      "import ctypes; ctypes.CDLL(None).syscall(0x40000000 | 39); print('survived')"])
    assert "survived" not in done.stdout
    assert done.returncode in (128 + SIGSYS, -SIGSYS)


# getpid through the i386 ABI from 64-bit code: `mov eax, 20; int 0x80; ret` (20 is i386 getpid), run from an
# executable anonymous mapping. Prints the result, which is the pid when the kernel emulates i386 (IA32_EMULATION).
INT80_GETPID = r"""
import ctypes, mmap, os
code = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])
page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
address = ctypes.addressof(ctypes.c_char.from_buffer(page))
result = ctypes.CFUNCTYPE(ctypes.c_int)(address)()
print("int80", result, os.getpid(), flush=True)
"""


def test_i386_int80_is_killed() -> None:
    if os.uname().machine != "x86_64":
        pytest.skip("the i386 ABI check is x86_64-only")
    # Control, without the filter: the same code really makes the i386 call (else the kernel lacks IA32 emulation
    # and there is nothing to test).
    control = sandboxed(["/usr/bin/python3", "-c", INT80_GETPID], with_filter=False)
    assert control.returncode == 0, control.stderr
    _word, result, pid = control.stdout.split()
    if result != pid:
        pytest.skip(f"this kernel does not run i386 system calls (int 0x80 gave {result})")
    done = sandboxed(["/usr/bin/python3", "-c", INT80_GETPID])
    assert "int80" not in done.stdout
    assert done.returncode in (128 + SIGSYS, -SIGSYS)


def test_ordinary_programs_still_work() -> None:
    script = ("import os, subprocess, sys\n"
              "pid = os.fork()\n"
              "if pid == 0:\n    os._exit(3)\n"
              "assert os.waitpid(pid, 0)[1] >> 8 == 3\n"
              "out = subprocess.run(['sh', '-c', 'echo piped | cat'], capture_output=True, text=True).stdout\n"
              "print(out.strip(), sys.version_info[0])\n")
    done = sandboxed(["/usr/bin/python3", "-c", script])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["piped", "3"]


def test_node_still_works() -> None:
    node = NODE_BIN / "node"
    if not node.exists():
        pytest.skip("Node not installed in .tools/node")
    real = node.resolve()
    prefix = real.parent.parent  # .../node_modules/node: the binary and what it ships with
    done = sandboxed([str(real), "-e", "console.log(1 + 1)"], extra=("--ro-bind", str(prefix), str(prefix)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"


def test_unavailable_library_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> NoReturn:
        raise seccomp.SeccompUnavailable("the Python package 'pyseccomp' is not installed")

    seccomp._cached.cache_clear()
    monkeypatch.setattr(seccomp, "_load_pyseccomp", missing)
    try:
        with pytest.raises(seccomp.SeccompUnavailable, match="pyseccomp"):
            seccomp.filter_bpf()
    finally:
        seccomp._cached.cache_clear()


def test_unknown_syscall_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    _bpf()
    seccomp._cached.cache_clear()
    monkeypatch.setattr(seccomp, "DENIED_SYSCALLS", (*seccomp.DENIED_SYSCALLS, "no_such_call_xyz"))
    try:
        with pytest.raises(seccomp.SeccompUnavailable, match="no_such_call_xyz"):
            seccomp.filter_bpf()
    finally:
        seccomp._cached.cache_clear()

