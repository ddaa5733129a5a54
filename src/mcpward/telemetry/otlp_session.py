"""The HTTP session the OTLP exporters post through.

The exporters' default `requests.Session` trusts the environment: `HTTP(S)_PROXY` would route the
export, `otlp_headers` included, through a proxy (in clear text for an http:// collector), and
`.netrc` could add credentials. This session ignores the environment, and refuses to send to a
name that resolves to a private, link-local or metadata address unless `otlp_allow_private` is set.
"""

from __future__ import annotations

import socket
import urllib.parse
from collections.abc import Callable
from typing import Any

import requests

from mcpward.gateway.config import is_address_literal, is_loopback_host, is_non_public_address


def system_addresses(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


class OtlpSession(requests.Session):
    def __init__(self, allow_private: bool,
                 resolve: Callable[[str, int], list[str]] = system_addresses) -> None:
        super().__init__()
        self.trust_env = False  # no proxy variables, no .netrc, no REQUESTS_CA_BUNDLE
        self.allow_private = allow_private
        self.resolve = resolve

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        problem = self.destination_problem(request.url or "")
        if problem is not None:
            raise requests.ConnectionError(f"OTLP export refused: {problem}")
        return super().send(request, **kwargs)

    def destination_problem(self, url: str) -> str | None:
        """Why the export must not go to `url`'s host, or None. Literal addresses were checked at
        load; a name is resolved here, before each export, since its addresses can change."""
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        if self.allow_private or not host or is_loopback_host(host) or is_address_literal(host):
            return None
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = self.resolve(host, port)
        except OSError as exc:
            return f"cannot resolve {host}: {exc.strerror or type(exc).__name__}"
        for address in addresses:
            if is_non_public_address(address):
                return (f"{host} resolves to the non-public address {address}; "
                        "set otlp_allow_private = true to allow it")
        return None
