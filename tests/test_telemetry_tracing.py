"""Spans and W3C trace context: the client's traceparent is the parent, the upstream gets the child."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mcpward.gateway.accounting import Accounting
from mcpward.gateway.config import parse
from mcpward.gateway.context import system_context
from mcpward.telemetry import Telemetry, TelemetrySettings, parse_traceparent
from tests.conftest import PYTHON, with_policy
from tests.rawclient import RawStdioClient

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
CLIENT_TP = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Traced:
    def __init__(self, tel: Telemetry, exporter: InMemorySpanExporter) -> None:
        self.tel, self.exporter = tel, exporter

    def spans(self) -> tuple[ReadableSpan, ...]:
        self.tel.flush()
        return self.exporter.get_finished_spans()

    def call(self, method: str = "tools/call", target: str | None = "search", **kw: Any) -> Any:
        args: dict[str, Any] = {"transport": "http", "target": target, "server": "docs", "session_id": "sess-1",
                                "request_id": 7, "protocol_version": "2025-11-25", "traceparent": None,
                                "tracestate": None}
        args.update(kw)
        return self.tel.request(method, **args)


@pytest.fixture
def traced() -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    tel = Telemetry(TelemetrySettings(traces=True), redact=lambda t: t, span_exporter=exporter)
    yield Traced(tel, exporter)
    tel.shutdown()


def test_span_has_the_clients_traceparent_as_parent_and_propagates_the_child(traced: Traced) -> None:
    rt = traced.call(traceparent=CLIENT_TP, tracestate="vendor=abc")
    assert rt.traceparent is not None and rt.traceparent != CLIENT_TP
    rt.end("success")
    (span,) = traced.spans()
    assert span.parent is not None and span.parent.is_remote
    assert f"{span.parent.trace_id:032x}" == TRACE_ID and f"{span.parent.span_id:016x}" == PARENT_ID
    # What the upstream gets is this span's own context: same trace, the gateway span as parent.
    assert rt.traceparent == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    assert rt.tracestate == "vendor=abc"
    assert span.kind is SpanKind.SERVER and span.name == "tools/call search"


def test_semconv_attributes(traced: Traced) -> None:
    rt = traced.call(traceparent=CLIENT_TP)
    rt.set(rule="policy.permit", upstream_id=3)
    rt.end("success")
    (span,) = traced.spans()
    attrs: dict[str, Any] = dict(span.attributes or {})
    assert attrs["mcp.method.name"] == "tools/call"
    assert attrs["gen_ai.tool.name"] == "search" and attrs["gen_ai.operation.name"] == "execute_tool"
    assert attrs["jsonrpc.request.id"] == "7" and attrs["mcp.protocol.version"] == "2025-11-25"
    assert attrs["network.transport"] == "tcp" and attrs["mcpward.server"] == "docs"
    assert attrs["mcpward.rule"] == "policy.permit" and attrs["mcpward.upstream.request_id"] == 3
    # The session id is a bearer-ish secret: only a keyed hash of it is recorded.
    assert "sess-1" not in str(attrs)
    assert attrs["mcp.session.id"] == hashlib.sha256(b"sess-1").hexdigest()[:16]  # joins the audit record
    assert "error.type" not in attrs and span.status.status_code is StatusCode.UNSET


def test_errors_set_error_type_and_status(traced: Traced) -> None:
    traced.call().end("error", -32602)
    traced.call().end("application_error")
    traced.call(method="resources/read", target="file:///tmp/x").end("denied")
    by_type = {dict(s.attributes or {})["error.type"]: s for s in traced.spans()}
    assert set(by_type) == {"-32602", "tool_error", "denied"}
    assert dict(by_type["-32602"].attributes or {})["rpc.response.status_code"] == "-32602"
    assert all(s.status.status_code is StatusCode.ERROR for s in by_type.values())
    read = by_type["denied"]
    assert read.name == "resources/read"  # a resource URI is never part of the span name
    assert dict(read.attributes or {})["mcp.resource.uri"] == "file:///tmp/x"


def test_no_client_context_starts_a_new_root(traced: Traced) -> None:
    rt = traced.call()
    rt.end("success")
    (span,) = traced.spans()
    assert span.parent is None
    assert rt.traceparent == f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"


@pytest.mark.parametrize("bad", [
    "garbage", "", "00-" + "0" * 32 + f"-{PARENT_ID}-01", f"00-{TRACE_ID}-" + "0" * 16 + "-01",
    f"ff-{TRACE_ID}-{PARENT_ID}-01", f"00-{TRACE_ID.upper()}-{PARENT_ID}-01", f"00-{TRACE_ID}-{PARENT_ID}-01-extra",
    f"00-{TRACE_ID}-{PARENT_ID}", "x" * 10_000, f" 00-{TRACE_ID}-{PARENT_ID}-01",
])
def test_malformed_traceparent_is_ignored(traced: Traced, bad: str) -> None:
    assert parse_traceparent(bad) is None
    rt = traced.call(traceparent=bad, tracestate="vendor=abc")
    rt.end("success")
    (span,) = traced.spans()
    assert span.parent is None and f"{span.context.trace_id:032x}" != TRACE_ID
    assert rt.traceparent is not None and rt.traceparent != bad
    assert rt.tracestate is None  # tracestate is only honoured next to a valid traceparent


def test_future_version_traceparent_is_accepted() -> None:
    assert parse_traceparent(f"01-{TRACE_ID}-{PARENT_ID}-01-whatever") == (int(TRACE_ID, 16), int(PARENT_ID, 16), 1)


def test_traces_off_passes_the_clients_context_through_unchanged() -> None:
    tel = Telemetry(TelemetrySettings(traces=False), redact=lambda t: t)
    rt = tel.request("tools/call", transport="stdio", target="x", server=None, session_id=None, request_id=1,
                     protocol_version=None, traceparent=CLIENT_TP, tracestate="a=1,b=2")
    assert (rt.traceparent, rt.tracestate) == (CLIENT_TP, "a=1,b=2")
    rt.end("success")
    none = tel.request("tools/call", transport="stdio", target="x", server=None, session_id=None, request_id=2,
                       protocol_version=None, traceparent="not-a-traceparent", tracestate="a=1")
    assert (none.traceparent, none.tracestate) == (None, None)
    bad_state = tel.request("ping", transport="stdio", target=None, server=None, session_id=None, request_id=3,
                            protocol_version=None, traceparent=CLIENT_TP, tracestate="bad state\n")
    assert (bad_state.traceparent, bad_state.tracestate) == (CLIENT_TP, None)
    assert not tel.tracing


def test_traces_on_without_any_exporter_is_pass_through() -> None:
    # Nothing to export to: no spans are made, the client's context still travels.
    tel = Telemetry(TelemetrySettings(traces=True, metrics=False), redact=lambda t: t)
    assert not tel.tracing
    rt = tel.request("ping", transport="http", target=None, server=None, session_id=None, request_id=1,
                     protocol_version=None, traceparent=CLIENT_TP, tracestate=None)
    assert rt.traceparent == CLIENT_TP


def test_unsampled_client_is_respected_and_still_propagated(traced: Traced) -> None:
    rt = traced.call(traceparent=f"00-{TRACE_ID}-{PARENT_ID}-00")
    rt.set(rule="r")
    rt.end("success")
    assert traced.spans() == ()
    assert rt.traceparent is not None and rt.traceparent.startswith(f"00-{TRACE_ID}-")
    assert rt.traceparent.endswith("-00") and PARENT_ID not in rt.traceparent


def test_sample_ratio_zero_records_no_root_spans() -> None:
    exporter = InMemorySpanExporter()
    tel = Telemetry(TelemetrySettings(traces=True, sample_ratio=0.0), redact=lambda t: t, span_exporter=exporter)
    try:
        for i in range(20):
            tel.request("ping", transport="http", target=None, server=None, session_id=None, request_id=i,
                        protocol_version=None, traceparent=None, tracestate=None).end("success")
        tel.flush()
        assert exporter.get_finished_spans() == ()
    finally:
        tel.shutdown()


def test_end_twice_records_once_and_late_set_is_harmless(traced: Traced) -> None:
    rt = traced.call()
    rt.end("success")
    rt.end("error", -1)
    rt.set(rule="late")
    (span,) = traced.spans()
    assert "error.type" not in dict(span.attributes or {})


def test_oversized_values_are_cut(traced: Traced) -> None:
    rt = traced.call(target="t" * 100_000)
    rt.set(note="n" * 100_000, weird=object())
    rt.end("success")
    (span,) = traced.spans()
    attrs: dict[str, Any] = dict(span.attributes or {})
    assert len(attrs["gen_ai.tool.name"]) == 4096 and len(attrs["mcpward.note"]) == 4096
    assert isinstance(attrs["mcpward.weird"], str)


def test_concurrent_requests_get_distinct_span_ids(traced: Traced) -> None:
    out: list[str] = []

    def work() -> None:
        for _ in range(200):
            rt = traced.call(traceparent=CLIENT_TP)
            out.append(rt.traceparent or "")
            rt.end("success")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 800
    assert len(traced.spans()) == 800


def test_shutdown_is_bounded_when_the_collector_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import time

    from mcpward.telemetry import tracing

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tracing, "SHUTDOWN_BOUND", 1.0)
    with socket.socket() as listener:  # accepts into its backlog, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        tel = Telemetry(TelemetrySettings(traces=True, otlp_endpoint=f"http://127.0.0.1:{port}"),
                        redact=lambda t: t)
        tel.request("ping", transport="http", target=None, server=None, session_id=None, request_id=1,
                    protocol_version=None, traceparent=None, tracestate=None).end("success")
        started = time.monotonic()
        tel.shutdown()
        assert time.monotonic() - started < 3.0
        assert not tel.tracing


# ------------------------------------------------------------------ end to end: what the upstream receives

# A legacy stdio MCP server that answers every tools/call with the `_meta` it received, and every
# resources/read with the URI it was asked for (tests/test_audit_store.py reads one through it too).
META_ECHO_SERVER = '''
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    method, params = msg.get("method"), msg.get("params") or {}
    if method == "initialize":
        result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}, "resources": {}},
                  "serverInfo": {"name": "meta-echo", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": "echo", "description": "Returns the request's _meta.",
                             "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}}]}
    elif method == "tools/call":
        result = {"content": [{"type": "text", "text": json.dumps(params.get("_meta"))}]}
    elif method == "resources/templates/list":
        result = {"resourceTemplates": [{"uriTemplate": "file:///docs/{name}", "name": "docs"}]}
    elif method == "resources/list":
        result = {"resources": []}
    elif method == "resources/read":
        result = {"contents": [{"uri": params["uri"], "text": "hello"}]}
    else:
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": method}})
                         + "\\n")
        sys.stdout.flush()
        continue
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}) + "\\n")
    sys.stdout.flush()
'''


class _Sink(BaseHTTPRequestHandler):
    """An OTLP collector on loopback that accepts and drops everything."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def otlp_sink() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def meta_echo_config(tmp_path: Path, telemetry: str) -> Path:
    script = tmp_path / "srv" / "meta_echo.py"  # its own directory: the sandbox binds it, not the config's
    script.parent.mkdir()
    script.write_text(META_ECHO_SERVER)
    path = tmp_path / "mcpward.toml"
    path.write_text(with_policy(f'[servers.echo]\ncommand = "{PYTHON}"\nargs = ["{script}"]\n\n'
                                f'[audit]\npath = "audit.sqlite"\n\n{telemetry}'))
    return path


async def upstream_meta(client: RawStdioClient, meta: dict[str, Any]) -> Any:
    reply = await client.request("tools/call", {"name": "echo__echo", "arguments": {}, "_meta": meta}, modern=False)
    assert "result" in reply, reply
    return json.loads(reply["result"]["content"][0]["text"])


@pytest.mark.parametrize("mode", ["off", "metrics", "traces"])
async def test_e2e_only_valid_trace_context_reaches_the_upstream(tmp_path: Path, otlp_sink: str, mode: str) -> None:
    telemetry = {"off": "[telemetry]\nmetrics = false\n", "metrics": "",
                 "traces": f'[telemetry]\ntraces = true\notlp_endpoint = "{otlp_sink}"\n'}[mode]
    client = await RawStdioClient.start(meta_echo_config(tmp_path, telemetry))
    try:
        await client.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                            "clientInfo": {"name": "t", "version": "1"}}, modern=False)
        await client.send_raw(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
        await client.request("tools/list", {}, modern=False)  # a tool is called only once listed
        # Malformed (uppercase hex): nothing of the client's context goes on, its tracestate neither;
        # when tracing, the gateway's span (a new root) is the upstream's parent.
        got = await upstream_meta(client, {"traceparent": CLIENT_TP.upper(), "tracestate": "a=b", "note": "kept"})
        mine = got.pop("traceparent", None)
        assert got == {"note": "kept"}
        assert mine is None if mode != "traces" else parse_traceparent(mine) and TRACE_ID not in mine
        # Valid traceparent, invalid tracestate: the tracestate is dropped.
        got = await upstream_meta(client, {"traceparent": CLIENT_TP, "tracestate": "bad state!!=,"})
        assert "tracestate" not in got
        if mode == "traces":  # the gateway's span: same trace, a span id of its own
            assert parse_traceparent(got["traceparent"]) is not None
            assert got["traceparent"].split("-")[1] == TRACE_ID and got["traceparent"] != CLIENT_TP
        else:
            assert got["traceparent"] == CLIENT_TP
        # Both valid: both go on.
        got = await upstream_meta(client, {"traceparent": CLIENT_TP, "tracestate": "vendor=abc"})
        assert got["tracestate"] == "vendor=abc" and got["traceparent"].split("-")[1] == TRACE_ID
    finally:
        await client.close()


@pytest.mark.parametrize("telemetry", [None, Telemetry(TelemetrySettings(traces=False), redact=lambda t: t)])
def test_the_http_traceparent_header_counts_with_telemetry_on_or_off(telemetry: Telemetry | None) -> None:
    # With [telemetry] metrics = false there is no Telemetry at all; the header must still be honoured.
    accounting = Accounting(parse({"servers": {"s": {"command": "true"}}}), telemetry)
    ticket = accounting.begin({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "s__t"}},
                              "http", None, CLIENT_TP)
    ctx = system_context()
    ctx.forward_meta.update({"traceparent": "junk", "tracestate": "junk state"})  # the client's own _meta
    accounting.attach(ticket, ctx)
    assert ctx.forward_meta == {"traceparent": CLIENT_TP}
    ticket = accounting.begin({"jsonrpc": "2.0", "id": 2, "method": "ping"}, "http", None, "00-zz")
    ctx = system_context()
    accounting.attach(ticket, ctx)
    assert ctx.forward_meta == {}


def test_the_http_tracestate_header_goes_with_the_http_traceparent_header() -> None:
    from mcpward.telemetry.w3c import client_context
    from mcpward.transport.http_front import _joined

    accounting = Accounting(parse({"servers": {"s": {"command": "true"}}}), None)
    ticket = accounting.begin({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "s__t"}},
                              "http", None, CLIENT_TP, "vendor=abc")
    ctx = system_context()
    accounting.attach(ticket, ctx)
    assert ctx.forward_meta == {"traceparent": CLIENT_TP, "tracestate": "vendor=abc"}
    # The context comes from one place: a `_meta` traceparent never picks up the header's tracestate.
    assert client_context({"traceparent": CLIENT_TP}, CLIENT_TP, "vendor=abc") == (CLIENT_TP, None)
    assert client_context({}, CLIENT_TP, "bad state!!=,") == (CLIENT_TP, None)
    assert client_context({}, None, "vendor=abc") == (None, None)
    # Several tracestate fields are one list (W3C Trace Context, RFC 9110 field lines).
    scope = {"headers": [(b"tracestate", b"a=1"), (b"x", b"y"), (b"TraceState", b" b=2 ")]}
    assert _joined(scope, b"tracestate") == "a=1,b=2"
    assert _joined({"headers": []}, b"tracestate") is None


# ------------------------------------------------------------------ OTLP export ignores the environment's proxy


class _Recorder(BaseHTTPRequestHandler):
    """A loopback listener that keeps the path and headers of every POST it gets (collector or proxy)."""

    seen: list[tuple[str, dict[str, str]]]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def recording_server() -> tuple[ThreadingHTTPServer, list[tuple[str, dict[str, str]]]]:
    seen: list[tuple[str, dict[str, str]]] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def test_otlp_export_ignores_proxy_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    proxy, via_proxy = recording_server()
    collector, at_collector = recording_server()
    try:
        proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}"
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy_url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        netrc = tmp_path / "netrc"  # .netrc would add Authorization: Basic to a session that trusts the env
        netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-pass\n")
        monkeypatch.setenv("NETRC", str(netrc))
        settings = load_telemetry({"traces": True, "metrics": True,
                                   "otlp_endpoint": f"http://127.0.0.1:{collector.server_address[1]}",
                                   "otlp_headers": {"x-api-key": "otlp-key-not-for-a-proxy"}})
        tel = Telemetry(settings, redact=lambda t: t)
        tel.request("ping", transport="http", target=None, server=None, session_id=None, request_id=1,
                    protocol_version=None, traceparent=None, tracestate=None).end("success")
        tel.shutdown()  # flushes both signals
        assert via_proxy == []
        assert {path for path, _h in at_collector} == {"/v1/traces", "/v1/metrics"}
        assert all(h["x-api-key"] == "otlp-key-not-for-a-proxy" and "authorization" not in h
                   for _p, h in at_collector)
    finally:
        proxy.shutdown()
        collector.shutdown()
        proxy.server_close()
        collector.server_close()


def load_telemetry(table: dict[str, Any]) -> TelemetrySettings:
    from mcpward.telemetry import load_settings

    return load_settings(parse({"telemetry": table}, source="gw.toml"))
