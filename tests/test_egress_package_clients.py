"""Package managers through the egress proxy: npm and uv, as a sandboxed server's installer runs them.

They read the proxy from `HTTPS_PROXY` themselves (the sandbox sets it); these tests hand them the
proxy harness of tests/test_egress.py and its TLS origin, trusted through the clients' own CA
variables (`NODE_EXTRA_CA_CERTS`, `SSL_CERT_FILE`). The registry's name resolves to 127.0.0.1
through the proxy's resolve map, so nothing leaves loopback; the origin serves a minimal npm
packument and a one-wheel simple index. Each test skips with the reason when its client is absent.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.test_egress import Origins, _run, _settled, _site_proxy, make_proxy, origins  # noqa: F401 (fixtures)

PACKUMENT = {"name": "left-pad", "dist-tags": {"latest": "1.3.0"},
             "versions": {"1.3.0": {"name": "left-pad", "version": "1.3.0", "description": "served on loopback"}}}


def uv_binary() -> str:
    """uv from the test virtualenv (pip install uv) or else PATH."""
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.exists() else shutil.which("uv")
    if found is None:
        pytest.skip("uv not installed (pip install uv)")
    return found


def tiny_wheel() -> tuple[str, bytes]:
    """A pure-Python wheel with a correct RECORD: (file name, bytes)."""
    files = {"tinypkg/__init__.py": b"VALUE = 'installed through the egress proxy'\n",
             "tinypkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
             "tinypkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: mcpward-tests\nRoot-Is-Purelib: true\n"
                                             b"Tag: py3-none-any\n"}
    record = ""
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{name},sha256={digest},{len(data)}\n"
    record += "tinypkg-1.0.dist-info/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in {**files, "tinypkg-1.0.dist-info/RECORD": record.encode()}.items():
            zf.writestr(name, data)
    return "tinypkg-1.0-py3-none-any.whl", buf.getvalue()


async def test_npm_view_through_the_proxy(make_proxy: Callable[..., Any], origins: Origins,  # noqa: F811
                                          tmp_path: Path) -> None:
    # npm's own agent trusts its `cafile` setting, not NODE_EXTRA_CA_CERTS (checked: npm 11 on Node 20
    # reports SELF_SIGNED_CERT_IN_CHAIN with only the latter).
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm not installed")
    origins.served["/left-pad"] = (json.dumps(PACKUMENT).encode(), "application/json")
    h = await _site_proxy(make_proxy, origins)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "HTTPS_PROXY": h.url,
           "npm_config_cafile": str(origins.cert_path), "npm_config_cache": str(tmp_path / "npm-cache"),
           "npm_config_update_notifier": "false", "NO_UPDATE_NOTIFIER": "1"}
    rc, out, err = await _run([npm, "view", "left-pad", "description", "--fetch-retries", "0", "--registry",
                               f"https://site.test:{origins.tls_port}/"], env)
    assert rc == 0, err
    assert out.strip() == "served on loopback"
    assert {(d.method, d.host, d.port, d.rule) for d in h.decisions} == {
        ("CONNECT", "site.test", origins.tls_port, "egress.allowed")}
    assert h.lookups == [] and {a for a, _ in h.dials} == {"127.0.0.1"}
    # A registry off the allowlist: npm fails, the proxy names the rule, nothing is resolved or dialled.
    dials = len(h.dials)
    rc, _, err = await _run([npm, "view", "left-pad", "--fetch-retries", "0", "--registry",
                             "https://registry.evil.test/"], env)
    assert rc != 0 and h.last().rule == "egress.host-not-allowlisted" and len(h.dials) == dials, err
    await _settled(h)


async def test_uv_pip_install_through_the_proxy(make_proxy: Callable[..., Any], origins: Origins,  # noqa: F811
                                                tmp_path: Path) -> None:
    uv = uv_binary()
    wheel_name, wheel = tiny_wheel()
    digest = hashlib.sha256(wheel).hexdigest()
    index = f'<html><body><a href="/files/{wheel_name}#sha256={digest}">{wheel_name}</a></body></html>'
    origins.served["/simple/tinypkg/"] = (index.encode(), "text/html")
    origins.served[f"/files/{wheel_name}"] = (wheel, "application/octet-stream")
    h = await _site_proxy(make_proxy, origins)
    target = tmp_path / "target"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "HTTPS_PROXY": h.url,
           "SSL_CERT_FILE": str(origins.cert_path), "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
           "UV_NO_CONFIG": "1", "UV_PYTHON_DOWNLOADS": "never"}
    rc, _, err = await _run([uv, "pip", "install", "--python", sys.executable, "--target", str(target),
                             "--index-url", f"https://site.test:{origins.tls_port}/simple", "tinypkg"], env)
    assert rc == 0, err
    assert "installed through the egress proxy" in (target / "tinypkg" / "__init__.py").read_text()
    assert {(d.method, d.host, d.port, d.rule) for d in h.decisions} == {
        ("CONNECT", "site.test", origins.tls_port, "egress.allowed")}
    assert h.lookups == [] and {a for a, _ in h.dials} == {"127.0.0.1"}
    dials = len(h.dials)
    refused = [uv, "pip", "install", "--python", sys.executable, "--target", str(tmp_path / "t2"),
               "--index-url", "https://pypi.evil.test/simple", "tinypkg"]
    rc, _, err = await _run(refused, {**env, "UV_HTTP_RETRIES": "0"})
    assert rc != 0 and h.last().rule == "egress.host-not-allowlisted" and len(h.dials) == dials, err
    await _settled(h)
