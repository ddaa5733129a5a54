"""The HTTP session the OTLP exporters post through.

The exporters' default `requests.Session` trusts the environment: `HTTP(S)_PROXY` would route the
export, `otlp_headers` included, through a proxy (in clear text for an http:// collector), and
`.netrc` could add credentials. This session ignores the environment, and refuses to send to a
name that resolves to a private, link-local or metadata address unless `otlp_allow_private` is set.

The check and the connection share one resolution (as `transport/vetted_dial.py` does for the
gateway's async traffic): each new connection resolves the collector's name once, vets every
answer, and dials the vetted address literal itself. Checking first and letting urllib3 resolve the
name again would leave a window in which a DNS change (rebinding) sends the export, headers and
all, to the metadata service or a private host. TLS still uses the name: urllib3 takes SNI and the
certificate's expected host from the URL, not from the address dialled.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.poolmanager import PoolManager, ProxyManager
from urllib3.util.connection import create_connection

from mcpward.gateway.config import is_address_literal
from mcpward.transport.vetted_dial import answer_problem

if TYPE_CHECKING:  # protocols urllib3 defines for type checkers only
    from urllib3._base_connection import BaseHTTPConnection, BaseHTTPSConnection

Resolve = Callable[[str, int], list[str]]


def system_addresses(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


class ExportRefused(OSError):
    """The collector's name or address may not be dialled; the message names the host and the address."""


class Vetter:
    """Resolves a collector's name once and says which addresses may be dialled."""

    def __init__(self, allow_private: bool, resolve: Resolve) -> None:
        self.allow_private, self.resolve = allow_private, resolve

    def addresses(self, host: str, port: int) -> list[str]:
        """Every address of `host`, in the resolver's order, or ExportRefused naming the first bad one."""
        if is_address_literal(host):
            answer = [host.strip("[]")]
        else:
            try:
                answer = list(dict.fromkeys(self.resolve(host, port)))  # getaddrinfo repeats per protocol
            except (OSError, UnicodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                raise ExportRefused(f"cannot resolve {host}: {reason}") from None
            if not answer:
                raise ExportRefused(f"{host} did not resolve to any address")
        # The gateway's own dialler's check (loopback only for a host named as such: a local collector agent).
        refused = answer_problem(host, answer, allow_private=self.allow_private, loopback_ok=True,
                                 setting="otlp_allow_private")
        if refused is not None:
            raise ExportRefused(str(refused))
        return answer


class _PinnedConnection(HTTPConnection):
    """Dials the addresses its vetter approved for the host, never the name."""

    vetter: Vetter | None = None  # set by the pool that makes it; None dials nothing

    def _new_conn(self) -> socket.socket:
        if self.vetter is None:
            raise NewConnectionError(self, "OTLP export refused: the connection has no address check")
        try:
            addresses = self.vetter.addresses(self.host, self.port)
        except ExportRefused as exc:
            raise NewConnectionError(self, f"OTLP export refused: {exc}") from None
        failure: OSError = OSError(f"no vetted address of {self.host} answered")
        for address in addresses:
            try:
                return create_connection((address, self.port), self.timeout, source_address=self.source_address,
                                         socket_options=self.socket_options)
            except TimeoutError:
                raise ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})") from None
            except OSError as exc:
                failure = exc  # the next vetted address may answer
        raise NewConnectionError(self, f"Failed to establish a new connection: {failure}")


class _PinnedTlsConnection(_PinnedConnection, HTTPSConnection):
    """HTTPSConnection.connect() gets its socket from `_new_conn`, and verifies the certificate against the name."""


class _PinnedPool(HTTPConnectionPool):
    ConnectionCls = _PinnedConnection
    vetter: Vetter | None = None

    def _new_conn(self) -> BaseHTTPConnection:
        conn = super()._new_conn()
        if isinstance(conn, _PinnedConnection):
            conn.vetter = self.vetter
        return conn


class _PinnedTlsPool(HTTPSConnectionPool):
    ConnectionCls = _PinnedTlsConnection
    vetter: Vetter | None = None

    def _new_conn(self) -> BaseHTTPSConnection:
        conn = super()._new_conn()
        if isinstance(conn, _PinnedConnection):
            conn.vetter = self.vetter
        return conn


class _PinnedPoolManager(PoolManager):
    def __init__(self, vetter: Vetter, **kw: Any) -> None:
        super().__init__(**kw)
        self.vetter = vetter
        self.pool_classes_by_scheme = {"http": _PinnedPool, "https": _PinnedTlsPool}

    def _new_pool(self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None) -> Any:
        pool = super()._new_pool(scheme, host, port, request_context)
        if not isinstance(pool, _PinnedPool | _PinnedTlsPool):
            raise ExportRefused(f"no pinned connection pool for {scheme!r}")
        pool.vetter = self.vetter
        return pool


class PinnedAdapter(HTTPAdapter):
    """requests' adapter with every connection going through a Vetter; no proxy (it would resolve the name)."""

    def __init__(self, vetter: Vetter) -> None:
        self.vetter = vetter
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        self.poolmanager = _PinnedPoolManager(self.vetter, num_pools=connections, maxsize=maxsize, block=block,
                                              **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> ProxyManager:
        raise requests.ConnectionError("OTLP export refused: exports never go through a proxy")


class OtlpSession(requests.Session):
    def __init__(self, allow_private: bool, resolve: Resolve = system_addresses) -> None:
        super().__init__()
        self.trust_env = False  # no proxy variables, no .netrc, no REQUESTS_CA_BUNDLE
        self.allow_private = allow_private
        adapter = PinnedAdapter(Vetter(allow_private, resolve))
        # Replaces requests' default adapters: no other scheme is mounted, so nothing else is dialled.
        self.adapters.clear()
        self.mount("https://", adapter)
        self.mount("http://", adapter)
