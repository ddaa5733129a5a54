"""T01 (remote upstream part): a remote server's name that rebinds to an inside address after the
gateway's check is refused when the gateway connects, and the server never sees a request.

The probe-time check sees a public address; the connection's own lookup (a second answer from the
same name) sees loopback. The gateway must dial only what it vetted at connect time
(`transport/vetted_dial.py`). Every lookup goes through a resolver map and every real dial other
than to loopback is stopped by the safety net of tests/test_vetted_dial.py.
"""

from __future__ import annotations

import logging

import pytest

from mcpward.gateway.upstream import Upstream, UpstreamEvents
from mcpward.transport.vetted_dial import RULE_NON_PUBLIC
from tests.test_vetted_dial import PUBLIC, Dns, named_upstream, no_real_dials, remote, system_dns

__all__ = ["named_upstream", "no_real_dials", "system_dns"]  # fixtures used here (the safety net is autouse)


async def test_upstream_refuses_a_name_that_rebinds_after_the_probe_check(
        named_upstream: tuple[int, list[str]], system_dns: Dns, caplog: pytest.LogCaptureFixture) -> None:
    port, hosts = named_upstream
    # The probe-time check sees a public address; the connection's own lookup sees loopback.
    system_dns.answers["mcp.test"] = [[PUBLIC], ["127.0.0.1"]]
    cfg, server = remote(port)
    upstream = Upstream(server, cfg, UpstreamEvents())
    before = len(hosts)
    caplog.set_level(logging.INFO, "mcpward.upstream")
    try:
        await upstream.start()
    finally:
        await upstream.stop()
    assert upstream.era is None and upstream.error is not None
    assert len(hosts) == before  # the server never saw a request
    assert [a for a in system_dns.asked if a[0] == "mcp.test"] == [("mcp.test", port)] * 2
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "mcp.test resolves to the non-public address 127.0.0.1" in logged and RULE_NON_PUBLIC in logged
