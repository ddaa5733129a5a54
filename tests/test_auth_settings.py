"""`[auth]` config: every key checked, unknown keys refused, errors that name the file and the key."""

from __future__ import annotations

from typing import Any

import pytest

from mcpward.auth import load_settings
from mcpward.auth.settings import AuthSettings
from mcpward.gateway.config import ConfigError, parse

ISSUER = "https://idp.example.com"
DIGEST = "ab" * 32


def load(auth: dict[str, Any], gateway: dict[str, Any] | None = None) -> AuthSettings | None:
    data: dict[str, Any] = {"auth": auth}
    if gateway:
        data["gateway"] = gateway
    return load_settings(parse(data, "gw.toml"))


def error(auth: dict[str, Any], gateway: dict[str, Any] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(auth, gateway)
    assert str(info.value).startswith("gw.toml: ")
    return info.value


def test_absent_auth_means_no_authentication() -> None:
    assert load_settings(parse({}, "gw.toml")) is None


def test_an_empty_auth_table_is_an_error_not_auth_off() -> None:
    # Writing [auth] says authentication is wanted; a table that accepts nobody is a mistake to report.
    exc = error({})
    assert exc.key == "auth.oauth" and "accepts no credential" in exc.problem


def test_full_oauth_table_parses() -> None:
    settings = load({"resource": "HTTPS://GW.Example.com/mcp/", "resource_name": "Team gateway", "oauth": {
        "issuer": ISSUER, "jwks_url": f"{ISSUER}/keys", "algorithms": ["ES256"],
        "scopes_supported": ["mcp:tools"], "required_scopes": ["mcp:tools"],
        "method_scopes": {"tools/call": ["mcp:call"]}, "groups_claim": "roles", "leeway_seconds": 5,
        "jwks_cache_seconds": 120, "introspection_url": f"{ISSUER}/introspect", "introspect": "opaque",
        "client_id": "gw", "client_secret": "secret:idp-client", "introspection_cache_seconds": 10,
    }, "api_keys": {"ci-bot": {"sha256": DIGEST.upper(), "groups": ["ci"], "scopes": ["mcp:tools"]}}})
    assert settings is not None and settings.oauth is not None
    assert settings.resource == "https://gw.example.com/mcp"
    assert settings.oauth.audience == ("https://gw.example.com/mcp",)  # defaults to the resource
    assert settings.oauth.method_scopes == {"tools/call": ("mcp:call",)}
    assert settings.api_keys[0].sha256 == DIGEST and settings.api_keys[0].groups == ("ci",)


def test_default_resource_comes_from_the_gateway_address() -> None:
    settings = load({"oauth": {"issuer": ISSUER}}, {"host": "::1", "port": 9000, "path": "/x/mcp"})
    assert settings is not None and settings.resource == "http://[::1]:9000/x/mcp"
    assert "wildcard" in error({"oauth": {"issuer": ISSUER}}, {"host": "0.0.0.0"}).problem
    assert error({"oauth": {"issuer": ISSUER}}, {"port": 0}).key == "auth.resource"


@pytest.mark.parametrize(("auth", "key", "words"), [
    ({"oauth": {"issuer": ISSUER}, "extra": 1}, "auth.extra", "unknown key"),
    ({"oauth": {"issuer": ISSUER, "jwks_uri": "x"}}, "auth.oauth.jwks_uri", "unknown key"),
    ({"resource": "https://gw/mcp#frag", "oauth": {"issuer": ISSUER}}, "auth.resource", "fragment"),
    ({"resource": "gw.example.com/mcp", "oauth": {"issuer": ISSUER}}, "auth.resource", "absolute"),
    ({"oauth": {}}, "auth.oauth.issuer", "required"),
    ({"oauth": {"issuer": "http://idp.example.com"}}, "auth.oauth.issuer", "plain http"),
    ({"oauth": {"issuer": ISSUER, "jwks_url": "https://127.0.0.1/jwks"}}, "auth.oauth.jwks_url", "allow_private"),
    ({"oauth": {"issuer": ISSUER, "jwks_url": "https://169.254.169.254/jwks"}}, "auth.oauth.jwks_url", "private"),
    ({"oauth": {"issuer": ISSUER, "jwks_url": "https://[fd00::1]/jwks"}}, "auth.oauth.jwks_url", "private"),
    ({"oauth": {"issuer": ISSUER, "introspection_url": "https://10.1.2.3/i", "client_id": "a",
                "client_secret": "env:X"}}, "auth.oauth.introspection_url", "private"),
    ({"oauth": {"issuer": ISSUER, "algorithms": ["RS256", "none"]}}, "auth.oauth.algorithms[1]", "unsigned"),
    ({"oauth": {"issuer": ISSUER, "algorithms": ["HS256"]}}, "auth.oauth.algorithms[0]", "symmetric"),
    ({"oauth": {"issuer": ISSUER, "algorithms": ["XY999"]}}, "auth.oauth.algorithms[0]", "unknown algorithm"),
    ({"oauth": {"issuer": ISSUER, "required_scopes": ["a b"]}}, "auth.oauth.required_scopes[0]", "scope token"),
    ({"oauth": {"issuer": ISSUER, "method_scopes": {"tools/call": "mcp:call"}}},
     "auth.oauth.method_scopes.tools/call", "array"),
    ({"oauth": {"issuer": ISSUER, "leeway_seconds": 3600}}, "auth.oauth.leeway_seconds", "between"),
    ({"oauth": {"issuer": ISSUER, "introspection_cache_seconds": 600}}, "auth.oauth.introspection_cache_seconds",
     "between"),
    ({"oauth": {"issuer": ISSUER, "introspect": "sometimes"}}, "auth.oauth.introspect", "'opaque' or 'always'"),
    ({"oauth": {"issuer": ISSUER, "introspect": "always"}}, "auth.oauth.introspect", "introspection_url"),
    ({"oauth": {"issuer": ISSUER, "introspection_url": f"{ISSUER}/i"}}, "auth.oauth.client_id", "client_id"),
    ({"oauth": {"issuer": ISSUER, "client_id": "x"}}, "auth.oauth.client_id", "introspection_url"),
    ({"oauth": {"issuer": ISSUER, "groups_claim": "a b"}}, "auth.oauth.groups_claim", "claim name"),
    ({"api_keys": {"bad name": {"sha256": DIGEST}}}, "auth.api_keys.bad name", "key name"),
    ({"api_keys": {"ci": {}}}, "auth.api_keys.ci.sha256", "required"),
    ({"api_keys": {"ci": {"sha256": DIGEST, "group": ["x"]}}}, "auth.api_keys.ci.group", "unknown key"),
    ({"api_keys": {"a": {"sha256": DIGEST}, "b": {"sha256": DIGEST}}}, "auth.api_keys.b.sha256", "auth.api_keys.a"),
    ({"api_keys": {}}, "auth.oauth", "accepts no credential"),
    ({"resource_name": "x"}, "auth.oauth", "accepts no credential"),
])
def test_config_errors_name_the_key(auth: dict[str, Any], key: str, words: str) -> None:
    exc = error(auth)
    assert exc.key == key and words in exc.problem


def test_values_that_might_be_secrets_are_not_echoed() -> None:
    pasted_key = "mcpw_" + "Q" * 43
    exc = error({"api_keys": {"ci": {"sha256": pasted_key}}})
    assert exc.key == "auth.api_keys.ci.sha256" and pasted_key not in str(exc)
    literal = "s3cr3t-client-VALUE"
    exc = error({"oauth": {"issuer": ISSUER, "introspection_url": f"{ISSUER}/i", "client_id": "gw",
                           "client_secret": literal}})
    assert exc.key == "auth.oauth.client_secret" and literal not in str(exc) and "reference" in exc.problem


def test_allow_private_permits_a_local_idp() -> None:
    settings = load({"oauth": {"issuer": "http://127.0.0.1:9000", "allow_private": True}})
    assert settings is not None and settings.oauth is not None and settings.oauth.jwks_url is None
