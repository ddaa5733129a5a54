"""Who is asking, in which era, and how to talk back: the per-request context."""

from __future__ import annotations

import getpass
import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from mcpward.protocol.jsonrpc import JsonObj
from mcpward.protocol.versions import Era

# How a push request (sampling, elicitation, roots) reaches a client that cannot take
# pushes: the MRTR bridge parks the upstream call and answers with InputRequiredResult.
PushSink = Callable[[str, JsonObj], Awaitable[JsonObj]]


@dataclass(frozen=True, slots=True)
class Principal:
    """The party a request is decided for. Authentication fills this in on HTTP."""

    subject: str
    kind: Literal["local-user", "anonymous", "api-key", "oauth"]
    claims: tuple[tuple[str, Any], ...] = ()
    groups: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """One string per distinct principal (limits, sessions, audit): an API key called "alice"
        and an OAuth subject "alice" are different parties."""
        return f"{self.kind}:{self.subject}"

    @classmethod
    def local_user(cls) -> Principal:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = f"uid:{os.getuid()}"
        return cls(subject=name, kind="local-user")

    @classmethod
    def anonymous(cls) -> Principal:
        return cls(subject="anonymous", kind="anonymous")


def session_digest(session_id: str) -> str:
    """A session id is a bearer-ish handle: audit records, spans and refusals carry this digest of it
    (sha256, 16 hex digits) instead, so they join up without storing the handle."""
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class RequestSource:
    """What the HTTP front knows of where a request came from."""

    remote: str | None = None
    user_agent: str | None = None
    traceparent: str | None = None  # the W3C headers, when the client sent them
    tracestate: str | None = None


class ClientChannel(Protocol):
    """The way back to one downstream client for one request."""

    async def notify(self, message: JsonObj) -> None:
        """Send a notification related to this request (progress, log)."""

    async def ask(self, method: str, params: JsonObj, timeout: float) -> JsonObj:
        """Send a server->client request (legacy clients only) and return its result."""

    @property
    def can_ask(self) -> bool: ...


@dataclass(slots=True)
class RequestContext:
    era: Era
    protocol_version: str
    capabilities: JsonObj
    client_info: JsonObj | None
    principal: Principal
    channel: ClientChannel
    transport: Literal["stdio", "http"]
    log_level: str | None = None
    session_id: str | None = None  # a legacy session (subscriptions live there)
    connection_id: str | None = None  # one client connection; None for stateless HTTP requests
    # The client's `_meta` minus the reserved envelope keys (traceparent, vendor keys).
    forward_meta: JsonObj = field(default_factory=dict)
    progress_token: Any = None
    push_sink: PushSink | None = None
    # Where the request came from (HTTP: the peer address and user agent), for the audit.
    remote: str | None = None
    user_agent: str | None = None
    # The forwarded request as the guards saw it (mcpward.guards.base.Call), once routed: its
    # notes (policy decision, redactions, flags) go into the request's audit record.
    call: Any = None

    def has_capability(self, name: str) -> bool:
        return isinstance(self.capabilities.get(name), dict)


class SilentChannel:
    """For the gateway's own requests (listing to learn schemas): nobody to talk back to."""

    can_ask = False

    async def notify(self, message: JsonObj) -> None:
        return None

    async def ask(self, method: str, params: JsonObj, timeout: float) -> JsonObj:
        raise RuntimeError("the gateway's own requests cannot ask a client")


def system_context(principal: Principal | None = None) -> RequestContext:
    """The gateway's own requests (listing to learn schemas and pin definitions): as itself, or on
    behalf of `principal` for a server where only a principal's own credentials reach."""
    from mcpward.protocol.versions import LATEST_MODERN

    return RequestContext(era="modern", protocol_version=LATEST_MODERN, capabilities={}, client_info=None,
                          principal=principal or Principal(subject="mcpward", kind="anonymous"),
                          channel=SilentChannel(), transport="stdio")
