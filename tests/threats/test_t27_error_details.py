"""T27: downstream error details leaking to the model.

The leaky server fails three ways with a database connection string in the message: a `ToolError`
(the SDK sends its text as an `isError` result), an unexpected exception (the SDK itself sends only
"Error executing tool crash") and a JSON-RPC error (also a failing resource read). The client never
sees the connection string or the password: tool-error text passes the redactor, JSON-RPC errors
become a generic message with a correlation id, and that id is in the gateway's log next to the
(redacted) details.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from tests.threats.test_t19_sensitive_output import LEAKY, rpc, tool

DSN_PARTS = ("postgres://", "hunter2", "admin:")


def test_error_details_never_reach_the_client(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway(LEAKY)
    with httpx.Client(trust_env=False, timeout=60) as http:
        tool_error = tool(http, url, "tool_error")
        crash = tool(http, url, "crash")
        rpc_error = tool(http, url, "rpc_error")
        resource = rpc(http, url, "resources/read", {"uri": "leaky://broken"})
    for reply in (tool_error, crash, rpc_error, resource):
        flat = json.dumps(reply)
        assert not any(part in flat for part in DSN_PARTS), flat
    result = tool_error["result"]
    assert result["isError"] is True
    assert result["content"][0]["text"] == ("Error executing tool tool_error: cannot connect to "
                                            "[REDACTED:url-credentials] connection refused")
    assert crash["result"]["content"][0]["text"] == "Error executing tool crash"
    ids = []
    for reply in (rpc_error, resource):
        error = reply["error"]
        match = re.fullmatch(r"upstream error \(correlation id ([0-9a-f]{16})\)", error["message"])
        assert match is not None, error
        assert error["data"] == {"correlationId": match.group(1)}
        ids.append(match.group(1))
    assert rpc_error["error"]["code"] == -32603
    log = next(tmp_path.glob("gw-*.log")).read_text()
    for cid in ids:
        line = next(line for line in log.splitlines() if f"upstream error {cid}" in line)
        assert "[REDACTED:url-credentials]" in line
    assert "hunter2" not in log
