"""A legacy server's log lines reach a legacy client that never sent `logging/setLevel`.

In the initialize era a server may log before (or without) any `logging/setLevel`, and a client
talking to it directly receives those lines. Through the gateway the same must hold, still through
the output guard (the line carries a key, which arrives redacted), while a level the client did set
still filters, and a modern client, which opts in per request, gets none without a level.
The server is fault_server.py --legacy: its `sample` tool with `leak` logs an `error` line holding a
fake AWS key, then asks the client's model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
from mcp import Client, StdioServerParameters

from tests.conftest import MCPWARD, with_policy
from tests.threats.mcp_http import LEGACY_PUSHER, MODERN

AWS = "AKIA" + "QWADE5R4" + "2RDZ4JEM"  # the fixture's fake key, assembled so no whole key sits here


async def logged_lines(tmp_path: Path, mode: str, level: types.LoggingLevel | None) -> list[dict[str, Any]]:
    """Run one `sample` call through `mcpward run`; the log lines the client received."""
    config = tmp_path / "mcpward.toml"
    config.write_text(with_policy(LEGACY_PUSHER))
    logged: list[dict[str, Any]] = []

    async def sampling(_ctx: Any, _params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(role="assistant", model="m", content=types.TextContent(type="text", text="ok"))

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append(params.model_dump(mode="json"))

    target = StdioServerParameters(command=str(MCPWARD), args=["run", "-c", str(config)])
    with anyio.fail_after(90):
        async with Client(target, mode=mode, sampling_callback=sampling, logging_callback=on_log) as client:  # type: ignore[arg-type]
            if level is not None:
                await client.set_logging_level(level)
            result = await client.call_tool("legacy__sample", {"prompt": "summarise", "leak": True})
            assert not result.is_error
            # The line travels beside the answer: give it a moment to arrive.
            with anyio.move_on_after(2):
                while not logged:
                    await anyio.sleep(0.05)
    return logged


async def test_a_legacy_client_without_a_level_gets_the_servers_log_lines_redacted(tmp_path: Path) -> None:
    logged = await logged_lines(tmp_path, "legacy", None)
    assert [line["level"] for line in logged] == ["error"]
    text = json.dumps(logged)
    assert AWS not in text and "[REDACTED:" in text and "connecting with" in text


async def test_a_level_the_legacy_client_set_still_filters(tmp_path: Path) -> None:
    assert await logged_lines(tmp_path, "legacy", "critical") == []


async def test_a_modern_client_without_a_level_gets_no_log_lines(tmp_path: Path) -> None:
    assert await logged_lines(tmp_path, MODERN, None) == []
