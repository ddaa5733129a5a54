"""A remote server whose name resolves to a non-public address is refused before any connection.

The resolver is a map inside the test: names point at the metadata address or at
loopback, and the assertion is that the gateway never opens a connection at all.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from mcpward.gateway import config
from mcpward.gateway.upstream import Upstream, UpstreamEvents

RESOLVER = {"metadata.test": "169.254.169.254", "mapped.test": "::ffff:127.0.0.1", "private.test": "10.0.0.7"}


@pytest.mark.parametrize("host", sorted(RESOLVER))
async def test_non_public_resolution_is_refused(host: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def fake_getaddrinfo(name: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        family = socket.AF_INET6 if ":" in RESOLVER[name] else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (RESOLVER[name], port))]

    opened: list[str] = []

    async def no_connect(self: Any) -> None:
        opened.append("connection attempted")

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
    monkeypatch.setattr("mcpward.transport.http_link.HttpLink.open", no_connect)
    cfg = config.parse({"servers": {"remote": {"url": f"https://{host}/mcp"}}}, "test")
    upstream = Upstream(cfg.servers["remote"], cfg, UpstreamEvents())
    await upstream.start()
    assert upstream.era is None
    assert upstream.error is not None and "non-public address" in upstream.error
    assert opened == []
    await upstream.stop()
