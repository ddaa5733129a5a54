"""T08: context flooding: a tool returns megabytes of garbage.

The leaky server's `garbage` tool returns 2 MB of text (the SDK also copies it into
structuredContent, so the upstream result is about 4 MB). Through `mcpward serve` the client gets a
valid result of at most the configured size, with an explicit truncation marker saying how big the
original was; the limit is configurable globally and per tool.
"""

from __future__ import annotations

import httpx
import orjson

from tests.threats.test_t19_sensitive_output import LEAKY, tool


def test_a_flood_is_capped_with_a_marker(serve_gateway) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway(LEAKY)
    with httpx.Client(trust_env=False, timeout=60) as http:
        reply = tool(http, url, "garbage")
    result = reply["result"]
    size = len(orjson.dumps(result))
    assert size <= 262_144 + 1024, size  # the cap, plus the gateway's own _meta added after the guards
    marker = result["content"][-1]["text"]
    assert marker.startswith("[mcpward: result truncated from 4,") and "to at most 262,144 bytes" in marker
    assert result["content"][0]["text"].endswith("[mcpward: truncated]")
    assert isinstance(result["structuredContent"]["result"], str)  # shortened, still the declared shape
    assert result.get("isError") is False
    assert result["_meta"]["mcpward/output"]["truncated"]["limit"] == 262_144


def test_the_cap_is_configurable_globally_and_per_tool(serve_gateway) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway(LEAKY + "[servers.leaky.tools.aws_key]\nmax_result_bytes = 100000\n"
                        "[guards.output]\nmax_result_bytes = 16384\n")
    with httpx.Client(trust_env=False, timeout=60) as http:
        flood = tool(http, url, "garbage")["result"]
        small = tool(http, url, "aws_key")["result"]
    assert len(orjson.dumps(flood)) <= 16_384 + 1024
    assert "to at most 16,384 bytes" in flood["content"][-1]["text"]
    assert "truncated" not in small["_meta"]["mcpward/output"]
