"""The edge between the sans-IO core and real I/O: a link carries JSON-RPC messages.

An upstream link (a child process's stdio, or a Streamable HTTP endpoint) is just a
pipe of messages. Correlating requests with responses, timeouts and routing live
above it in `gateway.peer`, so each transport stays small and testable.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field

from mcpward.protocol.jsonrpc import JsonObj, RequestId

MessageHandler = Callable[[JsonObj], None]
ClosedHandler = Callable[[str], None]


class LinkError(Exception):
    """The link cannot carry the message (closed, refused, broken framing)."""


@dataclass(slots=True)
class SendHints:
    """Transport hints for one outgoing message.

    HTTP uses them for the modern per-request headers that mirror the body
    (`Mcp-Param-*` come from the tool's schema, which only the gateway knows).
    """

    headers: dict[str, str] = field(default_factory=dict)


class MessageLink(abc.ABC):
    """A bidirectional pipe of JSON-RPC messages to one upstream server."""

    def __init__(self) -> None:
        self.on_message: MessageHandler = lambda _msg: None
        self.on_closed: ClosedHandler = lambda _reason: None

    @abc.abstractmethod
    async def open(self) -> None:
        """Start the process or check the endpoint; raise LinkError on failure."""

    @abc.abstractmethod
    async def send(self, message: JsonObj, hints: SendHints | None = None) -> None:
        """Deliver one message; raise LinkError if the link is down."""

    def abandon(self, request_id: RequestId) -> None:  # noqa: B027 - optional hook
        """Stop listening for a request's answer (modern HTTP: close its stream = cancel)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Shut down gracefully; never raises."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short human description for logs and `mcpward check` (never secrets)."""
