"""W3C Trace Context: which `traceparent` and `tracestate` values are valid, and which reach upstreams.

Light on purpose (no OpenTelemetry import): the gateway checks every request's trace context, with
telemetry on or off, so that only valid values are ever forwarded (docs/telemetry.md, "Trace context").
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

MAX_LENGTH = 512
# W3C Trace Context level 1: lowercase hex only; version ff is invalid; a future version may carry
# more fields after a '-', version 00 may not.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[^\s]*)?")
_TS_MEMBER = re.compile(r"[ \t]*(?:[a-z0-9][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
                        r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e][ \t]*")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def parse_traceparent(value: str | None) -> tuple[int, int, int] | None:
    """(trace_id, span_id, flags) of a valid W3C traceparent, else None."""
    if not value or len(value) > MAX_LENGTH:
        return None
    m = _TRACEPARENT.fullmatch(value)
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return int(trace_id, 16), int(span_id, 16), int(flags, 16)


def valid_tracestate(value: str | None) -> bool:
    if not value or len(value) > MAX_LENGTH:
        return False
    members = [m for m in value.split(",") if m.strip(" \t")]
    return 0 < len(members) <= 32 and all(_TS_MEMBER.fullmatch(m) for m in members)


def format_traceparent(ctx: SpanContext) -> str:
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def client_context(meta: Any, header_traceparent: str | None = None,
                   header_tracestate: str | None = None) -> tuple[str | None, str | None]:
    """The client's (traceparent, tracestate), each None unless valid.

    `meta` is the request's `params._meta`; its `traceparent` wins over the HTTP header's when it
    is a string at all (a malformed one is then dropped, not replaced by the header's: the client
    said which context it meant). A `tracestate` counts only next to a valid `traceparent`, and
    only from the same place: `_meta`'s with `_meta`'s, the headers' with the headers'.
    """
    meta = meta if isinstance(meta, dict) else {}
    parent = meta.get("traceparent")
    state: Any = meta.get("tracestate")
    if not isinstance(parent, str):
        parent, state = header_traceparent, header_tracestate
    if parse_traceparent(parent) is None:
        return None, None
    return parent, state if isinstance(state, str) and valid_tracestate(state) else None
