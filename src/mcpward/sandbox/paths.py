"""What a sandbox may see of the host's files, and what it never may.

The system part is fixed: `/usr` and a handful of `/etc` files a runtime reads, read-only (never
all of `/`: a read-only bind of `/` still lets a process `connect()` to every host unix socket,
and a root gateway's `/root` would be readable). Everything else is declared per server, plus
the command's own install root and the directories of script arguments (`auto_bind`).

A declared path is refused when it is, contains or lies inside a sensitive path (credentials,
sockets, kernel interfaces), so no config can hand a server `~/.ssh` or `docker.sock` (T10). A
bound directory is searched (bounded) for unix sockets, since a bind reaches every socket below it.
What was checked is what gets bound: the check records the directory's identity (st_dev, st_ino),
and bwrap is handed a descriptor opened again without following any symlink and compared to it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import pwd
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

# Directories no server gets, wholly or in part: kernel interfaces, runtime sockets, boot.
FORBIDDEN_TREES = ("/proc", "/sys", "/dev", "/run", "/var/run", "/boot", "/var/lib/docker",
                   "/var/lib/containers", "/var/lib/containerd", "/tmp/.X11-unix")
# Files and directories that hold credentials: never bound, nor any directory containing them.
SENSITIVE_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/sudoers.d", "/etc/ssh",
                   "/etc/security", "/etc/mcpward", "/var/run/docker.sock", "/run/docker.sock")
# Names that mark credentials wherever they appear (in any home directory).
SENSITIVE_NAMES = frozenset({
    ".ssh", ".aws", ".gnupg", ".kube", ".docker", ".azure", ".netrc", ".git-credentials", ".npmrc",
    ".pypirc", ".password-store", ".vault-token", ".pgpass", ".terraform.d", ".config/gcloud", ".config/gh",
    ".local/share/keyrings", ".config/mcpward", ".local/state/mcpward", "id_rsa", "id_ed25519",
})
# Always read-only in every sandbox: what dynamic linking, TLS and locale lookups need.
SYSTEM_RO = ("/usr", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/ssl",
             "/etc/ca-certificates", "/etc/alternatives", "/etc/localtime", "/etc/nsswitch.conf",
             "/etc/mime.types")
# Shared temporary directories: any host user can plant a socket in them at any time, so never bound whole.
SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
# The socket search of a bound directory is bounded (it runs at every start): past these, the bind is refused.
MAX_SCAN_ENTRIES = 50_000
MAX_SCAN_DEPTH = 32
SCRIPT_SUFFIXES = (".py", ".js", ".mjs", ".cjs", ".ts")
MERGED_USR = ("bin", "sbin", "lib", "lib64", "lib32", "libx32")


class BindRefused(ValueError):
    """A path the sandbox must not see; the message names the path and the rule."""


@dataclass(frozen=True, slots=True)
class Bind:
    path: Path  # absolute, resolved; bound at the same path inside
    writable: bool
    why: str  # "declared", "command", "script", "cwd", "cache" (for doctor and errors)
    ident: tuple[int, int] | None = None  # (st_dev, st_ino) of what was checked; the backend binds only that


@functools.cache
def _homes() -> tuple[Path, ...]:
    homes = {Path(os.path.expanduser("~"))}
    with contextlib.suppress(OSError):
        homes.update(Path(p.pw_dir) for p in pwd.getpwall() if p.pw_dir not in ("", "/", "/nonexistent"))
    return tuple(sorted(homes))


@functools.cache
def _home_texts() -> frozenset[str]:
    return frozenset(str(home) for home in _homes())


def sensitive_paths(extra: tuple[Path, ...] = ()) -> list[Path]:
    """Absolute sensitive paths on this host: fixed ones, credentials in every home, and `extra`
    (the gateway's own secret store and state directory)."""
    out = [Path(p) for p in SENSITIVE_FILES]
    for home in _homes():
        out.extend(home / name for name in SENSITIVE_NAMES)
    out.extend(extra)
    return out


def check_bind(path: Path, sensitive: list[Path]) -> Path:
    """The resolved path if it may be bound; BindRefused (naming the rule) if not."""
    return checked_bind(path, sensitive, scan=True)[0]


def checked_bind(path: Path, sensitive: list[Path], *, scan: bool) -> tuple[Path, tuple[int, int]]:
    """`path` resolved, and the identity (device, inode) of what was checked; BindRefused (naming the
    rule) if it may not be bound. `scan`: search a directory for unix sockets (declared, script and
    cwd binds)."""
    if "\0" in str(path):
        raise BindRefused(f"{str(path)!r}: a bind path cannot contain a NUL byte")
    if not path.is_absolute():
        raise BindRefused(f"{path}: bind paths must be absolute")
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise BindRefused(f"{path}: does not exist or cannot be resolved ({exc.__class__.__name__})") from None
    _check_text(path, real, sensitive)
    try:
        fd = open_exact(real)
    except OSError as exc:
        raise BindRefused(f"{path}: changed while it was checked ({exc.strerror}); not bound") from None
    try:
        st = os.fstat(fd)
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            raise BindRefused(f"{path}: became a symlink while it was checked; not bound")
        if stat.S_ISSOCK(mode):
            raise BindRefused(f"{path}: a unix socket is never bound (it reaches a host service)")
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            raise BindRefused(f"{path}: only regular files and directories are bound")
        if stat.S_ISDIR(mode):
            below = str(real) + "/"
            for child in _PLAIN_NAMES:
                if _exists_text(below + child):
                    raise BindRefused(f"{path}: contains {child}, which holds credentials; bind a narrower directory")
            if scan:
                _SocketScan(path, real).run(fd)
    finally:
        os.close(fd)
    return real, (st.st_dev, st.st_ino)


def _check_text(path: Path, real: Path, sensitive: list[Path]) -> None:
    """The rules that read only the resolved path's text."""
    text = str(real)
    if text == "/":
        raise BindRefused(f"{path}: binding / would expose every host file and socket")
    if text in SHARED_DIRS:
        raise BindRefused(f"{path}: a shared temporary directory is never bound whole (any host user can "
                          "put a socket there at any time); bind a subdirectory")
    below = text + "/"
    # String prefixes rather than Path.parents: this runs for every bind at every start, and on a
    # resolved absolute path the two are the same test at a fraction of the cost.
    for tree in FORBIDDEN_TREES:
        if text == tree or text.startswith(tree + "/"):
            raise BindRefused(f"{path}: {tree} is never bound (kernel interfaces and host sockets)")
        if tree.startswith(below):  # `/var` would bring `/var/run` (host sockets) with it
            raise BindRefused(f"{path}: contains {tree}, which is never bound (kernel interfaces and host "
                              "sockets); bind a narrower directory")
    for parts in _name_windows(real):
        if parts in SENSITIVE_NAMES:
            raise BindRefused(f"{path}: lies in {parts!s}, which holds credentials")
    if text in _home_texts() or text == "/home":
        raise BindRefused(f"{path}: a home directory is never bound whole (it is where credentials live); "
                          "bind the project directory instead")
    for bad in sensitive:
        other = str(bad)
        # `other` is `text` or one of its parents (no allocation per entry: hundreds of entries, every start)
        if text.startswith(other) and (len(text) == len(other) or text[len(other)] == "/"):
            raise BindRefused(f"{path}: lies in {bad}, which holds credentials")
        if other.startswith(below) and _exists(bad):
            raise BindRefused(f"{path}: contains {bad}, which holds credentials; bind a narrower directory")


def open_exact(real: Path) -> int:
    """An O_PATH descriptor of `real` (absolute, resolved) reached without following any symlink:
    each component is opened with O_NOFOLLOW below the last, so a component swapped for a symlink
    after the check fails (ENOTDIR) or yields the link itself (the caller's identity check sees it)."""
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags)
    try:
        for part in real.parts[1:]:
            nxt = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


class _SocketScan:
    """Refuses a directory with a unix socket anywhere below it: bwrap binds recursively, and a socket
    is reachable through any bind that contains it. Bounded in entries and depth; symlinks are not
    followed (inside the sandbox they resolve in the sandbox's own view, never the host's)."""

    def __init__(self, shown: Path, real: Path) -> None:
        self.shown, self.real, self.seen = shown, real, 0

    def run(self, path_fd: int) -> None:
        try:
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=path_fd)
        except OSError as exc:
            raise BindRefused(f"{self.shown}: cannot be searched for host sockets ({exc.strerror}); "
                              "not bound") from None
        try:
            self._scan(fd, self.real, 0)
        finally:
            os.close(fd)

    def _scan(self, fd: int, where: Path, depth: int) -> None:
        try:
            entries = os.scandir(fd)
        except OSError as exc:
            raise BindRefused(f"{self.shown}: {where} cannot be searched for host sockets ({exc.strerror}); "
                              "bind a narrower directory") from None
        with entries:
            for entry in entries:
                self.seen += 1
                if self.seen > MAX_SCAN_ENTRIES:
                    raise BindRefused(self._too_big(f"more than {MAX_SCAN_ENTRIES} entries"))
                if entry.is_dir(follow_symlinks=False):
                    if depth + 1 > MAX_SCAN_DEPTH:
                        raise BindRefused(self._too_big(f"directories nested deeper than {MAX_SCAN_DEPTH} levels"))
                    self._descend(fd, entry.name, where, depth + 1)
                elif not (entry.is_file(follow_symlinks=False) or entry.is_symlink()):
                    try:
                        mode = entry.stat(follow_symlinks=False).st_mode
                    except FileNotFoundError:
                        continue  # gone since the listing
                    if stat.S_ISSOCK(mode):
                        raise BindRefused(f"{self.shown}: contains the unix socket {where / entry.name}, which "
                                          "would reach a host service; a bind never contains a socket: bind a "
                                          "narrower directory or move the socket")

    def _descend(self, fd: int, name: str, where: Path, depth: int) -> None:
        try:
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except (FileNotFoundError, NotADirectoryError):
            return  # removed, or replaced by a file or a symlink, since the listing: nothing to search
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return
            raise BindRefused(f"{self.shown}: {where / name} cannot be searched for host sockets "
                              f"({exc.strerror}); bind a narrower directory") from None
        try:
            self._scan(child, where / name, depth)
        finally:
            os.close(child)

    def _too_big(self, what: str) -> str:
        return (f"{self.shown}: holds {what}, past the limit of the search for host sockets every bound directory "
                "gets; bind the narrower directories the server needs")


def _name_windows(path: Path) -> set[str]:
    """Each component, and each pair of adjacent components (for names like `.config/gh`)."""
    parts = path.parts[1:]
    return set(parts) | {f"{a}/{b}" for a, b in itertools.pairwise(parts)}


_PLAIN_NAMES = tuple(sorted(name for name in SENSITIVE_NAMES if "/" not in name))
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)  # what Path.exists() reads as "no"


def _exists_text(path: str) -> bool:
    """Path(path).exists() on a string, without building a Path (called for every name, every bind, every start)."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno not in _MISSING  # cannot tell: assume the worst
    return True


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return True  # cannot tell: assume the worst


def system_binds() -> list[Path]:
    return [Path(p) for p in SYSTEM_RO if os.path.exists(p)]


def merged_usr_links() -> dict[str, str]:
    """`/bin -> usr/bin` and friends, as on the host: symlinks where the host has them."""
    links = {}
    for name in MERGED_USR:
        host = Path("/") / name
        if host.is_symlink():
            links[f"/{name}"] = os.readlink(host)
    return links


def resolve_command(command: str, path_env: str) -> Path | None:
    if "/" in command:
        p = Path(command)
        return p if p.is_absolute() else Path.cwd() / p
    found = shutil.which(command, path=path_env)
    return Path(found) if found else None


def install_root(executable: Path) -> Path | None:
    """The directory a command needs beside itself, or None when it is part of the system (/usr).

    A virtualenv's root (it holds site-packages), a Node package tree (the directory holding
    `node_modules`), an install prefix (`<prefix>/bin/x` with `<prefix>/lib`, as pyenv, nvm or a
    Node tarball lay out), or else the command's own directory.
    """
    path = Path(os.path.abspath(executable))
    if path.parts[:2] == ("/", "usr") or Path(os.path.realpath(path)).parts[:2] == ("/", "usr"):
        return None  # the system's own (`/bin/sh` is `/usr/bin/dash` on a merged-/usr host)
    for parent in path.parents:
        if (parent / "pyvenv.cfg").is_file():
            return parent
        if parent.name == "node_modules":
            return parent.parent
    if path.parent.name == "bin" and (path.parent.parent / "lib").is_dir() and path.parent.parent != Path("/"):
        return path.parent.parent
    return path.parent


def shebang_interpreter(exe: Path) -> Path | None:
    """The interpreter a `#!` script names (a console script's venv Python), when it is a path."""
    try:
        with open(exe, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    if not words or not words[0].startswith(b"/") or words[0].endswith(b"/env"):
        return None
    return Path(words[0].decode(errors="replace"))


def auto_binds(command: str, args: list[str], cwd: str | None, path_env: str) -> list[Bind]:
    """Read-only binds the server cannot run without: its command's install root (a symlinked
    command brings its target's too), the directory of each script argument, each other file
    argument (that file only), and its cwd."""
    out: list[Bind] = []
    exe = resolve_command(command, path_env)
    if exe is not None:
        interpreter = shebang_interpreter(exe)
        candidates = {exe, exe.resolve()}
        if interpreter is not None:
            candidates |= {interpreter, interpreter.resolve()}
        for candidate in candidates:
            root = install_root(candidate)
            if root is not None:
                out.append(Bind(root, False, "command"))
    base = Path(cwd) if cwd else Path.cwd()
    for arg in args:
        if arg.startswith("-"):
            continue
        p = Path(arg) if os.path.isabs(arg) else base / arg
        try:
            if not p.is_file():
                continue
        except (OSError, ValueError):  # too long for a file name, or a NUL: an argument, not a file
            continue
        if arg.endswith(SCRIPT_SUFFIXES):
            out.append(Bind(p.resolve().parent, False, "script"))  # a script imports its neighbours
        else:
            out.append(Bind(p.resolve(), False, "argument"))  # a data file: that file only
    if cwd is not None:
        out.append(Bind(Path(cwd).resolve(), False, "cwd"))
    return out
