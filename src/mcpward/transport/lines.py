"""Newline-delimited JSON framing over asyncio streams, with a hard frame cap.

Both the stdio front and stdio upstreams use this. An oversized frame is
consumed and reported (with the request id when it can be seen cheaply), so one
bad message never wedges the stream or silently disappears.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

_ID_PROBE = re.compile(rb'"id"\s*:\s*(-?\d{1,18}|"[^"\\]{0,200}")')


@dataclass(slots=True)
class Frame:
    data: bytes
    oversized: bool = False
    size: int = 0
    probed_id: str | int | None = None


def probe_id(head: bytes) -> str | int | None:
    """Best-effort id from the first bytes of a frame too large to parse."""
    match = _ID_PROBE.search(head[:4096])
    if not match:
        return None
    raw = match.group(1)
    if raw.startswith(b'"'):
        return raw[1:-1].decode("utf-8", "replace")
    return int(raw)


async def read_frames(reader: asyncio.StreamReader, max_bytes: int) -> AsyncIterator[Frame]:
    """Yield one Frame per line until EOF; blank lines are skipped."""
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                yield Frame(exc.partial.strip(), size=len(exc.partial))
            return
        except asyncio.LimitOverrunError as exc:
            head = await reader.readexactly(exc.consumed)
            size = len(head) + await _discard_line(reader)
            yield Frame(b"", oversized=True, size=size, probed_id=probe_id(head))
            continue
        stripped = line.strip()
        if not stripped:
            continue
        if len(stripped) > max_bytes:
            yield Frame(b"", oversized=True, size=len(stripped), probed_id=probe_id(stripped))
            continue
        yield Frame(stripped, size=len(stripped))


async def _discard_line(reader: asyncio.StreamReader) -> int:
    """Drop the rest of an overlong line; return how many bytes were dropped."""
    dropped = 0
    while True:
        try:
            chunk = await reader.readuntil(b"\n")
            return dropped + len(chunk)
        except asyncio.LimitOverrunError as exc:
            dropped += len(await reader.readexactly(exc.consumed))
        except asyncio.IncompleteReadError as exc:
            return dropped + len(exc.partial)
