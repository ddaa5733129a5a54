"""T05: log injection and credential leaks into logs.

`mcpward serve -v` in front of the leaky server, which returns an AWS key and a forged log line
(CR/LF, a fake timestamp and an `mcpward.audit` record) and also writes what it returns to its own
stderr, which the gateway logs. After calls that leak a key, a token, a connection string and a
traceback, the gateway's log holds none of them in clear, every line starts with the gateway's
own timestamp (no forged record, no raw escape character), and the audit records count what was
redacted without the values. The client's result is redacted as well.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.audit_reader import committed
from tests.conftest import MCPWARD, free_port, stop, wait_port
from tests.threats.identity_support import audit_bytes
from tests.threats.test_t19_sensitive_output import AWS, GH, LEAKY, tool

LINE_START = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: |^  \| ")


@pytest.fixture
def verbose_gateway(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    config = tmp_path / "mcpward.toml"
    config.write_text(f"[gateway]\nport = {port}\n" + LEAKY)
    log = tmp_path / "gateway.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([MCPWARD, "serve", "-v", "-c", str(config)], stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            wait_port(port, proc)
            yield f"http://127.0.0.1:{port}/mcp", log
        finally:
            stop(proc)


def test_nothing_secret_or_forged_reaches_the_log(verbose_gateway: tuple[str, Path]) -> None:
    url, log = verbose_gateway
    with httpx.Client(trust_env=False, timeout=60) as http:
        forged = tool(http, url, "forged_log")
        for name in ("aws_key", "github_token", "tool_error", "crash", "rpc_error", "terminal"):
            tool(http, url, name)
    text = forged["result"]["content"][0]["text"]
    assert AWS not in text and text.endswith("key=[REDACTED:aws-access-key-id]")
    content = log.read_text("utf-8")
    assert "returning" in content and "Traceback" in content  # the server's own logging did arrive
    for value in (AWS, GH, "hunter2", "postgres://admin", "\x1b", "\r"):
        assert value not in content, value
    lines = content.splitlines()
    bad = [line for line in lines if line and not LINE_START.match(line)]
    assert bad == [], bad
    assert not any(line.startswith("2026-01-01 00:00:00,000") for line in lines)
    audit = [line for line in lines if " mcpward.audit: " in line]
    assert any('"redacted":{"aws-access-key-id":' in line for line in audit), audit
    # The hash-chained audit log beside the config holds the same records, just as clean.
    database = audit_bytes(log.parent)
    for value in (AWS.encode(), GH.encode(), b"hunter2", b"postgres://admin", b"2026-01-01 00:00:00,000"):
        assert value not in database, value
    outputs = committed(log.parent / "mcpward-audit.sqlite", "output")
    assert any('"aws-access-key-id":' in body for body in outputs), outputs
