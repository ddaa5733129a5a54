"""T30 failing or slow tools: a tool that times out trips its breaker; calls then fail fast; a
half-open probe after the open period closes it again once the tool has recovered.

The fixture server's `slow` tool answers after the seconds it is asked for; the server's timeout
is shorter, so those calls end as gateway timeouts, which is what a hung tool looks like.
"""

from __future__ import annotations

import time

import httpx

from tests.conftest import FIXTURES, PYTHON
from tests.threats.mcp_http import call

OPEN_SECONDS = 2.0
CONFIG = f"""
[servers.fault]
command = "{PYTHON}"
args = ["{FIXTURES / "fault_server.py"}"]
timeout = 0.5

[limits.breaker]
window_seconds = 60
min_calls = 3
error_rate = 0.10
open_seconds = {OPEN_SECONDS}
"""


def slow(http: httpx.Client, url: str, seconds: float, rid: int) -> tuple[float, dict]:  # type: ignore[type-arg]
    began = time.monotonic()
    _, reply = call(http, url, "tools/call", {"name": "fault__slow", "arguments": {"seconds": seconds}}, rid=rid)
    return time.monotonic() - began, reply


def test_timeouts_trip_the_breaker_then_a_probe_closes_it(serve_gateway) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway(CONFIG)
    with httpx.Client(trust_env=False, timeout=30) as http:
        # The single-threaded fixture works through each 1 s sleep in turn; the gateway gives up after 0.5 s.
        for rid in range(1, 4):
            _, reply = slow(http, url, 1, rid)
            assert reply["error"]["code"] == -32005, reply  # the gateway's request timeout
        # Open: refused at once, without waiting for the tool, with the time left as retry-after.
        took, reply = slow(http, url, 1, 10)
        assert reply["error"]["data"]["rule"] == "limits.breaker-open", reply
        assert 0 < reply["error"]["data"]["retryAfter"] <= OPEN_SECONDS
        assert took < 0.4
        time.sleep(OPEN_SECONDS + 0.2)
        # Other tools of the same server were never affected.
        _, echo = call(http, url, "tools/call", {"name": "fault__echo", "arguments": {"text": "hi"}}, rid=11)
        assert echo["result"]["content"][0]["text"] == "hi"
        # Half-open: the tool has recovered (it answers at once); the probe succeeds and closes it.
        _, reply = slow(http, url, 0, 12)
        assert reply["result"]["content"][0]["text"] == "slow answer", reply
        for rid in range(13, 16):
            _, reply = slow(http, url, 0, rid)
            assert "result" in reply, reply
