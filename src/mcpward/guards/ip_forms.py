"""IP address forms and what they reach: the part of SSRF screening that needs no DNS.

`inet_aton` (what curl, wget, Python's socket and most C code use) accepts `0x7f000001`,
`2130706433`, `0177.0.0.1`, `127.1` and mixes of them; other parsers read `0177` as decimal
177. A host in any form but plain dotted decimal is therefore ambiguous and refused; its
decoding is still reported so the message says what it would have reached.

IPv6 literals can carry an IPv4 target inside: mapped (`::ffff:a.b.c.d`), compatible
(`::a.b.c.d`), NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`), 6to4 (`2002::/16`) and Teredo; each
embedded address is checked too.
"""

from __future__ import annotations

import functools
import ipaddress
import re

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NUMERIC_HOST = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\.?$", re.IGNORECASE)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_CANONICAL_V4 = re.compile(rf"^{_OCTET}(?:\.{_OCTET}){{3}}$")
# Ranges `is_global` misses or that are metadata services reachable from cloud guests.
_METADATA_NETS = [ipaddress.ip_network(n) for n in (
    "169.254.0.0/16",  # link-local: AWS/GCP/Azure/DO/Hetzner/OpenStack metadata, ECS 169.254.170.2
    "100.100.100.200/32",  # Alibaba Cloud
    "192.0.0.192/32",  # Oracle Cloud (legacy)
    "fd00:ec2::254/128",  # AWS IPv6 metadata
    "fe80::/10",
)]
_EXTRA_NON_PUBLIC = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15", "240.0.0.0/4", "::/128", "::1/128",
    "fc00::/7", "fec0::/10", "ff00::/8",
)]
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class Ambiguous(ValueError):
    """A numeric host that different parsers read differently (or not at all)."""


def parse_inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """The address `inet_aton` would make of `host`, None if it is not numeric at all.

    Raises Ambiguous for numeric hosts out of range (`7147006462`, `425.510.425.510`)."""
    if not _NUMERIC_HOST.match(host):
        return None
    parts = host.rstrip(".").split(".")
    values: list[int] = []
    for part in parts:
        if part.lower().startswith("0x"):
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if not set(part) <= set("01234567"):
                raise Ambiguous(f"{host} is not a valid IP address (a leading 0 means octal)")
            values.append(int(part, 8))
        else:
            values.append(int(part))
    # inet_aton: a.b.c.d, a.b.c (c 16 bits), a.b (b 24 bits), a (32 bits).
    last_bits = 32 - 8 * (len(values) - 1)
    if any(v > 255 for v in values[:-1]) or values[-1] >= 1 << last_bits:
        raise Ambiguous(f"{host} is out of range for an IPv4 address")
    number = values[-1]
    for i, v in enumerate(values[:-1]):
        number |= v << (24 - 8 * i)
    return ipaddress.IPv4Address(number)


def is_canonical_v4(host: str) -> bool:
    return bool(_CANONICAL_V4.match(host))


def embedded_v4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    out: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    packed = int(ip)
    if packed >> 32 == 0 and packed > 1:  # IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks)
        out.append(ipaddress.IPv4Address(packed & 0xFFFFFFFF))
    if any(ip in net for net in _NAT64):
        out.append(ipaddress.IPv4Address(packed & 0xFFFFFFFF))
    return out


def is_metadata(ip: IPAddress) -> bool:
    return any(ip.version == net.version and ip in net for net in _METADATA_NETS)


@functools.lru_cache(maxsize=4096)
def describe_non_public(ip: IPAddress) -> str | None:
    """Why `ip` is not a public address, or None if it is one (embedded IPv4 targets included)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%")[0])
        for inner in embedded_v4(ip):
            reason = describe_non_public(inner)
            if reason is not None:
                return f"embeds {inner}, which {reason}"
    if is_metadata(ip):
        return "is a link-local or cloud metadata address"
    if ip.is_loopback:
        return "is a loopback address"
    if ip.is_unspecified:
        return "is the unspecified address (it reaches this host)"
    if ip.is_private:
        return "is a private address"
    if ip.is_multicast or ip.is_reserved:
        return "is a multicast or reserved address"
    if any(ip.version == net.version and ip in net for net in _EXTRA_NON_PUBLIC):
        return "is a non-public address (shared, benchmarking or special-purpose range)"
    if not ip.is_global:
        return "is not a globally routable address"
    return None
