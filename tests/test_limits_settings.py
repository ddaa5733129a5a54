"""`[limits]` parsing: defaults, and every mistake named by file and key, never showing a secret."""

from __future__ import annotations

from typing import Any

import pytest

from mcpward.gateway.config import ConfigError, GatewayConfig, parse
from mcpward.limits import guards_from_config, load_settings
from mcpward.limits.settings import bucket_window
from mcpward.secrets.refs import SecretError, parse_ref


def settings(table: dict[str, Any], resolve: Any = None) -> Any:
    return load_settings(GatewayConfig(source="gw.toml", limits=table), resolve)


def error(table: dict[str, Any], resolve: Any = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        settings(table, resolve)
    assert str(caught.value).startswith("gw.toml: limits")
    return caught.value


def test_defaults() -> None:
    s = settings({})
    assert (s.rate, s.burst, s.storage, s.on_storage_error) == (100, 20, "memory://", "refuse")
    assert s.exempt == {"ping", "initialize", "server/discover"}
    assert s.breaker.window_seconds == 60 and s.breaker.min_calls == 10 and s.breaker.error_rate == 0.10
    assert s.breaker.p99_seconds == 2.0 and s.breaker.open_seconds == 300
    assert bucket_window(100, 20) == 12


def test_full_table_from_toml_text() -> None:
    import tomllib

    text = '''
[limits]
storage = "redis://127.0.0.1:6379/0"
storage_password = "secret:redis"
rate = 120
burst = 10
exempt = ["ping"]
[limits.tools."github__create_*"]
rate = 10
burst = 5
cost = 5
budget = 1000
period = "day"
per = "gateway"
[limits.tools."github__create_*".breaker]
p99_seconds = 5.0
[limits.breaker]
window_seconds = 30
'''
    cfg = parse(tomllib.loads(text), "gw.toml")
    s = load_settings(cfg, lambda ref: "pw")
    assert s.storage_password == "pw" and "pw" not in repr(s)
    rule = s.tools[0]
    assert (rule.rate, rule.burst, rule.cost, rule.budget, rule.period, rule.per) == (10, 5, 5, 1000, "day", "gateway")
    assert rule.breaker.p99_seconds == 5.0 and rule.breaker.window_seconds == 30  # inherits the defaults
    assert s.breaker.window_seconds == 30 and s.exempt == {"ping"}


@pytest.mark.parametrize(("table", "key", "problem"), [
    ({"rate": 0}, "limits.rate", "between 1 and"),
    ({"rate": "100"}, "limits.rate", "expected an integer"),
    ({"rate": 10, "burst": 11}, "limits.burst", "between 1 and rate (10)"),
    ({"ratee": 10}, "limits.ratee", "unknown key"),
    ({"on_storage_error": "ignore"}, "limits.on_storage_error", "'refuse' or 'allow'"),
    ({"storage": "memcached://x:1"}, "limits.storage", "expected memory://"),
    ({"storage": "redis://:hunter2@127.0.0.1:6379/0"}, "limits.storage", "credentials in the URI are refused"),
    ({"storage": "redis://127.0.0.1:99999/0"}, "limits.storage", "not a valid URI"),
    ({"storage": "redis://127.0.0.1:6379/abc"}, "limits.storage", "database is a number"),
    ({"storage_timeout": 0}, "limits.storage_timeout", "between"),
    ({"breaker": {"error_rate": 1.5}}, "limits.breaker.error_rate", "between 0 and 1"),
    ({"breaker": {"min_call": 3}}, "limits.breaker.min_call", "unknown key"),
    ({"tools": {"x": {"budget": 0}}}, 'limits.tools."x".budget', "between 1 and"),
    ({"tools": {"x": {"cost": 5}}}, 'limits.tools."x".cost', "needs a budget"),
    ({"tools": {"x": {"cost": 11, "budget": 10}}}, 'limits.tools."x".cost', "between 1 and the budget (10)"),
    ({"tools": {"x": {"budget": 10, "period": "week"}}}, 'limits.tools."x".period', "second, minute, hour"),
    ({"tools": {"x": {"budget": 10, "per": "session"}}}, 'limits.tools."x".per', "'principal' or 'gateway'"),
    ({"tools": {"x": {"period": "day"}}}, 'limits.tools."x".period', "only applies with a budget"),
    ({"tools": {"x": {"burst": 3}}}, 'limits.tools."x".burst', "needs a rate"),
    ({"tools": {"x": {"breaker": {"open_seconds": -1}}}}, 'limits.tools."x".breaker.open_seconds', "between"),
    ({"tools": {"x": {"budgett": 1}}}, 'limits.tools."x".budgett', "unknown key"),
    ({"tools": {"x": 5}}, 'limits.tools."x"', "expected a table"),
    ({"tools": {"bad name!": {}}}, 'limits.tools."bad name!"', "fnmatch glob"),
    ({"storage_password": "secret:redis"}, "limits.storage_password", "only a redis"),
    # coredis lets query options win over ours: these would turn off certificate checks or carry a password
    ({"storage": "rediss://127.0.0.1:6379/0?ssl_cert_reqs=none"}, "limits.storage", "query string"),
    ({"storage": "rediss://127.0.0.1:6379/0?ssl_ca_certs=/tmp/ca.pem"}, "limits.storage", "query string"),
    ({"storage": "redis://127.0.0.1:6379/0?password=hunter2"}, "limits.storage", "query string"),
    ({"storage": "redis://127.0.0.1:6379/0?"}, "limits.storage", "query string"),
    ({"storage": "redis://127.0.0.1:6379/0", "storage_ca_cert": "ca.pem"}, "limits.storage_ca_cert",
     "only a rediss://"),
    ({"storage": "rediss://127.0.0.1:6379/0", "storage_ca_cert": "/nonexistent/ca.pem"},
     "limits.storage_ca_cert", "cannot load"),
])
def test_errors_name_the_key(table: dict[str, Any], key: str, problem: str) -> None:
    caught = error(table, lambda ref: "pw")
    assert caught.key == key
    assert problem in caught.problem
    assert "hunter2" not in str(caught)


def test_password_errors_never_show_a_value() -> None:
    redis = {"storage": "redis://127.0.0.1:6379/0"}
    pasted = error({**redis, "storage_password": "s3cr3t-value-pasted"}, lambda ref: "pw")
    assert pasted.key == "limits.storage_password" and "secret reference" in pasted.problem
    assert "s3cr3t" not in str(pasted)
    no_resolver = error({**redis, "storage_password": "secret:redis"})
    assert "secret resolver" in no_resolver.problem

    def missing(ref: str) -> str:
        raise SecretError(parse_ref(ref), "not in the store")

    assert "not in the store" in error({**redis, "storage_password": "secret:redis"}, missing).problem

    def buggy(ref: str) -> str:
        raise RuntimeError("value was s3cr3t")

    caught = error({**redis, "storage_password": "env:REDIS_PW"}, buggy)
    assert "RuntimeError" in caught.problem and "s3cr3t" not in str(caught)
    assert "empty" in error({**redis, "storage_password": "env:REDIS_PW"}, lambda ref: "").problem


def test_disabled_gives_no_guards() -> None:
    assert guards_from_config(GatewayConfig(limits={"enabled": False})) == []
