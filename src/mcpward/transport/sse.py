"""Server-Sent Events framing, sans-IO: an incremental parser and an encoder.

The parser follows the WHATWG event-stream rules (any of CRLF, LF or CR ends a
line; `:` starts a comment; one optional space after the colon is dropped; `id`
with a NUL is ignored; `retry` must be all digits). It works on bytes so chunk
boundaries may fall anywhere, even inside a CRLF pair or a multi-byte UTF-8
character, and so the size cap counts real bytes.

One deliberate difference from a browser's EventSource: a block that sets only
`id` or `retry` (no `data`) is still yielded, with `data == ""`, because MCP
servers send such "priming" blocks to hand out a resumption cursor.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
# Room for a field name and colon on top of the data cap, so a line holding exactly
# `max_data_bytes` of data is still accepted.
_LINE_SLACK = 64


@dataclass(slots=True, frozen=True)
class SseEvent:
    data: str = ""
    event: str = "message"
    id: str | None = None  # this block's `id` field, if it had one
    retry: int | None = None  # this block's `retry` field (milliseconds), if valid


class SseLimitError(ValueError):
    """An event's data (or one line) grew past the parser's byte cap."""


class SseParser:
    """Feed chunks with `feed()`; iterate the events each chunk completes.

    `last_event_id` and `retry` keep the stream-wide values (the cursor to resume
    from with `Last-Event-ID`, and the server's reconnection delay).
    """

    def __init__(self, max_data_bytes: int | None = None) -> None:
        self.max_data_bytes = max_data_bytes
        self.last_event_id: str | None = None
        self.retry: int | None = None
        self._buf = bytearray()
        self._started = False  # the BOM may only appear at the very start
        self._scanned = 0  # bytes at the buffer's start known to hold no line end
        self._reset_block()

    def _reset_block(self) -> None:
        self._data: list[bytes] = []
        self._data_bytes = 0
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._has_fields = False

    def feed(self, chunk: bytes | str) -> Iterator[SseEvent]:
        """Add a chunk; iterate the result for every event now complete, in order.

        The chunk is buffered at once; parsing happens as the iterator is consumed,
        so events before a `SseLimitError` still reach the caller.
        """
        self._buf += chunk.encode("utf-8") if isinstance(chunk, str) else chunk
        return self._events()

    def _events(self) -> Iterator[SseEvent]:
        if not self._started:
            if len(self._buf) < len(_BOM) and _BOM.startswith(bytes(self._buf)):
                return  # could still be a BOM; wait for more
            if self._buf.startswith(_BOM):
                del self._buf[: len(_BOM)]
            self._started = True
        buf = self._buf
        pos = scan_end = 0
        try:
            while True:
                # Resume the search where the last chunk's ended: a long line arriving
                # in many small chunks is then scanned once, not once per chunk.
                match = _LINE_END.search(buf, max(pos, self._scanned))
                # A CR at the very end may be the first half of a CRLF: wait for more.
                if match is None or (match.group() == b"\r" and match.end() == len(buf)):
                    scan_end = len(buf) if match is None else match.start()
                    break
                line = bytes(buf[pos : match.start()])
                pos = match.end()
                event = self._process_line(line)
                if event is not None:
                    yield event
        finally:
            del buf[:pos]
            self._scanned = max(scan_end - pos, 0)
        limit = self.max_data_bytes
        if limit is not None and len(buf) > limit + _LINE_SLACK:
            raise SseLimitError(f"SSE line longer than {limit + _LINE_SLACK} bytes")

    def _process_line(self, line: bytes) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            return None  # comment, e.g. a keep-alive
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._data_bytes += len(value) + (1 if len(self._data) > 1 else 0)
            limit = self.max_data_bytes
            if limit is not None and self._data_bytes > limit:
                self._reset_block()
                raise SseLimitError(f"SSE event data larger than {limit} bytes")
            self._has_fields = True
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
            self._has_fields = True
        elif name == b"id" and b"\x00" not in value:
            self._id = value.decode("utf-8", "replace")
            self.last_event_id = self._id
            self._has_fields = True
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)
            self.retry = self._retry
            self._has_fields = True
        # Unknown field names are ignored, as the SSE standard requires.
        return None

    def _dispatch(self) -> SseEvent | None:
        if not self._has_fields:
            return None
        event = SseEvent(
            data=b"\n".join(self._data).decode("utf-8", "replace"),
            event=self._event or "message",
            id=self._id,
            retry=self._retry,
        )
        self._reset_block()
        return event


def _single_line(value: str, what: str) -> str:
    # A CR or LF inside a field would start a new field: header-injection for SSE.
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError(f"SSE {what} must not contain CR, LF or NUL")
    return value


def encode_event(
    data: bytes,
    event_id: str | None = None,
    event: str | None = None,
    *,
    retry: int | None = None,
) -> bytes:
    """One SSE event block. Multi-line data becomes several `data:` lines."""
    out = bytearray()
    if event_id is not None:
        out += b"id: " + _single_line(event_id, "id").encode("utf-8") + b"\n"
    if event is not None:
        out += b"event: " + _single_line(event, "event name").encode("utf-8") + b"\n"
    if retry is not None:
        if retry < 0:
            raise ValueError("SSE retry must be a non-negative number of milliseconds")
        out += b"retry: %d\n" % retry
    for line in _LINE_END.split(data):
        out += b"data: " + line + b"\n" if line else b"data:\n"
    out += b"\n"
    return bytes(out)


def encode_comment(text: str = "") -> bytes:
    """A comment block, used as a keep-alive on long-lived streams."""
    return b":" + _single_line(text, "comment").encode("utf-8") + b"\n\n"
