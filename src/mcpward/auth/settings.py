"""The `[auth]` table: who may talk to the HTTP front, checked completely at load.

Every key is validated here, with errors that name the file and the key, so a typo cannot
silently turn authentication off or widen what a token is accepted for.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mcpward.gateway.config import ConfigError, GatewayConfig, TableReader, is_address_literal, is_non_public_address
from mcpward.secrets.refs import SecretRefError, parse_ref

IntrospectMode = Literal["opaque", "always"]
# Asymmetric algorithms only: a JWKS holds public keys, and an HMAC "verified" with a public key is
# the classic key-confusion forgery. "none" is never a signature.
SUPPORTED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# RFC 6749 s3.3 scope-token: printable ASCII except space, '"' and '\'.
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
CLAIM_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
TOKEN_CACHE_SECONDS = 60  # a validated token is trusted from cache at most this long
MAX_INTROSPECTION_CACHE = 60


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    sha256: str  # lowercase hex digest of the key; the key itself is never stored
    groups: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()  # checked like a token's scopes against required/method scopes


@dataclass(frozen=True, slots=True)
class OAuthSettings:
    issuer: str
    audience: tuple[str, ...]
    jwks_url: str | None = None  # None: discovered from the issuer's metadata
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    scopes_supported: tuple[str, ...] = ()
    required_scopes: tuple[str, ...] = ()
    method_scopes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    groups_claim: str = "groups"
    leeway_seconds: int = 30
    jwks_cache_seconds: int = 600
    allow_private: bool = False
    introspection_url: str | None = None
    introspect: IntrospectMode = "opaque"
    client_id: str | None = None
    client_secret: str | None = None  # a secret reference (secret:NAME, env:NAME, ...), never a value
    introspection_cache_seconds: int = 30
    introspection_rate: int = 50  # calls to the IdP per second, at most (a flood of junk tokens stops here)
    introspection_concurrency: int = 16  # calls to the IdP in flight, at most


@dataclass(frozen=True, slots=True)
class AuthSettings:
    resource: str  # the canonical resource URI (RFC 8707) tokens must be issued for
    oauth: OAuthSettings | None = None
    api_keys: tuple[ApiKey, ...] = ()
    resource_name: str | None = None
    source: str = "<config>"


def load_settings(cfg: GatewayConfig) -> AuthSettings | None:
    """None when there is no `[auth]` table: the front does not authenticate. An empty `[auth]` is an
    error like any other that accepts nobody: writing the table says authentication is wanted."""
    if cfg.auth is None:
        return None
    r = TableReader(cfg.source, "auth", cfg.auth)
    resource = _resource(r, cfg)
    resource_name = r.get("resource_name", str, None)
    oauth_table = r.get("oauth", dict, None)
    keys_table = r.get("api_keys", dict, {})
    r.reject_unknown()
    oauth = _oauth(TableReader(cfg.source, "auth.oauth", oauth_table), resource) if oauth_table is not None else None
    api_keys = _api_keys(cfg.source, keys_table)
    if oauth is None and not api_keys:
        # Fail closed: an [auth] table that can accept nobody is a mistake, not "auth off".
        raise r.fail("oauth", "[auth] is set but accepts no credential: configure [auth.oauth] or "
                              "at least one [auth.api_keys.NAME] (or remove [auth] to run without authentication)")
    return AuthSettings(resource=resource, oauth=oauth, api_keys=api_keys, resource_name=resource_name,
                        source=cfg.source)


def _resource(r: TableReader, cfg: GatewayConfig) -> str:
    raw = r.get("resource", str, None)
    if raw is None:
        host = cfg.http_host
        if host in ("0.0.0.0", "::", "[::]", ""):
            raise r.fail("resource", f"the gateway listens on the wildcard address {host!r}, so its canonical URI "
                                     "cannot be derived; set auth.resource to the URL clients use")
        if cfg.http_port == 0:
            raise r.fail("resource", "gateway.port is 0 (a random port), so the canonical URI cannot be derived; "
                                     "set auth.resource")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        raw = f"http://{host}:{cfg.http_port}{cfg.http_path}"
    return canonical_resource(r, "resource", raw)


def canonical_resource(r: TableReader, key: str, raw: str) -> str:
    """RFC 8707 / MCP canonical form: absolute http(s) URI, lowercase scheme and host, no fragment or query."""
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise r.fail(key, "must be an absolute http:// or https:// URL")
    if parts.fragment or "#" in raw:
        raise r.fail(key, "must not contain a fragment (RFC 8707)")
    if parts.query:
        raise r.fail(key, "must not contain a query")
    if parts.username or parts.password:
        raise r.fail(key, "must not contain credentials")
    try:
        port = parts.port
    except ValueError as exc:
        raise r.fail(key, str(exc)) from None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    path = parts.path.rstrip("/") if parts.path != "/" else ""
    return f"{parts.scheme.lower()}://{netloc}{path}"


def _url(r: TableReader, key: str, raw: str, allow_private: bool) -> str:
    """An endpoint the gateway fetches from (issuer metadata, JWKS, introspection)."""
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise r.fail(key, "must be an absolute https:// URL")
    if parts.scheme == "http" and not allow_private:
        raise r.fail(key, "plain http is refused; use https (allow_private = true permits http for a local IdP)")
    if parts.username or parts.password:
        raise r.fail(key, "credentials in the URL are refused; use client_id and client_secret")
    if parts.fragment:
        raise r.fail(key, "must not contain a fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise r.fail(key, str(exc)) from None
    host = parts.hostname.lower()
    if not allow_private:
        literal = is_address_literal(host) and is_non_public_address(host.strip("[]"))
        if literal or host == "localhost" or host.endswith((".localhost", ".internal")):
            raise r.fail(key, f"{host} is a loopback/private/link-local address; set allow_private = true "
                              "to reach an identity provider there")
    return raw


def _scopes(r: TableReader, key: str) -> tuple[str, ...]:
    values = r.strings(key)
    for i, scope in enumerate(values):
        if not SCOPE_TOKEN.match(scope):
            raise r.fail(f"{key}[{i}]", "not a valid scope token (printable ASCII, no spaces, quotes or backslashes)")
    return tuple(dict.fromkeys(values))


def _oauth(r: TableReader, resource: str) -> OAuthSettings:
    allow_private = r.get("allow_private", bool, False)
    issuer = r.get("issuer", str, None)
    if issuer is None:
        raise r.fail("issuer", "required: the authorization server whose tokens are accepted (`iss` must equal it)")
    _url(r, "issuer", issuer, allow_private)
    jwks_url = r.get("jwks_url", str, None)
    if jwks_url is not None:
        _url(r, "jwks_url", jwks_url, allow_private)
    audience = r.strings("audience") or [resource]
    for i, aud in enumerate(audience):
        if not aud:
            raise r.fail(f"audience[{i}]", "must not be empty")
    algorithms = r.strings("algorithms") or list(DEFAULT_ALGORITHMS)
    for i, alg in enumerate(algorithms):
        if alg.lower() == "none":
            raise r.fail(f"algorithms[{i}]", "'none' is never accepted: it means an unsigned token")
        if alg.upper().startswith("HS"):
            raise r.fail(f"algorithms[{i}]", f"{alg} is symmetric; keys from a JWKS are public, and an HMAC checked "
                                             "with a public key can be forged by anyone")
        if alg not in SUPPORTED_ALGORITHMS:
            raise r.fail(f"algorithms[{i}]", f"unknown algorithm {alg!r:.20}; expected some of "
                                             f"{', '.join(SUPPORTED_ALGORITHMS)}")
    method_table = r.get("method_scopes", dict, {})
    mr = TableReader(r.source, r.key("method_scopes"), method_table)
    method_scopes = {method: _scopes(mr, method) for method in method_table}
    groups_claim = r.get("groups_claim", str, "groups")
    if not CLAIM_NAME.match(groups_claim):
        raise r.fail("groups_claim", "must be a claim name of 1-128 characters from [A-Za-z0-9_.:/-]")
    introspection_url = r.get("introspection_url", str, None)
    if introspection_url is not None:
        _url(r, "introspection_url", introspection_url, allow_private)
    introspect = r.get("introspect", str, "opaque")
    if introspect not in ("opaque", "always"):
        raise r.fail("introspect", f"must be 'opaque' or 'always', got {introspect!r:.20}")
    if introspect == "always" and introspection_url is None:
        raise r.fail("introspect", "'always' needs introspection_url")
    cache_seconds = r.integer("introspection_cache_seconds", 30, 0, MAX_INTROSPECTION_CACHE)
    if introspect == "always":
        # "always" promises that a revocation counts from the next request: nothing is cached.
        if "introspection_cache_seconds" in r.table and cache_seconds != 0:
            raise r.fail("introspection_cache_seconds", "must be 0 (or absent) with introspect = 'always': "
                                                        "every request asks the IdP, no answer is reused")
        cache_seconds = 0
    client_id = r.get("client_id", str, None)
    client_secret = r.get("client_secret", str, None)
    if client_secret is not None:
        try:
            parse_ref(client_secret)
        except SecretRefError as exc:
            raise r.fail("client_secret", f"must be a secret reference (secret:NAME, env:NAME, file:PATH, "
                                          f"vault:PATH#KEY), never the value itself: {exc}") from None
    if introspection_url is not None and (client_id is None or client_secret is None):
        raise r.fail("client_id" if client_id is None else "client_secret",
                     "introspection_url needs client_id and client_secret (RFC 7662 requires client authentication)")
    if introspection_url is None and (client_id is not None or client_secret is not None):
        raise r.fail("client_id" if client_id is not None else "client_secret",
                     "only used for introspection; set introspection_url or remove it")
    settings = OAuthSettings(
        issuer=issuer, audience=tuple(dict.fromkeys(audience)), jwks_url=jwks_url,
        algorithms=tuple(dict.fromkeys(algorithms)), scopes_supported=_scopes(r, "scopes_supported"),
        required_scopes=_scopes(r, "required_scopes"), method_scopes=method_scopes, groups_claim=groups_claim,
        leeway_seconds=r.integer("leeway_seconds", 30, 0, 300),
        jwks_cache_seconds=r.integer("jwks_cache_seconds", 600, 1, 86400), allow_private=allow_private,
        introspection_url=introspection_url, introspect=introspect, client_id=client_id, client_secret=client_secret,
        introspection_cache_seconds=cache_seconds,
        introspection_rate=r.integer("introspection_rate", 50, 1, 10_000),
        introspection_concurrency=r.integer("introspection_concurrency", 16, 1, 1_000),
    )
    r.reject_unknown()
    return settings


def _api_keys(source: str, table: dict[str, Any]) -> tuple[ApiKey, ...]:
    keys: list[ApiKey] = []
    owners: dict[str, str] = {}
    for name, entry in table.items():
        prefix = f"auth.api_keys.{name}"
        if not KEY_NAME.match(name):
            raise ConfigError(source, prefix, "a key name must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}")
        if not isinstance(entry, dict):
            raise ConfigError(source, prefix, "expected a table with sha256 = \"<hex>\"")
        r = TableReader(source, prefix, entry)
        digest = r.get("sha256", str, None)
        if digest is None:
            raise r.fail("sha256", "required: the sha256 hex digest of the key (`mcpward auth key new` prints it)")
        if not SHA256_HEX.match(digest):
            # Not echoed: someone may have pasted the key itself here.
            raise r.fail("sha256", "expected 64 hex digits (the sha256 of the key, never the key itself)")
        digest = digest.lower()
        if digest in owners:
            raise r.fail("sha256", f"the same key hash is also auth.api_keys.{owners[digest]}")
        owners[digest] = name
        groups = tuple(r.strings("groups"))
        for i, group in enumerate(groups):
            if not group:
                raise r.fail(f"groups[{i}]", "must not be empty")
        keys.append(ApiKey(name=name, sha256=digest, groups=groups, scopes=_scopes(r, "scopes")))
        r.reject_unknown()
    return tuple(keys)
