"""JSON-RPC 2.0 framing for MCP, sans-IO: bytes in, dicts out, and back.

Nothing here touches a socket or a process. Messages stay plain dicts so the hot
path never builds model objects; `encode` is orjson, and callers that forward a
message unchanged send the original bytes instead of re-encoding.
"""

from __future__ import annotations

import enum
from typing import Any

import orjson

from mcpward.protocol import exact

_STRIDE, _NUMERIC, _SAMPLE_RUN = exact.STRIDE, exact.NUMBER_BYTES, exact.SAMPLE_RUN

JsonObj = dict[str, Any]
RequestId = str | int

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Implementation-defined range (-32000..-32019) used by the gateway itself.
UPSTREAM_UNAVAILABLE = -32001
# Not -32002: legacy clients read that as "Resource not found" (and -32000/-32001 are the SDKs'
# "connection closed"/"request timeout"); -32005 means nothing else in either era.
REQUEST_TIMEOUT = -32005
OVERLOADED = -32003
REFUSED = -32004
# Reserved by the 2026-07-28 specification.
HEADER_MISMATCH = -32020
MISSING_REQUIRED_CLIENT_CAPABILITY = -32021
UNSUPPORTED_PROTOCOL_VERSION = -32022


class Kind(enum.Enum):
    REQUEST = "request"
    NOTIFICATION = "notification"
    RESPONSE = "response"


class ProtocolError(Exception):
    """A JSON-RPC error that should reach the peer as an error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_error(self) -> JsonObj:
        err: JsonObj = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err

    def response(self, request_id: RequestId | None) -> JsonObj:
        return {"jsonrpc": "2.0", "id": request_id, "error": self.to_error()}


def encode(message: JsonObj) -> bytes:
    """orjson; a message it refuses (an integer beyond 64 bits, a decimal kept as its text, a lone
    surrogate) is written by exact.dumps, so the common case costs nothing more."""
    try:
        return orjson.dumps(message)
    except orjson.JSONEncodeError:
        return exact.dumps(message)


def decode(data: bytes | str, max_bytes: int) -> JsonObj:
    """Parse one frame into a JSON-RPC message dict, or raise ProtocolError."""
    if len(data) > max_bytes:
        raise ProtocolError(INVALID_REQUEST, f"message of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        # A frame that may hold a number orjson would change takes the exact (slower) parser. The
        # first test (exact.needs_slow_parse's sampled prefilter, inlined: this runs on every frame)
        # clears almost every frame with three C calls on an eighth of it.
        if type(data) is bytes and data[::_STRIDE].translate(_NUMERIC).find(_SAMPLE_RUN) < 0:
            message = orjson.loads(data)
        elif exact.needs_slow_parse(data):
            message = exact.loads(data)
        else:
            message = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # orjson refuses a lone surrogate escape that JSON itself allows: keep the string instead.
        if not exact.has_surrogate_escape(data):
            raise ProtocolError(PARSE_ERROR, f"parse error: {exc.msg}") from None
        message = _slow_decode(data)
    except ValueError as exc:
        raise ProtocolError(PARSE_ERROR, f"parse error: {exc}") from None
    if isinstance(message, list):
        # Batches were removed from MCP in 2025-06-18; accepting them would let one
        # frame smuggle many requests past per-message limits.
        raise ProtocolError(INVALID_REQUEST, "JSON-RPC batches are not supported")
    if not isinstance(message, dict):
        raise ProtocolError(INVALID_REQUEST, "a JSON-RPC message must be an object")
    return message


def _slow_decode(data: bytes | str) -> Any:
    try:
        return exact.loads(data)
    except ValueError as exc:
        raise ProtocolError(PARSE_ERROR, f"parse error: {exc}") from None


# orjson writes at most this many levels: a deeper message could be read but never forwarded, digested
# for the audit log or answered with its own values, so a front refuses it up front.
MAX_NESTING = 254


def check_forwardable(message: JsonObj, data: bytes | str) -> None:
    """Refuse (-32600) a client's message nested deeper than MAX_NESTING. Messages with fewer opening
    brackets than that cannot be that deep, so the common case costs two C-speed counts."""
    opened = data.count(b"[") + data.count(b"{") if isinstance(data, bytes) else data.count("[") + data.count("{")
    if opened <= MAX_NESTING:
        return
    try:
        exact.dumps(message)
    except orjson.JSONEncodeError:
        raise ProtocolError(INVALID_REQUEST, f"message nested deeper than {MAX_NESTING} levels") from None


def usable_id(message: JsonObj | None) -> RequestId | None:
    """A parsed message's id when an answer can carry it (a string or an integer), else None."""
    candidate = message.get("id") if message is not None else None
    return candidate if isinstance(candidate, (str, int)) and not isinstance(candidate, bool) else None


def classify(message: JsonObj) -> Kind:
    """Tell requests, notifications and responses apart; raise on anything else."""
    if message.get("jsonrpc") != "2.0":
        raise ProtocolError(INVALID_REQUEST, "'jsonrpc' must be \"2.0\"")
    method = message.get("method")
    has_id = "id" in message
    if method is not None:
        if not isinstance(method, str) or not method:
            raise ProtocolError(INVALID_REQUEST, "'method' must be a non-empty string")
        params = message.get("params")
        if params is not None and not isinstance(params, dict):
            raise ProtocolError(INVALID_PARAMS, "'params' must be an object")
        if not has_id:
            return Kind.NOTIFICATION
        request_id = message["id"]
        if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
            raise ProtocolError(INVALID_REQUEST, "'id' must be a string or an integer")
        return Kind.REQUEST
    if has_id and ("result" in message or "error" in message):
        return Kind.RESPONSE
    raise ProtocolError(INVALID_REQUEST, "not a request, notification or response")


def request(request_id: RequestId, method: str, params: JsonObj | None = None) -> JsonObj:
    msg: JsonObj = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def notification(method: str, params: JsonObj | None = None) -> JsonObj:
    msg: JsonObj = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def result(request_id: RequestId | None, body: JsonObj) -> JsonObj:
    return {"jsonrpc": "2.0", "id": request_id, "result": body}


def error(request_id: RequestId | None, code: int, message: str, data: Any = None) -> JsonObj:
    return ProtocolError(code, message, data).response(request_id)


class GatewayError(dict[str, Any]):
    """An error object the gateway made itself (never decoded from the wire, so an upstream cannot
    forge one): its text is the gateway's own and may reach the client as written."""


def gateway_error(request_id: RequestId | None, code: int, message: str, data: Any = None) -> JsonObj:
    """A reply for a request the upstream never answered: crash, oversized frame, lost connection."""
    return {"jsonrpc": "2.0", "id": request_id, "error": GatewayError(ProtocolError(code, message, data).to_error())}
