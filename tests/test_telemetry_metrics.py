"""Prometheus `/metrics`: the semconv duration histogram, outcomes, refusals by rule, bounded labels."""

from __future__ import annotations

import re

from mcpward.telemetry import Telemetry, TelemetrySettings
from mcpward.telemetry.metrics import OTHER, BoundedLabels


def call(tel: Telemetry, method: str, target: str | None, outcome: str, code: int | None = None,
         rule: str | None = None, version: str | None = "2025-11-25") -> None:
    rt = tel.request(method, transport="http", target=target, server="docs", session_id="s", request_id=1,
                     protocol_version=version, traceparent=None, tracestate=None)
    rt.set(target=target)  # as the gateway does once the name resolved to a listed tool
    if rule:
        rt.set(rule=rule)
    rt.end(outcome, code)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample whose labels include `labels`."""
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    raise AssertionError(f"no {name} with {labels} in:\n{text}")


def test_histogram_and_counters_after_requests() -> None:
    tel = Telemetry(TelemetrySettings(), redact=lambda t: t)
    for _ in range(3):
        call(tel, "tools/call", "search", "success")
    call(tel, "tools/call", "search", "application_error")
    call(tel, "tools/call", "rm", "denied", -32001, rule="policy.forbid-destructive")
    call(tel, "tools/list", None, "success")
    body, ctype = tel.render_metrics()
    text = body.decode()
    assert ctype.startswith("text/plain") and "version=" in ctype
    assert "# TYPE mcp_server_operation_duration_seconds histogram" in text
    ok = {"mcp_method_name": "tools/call", "gen_ai_tool_name": "search", "network_transport": "tcp"}
    assert sample(text, "mcp_server_operation_duration_seconds_count", **ok) == 3
    assert sample(text, "mcp_server_operation_duration_seconds_bucket", le="+Inf", **ok) == 3
    assert sample(text, "mcp_server_operation_duration_seconds_bucket", le="300.0", **ok) == 3
    assert sample(text, "mcp_server_operation_duration_seconds_sum", **ok) > 0
    assert sample(text, "mcp_server_operation_duration_seconds_count", error_type="tool_error") == 1
    assert sample(text, "mcp_server_operation_duration_seconds_count", error_type="-32001", gen_ai_tool_name="rm") == 1
    assert sample(text, "mcpward_requests_total", mcp_method_name="tools/call", mcpward_outcome="success") == 3
    assert sample(text, "mcpward_requests_total", mcp_method_name="tools/list", mcpward_outcome="success") == 1
    assert sample(text, "mcpward_refusals_total", mcpward_rule="policy.forbid-destructive") == 1
    assert 'target_info{service_name="mcpward"} 1.0' in text
    assert tel.metrics_path == "/metrics"


def test_no_principal_session_or_argument_in_labels() -> None:
    tel = Telemetry(TelemetrySettings(), redact=lambda t: t)
    rt = tel.request("tools/call", transport="http", target="search", server="docs", session_id="SESSION-SECRET",
                     request_id="REQ-77", protocol_version=None, traceparent=None, tracestate=None)
    rt.set(principal="alice@example.com", query="ARGUMENT-VALUE")
    rt.end("success")
    text = tel.render_metrics()[0].decode()
    for value in ("SESSION-SECRET", "REQ-77", "alice@example.com", "ARGUMENT-VALUE", "docs"):
        assert value not in text


def test_a_token_shaped_tool_name_never_becomes_a_label() -> None:
    from mcpward.telemetry.redaction import default_redactor

    tel = Telemetry(TelemetrySettings(), redact=default_redactor())
    call(tel, "tools/call", "ghp_8aB3kLm9Qz2Xw7Yp4Rt6Uv1Ns5Jd0Hc3Fg8E", "error", -32602)
    text = tel.render_metrics()[0].decode()
    assert "ghp_8aB3" not in text and "[REDACTED:github-token]" in text


def test_the_name_a_client_sent_is_never_a_label_until_it_resolves() -> None:
    tel = Telemetry(TelemetrySettings(), redact=lambda t: t)
    for n in range(50):  # made-up names: each would have been a new series
        rt = tel.request("tools/call", transport="http", target=f"junk_tool_{n}", server=None, session_id=None,
                         request_id=n, protocol_version=None, traceparent=None, tracestate=None)
        rt.end("error", -32602)
    text = tel.render_metrics()[0].decode()
    assert "junk_tool_" not in text
    assert sample(text, "mcpward_requests_total", mcp_method_name="tools/call", mcpward_outcome="error") == 50


def test_labels_are_bounded() -> None:
    tel = Telemetry(TelemetrySettings(), redact=lambda t: t)
    for i in range(1100):  # clients may call tools that do not exist, with any name
        call(tel, "tools/call", f"tool-{i}", "error", -32602)
    for i in range(100):
        call(tel, f"method/{i}", None, "error", -32601, version=f"v{i}")
    text = tel.render_metrics()[0].decode()
    names = set(re.findall(r'gen_ai_tool_name="([^"]+)"', text))  # "" = a series without a tool
    assert len(names) == 1001 and OTHER in names
    assert len(set(re.findall(r'mcp_method_name="([^"]*)"', text))) <= 65
    assert len(set(re.findall(r'mcp_protocol_version="([^"]*)"', text))) <= 17
    assert sample(text, "mcp_server_operation_duration_seconds_count", gen_ai_tool_name=OTHER) == 100


def test_bounded_labels_redact_once_and_fail_closed() -> None:
    calls: list[str] = []

    def redact(text: str) -> str:
        calls.append(text)
        if text == "boom":
            raise ValueError("no")
        return text.upper()

    labels = BoundedLabels(3, redact)
    assert [labels("a"), labels("a"), labels("boom"), labels("b"), labels("c")] == ["A", "A", OTHER, "B", OTHER]
    assert labels("x" * 500) == OTHER
    assert calls == ["a", "boom", "b"]


def test_metrics_off_serves_nothing() -> None:
    tel = Telemetry(TelemetrySettings(metrics=False), redact=lambda t: t)
    call(tel, "tools/call", "search", "success")
    assert tel.metrics_path is None
    assert tel.render_metrics()[0] == b""


def test_each_telemetry_has_its_own_registry() -> None:
    from prometheus_client import REGISTRY, generate_latest

    a = Telemetry(TelemetrySettings(), redact=lambda t: t)
    b = Telemetry(TelemetrySettings(), redact=lambda t: t)
    call(a, "ping", None, "success")
    assert "mcpward_requests_total{" in a.render_metrics()[0].decode()
    assert "mcpward_requests_total{" not in b.render_metrics()[0].decode()
    assert b"mcp_server_operation_duration" not in generate_latest(REGISTRY)
