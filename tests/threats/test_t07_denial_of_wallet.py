"""T07 denial of wallet: a scripted client fires 1,000 calls at an expensive tool.

The per-tool cost quota cuts hard: the upstream (a recording server, one line per call it really
ran) sees exactly the budget, every excess call is refused with a JSON-RPC error naming the rule
and carrying a retry-after. With two gateway processes sharing one Redis, the budget is one
global budget, not one per replica.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_limits_redis import REDIS, start_redis
from tests.threats.mcp_http import call
from tests.threats.test_t01_ssrf import recorded, recording_config

CALLS = 1000
COST, BUDGET = 3, 60  # floor(60 / 3) = 20 calls may run


def limits_table(storage: str = "memory://") -> str:
    # The principal's own bucket is generous here: this test is about the tool's cost quota.
    return (f'[limits]\nstorage = "{storage}"\nrate = 100000\nburst = 100000\n\n'
            f'[limits.tools."rec__run"]\ncost = {COST}\nbudget = {BUDGET}\nperiod = "day"\nper = "gateway"\n')


def fire(http: httpx.Client, url: str, n: int, start: int = 0) -> tuple[int, list[dict[str, Any]]]:
    allowed, refused = 0, []
    for i in range(start, start + n):
        status, reply = call(http, url, "tools/call", {"name": "rec__run", "arguments": {"command": f"job {i}"}},
                             rid=i + 1)
        assert status in (200, 400), status
        if "error" in reply:
            refused.append(reply["error"])
        else:
            assert reply["result"].get("isError") is not True, reply
            allowed += 1
    return allowed, refused


def test_a_thousand_calls_spend_exactly_the_budget(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    record = tmp_path / "calls.jsonl"
    url = serve_gateway(recording_config(record) + limits_table())
    with httpx.Client(trust_env=False, timeout=30) as http:
        allowed, refused = fire(http, url, CALLS)
    assert allowed == BUDGET // COST
    assert len(refused) == CALLS - BUDGET // COST
    first = refused[0]
    assert first["data"]["rule"] == "limits.quota"
    assert first["data"]["retryAfter"] > 0 and "retry after" in first["message"]
    assert len([r for r in recorded(record) if r["tool"] == "run"]) == BUDGET // COST


def test_the_principal_bucket_refuses_a_burst_with_retry_after(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    record = tmp_path / "calls.jsonl"
    url = serve_gateway(recording_config(record) + '[limits]\nrate = 100\nburst = 20\n')
    with httpx.Client(trust_env=False, timeout=30) as http:
        replies = [call(http, url, "tools/call", {"name": "rec__echo", "arguments": {"text": str(i)}}, rid=i + 1)[1]
                   for i in range(30)]
    errors = [r["error"] for r in replies if "error" in r]
    assert len(replies) - len(errors) == 20  # the default burst
    assert all(e["data"]["rule"] == "limits.rate" and e["data"]["retryAfter"] > 0 for e in errors)
    assert len([r for r in recorded(record) if r["tool"] == "echo"]) == 20


@pytest.mark.skipif(not Path(REDIS).exists(), reason="redis-server is not installed (the CI installs it)")
def test_two_replicas_sharing_redis_enforce_one_global_budget(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    redis = start_redis()
    try:
        record = tmp_path / "calls.jsonl"
        config = recording_config(record) + limits_table(redis.uri)
        first, second = serve_gateway(config), serve_gateway(config)
        with httpx.Client(trust_env=False, timeout=30) as http:
            allowed = 0
            for i in range(0, 200, 2):  # alternate replicas, call by call
                allowed += fire(http, first, 1, i)[0] + fire(http, second, 1, i + 1)[0]
        assert allowed == BUDGET // COST
        assert len([r for r in recorded(record) if r["tool"] == "run"]) == BUDGET // COST
    finally:
        redis.kill()
