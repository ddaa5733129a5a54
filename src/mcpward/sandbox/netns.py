"""Planting a listening socket inside a sandbox's network namespace.

The sandbox has its own network namespace with only `lo`: no route anywhere. The gateway opens
`127.0.0.1:3128` *inside* it and serves the egress proxy on that socket from outside, so no relay
process, socat or interpreter runs in the sandbox, and the listener a connection arrives on says
which sandbox it came from.

A socket belongs to the namespace its creator was in at `socket()` time, and network namespaces
are per thread. A root gateway (CAP_SYS_ADMIN over every namespace) joins from a short-lived
thread. An unprivileged gateway must first join the user namespace that owns the sandbox's
network namespace (NS_GET_USERNS), which the kernel allows only to a single-threaded process,
so it forks a helper that does that and passes the socket back over SCM_RIGHTS.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import threading

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
NS_GET_USERNS = 0xB701
PROXY_PORT = 3128

_libc = ctypes.CDLL(None, use_errno=True)


class PlantError(OSError):
    pass


def _setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise PlantError(err, f"setns: {os.strerror(err)}")


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


def plant_listener(pid: int, port: int = PROXY_PORT) -> socket.socket:
    """A listening TCP socket on 127.0.0.1:`port` in the network namespace of `pid`."""
    try:
        netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise PlantError(exc.errno, f"cannot open the sandbox's network namespace: {exc.strerror}") from None
    try:
        return _from_thread(netns, port) if os.geteuid() == 0 else _from_fork(netns, port)
    finally:
        os.close(netns)


def _from_thread(netns: int, port: int) -> socket.socket:
    result: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            _setns(netns, CLONE_NEWNET)
            result.append(_listen(port))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=work, name="mcpward-netns", daemon=True)
    thread.start()
    thread.join()
    out = result[0]
    if isinstance(out, BaseException):
        raise PlantError(getattr(out, "errno", 0) or 0, f"cannot plant the proxy listener: {out}")
    return out


def _from_fork(netns: int, port: int) -> socket.socket:
    try:
        userns = fcntl.ioctl(netns, NS_GET_USERNS)
    except OSError as exc:
        raise PlantError(exc.errno, f"cannot find the sandbox's user namespace: {exc.strerror}") from None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the forked helper
            code = 1
            try:
                ours.close()
                _setns(userns, CLONE_NEWUSER)
                _setns(netns, CLONE_NEWNET)
                sock = _listen(port)
                socket.send_fds(theirs, [b"k"], [sock.fileno()])
                code = 0
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    theirs.sendall(b"E" + str(exc).encode()[:300])
            finally:
                os._exit(code)
        theirs.close()
        msg, fds, _flags, _addr = socket.recv_fds(ours, 512, 1)
        os.waitpid(child, 0)
    finally:
        ours.close()
        os.close(userns)
    if not fds:
        raise PlantError(0, f"cannot plant the proxy listener: {msg[1:].decode(errors='replace') or 'helper died'}")
    return socket.socket(fileno=fds[0])
