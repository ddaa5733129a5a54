"""Per-request telemetry: one RequestTrace per MCP request, a span when tracing is on.

Costs: with traces off a request is one small object and a clock read; its end is a metric record.
With traces on, the span is recorded by our own lean tracer (spans.py; never the global OTel
provider, so an app embedding the gateway, or a test, keeps its own) feeding the SDK's
BatchSpanProcessor, and the span's context is what the upstream gets in `_meta.traceparent`.
Redaction happens on export (redaction.py), off the request path.

Trace context comes from the client (W3C `traceparent` in `_meta` or the HTTP header). It is
parsed by a strict pattern (w3c.py): a malformed value starts a new root trace, never an error, and
is never forwarded. `tracestate` is only honoured next to a valid `traceparent`.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags, TraceState

from mcpward.gateway.context import session_digest
from mcpward.secrets.refs import SecretError, find_refs
from mcpward.telemetry.metrics import OtlpPusher, PrometheusCollector, Recorder, otlp_exporter
from mcpward.telemetry.redaction import Redact, RedactingSpanExporter, default_redactor
from mcpward.telemetry.settings import Resolve, TelemetrySettings, is_whole_ref, resolve_header
from mcpward.telemetry.spans import LeanSpan, LeanTracer, clean_value
from mcpward.telemetry.w3c import format_traceparent, parse_traceparent, valid_tracestate

log = logging.getLogger("mcpward.telemetry")

OUTCOMES = frozenset({"success", "denied", "error", "application_error", "cancelled"})
# The span-name/metric target is only a tool or prompt name; a resource URI is high-cardinality
# (and may carry tokens), so it is an attribute, never part of a name (semconv says the same).
_NAMED_TARGET = {"tools/call": "gen_ai.tool.name", "prompts/get": "gen_ai.prompt.name"}
_URI_TARGET = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})
# Friendly names accepted by RequestTrace.set(); anything else is namespaced under mcpward.
_ALIASES = {"server": "mcpward.server", "rule": "mcpward.rule", "outcome": "mcpward.outcome",
            "principal_kind": "mcpward.principal.kind", "upstream_id": "mcpward.upstream.request_id"}
EXPORT_TIMEOUT = 5.0
SHUTDOWN_BOUND = 5.0


class TelemetryError(Exception):
    """Telemetry cannot start as configured (e.g. a header secret that does not resolve)."""


def _transport(transport: str) -> str:
    # network.transport per semconv: stdio is "pipe", Streamable HTTP runs on "tcp".
    return "pipe" if transport == "stdio" else "tcp"


class RequestTrace:
    """One request's timing, and its propagation values. This base class is the traces-off path."""

    __slots__ = ("_rec", "_start", "error_type", "method", "net", "rule", "target", "traceparent", "tracestate",
                 "version")

    def __init__(self, rec: Recorder | None, method: str, net: str, version: str | None,
                 traceparent: str | None, tracestate: str | None) -> None:
        self._rec = rec
        self._start = time.perf_counter()
        self.method, self.net, self.version = method, net, version
        # The metric label: only a name the gateway resolved (set() after routing). The name a client
        # sent is unbounded: made-up names would fill the label table and crowd out real tools.
        self.target: str | None = None
        self.traceparent, self.tracestate = traceparent, tracestate
        self.rule: str | None = None
        self.error_type: str | None = None

    def set(self, **attributes: Any) -> None:
        """Late facts (server, target, rule, ...). Without a span only target and rule matter (metrics)."""
        target = attributes.get("target")
        if isinstance(target, str):
            self.target = target
        rule = attributes.get("rule")
        if isinstance(rule, str):
            self.rule = rule

    def end(self, outcome: str, error_code: int | None = None, at: float | None = None) -> None:
        """Records the request; `at` is when it ended (time.perf_counter(); default now), so the
        caller may record it later than it ended."""
        self.error_type = _error_type(outcome, error_code)
        rec, self._rec = self._rec, None  # a second end() records nothing
        if rec is None:
            return
        target = self.target if self.method in _NAMED_TARGET else None
        rec.record((time.perf_counter() if at is None else at) - self._start, self.method, target, self.net,
                   self.version, outcome if outcome in OUTCOMES else "error", self.error_type, self.rule)


def _error_type(outcome: str, error_code: int | None) -> str | None:
    # semconv: the JSON-RPC error code as a string when one was returned; "tool_error" for a
    # CallToolResult with isError; otherwise a short class of our own.
    if error_code is not None:
        return str(error_code)
    if outcome == "success":
        return None
    if outcome == "application_error":
        return "tool_error"
    return outcome if outcome in OUTCOMES else "_OTHER"


class SpanTrace(RequestTrace):
    """The traces-on path: RequestTrace plus a span."""

    __slots__ = ("span",)

    def __init__(self, rec: Recorder | None, method: str, net: str, version: str | None, span: LeanSpan) -> None:
        ctx = span.context
        state = ctx.trace_state.to_header() if ctx.trace_state else None
        super().__init__(rec, method, net, version, format_traceparent(ctx), state or None)
        self.span = span

    def set(self, **attributes: Any) -> None:
        super().set(**attributes)
        span = self.span
        if not span.recording:
            return
        for key, value in attributes.items():
            if value is None:
                continue
            if key == "target":
                attr = _NAMED_TARGET.get(self.method)
                if attr is not None and isinstance(value, str):
                    span.set_attribute(attr, value)
                    span.name = f"{self.method} {clean_value(value)}"
                elif self.method in _URI_TARGET:
                    span.set_attribute("mcp.resource.uri", value)
                continue
            span.set_attribute(_ALIASES.get(key) or (key if "." in key else f"mcpward.{key}"), value)

    def end(self, outcome: str, error_code: int | None = None, at: float | None = None) -> None:
        super().end(outcome, error_code, at)
        span = self.span
        if span.recording:
            if self.error_type is not None:
                span.set_attribute("error.type", self.error_type)
                if error_code is not None:
                    span.set_attribute("rpc.response.status_code", str(error_code))
                span.status = Status(StatusCode.ERROR, outcome if outcome in OUTCOMES else "error")
            span.end(None if at is None else time.time_ns() - int((time.perf_counter() - at) * 1e9))


class Telemetry:
    """Built once at startup from TelemetrySettings; `request()` is called for every MCP request.

    `redact` is the gateway's redactor (str -> str); without one the built-in secret rules are used.
    `resolve` turns a reference text in `otlp_headers` ("secret:NAME") into its value, when
    load_settings was not given one. `header_values` lists the resolved values: add them to the
    gateway redactor's exact values (they are removed from exported spans here regardless).
    `span_exporter` is an extra exporter (tests, embedding apps); it is wrapped by the redactor too.
    """

    def __init__(self, settings: TelemetrySettings, redact: Callable[[str], str] | None = None, *,
                 resolve: Resolve | None = None,
                 span_exporter: SpanExporter | None = None) -> None:
        self.settings = settings
        self._redact: Redact = redact or default_redactor()
        self._headers = _resolve_headers(settings, resolve)
        self.header_values: tuple[str, ...] = tuple(self._headers.values())
        resource = Resource({"service.name": settings.service_name})
        self._registry: Any = None
        self._recorder: Recorder | None = None
        self._pusher: OtlpPusher | None = None
        if settings.metrics:
            self._recorder = self._metrics(resource)
        self._tracer: LeanTracer | None = None
        exporters = self._span_exporters(span_exporter)
        if settings.traces and exporters:
            processors = [BatchSpanProcessor(RedactingSpanExporter(e, self._redact, self.header_values))
                          for e in exporters]
            self._tracer = LeanTracer(processors, resource, settings.sample_ratio)
        if self._tracer is not None or self._pusher is not None:
            # Exporter threads must stop before the interpreter does (a daemon thread inside the
            # redactor's C++ at exit aborts the process); the gateway's own shutdown() comes first.
            atexit.register(self.shutdown)

    @property
    def tracing(self) -> bool:
        return self._tracer is not None

    @property
    def metrics_path(self) -> str | None:
        """Where the HTTP front serves `render_metrics()`; None when metrics are off (serve nothing)."""
        return self.settings.metrics_path if self._registry is not None else None

    def _metrics(self, resource: Resource) -> Recorder:
        from prometheus_client import CollectorRegistry

        recorder = Recorder(resource, self._redact)
        self._registry = CollectorRegistry(auto_describe=False)  # ours: never the process-global REGISTRY
        self._registry.register(PrometheusCollector(recorder))
        if self.settings.exports:
            from mcpward.telemetry.otlp_session import OtlpSession  # requests: only when exporting

            exporter = otlp_exporter(self.settings.signal_url("metrics"), self._headers, EXPORT_TIMEOUT,
                                     OtlpSession(self.settings.otlp_allow_private))
            self._pusher = OtlpPusher(recorder, exporter)
        return recorder

    def _span_exporters(self, extra: SpanExporter | None) -> Sequence[SpanExporter]:
        out: list[SpanExporter] = []
        if self.settings.traces and self.settings.exports:
            from opentelemetry.exporter.otlp.proto.http import Compression
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            from mcpward.telemetry.otlp_session import OtlpSession

            out.append(OTLPSpanExporter(endpoint=self.settings.signal_url("traces"), headers=self._headers,
                                        timeout=EXPORT_TIMEOUT, compression=Compression.Gzip,
                                        session=OtlpSession(self.settings.otlp_allow_private)))
        if extra is not None:
            out.append(extra)
        return out

    def request(self, method: str, *, transport: str, target: str | None, server: str | None,
                session_id: str | None, request_id: Any, protocol_version: str | None,
                traceparent: str | None, tracestate: str | None) -> RequestTrace:
        parent = parse_traceparent(traceparent)
        if parent is None:
            traceparent = tracestate = None  # malformed: a new root, and nothing of it is forwarded
        elif tracestate is not None and not valid_tracestate(tracestate):
            tracestate = None
        net = _transport(transport)
        tracer = self._tracer
        if tracer is None:
            return RequestTrace(self._recorder, method, net, protocol_version, traceparent, tracestate)

        attrs: dict[str, Any] = {"mcp.method.name": clean_value(method), "network.transport": net}
        if transport == "http":
            attrs["network.protocol.name"] = "http"
        if request_id is not None:
            attrs["jsonrpc.request.id"] = clean_value(str(request_id))
        if session_id:
            attrs["mcp.session.id"] = session_digest(session_id)
        if protocol_version:
            attrs["mcp.protocol.version"] = clean_value(protocol_version)
        if server:
            attrs["mcpward.server"] = clean_value(server)
        name = attrs["mcp.method.name"]
        if target:
            named = _NAMED_TARGET.get(method)
            if named is not None:
                attrs[named] = clean_value(target)
                name = f"{name} {attrs[named]}"
            elif method in _URI_TARGET:
                attrs["mcp.resource.uri"] = clean_value(target)
        if method == "tools/call":
            attrs["gen_ai.operation.name"] = "execute_tool"
        remote = None
        if parent is not None:
            remote = SpanContext(parent[0], parent[1], is_remote=True, trace_flags=TraceFlags(parent[2] & 0xFF),
                                 trace_state=_trace_state(tracestate))
        span = tracer.start(name, attrs, remote)
        return SpanTrace(self._recorder, method, net, protocol_version, span)

    def render_metrics(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if self._registry is None:
            return b"", CONTENT_TYPE_LATEST
        return generate_latest(self._registry), CONTENT_TYPE_LATEST

    def flush(self, timeout: float = SHUTDOWN_BOUND) -> None:
        """Hand every finished span to its exporter now (tests; a SIGHUP-style flush)."""
        tracer = self._tracer
        if tracer is not None:
            tracer.force_flush(int(timeout * 1000))

    def shutdown(self) -> None:
        """Flush and stop exporters, within SHUTDOWN_BOUND seconds whatever the collector does."""
        provider, pusher = self._tracer, self._pusher
        self._tracer, self._pusher = None, None  # later requests: metrics only
        if provider is None and pusher is None:
            return
        atexit.unregister(self.shutdown)

        def work() -> None:
            try:
                if provider is not None:
                    provider.force_flush(int(SHUTDOWN_BOUND * 600))
                    provider.shutdown()
                if pusher is not None:
                    pusher.shutdown()
            except Exception as exc:  # shutdown must not raise into the gateway's exit path
                log.warning("telemetry shutdown: %s", type(exc).__name__)

        # A collector that hangs must not hang the gateway's exit: the work runs in a daemon thread.
        thread = threading.Thread(target=work, name="mcpward-telemetry-shutdown", daemon=True)
        thread.start()
        thread.join(SHUTDOWN_BOUND)
        if thread.is_alive():
            log.warning("telemetry shutdown did not finish in %.0fs; unsent telemetry dropped", SHUTDOWN_BOUND)


def _trace_state(header: str | None) -> TraceState:
    if not header:
        return TraceState()
    pairs = []
    for member in header.split(","):
        member = member.strip(" \t")
        if member:
            key, _, value = member.partition("=")
            pairs.append((key, value))
    try:
        return TraceState(pairs)
    except ValueError:
        return TraceState()


def _resolve_headers(settings: TelemetrySettings, resolve: Resolve | None) -> dict[str, str]:
    if not settings.otlp_endpoint:
        return {}
    if settings.header_values is not None:
        return dict(settings.header_values)
    out: dict[str, str] = {}
    for name, text in settings.otlp_headers:
        if not is_whole_ref(text) and not find_refs(text):
            out[name] = text
            continue
        if resolve is None:
            raise TelemetryError(f"telemetry.otlp_headers.{name}: a secret reference needs a resolver "
                                 "(none was given); nothing will be exported")
        try:
            out[name] = resolve_header(text, resolve)
        except SecretError as exc:  # names the reference and why, never a value
            raise TelemetryError(f"telemetry.otlp_headers.{name}: {exc}") from None
        except Exception as exc:  # an unknown error may carry anything: show its type only
            raise TelemetryError(f"telemetry.otlp_headers.{name}: resolving failed ({type(exc).__name__})") from None
    return out
