"""What a server runs is what was there last time: its package cache is verified before each start.

`npx`/`uvx` installs live in the server's own cache (bound read-write at /cache), so they persist
between starts. Whatever changes them between runs (another process with access to the host
directory, a restored backup, a poisoned copy) would otherwise run next time unnoticed. After each
run the gateway records a manifest (path, size, sha256 of every installed file) in its state
directory, outside anything a sandbox can write; before the next start it checks the cache
against it. A changed, missing or added file stops the server with an error naming the file.
Changes the server itself makes while it runs (a first install, an upgrade) are recorded when
it stops, so they are trusted from then on: the manifest guards the time between runs.

Explicit pins (`[servers.<name>.sandbox] verify = { "<path>" = "sha256:<hex>" }`) are checked
the same way before every start: a file or a directory tree must hash to the pinned value.

The cache is written by the sandboxed server and read here by the gateway (often root), so the
walk never follows a symlink: a link is recorded as `link:<target>` (its target is what a change
would alter), files are opened with O_NOFOLLOW|O_NONBLOCK, anything but a regular file or a
directory (a FIFO, a device, a socket) is skipped, and the walk stays on the tree's own file system.
Otherwise `cache/xdg -> /root/secret` would have the gateway read host files into its manifest,
and a link to a FIFO or to /proc could block it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

import orjson

# Where package managers keep what they install (under the per-server cache); their download
# caches and logs change on every run and hold nothing that executes.
INSTALLED = ("npm/_npx", "uv/archive-v0", "uv-tools", "xdg", "pip/wheels")
MAX_FILES = 200_000
MAX_DEPTH = 128  # directories deep; bounds the descriptors held open by the walk
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC


class ArtifactError(Exception):
    """The server's code is not what was verified; the message names the file."""


def tree_digest(root: Path, *, follow_root: bool = True) -> dict[str, str]:
    """Relative path -> "size:sha256" for every regular file, "link:<target>" for every symlink under
    `root` (never followed). `follow_root=False`: `root` itself must not be a symlink (the caller
    recorded it as one)."""
    out: dict[str, str] = {}
    try:
        fd = os.open(root, _DIR | (0 if follow_root else os.O_NOFOLLOW))
    except (FileNotFoundError, NotADirectoryError):
        return out
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ArtifactError(f"{root}: became a symlink while it was being verified") from None
        raise ArtifactError(f"{root}: cannot be read ({exc.strerror})") from None
    try:
        _walk(fd, "", os.fstat(fd).st_dev, out, 0)
    except OSError as exc:  # a directory that cannot be listed
        raise ArtifactError(f"{root}: cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)
    return out


def _walk(fd: int, prefix: str, dev: int, out: dict[str, str], depth: int) -> None:
    """Below the directory `fd`, by descriptor (openat), so no symlink is followed at any level."""
    with os.scandir(fd) as entries:
        for entry in entries:
            rel = prefix + entry.name
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    out[rel] = "link:" + os.readlink(entry.name, dir_fd=fd)
                elif st.st_dev != dev:
                    continue  # another file system mounted here: not the cache's own content
                elif stat.S_ISDIR(st.st_mode):
                    if depth + 1 > MAX_DEPTH:
                        raise ArtifactError(f"{rel}: nested deeper than {MAX_DEPTH} directories; "
                                            "refusing to verify an unbounded tree")
                    child = os.open(entry.name, _DIR | os.O_NOFOLLOW, dir_fd=fd)
                    try:
                        _walk(child, rel + "/", dev, out, depth + 1)
                    finally:
                        os.close(child)
                elif stat.S_ISREG(st.st_mode):
                    digest = _file_digest(entry.name, fd)
                    if digest is not None:
                        out[rel] = digest
            except FileNotFoundError:
                continue  # removed since the listing: absent, as a later listing would find it
            except OSError as exc:
                raise ArtifactError(f"package file {rel} cannot be read ({exc.strerror})") from None
            if len(out) > MAX_FILES:
                raise ArtifactError(f"more than {MAX_FILES} files; refusing to verify an unbounded tree")


def _file_digest(name: str, dir_fd: int) -> str | None:
    """The "size:sha256" of a regular file, opened without following a link and without blocking;
    None when `name` is no longer a regular file (swapped since the listing)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return f"{st.st_size}:{digest}"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def pin_digest(path: Path) -> str:
    """sha256 of a file, or of a directory's canonical manifest."""
    if path.is_dir():
        return hashlib.sha256(orjson.dumps(tree_digest(path), option=orjson.OPT_SORT_KEYS)).hexdigest()
    return _sha256(path)


def cache_manifest(cache: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for sub in INSTALLED:
        path = cache / sub
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise ArtifactError(f"package cache {sub} cannot be read ({exc.strerror})") from None
        if stat.S_ISLNK(mode):  # the server made it a link (xdg -> a host directory): record it, never read it
            out[sub] = "link:" + os.readlink(path)
        elif stat.S_ISDIR(mode):
            for rel, digest in tree_digest(path, follow_root=False).items():
                out[f"{sub}/{rel}"] = digest
    return out


def manifest_path(state_dir: Path, server: str) -> Path:
    return state_dir / "manifests" / f"{server}.json"


def record(state_dir: Path, server: str, cache: Path) -> int:
    """After a run: what the cache holds now is what the next start must find."""
    path = manifest_path(state_dir, server)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    manifest = cache_manifest(cache)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return len(manifest)


def verify(state_dir: Path, server: str, cache: Path) -> None:
    """Before a start; ArtifactError naming the first difference. No manifest yet: nothing to compare."""
    path = manifest_path(state_dir, server)
    try:
        expected = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read the package-cache manifest {path}: {exc}") from None
    actual = cache_manifest(cache)
    for rel in sorted(set(expected) | set(actual)):
        if rel not in actual:
            raise ArtifactError(f"package cache file {rel} was removed since the last run")
        if rel not in expected:
            raise ArtifactError(f"package cache file {rel} appeared since the last run")
        if actual[rel] != expected[rel]:
            raise ArtifactError(f"package cache file {rel} changed since the last run")


def verify_pins(pins: dict[str, str], base_dir: Path) -> None:
    for raw, pinned in sorted(pins.items()):
        path = Path(raw) if Path(raw).is_absolute() else base_dir / raw
        want = pinned.removeprefix("sha256:").lower()
        try:
            got = pin_digest(path)
        except OSError as exc:
            raise ArtifactError(f"pinned artifact {raw}: {exc.strerror}") from None
        if got != want:
            raise ArtifactError(f"pinned artifact {raw} does not match its sha256 pin (it is {got[:16]}…)")
