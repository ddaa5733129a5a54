"""T22 anomalous tool sequences and T29 scripted abuse, through a running gateway.

T22: a call whose result held a credential (the leaky server's AWS key, redacted on the way) and
then a call to a tool that sends outward (the operator marks `fetch` open-world) raise one
`toxic_flow` alert: in the audit log and at the webhook, a real loopback receiver.
T29: six tool calls in under a second by one principal raise exactly one `rapid_calls` alert; with
`action = "throttle"` the principal's next calls are refused, naming the rule.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.audit_reader import committed
from tests.conftest import FIXTURES, PYTHON
from tests.test_http_link import serve
from tests.threats.identity_support import modern_call, reply_of
from tests.threats.test_t01_ssrf import RESOLVER_MAP, recording_config

LEAKY = f'[servers.leaky]\ncommand = "{PYTHON}"\nargs = ["{FIXTURES / "leaky_server.py"}"]\n'


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []

    async def hook(request: Request) -> Response:
        got.append(orjson.loads(await request.body()))
        return Response(status_code=204)

    for base in serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])])):
        yield base + "/hook", got


def alerts(config_dir: Path, at_least: int = 0) -> list[dict[str, Any]]:
    return [orjson.loads(row) for row in committed(config_dir / "mcpward-audit.sqlite", "anomaly.alert", at_least)]


def wait_for(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    return check()


def test_t22_secret_read_then_network_send_raises_an_alert(serve_gateway, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                           receiver: tuple[str, list[dict[str, Any]]]) -> None:
    hook, got = receiver
    config = (recording_config(tmp_path / "calls.jsonl", f"resolver_map = {RESOLVER_MAP}") + LEAKY
              + '[servers.rec.tools.fetch]\nannotations = { openWorldHint = true }\n'
              + f'[anomaly]\nwebhook = "{hook}"\n')
    url = serve_gateway(config)
    with httpx.Client(trust_env=False, timeout=30) as http:
        leak = reply_of(modern_call(http, url, "tools/call", {"name": "leaky__aws_key", "arguments": {}}, None))
        assert "[REDACTED:aws-access-key-id]" in leak["result"]["content"][0]["text"]
        assert not alerts(tmp_path)  # reading alone is not an anomaly
        send = {"name": "rec__fetch", "arguments": {"url": "https://docs.example.com/upload"}}
        assert "result" in reply_of(modern_call(http, url, "tools/call", send, None, rid=2))
    found = wait_for(lambda: [a for a in alerts(tmp_path) if a["rule"] == "toxic_flow"])
    assert len(found) == 1 and found[0]["principal"] == "anonymous:anonymous"
    assert "leaky__aws_key" in str(found[0]["evidence"]) and "rec__fetch" in str(found[0]["evidence"])
    delivered = wait_for(lambda: [a for a in got if a.get("rule") == "toxic_flow"])
    assert len(delivered) == 1
    assert "AKIA" not in orjson.dumps(got).decode()  # the alert names tools, never values


def test_t29_six_calls_in_a_second_raise_one_alert_and_throttle(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = (recording_config(tmp_path / "calls.jsonl")
              + '[anomaly.rules.rapid_calls]\naction = "throttle"\nthrottle_seconds = 30\n')
    url = serve_gateway(config)
    with httpx.Client(trust_env=False, timeout=30) as http:
        began = time.monotonic()
        for i in range(6):
            reply = reply_of(modern_call(http, url, "tools/call", {"name": "rec__echo", "arguments": {"text": str(i)}},
                                         None, rid=i + 1), i + 1)
            assert "result" in reply, reply
        assert time.monotonic() - began < 1.0, "the machine was too slow to make six calls in a second"
        throttled = reply_of(modern_call(http, url, "tools/call", {"name": "rec__echo", "arguments": {"text": "7"}},
                                         None, rid=7), 7)
        assert throttled["error"]["data"]["rule"] == "anomaly.rapid_calls", throttled
    found = [a for a in alerts(tmp_path, 1) if a["rule"] == "rapid_calls"]
    assert len(found) == 1 and found[0]["principal"] == "anonymous:anonymous"
