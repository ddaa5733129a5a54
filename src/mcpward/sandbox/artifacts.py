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
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import orjson

# Where package managers keep what they install (under the per-server cache); their download
# caches and logs change on every run and hold nothing that executes.
INSTALLED = ("npm/_npx", "uv/archive-v0", "uv-tools", "xdg", "pip/wheels")
MAX_FILES = 200_000


class ArtifactError(Exception):
    """The server's code is not what was verified; the message names the file."""


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> "size:sha256" for every regular file and symlink under `root`."""
    out: dict[str, str] = {}
    if not root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                out[rel] = f"{path.stat().st_size}:{_sha256(path)}"
            if len(out) > MAX_FILES:
                raise ArtifactError(f"{root}: more than {MAX_FILES} files; refusing to verify an unbounded tree")
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def pin_digest(path: Path) -> str:
    """sha256 of a file, or of a directory's canonical manifest."""
    if path.is_dir():
        return hashlib.sha256(orjson.dumps(tree_digest(path), option=orjson.OPT_SORT_KEYS)).hexdigest()
    return _sha256(path)


def cache_manifest(cache: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for sub in INSTALLED:
        for rel, digest in tree_digest(cache / sub).items():
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
