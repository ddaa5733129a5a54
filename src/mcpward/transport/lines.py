"""Newline-delimited JSON framing with a hard frame cap, sans-IO.

Both the stdio front and stdio upstreams use this. The caller hands in whatever
bytes its pipe delivered and gets the complete frames back at once, so a chunk
holding many lines costs one call, not one event-loop wake-up per line.

An oversized frame is consumed and reported (with the request id when it can be
seen cheaply: the outermost object's "id" in the first 4 KB, or the "id" member
that closes the object in the last 4 KB, where the TypeScript SDK writes it; an
"id" nested in params never counts), so one bad message never wedges the stream
or silently disappears. The rules match what `asyncio.StreamReader.readuntil` with a limit
of `max_bytes + 1` did before this splitter replaced it:
- a line whose body (before its newline) exceeds `max_bytes + 1` is dropped while
  it streams in, keeping only its first and last bytes for the id probe; its size is the
  line's length including the newline;
- otherwise the line is stripped of ASCII whitespace; a blank line is skipped, a
  stripped line over `max_bytes` is reported with its stripped size;
- at EOF an unterminated last line is a frame as it is (no size check: the
  decoder refuses an oversized one with the same message), or, if it was being
  dropped, an oversized report of the bytes dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

_ID_VALUE = re.compile(rb'\s*:\s*(-?\d{1,18}|"[^"\\]{0,200}")')
# A top-level object's last member being its id: what the TypeScript SDK writes ({..., "jsonrpc", "id"}).
_CLOSING_ID = re.compile(rb'"id"\s*:\s*(-?\d{1,18}|"[^"\\]{0,200}")\s*\}\s*$')
PROBE_BYTES = 4096  # how much of each end of an oversized frame the id probe looks at


@dataclass(slots=True)
class Oversized:
    """A frame over the cap, already dropped: its size and, if visible at either end, its id."""

    size: int
    probed_id: str | int | None = None


# What the splitter yields: a frame's bytes (stripped, never empty), or an oversized report.
Item: TypeAlias = bytes | Oversized


def _value(raw: bytes) -> str | int:
    if raw.startswith(b'"'):
        return raw[1:-1].decode("utf-8", "replace")
    return int(raw)


def _top_level_id(head: bytes) -> str | int | None:
    """The "id" member of the outermost object, if it lies in `head`. Only a key at depth 1 counts,
    so an "id" inside params (a tool argument, say) can never pass for the message's own."""
    depth = 0
    i, n = 0, len(head)
    while i < n:
        c = head[i]
        if c == 0x22:  # a string: skip to its closing quote, remembering where it started
            start = i
            i += 1
            while i < n and head[i] != 0x22:
                i += 2 if head[i] == 0x5C else 1  # a backslash escapes the next byte
            if i >= n:
                return None
            if depth == 1 and head[start:i + 1] == b'"id"' and (match := _ID_VALUE.match(head, i + 1)):
                return _value(match.group(1))
        elif c in b"{[":
            depth += 1
        elif c in b"}]":
            depth -= 1
        i += 1
    return None


def probe_id(head: bytes, tail: bytes = b"") -> str | int | None:
    """Best-effort id of a frame too large to parse, from its first and last bytes: the outermost
    object's "id" when it comes early, or when it is the member that closes the object."""
    found = _top_level_id(head[:PROBE_BYTES])
    if found is not None:
        return found
    match = _CLOSING_ID.search(tail[-PROBE_BYTES:])
    return _value(match.group(1)) if match else None


def probe_line(line: bytes) -> str | int | None:
    """probe_id over a whole line held in memory."""
    return probe_id(line[:PROBE_BYTES], line[-PROBE_BYTES:])


def reply_id(frame: bytes) -> str | int | None:
    """The id of a frame that could not be parsed, when it looks like a JSON-RPC message: its request
    can then be answered with an error now rather than at its timeout."""
    looks_rpc = b'"jsonrpc"' in frame[:PROBE_BYTES] or b'"jsonrpc"' in frame[-PROBE_BYTES:]
    return probe_line(frame) if frame.startswith(b"{") and looks_rpc else None


class LineSplitter:
    """Cuts a byte stream into frames. Memory stays bounded: at most one line of
    `max_bytes + 1` bytes plus the chunk being split is ever held."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._limit = max_bytes + 1  # the longest line body kept whole (StreamReader's old limit)
        self._partial = bytearray()  # the start of a line whose newline has not arrived yet
        self._head: bytes | None = None  # while dropping an overlong line: its first bytes, for the probe
        self._tail = b""  # while dropping: its last bytes so far, for the probe (a closing "id")
        self._dropped = 0  # while dropping: bytes dropped so far

    def feed(self, data: bytes) -> list[Item]:
        """The frames that `data` completes, in order."""
        out: list[Item] = []
        start = 0
        if self._head is not None or self._partial:
            end = data.find(b"\n")
            if end < 0:
                self._keep(data)
                return out
            start = end + 1
            if self._head is not None:
                self._keep(data[:end])
                out.append(Oversized(self._dropped + 1, probe_id(self._head, self._tail)))  # + 1: the newline
                self._head, self._tail, self._dropped = None, b"", 0
            else:
                self._partial += data[:end]
                line = bytes(self._partial)
                self._partial = bytearray()
                self._line(line, out)
        find = data.find
        while (end := find(b"\n", start)) >= 0:
            self._line(data[start:end], out)
            start = end + 1
        if start < len(data):
            self._keep(data[start:])
        return out

    def feed_eof(self) -> list[Item]:
        """What is left when the stream ends: an unterminated last line, if any."""
        if self._head is not None:
            item: Item = Oversized(self._dropped, probe_id(self._head, self._tail))
            self._head, self._tail, self._dropped = None, b"", 0
            return [item]
        stripped = bytes(self._partial).strip()
        self._partial = bytearray()
        return [stripped] if stripped else []

    def _line(self, line: bytes, out: list[Item]) -> None:
        """One complete line, without its newline."""
        if len(line) > self._limit:
            out.append(Oversized(len(line) + 1, probe_line(line)))
            return
        stripped = line.strip()  # the same object when there is nothing to strip: no copy
        if not stripped:
            return
        if len(stripped) > self.max_bytes:
            out.append(Oversized(len(stripped), probe_line(stripped)))
            return
        out.append(stripped)

    def _keep(self, rest: bytes) -> None:
        """Bytes with no newline yet: buffer them, or drop them once the line is over the cap."""
        if self._head is not None:
            self._dropped += len(rest)
            if len(self._head) < PROBE_BYTES:  # the probe sees the same bytes however the line was cut
                self._head += rest[:PROBE_BYTES - len(self._head)]
            self._tail = (self._tail + rest[-PROBE_BYTES:])[-PROBE_BYTES:]
            return
        self._partial += rest
        if len(self._partial) > self._limit:
            # Over the cap and still no newline: stop buffering, keep only what the probe needs.
            self._head = bytes(self._partial[:PROBE_BYTES])
            self._tail = bytes(self._partial[-PROBE_BYTES:])
            self._dropped = len(self._partial)
            self._partial = bytearray()
