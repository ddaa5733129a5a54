"""`[telemetry]`: defaults export nothing; every key is checked; errors name file and key, never a secret."""

from __future__ import annotations

from typing import Any

import pytest

from mcpward.gateway.config import ConfigError, parse
from mcpward.secrets.refs import SecretError, parse_ref
from mcpward.telemetry import Telemetry, TelemetryError, TelemetrySettings, load_settings


def settings(table: dict[str, Any]) -> TelemetrySettings:
    return load_settings(parse({"telemetry": table}, source="gw.toml"))


def refused(table: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        settings(table)
    assert info.value.source == "gw.toml"
    return info.value


def test_defaults_export_nothing() -> None:
    s = settings({})
    assert (s.traces, s.metrics, s.otlp_endpoint, s.sample_ratio) == (False, True, "", 1.0)
    assert (s.service_name, s.metrics_path, s.exports) == ("mcpward", "/metrics", False)


def test_full_table() -> None:
    s = settings({"traces": True, "metrics": False, "otlp_endpoint": "https://otel.example.test:4318/",
                  "otlp_headers": {"X-Honeycomb-Team": "secret:otel-key"}, "sample_ratio": 0.25,
                  "service_name": "gw-eu", "metrics_path": "/internal/metrics"})
    assert s.traces and not s.metrics and s.sample_ratio == 0.25
    assert s.signal_url("traces") == "https://otel.example.test:4318/v1/traces"
    assert s.otlp_headers == (("x-honeycomb-team", "secret:otel-key"),)
    assert "secret:otel-key" not in repr(s)  # headers stay out of repr (a literal would be a credential)


def test_unknown_key_is_refused() -> None:
    err = refused({"trace": True})
    assert err.key == "telemetry.trace" and "unknown key" in err.problem


@pytest.mark.parametrize(("table", "key", "words"), [
    ({"traces": "yes"}, "telemetry.traces", "true or false"),
    ({"sample_ratio": 1.5}, "telemetry.sample_ratio", "between 0 and 1"),
    ({"otlp_endpoint": "ftp://collector"}, "telemetry.otlp_endpoint", "http:// or https://"),
    ({"otlp_endpoint": "collector:4318"}, "telemetry.otlp_endpoint", "http:// or https://"),
    ({"otlp_endpoint": "https://c.test/v1/traces"}, "telemetry.otlp_endpoint", "base URL"),
    ({"otlp_endpoint": "https://c.test/?x=1"}, "telemetry.otlp_endpoint", "query"),
    ({"otlp_headers": {"a": "b"}}, "telemetry.otlp_headers", "without otlp_endpoint"),
    ({"otlp_endpoint": "https://c.test", "otlp_headers": {"bad name": "x"}}, "telemetry.otlp_headers.bad name",
     "header name"),
    ({"otlp_endpoint": "https://c.test", "otlp_headers": {"a": "x\r\ny: z"}}, "telemetry.otlp_headers.a",
     "line breaks"),
    ({"otlp_endpoint": "https://c.test", "otlp_headers": {"a": "secret:"}}, "telemetry.otlp_headers.a", "nothing"),
    ({"service_name": "has space"}, "telemetry.service_name", "letters"),
    ({"metrics_path": "metrics"}, "telemetry.metrics_path", "absolute"),
    ({"metrics_path": "/m?x"}, "telemetry.metrics_path", "absolute"),
])
def test_bad_values_name_their_key(table: dict[str, Any], key: str, words: str) -> None:
    err = refused(table)
    assert err.key == key
    assert words in err.problem


def test_credentials_in_the_url_are_refused_and_not_echoed() -> None:
    err = refused({"otlp_endpoint": "https://user:hunter2pass@c.test"})
    assert err.key == "telemetry.otlp_endpoint"
    assert "hunter2pass" not in str(err)


def test_headers_in_clear_text_only_to_loopback() -> None:
    err = refused({"otlp_endpoint": "http://collector.internal:4318", "otlp_headers": {"a": "secret:k"}})
    assert "clear text" in err.problem
    assert settings({"otlp_endpoint": "http://127.0.0.1:4318", "otlp_headers": {"a": "secret:k"}}).exports
    # no headers: plain http is allowed (a .internal name still needs the private allow)
    assert settings({"otlp_endpoint": "http://collector.internal:4318", "otlp_allow_private": True}).exports


@pytest.mark.parametrize("endpoint", [
    "http://169.254.169.254:80", "http://[::ffff:169.254.169.254]", "http://metadata.google.internal",
    "https://10.0.0.5:4318", "http://[fd00::1]:4318", "http://100.100.100.200",
])
def test_private_and_metadata_endpoints_need_the_allow(endpoint: str) -> None:
    err = refused({"otlp_endpoint": endpoint})
    assert err.key == "telemetry.otlp_endpoint" and "otlp_allow_private = true" in err.problem
    allowed = settings({"otlp_endpoint": endpoint, "otlp_allow_private": True})
    assert allowed.otlp_allow_private and allowed.exports


def test_metrics_principals_are_principal_keys() -> None:
    assert settings({}).metrics_principals == ()  # with [auth] on: nobody may read /metrics
    assert settings({"metrics_principals": ["api-key:prom", "oauth:svc-1"]}).metrics_principals == (
        "api-key:prom", "oauth:svc-1")
    for bad in ("prom", "user:prom", "api-key:"):
        err = refused({"metrics_principals": [bad]})
        assert err.key == "telemetry.metrics_principals[0]" and "principal key" in err.problem


def test_a_loopback_collector_needs_no_allow() -> None:
    for endpoint in ("http://127.0.0.1:4318", "http://localhost:4318", "http://[::1]:4318"):
        assert not settings({"otlp_endpoint": endpoint}).otlp_allow_private


def test_header_refs_need_a_resolver_and_resolve_through_it() -> None:
    s = settings({"traces": True, "metrics": False, "otlp_endpoint": "http://127.0.0.1:9",
                  "otlp_headers": {"x-team": "secret:otel-key", "authorization": "Bearer ${env:OTEL_TOKEN}",
                                   "x-plain": "literal-value"}})
    with pytest.raises(TelemetryError, match="resolver"):
        Telemetry(s, redact=lambda t: t)
    seen: list[str] = []

    def resolve(ref: str) -> str:
        seen.append(ref)
        return f"value-of-{parse_ref(ref).target}"

    tel = Telemetry(s, redact=lambda t: t, resolve=resolve)
    try:
        assert sorted(seen) == ["env:OTEL_TOKEN", "secret:otel-key"]
        assert set(tel.header_values) == {"value-of-otel-key", "Bearer value-of-OTEL_TOKEN", "literal-value"}
    finally:
        tel.shutdown()


def unset(ref: str) -> str:
    raise SecretError(parse_ref(ref), "is not set")


def test_unresolvable_header_names_the_ref_not_a_value() -> None:
    s = settings({"traces": True, "otlp_endpoint": "http://127.0.0.1:9", "otlp_headers": {"x-team": "env:NOPE"}})
    with pytest.raises(TelemetryError) as info:
        Telemetry(s, redact=lambda t: t, resolve=unset)
    assert "otlp_headers.x-team" in str(info.value) and "env:NOPE" in str(info.value)


def test_load_settings_resolves_with_the_gateways_resolver() -> None:
    cfg = parse({"telemetry": {"otlp_endpoint": "https://c.test", "otlp_headers": {
        "x-team": "secret:otel-key", "authorization": "Bearer ${secret:tok}", "x-plain": "p"}}}, source="gw.toml")
    s = load_settings(cfg, lambda ref: {"secret:otel-key": "K-123456", "secret:tok": "T-654321"}[ref])
    assert dict(s.header_values or ()) == {"x-team": "K-123456", "authorization": "Bearer T-654321", "x-plain": "p"}
    assert "K-123456" not in repr(s)
    tel = Telemetry(s, redact=lambda t: t)  # no resolver needed any more
    try:
        assert set(tel.header_values) == {"K-123456", "Bearer T-654321", "p"}
    finally:
        tel.shutdown()
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, unset)
    assert info.value.key == "telemetry.otlp_headers.x-team" and "secret:otel-key" in info.value.problem
    # Nothing is on: nothing is resolved (no secret store opened for nothing).
    off = parse({"telemetry": {"metrics": False, "otlp_endpoint": "https://c.test",
                               "otlp_headers": {"x-team": "secret:otel-key"}}})
    assert load_settings(off, unset).header_values is None
