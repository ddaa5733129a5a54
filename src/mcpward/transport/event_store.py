"""Replayable SSE streams for legacy Streamable HTTP sessions (SEP-1699 polling).

Each legacy POST answered with SSE gets a stream log. Every event carries the id
`<stream>.<seq>`; the first is a priming event with empty data, so a client that
loses the connection mid-call can reconnect with GET and `Last-Event-ID` and get
the rest, including the final answer. The request keeps running meanwhile:
on the legacy transport a disconnect is not a cancellation.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
from dataclasses import dataclass, field

from mcpward.protocol.jsonrpc import JsonObj

MAX_STREAMS = 64
MAX_EVENTS = 2048


@dataclass(slots=True)
class StreamLog:
    id: str
    events: list[JsonObj | None] = field(default_factory=list)  # None = the priming event
    done: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def append(self, message: JsonObj | None) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append(message)
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def event_id(self, index: int) -> str:
        return f"{self.id}.{index}"


class EventStore:
    def __init__(self) -> None:
        self._streams: collections.OrderedDict[str, StreamLog] = collections.OrderedDict()

    def open(self) -> StreamLog:
        log = StreamLog(secrets.token_hex(8))
        log.append(None)
        self._streams[log.id] = log
        while len(self._streams) > MAX_STREAMS:
            self._streams.popitem(last=False)
        return log

    def resume_point(self, last_event_id: str) -> tuple[StreamLog, int] | None:
        """The stream and the index of the first event after `last_event_id`."""
        stream_id, _, index = last_event_id.partition(".")
        log = self._streams.get(stream_id)
        if log is None or not index.isdigit() or int(index) >= len(log.events):
            return None
        return log, int(index) + 1
