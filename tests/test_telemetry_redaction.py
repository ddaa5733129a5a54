"""Exported spans are rebuilt: sensitive keys lose their values, every string passes the redactor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

from mcpward.telemetry import RedactingSpanExporter, Telemetry, TelemetrySettings, sensitive_key
from mcpward.telemetry.redaction import REDACTED, REDACTOR_FAILED, default_redactor

AWS = "AKIAZ3MPL4QW7RT5XY2B"
GITHUB = "ghp_8aB3kLm9Qz2Xw7Yp4Rt6Uv1Ns5Jd0Hc3Fg8E"
PLAIN = "correct-horse-battery-staple"  # no shape at all: only its key gives it away


@pytest.mark.parametrize("key", ["auth_token", "api_key", "x-api-key", "API-KEY", "apikey", "client_secret",
                                 "password", "db.passwd", "Authorization", "cookie", "set-cookie",
                                 "http.request.header.authorization", "mcpward.refresh_token", "private_key",
                                 "session_id", "credentials"])
def test_sensitive_keys(key: str) -> None:
    assert sensitive_key(key)


@pytest.mark.parametrize("key", ["mcp.method.name", "gen_ai.tool.name", "mcp.session.id", "jsonrpc.request.id",
                                 "network.transport", "error.type", "mcpward.server", "service.name"])
def test_ordinary_keys(key: str) -> None:
    assert not sensitive_key(key)


def span(attrs: dict[str, Any], **kw: object) -> ReadableSpan:
    ctx = SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(1))
    return ReadableSpan(name=str(kw.get("name", "tools/call x")), context=ctx, attributes=attrs,
                        events=list(kw.get("events", [])),  # type: ignore[call-overload]
                        resource=kw.get("resource", Resource({"service.name": "mcpward"})),  # type: ignore[arg-type]
                        status=kw.get("status", Status(StatusCode.UNSET)))  # type: ignore[arg-type]


def export(spans: Sequence[ReadableSpan], extra: Sequence[str] = ()) -> tuple[ReadableSpan, ...]:
    inner = InMemorySpanExporter()
    assert RedactingSpanExporter(inner, default_redactor(), extra).export(spans) is SpanExportResult.SUCCESS
    return inner.get_finished_spans()


def test_keys_and_values_are_cleaned_everywhere() -> None:
    (out,) = export([span(
        {"auth_token": PLAIN, "api_key": PLAIN, "client_secret": PLAIN, "password": PLAIN, "x-api-key": 12345,
         "note": f"deploy with {AWS}", "tags": ("ok", GITHUB), "count": 3, "mcp.method.name": "tools/call"},
        name=f"tools/call {GITHUB}",
        events=[Event("retry", {"cookie": PLAIN, "detail": f"key={AWS}"})],
        resource=Resource({"service.name": "mcpward", "deployment.token": PLAIN, "host.note": AWS}),
        status=Status(StatusCode.ERROR, f"upstream said {GITHUB}"))])
    attrs: dict[str, Any] = dict(out.attributes or {})
    for key in ("auth_token", "api_key", "client_secret", "password", "x-api-key"):
        assert attrs[key] == REDACTED
    assert attrs["note"].startswith("deploy with [REDACTED") and AWS not in attrs["note"]
    assert attrs["tags"][0] == "ok" and GITHUB not in attrs["tags"][1]
    assert attrs["count"] == 3 and attrs["mcp.method.name"] == "tools/call"
    assert GITHUB not in out.name and out.name.startswith("tools/call ")
    event_attrs: dict[str, Any] = dict(out.events[0].attributes or {})
    assert event_attrs["cookie"] == REDACTED and AWS not in event_attrs["detail"]
    res: dict[str, Any] = dict(out.resource.attributes)
    assert res["deployment.token"] == REDACTED and AWS not in res["host.note"] and res["service.name"] == "mcpward"
    assert out.status.description is not None and GITHUB not in out.status.description
    everything = repr((out.name, attrs, event_attrs, res, out.status.description))
    for secret in (PLAIN, AWS, GITHUB):
        assert secret not in everything


def test_header_secret_values_are_removed_too() -> None:
    (out,) = export([span({"detail": "sent hdr-value-1234 upstream"})], extra=["hdr-value-1234"])
    assert "hdr-value-1234" not in str(dict(out.attributes or {}))


def test_a_failing_redactor_withholds_the_value() -> None:
    def broken(text: str) -> str:
        raise RuntimeError("boom")

    inner = InMemorySpanExporter()
    RedactingSpanExporter(inner, broken).export([span({"note": AWS})])
    (out,) = inner.get_finished_spans()
    attrs = dict(out.attributes or {})
    # Keys pass the redactor too, so the key is withheld along with its value.
    assert attrs == {REDACTOR_FAILED: REDACTOR_FAILED} and out.name == REDACTOR_FAILED


def test_an_uncleanable_batch_is_dropped_not_sent() -> None:
    class Recording(SpanExporter):
        def __init__(self) -> None:
            self.calls = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            self.calls += 1
            return SpanExportResult.SUCCESS

    inner = Recording()
    bad = span({"note": "x"})
    bad._attributes = 42  # type: ignore[assignment]  # a span the cleaner cannot read
    assert RedactingSpanExporter(inner, default_redactor()).export([bad]) is SpanExportResult.FAILURE
    assert inner.calls == 0


def test_telemetry_without_a_redactor_uses_the_builtin_rules() -> None:
    exporter = InMemorySpanExporter()
    tel = Telemetry(TelemetrySettings(traces=True, metrics=False), span_exporter=exporter)
    try:
        rt = tel.request("tools/call", transport="http", target="deploy", server="ci", session_id=None,
                         request_id=1, protocol_version=None, traceparent=None, tracestate=None)
        rt.set(note=f"using {AWS}", api_key=PLAIN)
        rt.end("success")
        tel.flush()
        (out,) = exporter.get_finished_spans()
    finally:
        tel.shutdown()
    attrs: dict[str, Any] = dict(out.attributes or {})
    assert attrs["mcpward.api_key"] == REDACTED and AWS not in attrs["mcpward.note"]
