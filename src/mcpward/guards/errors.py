"""Upstream errors reach the client as a generic message with a correlation id; the details go to the log.

An upstream JSON-RPC error can carry anything the server's author let through: stack traces,
connection strings, internal host names, SQL. In the default `generic` mode the client gets the
same error code with `upstream error (correlation id 3f2a9c0e1b7d4a55)` and `data` reduced to that
id; the original message and data are logged once at WARNING with the same id (through the log
redactor, so even the log never holds a secret in clear). In `pass` mode the message and data
pass through, after the output guard's secret/PII redaction.

Errors whose data the client needs to act on keep that data, and only that: -32042 (URL
elicitation required) its `elicitations`, -32021 its `requiredCapabilities`, -32022 the
`supported` protocol versions (and the `requested` one); -32020 (header mismatch) keeps none. Their
message is replaced by a fixed text naming the code, like any other error's (a server choosing
one of these codes cannot send a stack trace through), and what they keep has passed the output
guard's redaction first. Errors the gateway made itself (a crashed or unreachable server, a timeout, an oversized
frame) never reach this guard: their text is the gateway's own.

Tool results with `isError: true` are not errors in this sense: they are tool output the model needs
("file not found"), so they pass the output guard like any result, and its rules (connection
strings, credentials in URLs, keys) redact what must not leak. The mcp SDK's own servers already
send only "Error executing tool <name>" for an unexpected exception; a `ToolError` message is sent
as written.

    [guards.errors]
    enabled = true
    mode = "generic"   # generic | pass
"""

from __future__ import annotations

import logging
import secrets

import orjson

from mcpward.audit import events as audit
from mcpward.gateway.config import ConfigError, GatewayConfig, TableReader
from mcpward.guards.base import Call, Guard
from mcpward.protocol import jsonrpc

log = logging.getLogger("mcpward.guards.errors")

MODES = ("generic", "pass")
URL_ELICITATION_REQUIRED = -32042
# Per code: its fixed message and the data fields (as the spec names them) the client acts on.
KEEP_CODES: dict[int, tuple[str, tuple[str, ...]]] = {
    URL_ELICITATION_REQUIRED: ("URL elicitation required", ("elicitations",)),
    jsonrpc.MISSING_REQUIRED_CLIENT_CAPABILITY: ("Missing required client capability", ("requiredCapabilities",)),
    jsonrpc.UNSUPPORTED_PROTOCOL_VERSION: ("Unsupported protocol version", ("supported", "requested")),
    jsonrpc.HEADER_MISMATCH: ("Header mismatch", ()),
}
_LOG_LIMIT = 4000  # characters of message and of data kept in the log line


def correlation_id() -> str:
    return secrets.token_hex(8)


def _clip(text: str) -> str:
    return text if len(text) <= _LOG_LIMIT else text[:_LOG_LIMIT] + f"... ({len(text):,} characters)"


class ErrorGuard(Guard):
    name = "errors"

    async def on_error(self, call: Call, error: jsonrpc.ProtocolError) -> jsonrpc.ProtocolError | None:
        if call.notes.get("gateway_error"):
            return None
        cid = correlation_id()
        data = "" if error.data is None else orjson.dumps(error.data, default=str).decode()
        log.warning("upstream error %s from %s for %s %s: code %d, message %s, data %s", cid, call.server,
                    call.method, call.exposed, error.code, _clip(error.message), _clip(data) or "none")
        audit.record("upstream_error", correlation_id=cid, server=call.server, method=call.method,
                     target=call.exposed, code=error.code)
        kept = KEEP_CODES.get(error.code)
        if kept is None:
            return jsonrpc.ProtocolError(error.code, f"upstream error (correlation id {cid})", {"correlationId": cid})
        text, fields = kept
        source = error.data if isinstance(error.data, dict) else {}
        out = {name: source[name] for name in fields if name in source}
        return jsonrpc.ProtocolError(error.code, f"{text} (correlation id {cid})", {**out, "correlationId": cid})


def from_config(cfg: GatewayConfig) -> ErrorGuard | None:
    """The generic-error guard, or None in `pass` mode or when `enabled = false`."""
    table = cfg.guards.get("errors", {})
    if not isinstance(table, dict):
        raise ConfigError(cfg.source, "guards.errors", "expected a table")
    r = TableReader(cfg.source, "guards.errors", table)
    enabled = r.get("enabled", bool, True)
    mode = r.get("mode", str, "generic")
    if mode not in MODES:
        raise r.fail("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    r.reject_unknown()
    return ErrorGuard() if enabled and mode == "generic" else None
