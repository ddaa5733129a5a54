"""Replayable SSE streams for legacy Streamable HTTP sessions (SEP-1699 polling).

Each legacy POST answered with SSE gets a stream log. Every event carries the id
`<stream>.<seq>`; the first is a priming event with empty data, so a client that
loses the connection mid-call can reconnect with GET and `Last-Event-ID` and get
the rest, including the final answer. The request keeps running meanwhile:
on the legacy transport a disconnect is not a cancellation.

Bounds: a log keeps at most MAX_EVENTS events and a session's logs at most MAX_BYTES of
messages. Over either, the oldest events go first (they are notifications: the final reply
is always the newest event of its stream, so it is never the one dropped), and whole
finished streams go before anything of a running one. Sequence numbers are never reused:
a resume from a dropped event continues at the oldest one kept. A stream fully sent to a
client that stayed to its end is forgotten at once: nobody needs to resume it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from mcpward.protocol import jsonrpc
from mcpward.protocol.jsonrpc import JsonObj

log = logging.getLogger("mcpward.http")

MAX_STREAMS = 64
MAX_EVENTS = 2048
MAX_BYTES = 8 * 1024 * 1024  # per session, over all its stream logs


@dataclass(slots=True)
class StreamLog:
    id: str
    # Encoded once here and sent as is by every replay; None = the priming event.
    events: collections.deque[bytes | None] = field(default_factory=collections.deque)
    first: int = 0  # the sequence number of events[0]: older ones were dropped
    size: int = 0  # bytes held in events
    dropped: int = 0
    done: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    on_grow: Callable[[StreamLog], None] = lambda _log: None
    on_delivered: Callable[[StreamLog], None] = lambda _log: None

    @property
    def end(self) -> int:
        """The sequence number the next event will get."""
        return self.first + len(self.events)

    def append(self, message: JsonObj | None) -> None:
        data = None if message is None else jsonrpc.encode(message)
        self.events.append(data)
        self.size += len(data) if data is not None else 0
        while len(self.events) > MAX_EVENTS:
            self.drop_oldest()
        self.on_grow(self)
        self._wake()

    def drop_oldest(self) -> bool:
        """Drop the oldest event, never the newest (a finished stream's newest is its reply)."""
        if len(self.events) <= 1:
            return False
        data = self.events.popleft()
        self.size -= len(data) if data is not None else 0
        self.first += 1
        self.dropped += 1
        if self.dropped == 1:
            log.warning("SSE stream %s over its replay bounds: dropping its oldest events", self.id)
        return True

    def at(self, index: int) -> tuple[int, bytes | None]:
        """The event at sequence number `index`, or the oldest kept when that one was dropped."""
        index = max(index, self.first)
        return index, self.events[index - self.first]

    def delivered(self) -> None:
        """A client received the whole finished stream, up to its end."""
        self.on_delivered(self)

    def finish(self) -> None:
        self.done = True
        if self.dropped:
            log.warning("SSE stream %s finished; %d of its events were dropped from the replay log",
                        self.id, self.dropped)
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def event_id(self, index: int) -> str:
        return f"{self.id}.{index}"


class EventStore:
    def __init__(self) -> None:
        self._streams: collections.OrderedDict[str, StreamLog] = collections.OrderedDict()
        self.size = 0  # bytes over all logs

    def open(self) -> StreamLog:
        stream = StreamLog(secrets.token_hex(8), on_grow=self._grew, on_delivered=self._delivered)
        stream.append(None)
        self._streams[stream.id] = stream
        while len(self._streams) > MAX_STREAMS:
            self._forget(self._oldest(finished_only=True) or self._oldest(finished_only=False))
        return stream

    def _delivered(self, stream: StreamLog) -> None:
        # The whole of a finished stream reached a client: nobody needs to resume it.
        if stream.done:
            self._forget(stream)

    def resume_point(self, last_event_id: str) -> tuple[StreamLog, int] | None:
        """The stream and the index of the first event after `last_event_id`."""
        stream_id, _, index = last_event_id.partition(".")
        stream = self._streams.get(stream_id)
        if stream is None or not index.isdigit() or int(index) >= stream.end:
            return None
        return stream, int(index) + 1

    def _grew(self, stream: StreamLog) -> None:
        if stream.id not in self._streams:
            return  # forgotten already (still followed by a live reader): no longer ours to count
        # Recounted from the logs' own sizes (at most MAX_STREAMS): a log trims itself before it reports.
        self.size = sum(s.size for s in self._streams.values())
        while self.size > MAX_BYTES:
            victim = self._oldest(finished_only=True)
            if victim is not None:
                self._forget(victim)
                continue
            # Only running streams left: their oldest notifications go, oldest stream first.
            if not any(s.drop_oldest() for s in self._streams.values()):
                return  # each holds one event only; bounded by the message size limit
            self.size = sum(s.size for s in self._streams.values())

    def _oldest(self, finished_only: bool) -> StreamLog | None:
        for stream in self._streams.values():
            if stream.done or not finished_only:
                return stream
        return None

    def _forget(self, stream: StreamLog | None) -> None:
        if stream is not None and self._streams.get(stream.id) is stream:
            del self._streams[stream.id]
            self.size -= stream.size
