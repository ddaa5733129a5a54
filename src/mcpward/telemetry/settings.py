"""The `[telemetry]` table: traces, metrics, where (if anywhere) they are exported.

Zero phone-home: the default exports nothing. Metrics are only served on the gateway's own
`/metrics` path, and nothing leaves the machine until the operator sets `otlp_endpoint`.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from mcpward.gateway.config import (
    ConfigError,
    GatewayConfig,
    TableReader,
    is_address_literal,
    is_loopback_host,
    is_non_public_address,
)
from mcpward.secrets.refs import SCHEMES, SecretError, SecretRefError, find_refs, interpolate, parse_ref

Resolve = Callable[[str], str]  # reference text ("secret:NAME") -> value; raises SecretError

# RFC 9110 token: what a header name may be. Anything else would be refused by the HTTP client
# at export time, far from the config line that caused it.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
_PRINCIPAL_KINDS = ("api-key", "oauth", "local-user", "anonymous")  # Principal.key is "<kind>:<subject>"


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    traces: bool = False
    metrics: bool = True
    otlp_endpoint: str = ""  # base URL; "" = export nothing anywhere
    # Private, link-local and metadata addresses (and *.internal names) need this; loopback does not.
    otlp_allow_private: bool = False
    # Header name -> value text: a secret reference (`secret:NAME`), text with `${ref}` parts, or
    # a literal. Kept out of repr: a literal value is a credential.
    otlp_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # The same headers with references resolved, when load_settings was given a resolver.
    header_values: tuple[tuple[str, str], ...] | None = field(default=None, repr=False, compare=False)
    sample_ratio: float = 1.0
    service_name: str = "mcpward"
    metrics_path: str = "/metrics"
    # Principal keys ("api-key:alice", "oauth:<sub>") that may read metrics_path when [auth] is on.
    # Empty: nobody (metrics name every tool and its use, also tools the policy hides from a caller).
    metrics_principals: tuple[str, ...] = ()

    @property
    def exports(self) -> bool:
        return bool(self.otlp_endpoint)

    def signal_url(self, signal: str) -> str:
        """The OTLP/HTTP URL of one signal ("traces", "metrics") under the base endpoint."""
        return f"{self.otlp_endpoint.rstrip('/')}/v1/{signal}"


def load_settings(cfg: GatewayConfig, resolve: Resolve | None = None) -> TelemetrySettings:
    """Read and check `[telemetry]`. With `resolve` (reference text -> value), secret references in
    `otlp_headers` are resolved now, and a failure is a ConfigError naming the key and the reference."""
    r = TableReader(cfg.source, "telemetry", cfg.telemetry)
    traces: bool = r.get("traces", bool, False)
    metrics: bool = r.get("metrics", bool, True)
    endpoint: str = r.get("otlp_endpoint", str, "").strip()
    allow_private: bool = r.get("otlp_allow_private", bool, False)
    headers = r.string_map("otlp_headers")
    ratio = r.number("sample_ratio", 1.0, 0.0, 1.0)
    service: str = r.get("service_name", str, "mcpward")
    path: str = r.get("metrics_path", str, "/metrics")
    readers = tuple(r.strings("metrics_principals"))
    r.reject_unknown()
    for i, key in enumerate(readers):
        kind, colon, subject = key.partition(":")
        if not colon or kind not in _PRINCIPAL_KINDS or not subject:
            raise r.fail(f"metrics_principals[{i}]", f"expected a principal key such as \"api-key:alice\" or "
                                                     f"\"oauth:<subject>\", got {key!r:.80}")

    if not _SERVICE_NAME.match(service):
        raise r.fail("service_name", "must be 1-128 characters of letters, digits and _ . : / - "
                                     "(it is exported as a label)")
    _check_metrics_path(r, path)
    if endpoint:
        _check_endpoint(r, endpoint, has_headers=bool(headers), allow_private=allow_private)
    elif headers:
        raise r.fail("otlp_headers", "set without otlp_endpoint: there is nowhere to send them")
    checked: list[tuple[str, str]] = []
    for name, value in headers.items():
        _check_header(r, name, value)
        checked.append((name.lower(), value))
    values = None
    if resolve is not None and checked and (traces or metrics):
        values = []
        for name, text in checked:
            try:
                values.append((name, resolve_header(text, resolve)))
            except SecretError as exc:  # names the reference and why, never a value
                raise r.fail(f"otlp_headers.{name}", str(exc)) from None
            except Exception as exc:  # an unknown error may carry anything: its type only
                raise r.fail(f"otlp_headers.{name}", f"resolving failed ({type(exc).__name__})") from None
    return TelemetrySettings(traces=traces, metrics=metrics, otlp_endpoint=endpoint,
                             otlp_allow_private=allow_private, otlp_headers=tuple(checked),
                             header_values=None if values is None else tuple(values),
                             sample_ratio=ratio, service_name=service, metrics_path=path,
                             metrics_principals=readers)


def resolve_header(text: str, resolve: Resolve) -> str:
    """A header value with its references resolved: a whole `secret:NAME`, or `${...}` parts, or a literal."""
    if is_whole_ref(text):
        return resolve(text)
    refs = find_refs(text)
    return interpolate(text, {ref: resolve(str(ref)) for ref in refs}) if refs else text


def _check_metrics_path(r: TableReader, path: str) -> None:
    if not path.startswith("/") or len(path) > 256 or any(c in path for c in "?#% \t\r\n") or "//" in path:
        raise r.fail("metrics_path", "must be an absolute URL path such as \"/metrics\" (no query, no spaces)")


def _check_endpoint(r: TableReader, endpoint: str, *, has_headers: bool, allow_private: bool) -> None:
    try:
        url = urllib.parse.urlsplit(endpoint)
        port = url.port
    except ValueError:
        raise r.fail("otlp_endpoint", "not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise r.fail("otlp_endpoint", "must be an http:// or https:// URL with a host (OTLP/HTTP)")
    if url.username is not None or url.password is not None:
        # Never echo it: the part before '@' is a credential.
        raise r.fail("otlp_endpoint", "must not carry credentials in the URL; put them in otlp_headers "
                                      "as a secret reference")
    if url.query or url.fragment:
        raise r.fail("otlp_endpoint", "must not have a query or fragment; give the base URL "
                                      "(/v1/traces and /v1/metrics are appended)")
    if port == 0:
        raise r.fail("otlp_endpoint", "port 0 is not a port")
    if url.path.rstrip("/").endswith(("/v1/traces", "/v1/metrics")):
        raise r.fail("otlp_endpoint", "give the base URL: /v1/traces and /v1/metrics are appended per signal")
    host = url.hostname.lower()
    loopback = is_loopback_host(host)
    if has_headers and url.scheme == "http" and not loopback:
        raise r.fail("otlp_endpoint", "otlp_headers would travel in clear text over http:// to a non-loopback "
                                      "host; use https://")
    # Like the webhook: a collector on this machine is the usual set-up and needs no allow; a
    # private, link-local or metadata address does (the cloud metadata service answers POSTs too).
    # A name is resolved and vetted before each export (telemetry/otlp_session.py).
    if loopback or allow_private:
        return
    if is_address_literal(host) and is_non_public_address(host.strip("[]").split("%")[0]):
        raise r.fail("otlp_endpoint", f"{host} is a private, link-local or metadata address; "
                                      "set otlp_allow_private = true to allow it")
    if host.endswith(".internal"):
        raise r.fail("otlp_endpoint", f"{host} is an internal name; set otlp_allow_private = true to allow it")


def _check_header(r: TableReader, name: str, value: str) -> None:
    key = f"otlp_headers.{name}"
    if not _HEADER_NAME.match(name):
        raise r.fail(key, "not a valid HTTP header name")
    if any(c in value for c in "\r\n\x00"):
        raise r.fail(key, "a header value must not contain line breaks or NUL")
    try:
        if is_whole_ref(value):
            parse_ref(value)
        else:
            find_refs(value)
    except SecretRefError as exc:
        # The message of SecretRefError never repeats the reference text.
        raise r.fail(key, str(exc)) from None


def is_whole_ref(value: str) -> bool:
    """`secret:NAME`, `env:NAME`, ...: the whole value is one reference (not `Bearer ${secret:X}`)."""
    scheme, colon, _ = value.partition(":")
    return bool(colon) and scheme in SCHEMES


__all__ = ["ConfigError", "Resolve", "TelemetrySettings", "is_whole_ref", "load_settings", "resolve_header"]
