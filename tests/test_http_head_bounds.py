"""The HTTP server's request-head bounds (transport/http_limits.py) on uvicorn's httptools protocol:
a head over MAX_HEAD_BYTES gets 431 and the connection closes, while a small head followed by a large
body in the same chunk, or a head whose blank line is split across chunks, is served."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mcpward.transport import http_limits

pytestmark = pytest.mark.asyncio


async def _echo_length(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the size of the body it received."""
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = http_limits.uvicorn_config(_echo_length, "127.0.0.1", sock.getsockname()[1])
    config.lifespan = "off"
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    for _ in range(300):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        sock.close()


async def _exchange(port: int, chunks: list[bytes]) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.05)  # separate reads on the server's side
        try:
            return await asyncio.wait_for(reader.read(), 5)  # the server closes (connection: close)
        except ConnectionResetError:
            return b"RESET"
    finally:
        writer.close()


def _post(body_size: int, extra_header: bytes = b"") -> tuple[bytes, bytes]:
    head = (b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + extra_header
            + b"Content-Length: " + str(body_size).encode() + b"\r\n\r\n")
    return head, b"x" * body_size


async def test_an_endless_head_gets_431_and_is_not_buffered(port: int) -> None:
    # Three chunks, each under the cap on its own: the head is counted across them.
    got = await _exchange(port, [b"GET / HTTP/1.1\r\nHost: a\r\nX-big: " + b"a" * 30_000,
                                 b"a" * 30_000, b"a" * 30_000])
    assert got.startswith(b"HTTP/1.1 431 ") or got == b"RESET"


async def test_a_head_just_under_the_cap_is_served(port: int) -> None:
    head, body = _post(10, b"X-pad: " + b"p" * (http_limits.MAX_HEAD_BYTES - 200) + b"\r\n")
    assert len(head) <= http_limits.MAX_HEAD_BYTES
    got = await _exchange(port, [head + body])
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"\r\n\r\n10")


async def test_a_large_body_in_the_heads_chunk_is_not_counted_as_head(port: int) -> None:
    head, body = _post(200_000)
    got = await _exchange(port, [head + body])
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"200000")


async def test_a_blank_line_split_across_chunks_still_ends_the_head(port: int) -> None:
    head, body = _post(200_000)
    got = await _exchange(port, [head[:-2], head[-2:] + body])
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"200000")
