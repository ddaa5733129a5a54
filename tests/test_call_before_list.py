"""A client that calls a tool before it ever listed tools gets the same guards as one that listed first.

The definition (input schema, annotations) feeds the argument guard's schema validation and parameter
kinds and the policy's annotations. The gateway used to read it before anything had listed the server,
so a first call by a name skipped all of that (only the integrity guard listed for itself).
A real `mcpward run` over stdio in front of the recording fixture; the record file shows what reached it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, PYTHON
from tests.rawclient import RawStdioClient

pytestmark = pytest.mark.asyncio


def config(record: Path, base: str) -> str:
    record.touch()
    record.chmod(0o666)
    return (f'[policy]\nbase = "{base}"\n\n[servers.rec]\ncommand = "{PYTHON}"\n'
            f'args = ["{FIXTURES / "recording_server.py"}", "--record", "{record}"]\n'
            f'sandbox = {{ rw = ["{record}"] }}\n')


async def test_first_call_before_any_list_is_schema_checked(write_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    record = tmp_path / "calls.jsonl"
    client = await RawStdioClient.start(write_config(config(record, "permit-all")))
    try:
        reply = await client.call("rec__count", {"n": "notanint"}, timeout=60)  # the very first request
        assert reply["error"]["data"]["rule"].startswith("args.schema"), reply
        ok = await client.call("rec__count", {"n": 3})
        assert "result" in ok and not ok["result"].get("isError"), ok
    finally:
        await client.close()
    assert [json.loads(line) for line in record.read_text().splitlines()] == [{"tool": "count", "arguments": {"n": 3}}]


async def test_first_call_before_any_list_sees_the_annotations(write_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # `readonly` permits read-only tools only: it needs the annotations to tell.
    record = tmp_path / "calls.jsonl"
    client = await RawStdioClient.start(write_config(config(record, "readonly")))
    try:
        reply = await client.call("rec__echo", {"text": "hi"}, timeout=60)
        assert "result" in reply and not reply["result"].get("isError"), reply
    finally:
        await client.close()
