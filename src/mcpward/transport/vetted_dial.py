"""The gateway's own outbound HTTP, pinned to the addresses it vetted.

Checking a name's addresses and then letting httpx resolve the name again to connect leaves a
window (DNS rebinding): the second answer can be 169.254.169.254, loopback or a private host,
and the request would carry the upstream's or the identity provider's credentials there. Here
the check and the connection share one resolution: `VettedBackend.connect_tcp` resolves the
name once, refuses unless every address passes, and dials the vetted address literal itself.
Every new connection (a reconnect hours later included) goes through it again.

TLS is unaffected: httpcore hands the URL's host to `start_tls` as `server_hostname`, so SNI
and certificate verification still use the name, not the address that was dialled.

The authority on "public" is `sandbox.egress_policy.classify_address`, the one the sandbox
egress proxy uses: it also looks inside IPv6 forms that embed an IPv4 address (mapped,
compatible, NAT64, 6to4, Teredo) and knows the cloud metadata addresses that are globally
routable (Azure's 168.63.129.16). One rule for every connection the gateway makes, whether on
its own behalf (here) or on a sandboxed server's (the egress proxy).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import ssl
from collections.abc import Iterable

import httpcore
import httpx

from mcpward.audit import events
from mcpward.gateway.config import Resolver, is_address_literal, is_loopback_host, system_resolver
from mcpward.sandbox.egress_policy import classify_address

RULE_NON_PUBLIC = "dial.non-public-address"
RULE_UNRESOLVABLE = "dial.unresolvable"
RULE_BAD_ANSWER = "dial.bad-answer"
RULE_NO_SOCKETS = "dial.unix-socket"


class DialRefused(httpcore.ConnectError):
    """A connection the gateway would not make. The message names the host, the address and the
    rule; it never carries a URL path, a query or a header (they may hold secrets)."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{message} (rule {rule})")
        self.rule = rule


class PinningUnavailable(RuntimeError):
    """httpx/httpcore no longer have the shape this module plugs into: a startup error, never a
    silent fallback to a transport that resolves names itself."""


def address_problem(host: str, address: str, *, allow_private: bool, loopback_ok: bool = False,
                    setting: str = "allow_private") -> str | None:
    """Why `address` (an answer for `host`, or `host` itself when it is a literal) must not be
    dialled, or None.

    `loopback_ok`: a host that itself names this machine (`localhost`, `127.0.0.1`) may reach
    loopback addresses, as a local http interceptor does; any other host never may. `setting`: the
    config key the message names as the way to allow it.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{host} resolved to {address[:60]!r}, which is not an IP address"
    kind, reason = classify_address(ip)
    if kind is None or allow_private:
        return None
    if loopback_ok and kind == "loopback" and is_loopback_host(host.lower()):
        return None
    what = f"{host} is" if host.strip("[]") == address else f"{host} resolves to"
    return f"{what} the non-public address {address}, which {reason}; set {setting} = true to allow it"


def answer_problem(host: str, addresses: Iterable[str], *, allow_private: bool, loopback_ok: bool = False,
                   setting: str = "allow_private") -> DialRefused | None:
    """The refusal of a resolver's whole answer for `host`, or None. All or nothing: one bad address means
    the name is not to be trusted at all; only literals pass (a name would be resolved again, unchecked)."""
    for address in addresses:
        if not is_address_literal(address):
            return DialRefused(RULE_BAD_ANSWER, f"{host} resolved to {address[:60]!r}, which is not an IP address")
        problem = address_problem(host, address, allow_private=allow_private, loopback_ok=loopback_ok,
                                  setting=setting)
        if problem is not None:
            return DialRefused(RULE_NON_PUBLIC, problem)
    return None


class VettedBackend(httpcore.AsyncNetworkBackend):
    """Resolves each host once, vets every answer, dials the vetted literals in order."""

    def __init__(self, *, allow_private: bool, resolver: Resolver = system_resolver, loopback_ok: bool = False,
                 inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.allow_private, self.resolver, self.loopback_ok = allow_private, resolver, loopback_ok
        # The backend that really dials; tests put a recorder here.
        self.inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                addresses = await self.vetted_addresses(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} took longer than the connect timeout") from None
        except DialRefused as exc:
            # Audited here, once for every user of the backend: an answer that turned non-public after
            # the early check is what a DNS-rebinding attempt looks like.
            events.record("dial.refused", host=host, port=port, rule=exc.rule, reason=str(exc))
            raise
        failure: Exception = httpcore.ConnectError(f"no vetted address of {host} answered")
        for address in addresses:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise httpcore.ConnectTimeout(f"connecting to {host} took longer than the connect timeout")
            try:
                return await self.inner.connect_tcp(address, port, timeout=left, local_address=local_address,
                                                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc  # the next vetted address may answer
        raise failure

    async def vetted_addresses(self, host: str, port: int) -> list[str]:
        """Every address `host` has, in the resolver's order, or DialRefused naming the first bad one."""
        if is_address_literal(host):
            addresses = [host.strip("[]")]
        else:
            try:
                answer = await self.resolver(host, port)
            except (OSError, ValueError) as exc:  # ValueError: e.g. a name IDNA cannot encode
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)[:200]
                raise DialRefused(RULE_UNRESOLVABLE, f"cannot resolve {host}: {reason}") from None
            addresses = list(dict.fromkeys(answer))  # getaddrinfo repeats an address per protocol
            if not addresses:
                raise DialRefused(RULE_UNRESOLVABLE, f"{host} did not resolve to any address")
        refused = answer_problem(host, addresses, allow_private=self.allow_private, loopback_ok=self.loopback_ok)
        if refused is not None:
            raise refused
        return addresses

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise DialRefused(RULE_NO_SOCKETS, "the gateway's outbound HTTP does not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def pinned_transport(*, allow_private: bool, resolver: Resolver = system_resolver, loopback_ok: bool = False,
                     verify: ssl.SSLContext | bool = True,
                     inner: httpcore.AsyncNetworkBackend | None = None) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every connection goes through a `VettedBackend`.

    httpx 0.28 has no public way to choose the network backend, so this replaces the one in the
    transport's httpcore pool. Raises PinningUnavailable if that pool is not what we expect.
    No proxy from the environment (trust_env=False): a proxy would resolve the name itself.
    """
    transport = httpx.AsyncHTTPTransport(verify=verify, trust_env=False)
    pool = getattr(transport, "_pool", None)
    # Exactly the class we know: a subclass or a proxy pool could create connections another way.
    if type(pool) is not httpcore.AsyncConnectionPool:
        raise PinningUnavailable(f"httpx's transport holds {type(pool).__name__}, not an httpcore "
                                 "AsyncConnectionPool; outbound connections cannot be pinned")
    if not isinstance(getattr(pool, "_network_backend", None), httpcore.AsyncNetworkBackend):
        raise PinningUnavailable("httpcore's connection pool has no _network_backend to replace; "
                                 "outbound connections cannot be pinned")
    pool._network_backend = VettedBackend(allow_private=allow_private, resolver=resolver,
                                          loopback_ok=loopback_ok, inner=inner)
    return transport


@functools.cache
def check_pinning() -> None:
    """Raise PinningUnavailable now (at startup) if `pinned_transport` would; cached once it works."""
    pinned_transport(allow_private=False, verify=False)


def dial_refusal(exc: BaseException) -> DialRefused | None:
    """The DialRefused behind an httpx error (httpx re-raises httpcore's errors `from` them)."""
    seen: BaseException | None = exc
    for _ in range(5):  # a short chain: httpx error <- httpcore error
        if seen is None:
            return None
        if isinstance(seen, DialRefused):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
