"""An oversized stdio frame is refused with a rule id, an audit record and the setting's name.

The same refusal on the HTTP front is rule `http.body-size` (413, audited); the stdio front answers
the frame's own id with -32600, names `[gateway] max_message_bytes`, and keeps serving.
"""

from __future__ import annotations

from typing import Any

from mcpward.protocol import jsonrpc
from tests.test_stdio_framing import Pipes, request


async def test_an_oversized_frame_is_refused_by_name_and_audited(recorded: list[tuple[str, dict[str, Any]]]) -> None:
    pipes = Pipes(max_bytes=1024)
    big = b'{"jsonrpc":"2.0","id":"huge","method":"tools/call","params":{"s":"' + b"p" * 4000 + b'"}}'
    await pipes.send(big + b"\n" + request(2))
    replies = await pipes.replies(2)
    await pipes.close()
    refused = next(r for r in replies if r["id"] == "huge")
    assert refused["error"]["code"] == jsonrpc.INVALID_REQUEST
    assert refused["error"]["data"] == {"rule": "stdio.message-size"}
    assert refused["error"]["message"] == (
        f"message of {len(big) + 1} bytes exceeds the 1024-byte limit ([gateway] max_message_bytes)")
    assert any(r["id"] == 2 for r in replies)  # the next frame is served as usual
    assert recorded == [("stdio.refused", {"rule": "stdio.message-size", "size": len(big) + 1, "limit": 1024})]
