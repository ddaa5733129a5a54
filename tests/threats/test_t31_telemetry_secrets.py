"""T31: secrets in telemetry. "Exported spans of a call carrying a token contain no token."

A real OTLP/HTTP export (the SDK's exporter, gzip, protobuf) goes to a fake collector on loopback
that records the raw request bodies. The call's span carries token-like values under sensitive
keys (auth_token, api_key, client_secret, password), an AWS key under an innocent key, and a
GitHub token as its tool name; the OTLP header's secret value is sent as a header. None of these
appears in any exported byte, and the export did happen (the span and its trace id are there).
Zero phone-home: with no endpoint configured, nothing connects anywhere, even with the standard
OTEL_EXPORTER_OTLP_* variables pointing somewhere.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from mcpward.gateway.config import parse
from mcpward.telemetry import Telemetry, load_settings
from mcpward.telemetry.redaction import REDACTED, default_redactor
from tests.tripwire import tripwire

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_TP = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
BEARER = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVlLWZvci10ZXN0"
API_KEY = "sk-live-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c"
CLIENT_SECRET = "cs_7Qm2Zr9Lx4Kp8Vw3Ny6Bt1"
PASSWORD = "correct-horse-battery-staple"
AWS = "AKIAZ3MPL4QW7RT5XY2B"
GITHUB = "ghp_8aB3kLm9Qz2Xw7Yp4Rt6Uv1Ns5Jd0Hc3Fg8E"
HEADER_SECRET = "hdr-9f8e7d6c5b4a3f2e1d0c"
SECRETS = (BEARER, API_KEY, CLIENT_SECRET, PASSWORD, AWS, GITHUB, HEADER_SECRET)


class Collector:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                body = gzip.decompress(raw) if self.headers.get("content-encoding") == "gzip" else raw
                collector.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self, path: str) -> list[bytes]:
        return [body for p, _, body in self.requests if p == path]


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    c = Collector()
    yield c
    c.server.shutdown()
    c.server.server_close()


def test_exported_spans_of_a_call_carrying_a_token_contain_no_token(collector: Collector) -> None:
    cfg = parse({"telemetry": {"traces": True, "otlp_endpoint": f"http://127.0.0.1:{collector.port}",
                               "otlp_headers": {"x-otel-key": "secret:otel-key"}}}, source="gw.toml")

    def resolve(ref: str) -> str:
        assert ref == "secret:otel-key"
        return HEADER_SECRET

    tel = Telemetry(load_settings(cfg, resolve), redact=default_redactor())
    rt = tel.request("tools/call", transport="http", target=GITHUB, server="deploy", session_id=BEARER,
                     request_id=42, protocol_version="2025-11-25", traceparent=CLIENT_TP, tracestate=None)
    rt.set(auth_token=f"Bearer {BEARER}", api_key=API_KEY, client_secret=CLIENT_SECRET, password=PASSWORD,
           note=f"rotated {AWS} yesterday", echo=HEADER_SECRET)
    rt.end("error", -32603)
    tel.shutdown()  # flushes both the span batch and the metrics

    traces = collector.bodies("/v1/traces")
    metrics = collector.bodies("/v1/metrics")
    assert traces and metrics, [p for p, _, _ in collector.requests]
    for path, headers, body in collector.requests:
        assert headers["x-otel-key"] == HEADER_SECRET  # the header secret does its job...
        for secret in SECRETS:
            assert secret.encode() not in body, (path, secret)  # ...and is nowhere in a body

    # The export really carried our span: parse it and look at what the collector got.
    request = ExportTraceServiceRequest()
    request.ParseFromString(b"".join(traces[:1]))
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    (span,) = spans
    assert span.trace_id.hex() == TRACE_ID and span.name.startswith("tools/call [REDACTED")
    attrs = {a.key: a.value.string_value for a in span.attributes}
    for key in ("mcpward.auth_token", "mcpward.api_key", "mcpward.client_secret", "mcpward.password"):
        assert attrs[key] == REDACTED
    assert attrs["mcpward.note"].startswith("rotated [REDACTED") and attrs["mcpward.echo"] == REDACTED
    assert attrs["error.type"] == "-32603" and attrs["mcp.method.name"] == "tools/call"
    assert len(attrs["mcp.session.id"]) == 16


def test_zero_phone_home_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with tripwire(timeout=1.0) as (port, connections):
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                     "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
        before = set(threading.enumerate())
        tel = Telemetry(load_settings(parse({"telemetry": {"traces": True, "metrics": True}})),
                        redact=default_redactor())
        rt = tel.request("tools/call", transport="http", target="x", server=None, session_id=None, request_id=1,
                         protocol_version=None, traceparent=CLIENT_TP, tracestate=None)
        rt.set(api_key=API_KEY)
        rt.end("success")
        assert not tel.tracing and set(threading.enumerate()) == before  # no exporter, no thread
        assert rt.traceparent == CLIENT_TP  # context still travels
        tel.shutdown()
    assert connections == []
