"""Anomaly rules over the audit stream: each rule fires once per episode, stays quiet below its
threshold, keeps principals apart, throttles when told to, and keeps bounded state."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import pytest

from mcpward.audit import anomaly, events
from mcpward.audit.anomaly import AnomalyDetector, AnomalyGuard, AnomalySettings, load_settings
from mcpward.gateway import config
from mcpward.gateway.context import Principal, RequestContext, SilentChannel
from mcpward.guards.base import Call, Refusal

Records = list[tuple[str, dict[str, Any]]]


@pytest.fixture
def audit(monkeypatch: pytest.MonkeyPatch) -> Records:
    got: Records = []
    monkeypatch.setattr(events, "record", lambda event, **fields: got.append((event, fields)))
    return got


def settings(table: dict[str, Any] | None = None) -> AnomalySettings:
    return load_settings(config.parse({"anomaly": table} if table is not None else {}, "test.toml"))


def request(principal: str = "oauth:alice", target: str = "fs__list", *, method: str = "tools/call",
            outcome: str = "success", rule: str | None = None, labels: Iterable[str] = (),
            flags: Iterable[str] = ()) -> dict[str, Any]:
    return {"principal": principal, "method": method, "server": target.split("__")[0], "target": target,
            "outcome": outcome, "rule": rule, "labels": list(labels), "flags": list(flags), "duration_ms": 1.0}


def alerts(records: Records, rule: str | None = None) -> list[dict[str, Any]]:
    return [f for e, f in records if e == "anomaly.alert" and (rule is None or f["rule"] == rule)]


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------ rapid_calls (T29)
def test_six_calls_in_one_second_raise_exactly_one_alert(audit: Records) -> None:
    det = AnomalyDetector(settings())
    for i in range(6):
        det.observe("request", 100.0 + i * 0.15, request(target=f"fs__tool{i % 3}"))
    got = alerts(audit)
    assert len(got) == 1
    assert got[0]["rule"] == "rapid_calls" and got[0]["principal"] == "oauth:alice"
    assert got[0]["evidence"] == ["fs__tool0", "fs__tool1", "fs__tool2"]
    assert "6 tool calls" in got[0]["detail"] and got[0]["action"] == "alert"


def test_a_long_burst_is_one_episode_and_a_later_burst_is_another(audit: Records) -> None:
    det = AnomalyDetector(settings())
    for i in range(60):
        det.observe("request", 100.0 + i * 0.01, request())
    assert len(alerts(audit)) == 1
    # Quiet for more than the window, then a second burst: a new episode, a new alert.
    for i in range(6):
        det.observe("request", 105.0 + i * 0.01, request())
    assert len(alerts(audit)) == 2


def test_at_or_below_threshold_no_alert(audit: Records) -> None:
    det = AnomalyDetector(settings())
    for i in range(5):
        det.observe("request", 100.0 + i * 0.01, request())
    # Six calls, but spread over more than the window: 0.25 s apart spans 1.25 s.
    for i in range(6):
        det.observe("request", 200.0 + i * 0.25, request())
    # Other methods are not tool calls.
    for i in range(10):
        det.observe("request", 300.0 + i * 0.01, request(method="tools/list", target="tools/list"))
    assert alerts(audit) == []


def test_principals_are_independent(audit: Records) -> None:
    det = AnomalyDetector(settings())
    for i in range(5):
        det.observe("request", 100.0 + i * 0.01, request("oauth:alice"))
        det.observe("request", 100.0 + i * 0.01, request("api-key:alice"))
    assert alerts(audit) == []
    det.observe("request", 100.1, request("api-key:alice"))
    assert [a["principal"] for a in alerts(audit)] == ["api-key:alice"]


def test_thresholds_come_from_config(audit: Records) -> None:
    det = AnomalyDetector(settings({"rules": {"rapid_calls": {"max_calls": 2, "window_seconds": 10}}}))
    for i in range(3):
        det.observe("request", 100.0 + i * 3, request())
    assert len(alerts(audit, "rapid_calls")) == 1


# ------------------------------------------------------------------------------ toxic_flow (T22)
def test_secret_read_then_network_send_raises_an_alert(audit: Records) -> None:
    det = AnomalyDetector(settings())
    det.observe("request", 100.0, request(target="vault__get", flags=["secret-redacted"]))
    det.observe("request", 130.0, request(target="web__post", labels=["open-world"]))
    got = alerts(audit, "toxic_flow")
    assert len(got) == 1
    assert got[0]["evidence"] == ["vault__get", "web__post"]
    assert "web__post" in got[0]["detail"] and "vault__get" in got[0]["detail"]
    # The same episode: another send does not raise a second alert.
    det.observe("request", 140.0, request(target="web__post", labels=["egress"]))
    assert len(alerts(audit, "toxic_flow")) == 1


@pytest.mark.parametrize("source", [
    {"flags": ["pii-redacted"]}, {"flags": ["sensitive-path"]}, {"labels": ["reads-secrets"]},
    {"labels": ["sensitive"]},
])
def test_every_kind_of_sensitive_read_counts(audit: Records, source: dict[str, Any]) -> None:
    det = AnomalyDetector(settings())
    det.observe("request", 100.0, request(target="db__query", **source))
    det.observe("request", 101.0, request(target="mail__send", labels=["egress"]))
    assert len(alerts(audit, "toxic_flow")) == 1


def test_toxic_flow_needs_order_window_success_and_same_principal(audit: Records) -> None:
    det = AnomalyDetector(settings({"rules": {"toxic_flow": {"window_seconds": 60}}}))
    # Send first, read after: not a flow.
    det.observe("request", 100.0, request("oauth:a", target="web__post", labels=["open-world"]))
    det.observe("request", 101.0, request("oauth:a", target="vault__get", flags=["secret-redacted"]))
    # Read by one principal, send by another.
    det.observe("request", 102.0, request("oauth:b", target="web__post", labels=["open-world"]))
    # A refused read read nothing.
    det.observe("request", 103.0, request("oauth:c", target="vault__get", outcome="denied", rule="policy.deny",
                                          flags=["sensitive-path"]))
    det.observe("request", 104.0, request("oauth:c", target="web__post", labels=["open-world"]))
    # A read outside the window.
    det.observe("request", 200.0, request("oauth:d", target="vault__get", flags=["secret-redacted"]))
    det.observe("request", 261.0, request("oauth:d", target="web__post", labels=["open-world"]))
    # One call that both reads and sends is not a flow by itself.
    det.observe("request", 300.0, request("oauth:e", target="web__fetch", labels=["open-world"],
                                          flags=["secret-redacted"]))
    assert alerts(audit, "toxic_flow") == []
    # A send exactly at the window's edge still counts.
    det.observe("request", 350.0, request("oauth:f", target="vault__get", flags=["secret-redacted"]))
    det.observe("request", 410.0, request("oauth:f", target="web__post", labels=["open-world"]))
    assert [a["principal"] for a in alerts(audit, "toxic_flow")] == ["oauth:f"]


def test_toxic_flow_globs_and_refused_send(audit: Records) -> None:
    det = AnomalyDetector(settings({"rules": {"toxic_flow": {"sources": ["secrets__*"], "sinks": ["*__upload"]}}}))
    det.observe("request", 100.0, request(target="secrets__read"))
    det.observe("request", 101.0, request(target="files__upload", outcome="denied", rule="egress.deny"))
    got = alerts(audit, "toxic_flow")
    assert len(got) == 1 and "refused by egress.deny" in got[0]["detail"]
    # A tool no glob or label names is neither.
    det.observe("request", 100.0, request("oauth:z", target="files__read"))
    det.observe("request", 101.0, request("oauth:z", target="files__list"))
    assert len(alerts(audit, "toxic_flow")) == 1


# ------------------------------------------------------------------------------ refusal_burst
def test_refusal_burst_fires_once_and_not_below_threshold(audit: Records) -> None:
    det = AnomalyDetector(settings())
    for i in range(5):
        det.observe("request", 100.0 + i, request("oauth:a", outcome="denied", rule="policy.deny"))
    assert alerts(audit) == []
    for i in range(10):
        det.observe("request", 100.0 + i * 0.5, request("oauth:b", target=f"t__{i % 2}", outcome="denied",
                                                      rule="args.url" if i % 2 else "policy.deny"))
    got = alerts(audit, "refusal_burst")
    assert len(got) == 1 and got[0]["principal"] == "oauth:b"
    assert "policy.deny" in got[0]["detail"] and "args.url" in got[0]["detail"]
    assert sorted(got[0]["evidence"]) == ["t__0", "t__1"]


def test_refusal_records_and_own_records_are_not_counted(audit: Records) -> None:
    det = AnomalyDetector(settings({"rules": {"refusal_burst": {"max_refusals": 3}}}))
    for i in range(3):
        # The "refusal" record repeats the denied request: counting both would double count.
        det.observe("refusal", 100.0 + i, {"rule": "policy.deny", "principal": "alice", "method": "tools/call"})
        det.observe("request", 100.0 + i, request(outcome="denied", rule="policy.deny"))
    # Our own throttle's refusals and alerts feed nothing back.
    for i in range(10):
        det.observe("request", 103.0 + i * 0.01, request(outcome="denied", rule="anomaly.rapid_calls"))
        det.observe("anomaly.alert", 103.0, {"rule": "rapid_calls", "principal": "oauth:alice"})
    assert alerts(audit) == []


# ------------------------------------------------------------------------------ throttle
async def test_throttle_refuses_then_lifts(audit: Records) -> None:
    clock = Clock()
    det = AnomalyDetector(settings({"rules": {"rapid_calls": {"action": "throttle", "throttle_seconds": 30}}}),
                          clock=clock)
    guard = AnomalyGuard(det)
    alice = call_for(Principal("alice", "oauth"))
    bob = call_for(Principal("bob", "oauth"))
    assert await guard.on_request(alice) is None and det.throttled_for("oauth:alice") == 0.0
    for i in range(6):
        det.observe("request", 100.0 + i * 0.01, request("oauth:alice"))
    got = alerts(audit)
    assert len(got) == 1 and got[0]["action"] == "throttle" and got[0]["throttle_seconds"] == 30
    assert det.throttled_for("oauth:alice") == pytest.approx(30.0)
    with pytest.raises(Refusal) as refused:
        await guard.on_request(alice)
    assert refused.value.rule == "anomaly.rapid_calls" and "throttled for 30 s" in refused.value.message
    assert await guard.on_request(bob) is None  # another principal is not touched
    # An API key named alice is another principal too.
    assert await guard.on_request(call_for(Principal("alice", "api-key"))) is None
    clock.now += 29.5
    with pytest.raises(Refusal) as refused:
        await guard.on_request(alice)
    assert "throttled for 1 s" in refused.value.message
    clock.now += 1.0
    assert await guard.on_request(alice) is None
    assert det.throttled_for("oauth:alice") == 0.0 and not det.any_throttled


async def test_throttle_finds_principals_the_audit_log_rewrites(tmp_path: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules read keys as the log stores them (redacted, escaped); the guard sees them raw."""
    from mcpward.audit.settings import AuditSettings
    from mcpward.audit.store import AuditLog, RedactWith
    from mcpward.guards import output

    log = AuditLog(AuditSettings(path=tmp_path / "audit.sqlite"), None,
                   RedactWith(output.redactor_for(config.parse({}, "t.toml"))))
    monkeypatch.setattr(events, "_installed", log)  # as the gateway installs it (no atexit hook here)
    det = AnomalyDetector(settings({"rules": {"rapid_calls": {"action": "throttle"}}}))
    log.subscribe(det.observe)
    guard = AnomalyGuard(det)
    token_shaped = "ghp_" + "wWPw5k4aXcaT4fNP0UcnZwJUVFk6LO0pINUx"
    try:
        # An e-mail subject is kept as is in the `principal` field (only secrets are redacted there).
        for subject in ("carol\nx", "dave\x1b[2J", token_shaped, "frank@example.com"):
            principal = Principal(subject, "oauth")
            assert await guard.on_request(call_for(principal)) is None
            for _ in range(6):
                log.append("request", {"principal": principal.key, "method": "tools/call", "target": "fs__list",
                                       "outcome": "success"})
            with pytest.raises(Refusal) as refused:
                await guard.on_request(call_for(principal))
            assert refused.value.rule == "anomaly.rapid_calls"
            assert det.throttled_for(principal.key) > 0.0
        assert token_shaped not in str(sorted(det._throttles))  # the state holds the log's spelling only
        assert await guard.on_request(call_for(Principal("erin", "oauth"))) is None
    finally:
        log.close()


def call_for(principal: Principal) -> Call:
    ctx = RequestContext(era="modern", protocol_version="2026-07-28", capabilities={}, client_info=None,
                         principal=principal, channel=SilentChannel(), transport="http")
    return Call(ctx, "tools/call", {"name": "fs__list"}, server="fs", target="list", exposed="fs__list")


def test_alert_action_never_throttles(audit: Records) -> None:
    det = AnomalyDetector(settings())
    for i in range(6):
        det.observe("request", 100.0 + i * 0.01, request())
    assert len(alerts(audit)) == 1 and det.throttled_for("oauth:alice") == 0.0


# ------------------------------------------------------------------------------ bounds and robustness
def test_memory_is_bounded_with_many_principals(audit: Records) -> None:
    det = AnomalyDetector(settings({"max_principals": 100}))
    for i in range(20000):
        det.observe("request", 100.0 + i * 1e-6, request(f"oauth:user{i}"))
        assert det.tracked <= 100
    # One principal's history is bounded by the thresholds, not by its traffic.
    for i in range(5000):
        det.observe("request", 200.0 + i, request("oauth:busy", outcome="denied", rule="policy.deny"))
    state = det._states["oauth:busy"]
    assert len(state.calls) <= 6 and len(state.refusals) <= 6


def test_idle_principals_are_swept(audit: Records) -> None:
    det = AnomalyDetector(settings())  # the longest window is toxic_flow's 600 s
    for i in range(50):
        det.observe("request", 100.0, request(f"oauth:user{i}"))
    assert det.tracked == 50
    for i in range(30):
        det.observe("request", 1000.0 + i, request("oauth:late"))
    assert det.tracked == 1


def test_bad_fields_never_raise(audit: Records) -> None:
    det = AnomalyDetector(settings())
    for fields in ({}, {"principal": None}, {"principal": 5}, {"principal": "x", "labels": None, "flags": 3},
                   {"principal": "x", "method": "tools/call", "target": None, "outcome": None, "rule": 7},
                   {"principal": "x", "method": "tools/call", "labels": [["nested"]], "outcome": "success"}):
        det.observe("request", 100.0, fields)
    det.observe("request", float("nan"), request())
    assert alerts(audit) == []


def test_clock_stepping_back_does_not_fake_a_burst(audit: Records) -> None:
    det = AnomalyDetector(settings())
    for i in range(3):
        det.observe("request", 5000.0 + i * 0.5, request())
    # The wall clock steps back an hour: the earlier calls must not count as "just now".
    for i in range(3):
        det.observe("request", 1400.0 + i * 0.5, request())
    assert alerts(audit) == []


def test_disabled_rules_stay_silent(audit: Records) -> None:
    off = {name: {"enabled": False} for name in anomaly.RULES}
    det = AnomalyDetector(settings({"rules": off}))
    assert not det.active
    for i in range(20):
        det.observe("request", 100.0 + i * 0.01, request(outcome="denied", rule="x", flags=["secret-redacted"],
                                                        labels=["open-world"]))
    assert alerts(audit) == [] and det.tracked == 0


def test_observe_is_cheap(audit: Records) -> None:
    det = AnomalyDetector(settings({"rules": {"toxic_flow": {"sources": ["vault__*"], "sinks": ["web__*"]}}}))
    fields = [request(f"oauth:user{i % 50}", target=f"srv__tool{i % 7}", labels=["read-only"]) for i in range(1000)]
    start = time.perf_counter()
    for i in range(20000):
        det.observe("request", 100.0 + i * 0.5, fields[i % 1000])
    per_call = (time.perf_counter() - start) / 20000
    # A few microseconds is typical; this bound only catches an accidental O(n) path.
    assert per_call < 100e-6, f"{per_call * 1e6:.1f} us per record"


# ------------------------------------------------------------------------------ settings
def test_defaults() -> None:
    s = settings()
    assert (s.rapid_calls.limit, s.rapid_calls.window_seconds, s.rapid_calls.action) == (5, 1.0, "alert")
    assert s.toxic_flow.window_seconds == 600 and s.refusal_burst.limit == 5
    assert all(rule.enabled for rule in s.rules) and s.webhook is None


def test_full_config_parses() -> None:
    s = settings({
        "webhook": "https://hooks.example.com/mcpward", "webhook_headers": {"Authorization": "secret:hook-token",
                                                                           "X-Team": "Bearer ${env:TEAM}"},
        "webhook_timeout": 2, "webhook_retries": 1, "webhook_queue": 10, "instance": "gw-1",
        "rules": {"rapid_calls": {"max_calls": 10, "window_seconds": 2.5, "action": "throttle",
                                  "throttle_seconds": 120},
                  "toxic_flow": {"window_seconds": 60, "sources": ["vault__*"], "sinks": ["web__*"]},
                  "refusal_burst": {"enabled": False}}})
    assert s.rapid_calls.action == "throttle" and s.rapid_calls.throttle_seconds == 120
    assert s.toxic_flow.sources == ("vault__*",) and not s.refusal_burst.enabled
    assert s.webhook_headers["Authorization"] == "secret:hook-token" and s.instance == "gw-1"


@pytest.mark.parametrize(("table", "key", "problem"), [
    ({"webhok": "x"}, "anomaly.webhok", "unknown key"),
    ({"rules": {"rapid": {}}}, "anomaly.rules.rapid", "unknown rule"),
    ({"rules": {"rapid_calls": {"max_call": 3}}}, "anomaly.rules.rapid_calls.max_call", "unknown key"),
    ({"rules": {"toxic_flow": {"max_calls": 3}}}, "anomaly.rules.toxic_flow.max_calls", "unknown key"),
    ({"rules": {"rapid_calls": {"action": "block"}}}, "anomaly.rules.rapid_calls.action", "'alert' or 'throttle'"),
    ({"rules": {"rapid_calls": {"max_calls": 0}}}, "anomaly.rules.rapid_calls.max_calls", "between 1"),
    ({"rules": {"rapid_calls": {"window_seconds": True}}}, "anomaly.rules.rapid_calls.window_seconds", "boolean"),
    ({"rules": {"refusal_burst": {"enabled": "yes"}}}, "anomaly.rules.refusal_burst.enabled", "true or false"),
    ({"rules": {"toxic_flow": {"sources": ["ok", 3]}}}, "anomaly.rules.toxic_flow.sources[1]", "a string"),
    ({"rules": {"toxic_flow": "on"}}, "anomaly.rules.toxic_flow", "a table"),
    ({"webhook": "http://hooks.example.com/x"}, "anomaly.webhook", "only to a loopback"),
    ({"webhook": "https://10.1.2.3/x"}, "anomaly.webhook", "private"),
    ({"webhook": "https://169.254.169.254/x"}, "anomaly.webhook", "private"),
    ({"webhook": "https://user:pw@hooks.example.com/x"}, "anomaly.webhook", "credentials"),
    ({"webhook": "ftp://hooks.example.com/x"}, "anomaly.webhook", "scheme"),
    ({"webhook": "vault:kv/hooks"}, "anomaly.webhook", "needs a key"),
    ({"webhook_headers": {"A": "b"}}, "anomaly.webhook_headers", "without a webhook"),
    ({"webhook": "https://h.example.com", "webhook_headers": {"A": "x\r\nInjected: 1"}},
     "anomaly.webhook_headers.A", "control character"),
    ({"webhook": "https://h.example.com", "webhook_headers": {"Bad Name": "x"}},
     "anomaly.webhook_headers.Bad Name", "header name"),
    ({"webhook": "https://h.example.com", "webhook_headers": {"A": "Bearer ${oops}"}},
     "anomaly.webhook_headers.A", "not a secret reference"),
    ({"max_principals": 1}, "anomaly.max_principals", "between 10"),
])
def test_config_errors_name_the_key(table: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        settings(table)
    assert caught.value.source == "test.toml" and caught.value.key == key
    assert problem in caught.value.problem


def test_http_to_loopback_and_private_opt_in_are_accepted() -> None:
    assert settings({"webhook": "http://127.0.0.1:9/hook"}).webhook == "http://127.0.0.1:9/hook"
    assert settings({"webhook": "https://10.1.2.3/x", "webhook_allow_private": True}).webhook_allow_private
