"""Accountability for one client request: its trace, its audit record, and durability before the reply.

Every request a client sends ends as exactly one `request` audit record, written when the answer
is known and committed before the answer leaves the gateway: a client never holds an answer whose
record a crash could lose. What the guards decided along the way (policy rule and version, pin
state, redaction counts, flags) comes from the notes they left on the routed call. Argument values
are never stored: only a digest of their canonical JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from mcpward.audit import events
from mcpward.gateway import after_reply
from mcpward.gateway.context import RequestContext, session_digest
from mcpward.protocol import exact, jsonrpc
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.telemetry.w3c import client_context

if TYPE_CHECKING:
    from mcpward.gateway.config import GatewayConfig
    from mcpward.telemetry import RequestTrace, Telemetry

# Outcomes (ToolHive's audit vocabulary, plus cancellation).
SUCCESS, DENIED, ERROR, APP_ERROR, CANCELLED = "success", "denied", "error", "application_error", "cancelled"
LABEL_CACHE_ENTRIES = 4096
ANNOTATION_LABELS = {"openWorldHint": "open-world", "readOnlyHint": "read-only", "destructiveHint": "destructive"}
# Methods the gateway knows by name: one of these in a record is the gateway's own vocabulary; any
# other method string is whatever the client sent, and is cleaned like every peer-written string.
KNOWN_METHODS = frozenset({
    "initialize", "ping", "server/discover", "tools/list", "tools/call", "prompts/list", "prompts/get",
    "resources/list", "resources/templates/list", "resources/read", "resources/subscribe",
    "resources/unsubscribe", "completion/complete", "logging/setLevel", "subscriptions/listen",
})


@dataclass(slots=True)
class Ticket:
    """One request in flight: when it started, its trace, the client's trace context (valid values
    only), and the request's context once it has one."""

    method: str
    request_id: Any
    started: float
    trace: RequestTrace | None
    traceparent: str | None = None
    tracestate: str | None = None
    ctx: RequestContext | None = None


class Accounting:
    def __init__(self, cfg: GatewayConfig, telemetry: Telemetry | None = None,
                 policy_hash: Callable[[], str | None] | None = None) -> None:
        self.cfg = cfg
        self.telemetry = telemetry
        self.policy_hash = policy_hash or (lambda: None)
        # (server, target, method, id(definition)) -> (the definition, its labels); the definition is kept so
        # an id reused by a new object after the old one is gone never returns stale labels.
        self._labels: dict[tuple[Any, ...], tuple[Any, tuple[str, ...]]] = {}

    def begin(self, message: JsonObj, transport: str, session_id: str | None,
              header_traceparent: str | None = None, header_tracestate: str | None = None) -> Ticket:
        method = str(message.get("method"))
        params = message.get("params")
        # Checked with telemetry on or off: only a valid trace context is ever forwarded.
        parent, state = client_context(params.get("_meta") if isinstance(params, dict) else None,
                                       header_traceparent, header_tracestate)
        trace = None
        if self.telemetry is not None:
            target = params.get("name") if isinstance(params, dict) else None
            trace = self.telemetry.request(
                method, transport=transport, target=target if isinstance(target, str) else None, server=None,
                session_id=session_id, request_id=message.get("id"), protocol_version=None,
                traceparent=parent, tracestate=state)
        return Ticket(method, message.get("id"), time.perf_counter(), trace, parent, state)

    def attach(self, ticket: Ticket, ctx: RequestContext) -> None:
        """The request has a context: upstream requests carry the trace onward in `_meta`.

        What the client sent in `_meta` is never forwarded as is: the gateway span's context when
        tracing (a metrics-only trace keeps the client's values), else the client's values if valid."""
        ticket.ctx = ctx
        meta = ctx.forward_meta
        meta.pop("traceparent", None)
        meta.pop("tracestate", None)
        trace = ticket.trace
        parent, state = (trace.traceparent, trace.tracestate) if trace is not None else \
            (ticket.traceparent, ticket.tracestate)
        if parent is not None:
            meta["traceparent"] = parent
            if state:
                meta["tracestate"] = state

    async def finish(self, ticket: Ticket, reply: JsonObj | None, principal_key: str, subject: str) -> None:
        """Writes the request's record and waits until it is durable (raises AuditUnavailable if it cannot be)."""
        trace = ticket.trace
        wanted = events.wanted("request")
        if trace is None and not wanted:
            return  # no audit log, no trace, request lines not logged: nobody would read the record
        ended = time.perf_counter()  # one clock read: the record's duration and the trace's end
        outcome, code, rule = _outcome(reply)
        ctx = ticket.ctx
        call = ctx.call if ctx is not None else None
        notes: dict[str, Any] = call.notes if call is not None else {}
        if notes.get("refused"):  # a guard refused it, maybe as a tool error the client sees as a result
            outcome, rule = DENIED, notes["refused"]
        if wanted:
            self._record(ticket, call, notes, ended, outcome, code, rule, principal_key, subject, reply)
        if trace is not None:
            # The metric's target label only for a name the server listed: a made-up name behind a
            # known prefix routes, but must not become a label (clients choose them without limit).
            known = call.exposed if call is not None and call.definition is not None else None
            trace.set(server=call.server if call is not None else None, target=known, rule=rule)
            after_reply.defer(partial(trace.end, outcome, code, ended))  # timed now, recorded later
        if wanted and not events.settled():  # journaled already, the usual case: no wait, not even a coroutine
            await events.durable()

    def _record(self, ticket: Ticket, call: Any, notes: dict[str, Any], ended: float, outcome: str,
                code: int | None, rule: str | None, principal_key: str, subject: str, reply: JsonObj | None) -> None:
        """The request's audit record; only built when something reads it (metrics alone do not)."""
        ctx = ticket.ctx
        policy = notes.get("policy")
        method = ticket.method
        # The record in two parts (see AuditLog.append): `made` holds what the gateway produced itself
        # (its own vocabulary, clock, counts and digests), stored as is; `fields` holds every string a
        # client, an upstream or an operator wrote, which the log redacts and escapes.
        made: dict[str, Any] = {
            # Whole microseconds over 1000: the same value as round(ms, 3) up to ties, without its decimal
            # conversion (a measurable part of a record's cost).
            "outcome": outcome, "duration_ms": round((ended - ticket.started) * 1_000_000) / 1000,
            "policy_hash": policy.get("hash") if isinstance(policy, dict) else self.policy_hash(),
        }
        fields: dict[str, Any] = {"principal": principal_key, "subject": subject}
        if method in KNOWN_METHODS:
            made["method"] = method
        else:
            fields["method"] = method
        if ctx is not None:
            made["transport"] = ctx.transport
            client = ctx.client_info or {}
            fields["client"] = client.get("name")
            fields["client_version"] = client.get("version")
            if ctx.remote:
                fields["source_ip"] = ctx.remote
            if ctx.user_agent:
                fields["user_agent"] = ctx.user_agent
            if ctx.session_id:
                made["session"] = events.Digest(session_digest(ctx.session_id))
        request_id = ticket.request_id
        if isinstance(request_id, str):
            fields["request_id"] = request_id
        elif isinstance(request_id, int):
            made["request_id"] = request_id  # a number: nothing to redact (the log checks its range)
        if rule is not None:
            fields["rule"] = rule
        if code is not None:
            made["error_code"] = code
        if reply is not None:
            size = _encoded_size(reply)
            if size is not None:
                made["response_bytes"] = size
        if call is not None:
            fields["server"] = call.server
            fields["target"] = call.exposed
            self._call_facts(call, notes, fields, made)
        events.record_parts("request", fields, made)

    def _call_facts(self, call: Any, notes: dict[str, Any], fields: dict[str, Any], made: dict[str, Any]) -> None:
        arguments = call.params.get("arguments") if call.method == "tools/call" else call.params.get("uri")
        if arguments is not None:
            made["args_sha256"] = events.Digest.sha256(exact.dumps(arguments, option=orjson.OPT_SORT_KEYS))
        static = self._static_labels(call)
        risk = notes.get("risk")
        if risk:
            fields["labels"] = sorted({*risk, *static})
        elif static:
            fields["labels"] = list(static)
        flags = notes.get("flags")
        argument_flags = notes.get("argument_flags")
        if flags or argument_flags:
            fields["flags"] = sorted({*(flags or ()), *(argument_flags or ())})
        redactions = notes.get("redactions")
        if redactions:
            made["redactions"] = redactions
        pin = notes.get("pin")
        if pin:
            fields["pin"] = pin

    def _static_labels(self, call: Any) -> tuple[str, ...]:
        """Labels from declared annotations and the operator's overrides: fixed for one definition, so
        worked out once per (server, target, definition object) rather than on every call."""
        key = (call.server, call.target, call.method, id(call.definition))
        hit = self._labels.get(key)
        if hit is not None and hit[0] is call.definition:
            return hit[1]
        annotations = (call.definition or {}).get("annotations") if call.method == "tools/call" else None
        override = self.cfg.servers[call.server].tools.get(call.target) if call.server in self.cfg.servers else None
        merged = dict(annotations) if isinstance(annotations, dict) else {}
        merged.update(override.annotations if override else {})
        labels = [label for hint, label in ANNOTATION_LABELS.items() if merged.get(hint) is True]
        if override is not None:
            labels += override.labels
        found = tuple(sorted(set(labels)))
        if len(self._labels) >= LABEL_CACHE_ENTRIES:
            self._labels.clear()
        self._labels[key] = (call.definition, found)
        return found


def _encoded_size(reply: JsonObj) -> int | None:
    """The length of the reply as the fronts write it (`jsonrpc.encode`, the same bytes): the record is
    committed before the front serialises, so it is measured here, and only when a record is wanted.
    None for a reply that cannot be written (the front fails on it too; the record is still written)."""
    try:
        return len(jsonrpc.encode(reply))
    except (TypeError, ValueError):  # orjson's JSONEncodeError is a TypeError
        return None


def _outcome(reply: JsonObj | None) -> tuple[str, int | None, str | None]:
    if reply is None:
        return CANCELLED, None, None
    error = reply.get("error")
    if isinstance(error, dict):
        code = error.get("code") if isinstance(error.get("code"), int) else None
        data = error.get("data")
        rule = data.get("rule") if isinstance(data, dict) and isinstance(data.get("rule"), str) else None
        return (DENIED if rule is not None else ERROR), code, rule
    result = reply.get("result")
    if isinstance(result, dict) and result.get("isError") is True:
        return APP_ERROR, None, None
    return SUCCESS, None, None
