"""T15 (and the egress part of T01): unrestricted egress from a server.

A sandboxed server has no route anywhere; its only way out is the gateway's egress proxy, planted
in its network namespace, which lets through exactly the declared hosts. Shown with the hostile
fixture (Python urllib through the proxy variables) and with the real PyPI `mcp-server-fetch`,
allowed only to a loopback test site (`site.test` pinned to 127.0.0.1 by the `resolve` map, and
that one ip:port excepted with `allow_private`). Every target here is on loopback, so a proxy that
failed open would still only reach this machine; the metadata and private-range refusals are
shown against a recording dialler in tests/test_egress.py.
"""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PYTHON
from tests.threats.sandbox_support import Gateway, escape_server, need_bwrap

pytestmark = pytest.mark.timeout(180)
PAGE = "hello from the allowed site"


class _Site(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        _Site.hits.append(f"{self.headers.get('Host')} {self.path}")
        body = (f"<html><body><p>{PAGE}</p></body></html>" if self.path != "/robots.txt" else "").encode()
        self.send_response(200 if self.path != "/robots.txt" else 404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def site() -> Iterator[int]:
    _Site.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def egress(server: str, port: int) -> str:
    return f"""
[servers.{server}.sandbox.egress]
allow = ["site.test:{port}", "loop.test:{port}"]
allow_private = ["127.0.0.1:{port}"]
resolve = {{ "site.test" = "127.0.0.1", "loop.test" = "127.0.0.2", "mapped.test" = "::ffff:127.0.0.1" }}
"""


async def test_sandboxed_server_reaches_its_allowlisted_host_and_nothing_else(tmp_path: Path, site: int) -> None:
    need_bwrap()
    gw = await Gateway.launch(tmp_path, escape_server("box", egress("box", site)) + escape_server("closed"))
    try:
        ok = await gw.attempt("box__attempt", "http_get", f"http://site.test:{site}/page")
        assert ok["escaped"] and PAGE in ok["detail"], ok
        refused = {
            "unlisted name": f"http://elsewhere.test:{site}/",
            "wrong port": f"http://site.test:{site + 1 if site < 65535 else site - 1}/",
            "ip literal": f"http://127.0.0.1:{site}/",
            "hex ip literal": f"http://0x7f000001:{site}/",
            "resolves to another loopback address": f"http://loop.test:{site}/",
            "ipv4-mapped ipv6": f"http://mapped.test:{site}/",
        }
        for why, url in refused.items():
            result = await gw.attempt("box__attempt", "http_get", url)
            assert not result["escaped"], (why, result)
        # A server with no egress declared has no proxy at all.
        closed = await gw.attempt("closed__attempt", "http_get", f"http://site.test:{site}/page")
        assert not closed["escaped"], closed
    finally:
        await gw.close()
    assert _Site.hits == [f"site.test:{site} /page"]  # exactly the one allowed request arrived
    decisions = gw.audit("egress.refused")
    rules = {d["rule"] for d in decisions}
    assert {"egress.host-not-allowlisted", "egress.ip-literal-not-allowlisted",
            "egress.resolved-to-loopback"} <= rules, rules
    assert all(d["server"] == "box" for d in decisions)
    allowed = gw.audit("egress.allowed")
    assert [(d["host"], d["address"]) for d in allowed] == [("site.test", "127.0.0.1")]


async def test_real_fetch_server_sandboxed_behind_the_proxy(tmp_path: Path, site: int) -> None:
    need_bwrap()
    fetch = Path(PYTHON).parent / "mcp-server-fetch"
    if not fetch.exists() and shutil.which("mcp-server-fetch") is None:
        pytest.skip("mcp-server-fetch is not installed (pip install -e '.[test]')")
    config = f"""
[servers.fetch]
command = "{fetch}"
args = ["--ignore-robots-txt"]
# The test exception: the argument guard would refuse a `.test` URL (T01); here the egress proxy
# is the layer under test, so this server's URL arguments may name internal hosts (and the guard
# resolves the test names from a map, never from DNS).
[guards.arguments]
resolver_map = {{ "site.test" = "127.0.0.1", "elsewhere.test" = "127.0.0.1" }}
[guards.arguments.servers.fetch]
allow_private_urls = true
""" + egress("fetch", site)
    gw = await Gateway.launch(tmp_path, config)
    try:
        reply = await gw.call("fetch__fetch", {"url": f"http://site.test:{site}/page", "raw": True}, timeout=60)
        assert "result" in reply, reply
        text = reply["result"]["content"][0]["text"]
        assert PAGE in text and not reply["result"].get("isError"), reply
        blocked = await gw.call("fetch__fetch", {"url": f"http://elsewhere.test:{site}/", "raw": True}, timeout=60)
        assert blocked["result"].get("isError"), blocked
    finally:
        await gw.close()
    assert [h for h in _Site.hits if h.endswith("/page")] == [f"site.test:{site} /page"]
    assert any(d["host"] == "elsewhere.test" for d in gw.audit("egress.refused"))
