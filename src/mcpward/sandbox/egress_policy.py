"""Egress policy: the per-server host allowlist, address vetting and the shared resolver.

The proxy in `egress.py` asks three questions for every request, in this order, and this
module answers them without doing any I/O except the DNS lookup itself:

1. May the sandbox name this host and port at all (`EgressPolicy.decide_name`)? A name not
   on the list is refused before anything resolves it, so a sandbox cannot use the
   proxy's DNS as an oracle or as an exfiltration channel.
2. Which addresses does the name have (`EgressPolicy.pinned` first, then `Resolver`)?
3. Which of them may be dialled (`EgressPolicy.vet_address`)? Loopback, private, link-local,
   CGNAT, metadata and reserved addresses (IPv4 embedded in IPv6 forms included) and the
   host's own interface addresses are dropped unless an `allow_private` entry names them.

The proxy then dials the vetted address itself, so a second resolution (DNS rebinding)
cannot change the answer between the check and the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import ipaddress
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from mcpward.guards.ip_forms import (
    Ambiguous,
    IPAddress,
    describe_non_public,
    embedded_v4,
    is_canonical_v4,
    parse_inet_aton,
)

RULE_ALLOWED = "egress.allowed"
RULE_HOST = "egress.host-not-allowlisted"
RULE_IP_LITERAL = "egress.ip-literal-not-allowlisted"
RULE_UNRESOLVABLE = "egress.unresolvable"
RULE_TOO_MANY_TUNNELS = "egress.too-many-tunnels"
RULE_BAD_REQUEST = "egress.bad-request"
RULE_DIAL_FAILED = "egress.dial-failed"
RULE_CONNECT_TIMEOUT = "egress.connect-timeout"
RULE_BYTE_LIMIT = "egress.byte-limit"
RULE_AUDIT_FAILED = "egress.audit-failed"
RESOLVED_PREFIX = "egress.resolved-to-"

# Without an explicit port an entry covers plain HTTP and HTTPS only: a name allowed for its
# web API must not silently open SSH, SMTP or a database port on the same host.
DEFAULT_PORTS: tuple[int, ...] = (80, 443)

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_PORT = re.compile(r"^[0-9]{1,5}$")

# Metadata endpoints `ip_forms` does not list (or lists only as a range); they get their own
# rule id so an audit reader sees at once that a server went for cloud credentials.
_CLOUD_METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, DigitalOcean, OpenStack, ...
    "169.254.170.2",  # AWS ECS task credentials
    "169.254.170.23",  # AWS EKS pod identity
    "100.100.100.200",  # Alibaba Cloud
    "192.0.0.192",  # Oracle Cloud (legacy)
    "168.63.129.16",  # Azure wire server: a *global* address, so only this list catches it
    "fd00:ec2::254",  # AWS IPv6
    "fd00:ec2::23",  # AWS EKS pod identity, IPv6
    "fd20:ce::254",  # GCP IPv6
))
_LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_PRIVATE = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fec0::/10",
))
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


def resolved_rule(kind: str) -> str:
    return RESOLVED_PREFIX + kind


class ResolveError(Exception):
    """A name has no usable address; the message says why and never carries a secret."""


@dataclass(frozen=True)
class EgressDecision:
    """One audit record: what the sandbox asked for and what the proxy did.

    Never holds request bodies or header values; `detail` is written by the proxy from the
    host, port, addresses and error kinds only."""

    server: str
    host: str
    port: int
    method: str
    address: str | None
    allowed: bool
    rule: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"server": self.server, "host": self.host, "port": self.port, "method": self.method,
                "address": self.address, "allowed": self.allowed, "rule": self.rule, "detail": self.detail}


# --- host names -------------------------------------------------------------------------


def canonical_host(raw: str) -> str:
    """Lowercase, without the trailing dot, IDNA-encoded; IPv6 literals in compressed form.

    Raises ValueError for anything that is neither a DNS name nor an IP address (the message
    does not repeat the input: it may be junk or carry credentials)."""
    host = raw.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        if "%" in host:
            raise ValueError("IPv6 zone identifiers are not allowed")
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError("not a valid IPv6 address") from None
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise ValueError("empty host name")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError("not a valid internationalised domain name") from None
    if len(host) > 253 or not all(_LABEL.match(label) for label in host.split(".")):
        raise ValueError("not a valid DNS name")
    return host


def ip_literal(host: str) -> IPAddress | None:
    """The address a canonical host names, None for DNS names.

    Raises Ambiguous for numeric forms other than dotted decimal (`0x7f000001`, `127.1`,
    `0177.0.0.1`): different resolvers read them differently, so none is ever allowed."""
    if ":" in host:
        return ipaddress.IPv6Address(host)
    decoded = parse_inet_aton(host)
    if decoded is None:
        return None
    if not is_canonical_v4(host):
        raise Ambiguous(f"{host} is a non-canonical form of {decoded}")
    return decoded


def split_host_port(entry: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address (no port then)."""
    if entry.startswith("["):
        end = entry.find("]")
        if end < 0:
            raise ValueError("unclosed '['")
        host, rest = entry[1:end], entry[end + 1:]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError("unexpected text after ']'")
        return host, parse_port(rest[1:])
    if entry.count(":") > 1:
        return entry, None
    host, sep, port = entry.partition(":")
    return host, (parse_port(port) if sep else None)


def parse_port(text: str) -> int:
    if not _PORT.match(text) or not 1 <= int(text) <= 65535:
        raise ValueError("port must be a number from 1 to 65535")
    return int(text)


# --- policy ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _NameRule:
    suffix: str  # canonical name; for wildcards the part after "*." ("" for a bare "*")
    wildcard: bool
    ports: tuple[int, ...]

    def matches(self, host: str, port: int) -> bool:
        return port in self.ports and self.matches_name(host)

    def matches_name(self, host: str) -> bool:
        if not self.wildcard:
            return host == self.suffix
        return not self.suffix or host.endswith("." + self.suffix)


@dataclass(frozen=True)
class _PrivateRule:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port: int | None

    def matches(self, ip: IPAddress, port: int) -> bool:
        return ip.version == self.network.version and ip in self.network and self.port in (None, port)


def _parse_allow(entry: str) -> tuple[_NameRule | None, tuple[IPAddress, tuple[int, ...]] | None]:
    if not entry or entry != entry.strip() or any(c in entry for c in "/@?#\\ \t"):
        raise ValueError("must be a host name, '*.domain' or an IP address, with an optional ':port'")
    host, port = split_host_port(entry)
    ports = (port,) if port is not None else DEFAULT_PORTS
    if host == "*" or host.startswith("*."):
        suffix = canonical_host(host[2:]) if host != "*" else ""
        if suffix and ip_literal(suffix) is not None:
            raise ValueError("a wildcard cannot cover an IP address")
        return _NameRule(suffix, True, ports), None
    if "*" in host:
        raise ValueError("'*' is only allowed as the whole first label ('*.example.org')")
    canonical = canonical_host(host)
    try:
        ip = ip_literal(canonical)
    except Ambiguous as exc:
        raise ValueError(f"{exc}; write the address in dotted decimal") from None
    if ip is not None:
        return None, (ip, ports)
    return _NameRule(canonical, False, ports), None


def _parse_private(entry: str) -> _PrivateRule:
    text = entry.strip()
    if "/" in text:
        try:
            return _PrivateRule(ipaddress.ip_network(text, strict=True), None)
        except ValueError as exc:
            raise ValueError(f"not a valid CIDR ({exc})") from None
    host, port = split_host_port(text)
    try:
        ip = ip_literal(canonical_host(host))
    except Ambiguous as exc:
        raise ValueError(f"{exc}; write the address in dotted decimal") from None
    if ip is None:
        raise ValueError("must be an IP address, 'ip:port' or a CIDR (names are not allowed here)")
    return _PrivateRule(ipaddress.ip_network(ip), port)


def _parse_pin(name: str, addresses: tuple[str, ...] | list[str]) -> tuple[str, tuple[str, ...]]:
    try:
        host = canonical_host(name)
        literal = ip_literal(host)
    except (ValueError, Ambiguous) as exc:
        raise ValueError(f"egress resolve entry {name!r}: {exc}") from None
    if literal is not None:
        raise ValueError(f"egress resolve entry {name!r}: the key must be a host name, not an address")
    if isinstance(addresses, str) or not addresses:
        raise ValueError(f"egress resolve entry {name!r}: needs a non-empty list of IP addresses")
    out: list[str] = []
    for text in addresses:
        try:
            ip = ip_literal(canonical_host(text)) if isinstance(text, str) else None
        except (ValueError, Ambiguous):
            ip = None
        if ip is None:
            raise ValueError(f"egress resolve entry {name!r}: {text!r} is not an IP address in canonical form")
        out.append(str(ip))
    return host, tuple(out)


@dataclass(frozen=True)
class EgressPolicy:
    """One server's egress rules. Construction validates every entry (ValueError on a bad one).

    `allow`: "api.example.com", "*.example.org", "*.example.org:8443", "host:80", "*" (any
    public host), or an IP literal "203.0.113.5:443" / "[2001:db8::1]:443"; without a port an
    entry covers 80 and 443. `allow_private`: CIDRs, IPs or ip:port that may be dialled although
    they are not public (the only exception to address vetting). `resolve`: static pins
    name -> addresses, consulted before DNS (like curl --resolve)."""

    allow: tuple[str, ...] = ()
    allow_private: tuple[str, ...] = ()
    resolve: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    _names: tuple[_NameRule, ...] = field(init=False, repr=False, compare=False, default=())
    _ips: tuple[tuple[IPAddress, tuple[int, ...]], ...] = field(init=False, repr=False, compare=False, default=())
    _private: tuple[_PrivateRule, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        names: list[_NameRule] = []
        ips: list[tuple[IPAddress, tuple[int, ...]]] = []
        for entry in self.allow:
            try:
                name_rule, ip_rule = _parse_allow(entry) if isinstance(entry, str) else (None, None)
            except (ValueError, Ambiguous) as exc:
                raise ValueError(f"egress allow entry {entry!r}: {exc}") from None
            if name_rule is None and ip_rule is None:
                raise ValueError(f"egress allow entry {entry!r}: must be a string")
            if name_rule is not None:
                names.append(name_rule)
            if ip_rule is not None:
                ips.append(ip_rule)
        private: list[_PrivateRule] = []
        for entry in self.allow_private:
            try:
                if not isinstance(entry, str):
                    raise ValueError("must be a string")
                private.append(_parse_private(entry))
            except (ValueError, Ambiguous) as exc:
                raise ValueError(f"egress allow_private entry {entry!r}: {exc}") from None
        pins = dict(_parse_pin(name, addrs) for name, addrs in self.resolve.items())
        object.__setattr__(self, "allow", tuple(self.allow))
        object.__setattr__(self, "allow_private", tuple(self.allow_private))
        object.__setattr__(self, "resolve", MappingProxyType(pins))
        object.__setattr__(self, "_names", tuple(names))
        object.__setattr__(self, "_ips", tuple(ips))
        object.__setattr__(self, "_private", tuple(private))

    def decide_name(self, host: str, port: int) -> str | None:
        """None if the sandbox may ask for host:port, else the rule id that refuses it."""
        return self.explain_name(host, port)[0]

    def explain_name(self, host: str, port: int) -> tuple[str | None, str]:
        """(rule or None, a one-line reason an operator can act on)."""
        try:
            canonical = canonical_host(host)
        except ValueError as exc:
            return RULE_BAD_REQUEST, f"bad host: {exc}"
        try:
            ip = ip_literal(canonical)
        except Ambiguous as exc:
            return RULE_IP_LITERAL, f"{exc}; numeric hosts must be dotted decimal and allowlisted"
        if ip is not None:
            if any(ip == allowed and port in ports for allowed, ports in self._ips):
                return None, f"{ip} port {port} is allowlisted"
            return RULE_IP_LITERAL, f"{ip} port {port} is not allowlisted as an IP address"
        for rule in self._names:
            if rule.matches(canonical, port):
                return None, "matches " + ("*" if not rule.suffix else ("*." if rule.wildcard else "") + rule.suffix)
        if any(rule.matches_name(canonical) for rule in self._names):
            return RULE_HOST, f"{canonical} is allowlisted, but not for port {port}"
        return RULE_HOST, f"{canonical} is not on this server's egress allowlist"

    def pinned(self, host: str) -> tuple[str, ...] | None:
        """The static addresses for a canonical host, None when DNS has to answer."""
        return self.resolve.get(host)

    def vet_address(self, address: str, port: int, host_addresses: frozenset[IPAddress]) -> tuple[str | None, str]:
        """(None, why) if `address` may be dialled on `port`, else (rule, why)."""
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return resolved_rule("invalid"), "the resolver returned something that is not an IP address"
        if any(rule.matches(ip, port) for rule in self._private):
            return None, f"{ip} port {port} is exempted by allow_private"
        kind, reason = classify_address(ip)
        if kind is not None:
            return resolved_rule(kind), f"{ip} {reason}"
        if ip in host_addresses:
            return resolved_rule("host-address"), f"{ip} is an address of the gateway's own host"
        if isinstance(ip, ipaddress.IPv6Address):
            # 6to4, Teredo, NAT64 and the mapped forms still reach the IPv4 host they embed.
            for inner in embedded_v4(ip):
                if inner in host_addresses:
                    return resolved_rule("host-address"), f"{ip} embeds {inner}, an address of the gateway's own host"
        return None, f"{ip} is a public address"


def parse_policy(allow: list[str], allow_private: list[str], resolve: dict[str, list[str]]) -> EgressPolicy:
    """Build a policy from configuration lists; ValueError names the first bad entry."""
    if not isinstance(allow, list) or not isinstance(allow_private, list) or not isinstance(resolve, dict):
        raise ValueError("egress: allow and allow_private must be lists, resolve a table of name -> addresses")
    pins = {name: tuple(addrs) if isinstance(addrs, list) else addrs for name, addrs in resolve.items()}
    return EgressPolicy(tuple(allow), tuple(allow_private), pins)


# --- address vetting -------------------------------------------------------------------


def classify_address(ip: IPAddress) -> tuple[str | None, str]:
    """(kind, reason) for an address that must not be dialled, (None, "") for a public one.

    `describe_non_public` is the authority on *whether* an address is public; the kind only
    names the rule. Embedded IPv4 (mapped, compatible, NAT64, 6to4, Teredo) decides the kind
    of an IPv6 address, so `::ffff:127.0.0.1` is refused as loopback."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        ip = ipaddress.IPv6Address(str(ip).split("%")[0])
    if describe_non_public(ip) is None and ip not in _CLOUD_METADATA:
        return None, ""
    if isinstance(ip, ipaddress.IPv6Address):
        for inner in embedded_v4(ip):
            if describe_non_public(inner) is not None or inner in _CLOUD_METADATA:
                kind = _kind(inner)
                return kind, f"embeds {inner}, which {_KIND_REASONS[kind]}"
    kind = _kind(ip)
    return kind, _KIND_REASONS[kind]


_KIND_REASONS = {
    "cloud-metadata": "is a cloud metadata address",
    "link-local": "is a link-local address",
    "loopback": "is a loopback address",
    "unspecified": "is an unspecified or this-network address (it reaches this host)",
    "cgnat": "is in the shared (CGNAT) range 100.64.0.0/10",
    "private": "is a private address",
    "multicast": "is a multicast address",
    "reserved": "is a reserved or special-purpose address (not globally routable)",
}


def _kind(ip: IPAddress) -> str:
    if ip in _CLOUD_METADATA:
        return "cloud-metadata"
    if any(ip.version == net.version and ip in net for net in _LINK_LOCAL):
        return "link-local"
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified or (ip.version == 4 and ip in _THIS_NETWORK):
        return "unspecified"
    if ip.version == 4 and ip in _CGNAT:
        return "cgnat"
    if any(ip.version == net.version and ip in net for net in _PRIVATE):
        return "private"
    if ip.is_multicast:
        return "multicast"
    return "reserved"


_SIOCGIFADDR = 0x8915


@functools.cache
def host_addresses() -> frozenset[IPAddress]:
    """Every address of this host's interfaces, enumerated once per process.

    IPv4 comes from the kernel's local routing table (/proc/net/fib_trie, which lists
    secondary addresses too) with an ioctl per interface as a fallback; IPv6 from
    /proc/net/if_inet6. A public address of the gateway host passes `describe_non_public`,
    so without this list a sandbox could reach services bound to it."""
    found: set[IPAddress] = set()
    with contextlib.suppress(OSError), open("/proc/net/fib_trie", encoding="ascii") as fh:
        last: str | None = None
        for line in fh:
            text = line.strip()
            if text.startswith("|--"):
                last = text[3:].strip()
            elif text.startswith("/32 host LOCAL") and last:
                with contextlib.suppress(ValueError):
                    found.add(ipaddress.IPv4Address(last))
    with contextlib.suppress(OSError), open("/proc/net/if_inet6", encoding="ascii") as fh:
        for line in fh:
            hexaddr = line.split()[0] if line.split() else ""
            with contextlib.suppress(ValueError):
                found.add(ipaddress.IPv6Address(int(hexaddr, 16)))
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # interface without an IPv4 address
            found.add(ipaddress.IPv4Address(packed[20:24]))
    return frozenset(found)


# --- resolver --------------------------------------------------------------------------

Lookup = Callable[[str, int], Awaitable[list[str]]]


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         proto=socket.IPPROTO_TCP)
    out: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in out:
            out.append(address)
    return out


class Resolver:
    """Name -> addresses for every proxy of the gateway.

    Single-flight per name and a short positive cache: a package manager opening 50 tunnels
    to one registry makes one lookup, not 50 (50 concurrent `getaddrinfo` calls in asyncio's
    executor timed out here). Failures are not cached, so a transient error clears at once."""

    def __init__(self, *, ttl: float = 30.0, timeout: float = 5.0, max_entries: int = 1024,
                 lookup: Lookup | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._timeout = timeout
        self._max_entries = max_entries
        self._lookup: Lookup = lookup or _getaddrinfo
        self._clock = clock
        self._cache: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._inflight: dict[str, asyncio.Task[tuple[str, ...]]] = {}

    async def resolve(self, host: str, port: int) -> list[str]:
        """Addresses for `host`, in resolver order; ResolveError when there are none."""
        cached = self._cache.get(host)
        if cached is not None and cached[0] > self._clock():
            return list(cached[1])
        task = self._inflight.get(host)
        if task is None:
            task = asyncio.ensure_future(self._lookup_once(host, port))
            self._inflight[host] = task
            task.add_done_callback(functools.partial(self._finished, host))
        # shield: one caller giving up (client hung up) must not cancel the lookup for the rest.
        return list(await asyncio.shield(task))

    def _finished(self, host: str, task: asyncio.Task[tuple[str, ...]]) -> None:
        if self._inflight.get(host) is task:
            del self._inflight[host]
        if task.cancelled() or task.exception() is not None:
            return
        if len(self._cache) >= self._max_entries:
            now = self._clock()
            for key in [k for k, (expiry, _) in self._cache.items() if expiry <= now]:
                del self._cache[key]
            while len(self._cache) >= self._max_entries:
                del self._cache[next(iter(self._cache))]
        self._cache[host] = (self._clock() + self._ttl, task.result())

    async def _lookup_once(self, host: str, port: int) -> tuple[str, ...]:
        try:
            async with asyncio.timeout(self._timeout):
                addresses = await self._lookup(host, port)
        except TimeoutError:
            raise ResolveError(f"resolving {host} timed out after {self._timeout:g} s") from None
        except OSError as exc:
            raise ResolveError(f"{host} does not resolve ({exc.strerror or type(exc).__name__})") from None
        except UnicodeError:
            raise ResolveError(f"{host} cannot be encoded for DNS") from None
        if not addresses:
            raise ResolveError(f"{host} has no addresses")
        return tuple(addresses)
