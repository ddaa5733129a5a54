"""A bare asyncio JSON-RPC pass-through over stdio: the floor a Python proxy hop can reach (reference row).

    python bench/asyncio_proxy.py -- /path/to/python bench/raw_server.py

Parses every message (json), remaps request ids so upstream ids never collide, and
forwards both ways. No policy, no validation: what protocol.md §3.2 measured at ~+0.16 ms.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from typing import Any


async def main(command: list[str]) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout.buffer)
    stdout = asyncio.StreamWriter(transport, protocol, None, loop)
    up = await asyncio.create_subprocess_exec(*command, stdin=asyncio.subprocess.PIPE,
                                              stdout=asyncio.subprocess.PIPE, limit=1 << 24)
    assert up.stdin is not None and up.stdout is not None
    up_in, up_out = up.stdin, up.stdout
    ids = itertools.count(1)
    pending: dict[int, Any] = {}

    async def downstream() -> None:
        while line := await stdin.readline():
            msg = json.loads(line)
            if "id" in msg and "method" in msg:
                new_id = next(ids)
                pending[new_id] = msg["id"]
                msg["id"] = new_id
            up_in.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        up_in.close()

    async def upstream() -> None:
        while line := await up_out.readline():
            msg = json.loads(line)
            if "id" in msg and "method" not in msg:
                msg["id"] = pending.pop(msg["id"], msg["id"])
            stdout.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    try:
        await asyncio.gather(downstream(), upstream())
    finally:
        if up.returncode is None:
            up.kill()
        await up.wait()


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.exit("usage: asyncio_proxy.py -- UPSTREAM_COMMAND...")
    asyncio.run(main(args))
