"""Egress policy: allowlist syntax, host canonicalisation, address vetting and the resolver.

No test here opens a socket except the `getaddrinfo` of a numeric loopback address."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from mcpward.sandbox.egress_policy import (
    RULE_HOST,
    RULE_IP_LITERAL,
    EgressDecision,
    EgressPolicy,
    ResolveError,
    Resolver,
    canonical_host,
    classify_address,
    host_addresses,
    parse_policy,
)

NO_HOST_ADDRS: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address] = frozenset()


# --- canonical host names -----------------------------------------------------------------

@pytest.mark.parametrize(("raw", "canonical"), [
    ("API.Example.COM.", "api.example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("[::FFFF:127.0.0.1]", "::ffff:7f00:1"),
    ("_srv.example.org", "_srv.example.org"),
])
def test_canonical_host(raw: str, canonical: str) -> None:
    assert canonical_host(raw) == canonical


@pytest.mark.parametrize("junk", ["", ".", "a..b", "-a.example", "a b", "user@host", "x" * 64 + ".com",
                                  "fe80::1%eth0", "ex%61mple.com", "a/b", "a\x00b"])
def test_canonical_host_refuses_junk_without_echoing_it(junk: str) -> None:
    with pytest.raises(ValueError) as info:
        canonical_host(junk)
    assert junk not in str(info.value) or not junk


# --- allowlist parsing ----------------------------------------------------------------------

def test_parse_policy_accepts_every_documented_form() -> None:
    policy = parse_policy(
        ["api.example.com", "*.example.org", "*.example.org:8443", "host.test:80", "203.0.113.5:443",
         "[2001:db8::1]:443", "2001:db8::2", "*:8080"],
        ["10.0.0.0/8", "127.0.0.1:9000", "[::1]:9000", "192.0.2.7"],
        {"Site.Test.": ["127.0.0.1", "::1"]},
    )
    assert policy.pinned("site.test") == ("127.0.0.1", "::1")
    assert policy.allow[0] == "api.example.com"


@pytest.mark.parametrize(("entry", "message"), [
    ("http://api.example.com", "must be a host name"),
    ("api.example.com/path", "must be a host name"),
    ("api.example.com:0", "port must be a number from 1 to 65535"),
    ("api.example.com:70000", "port must be a number from 1 to 65535"),
    ("api.example.com:https", "port must be a number"),
    ("a.*.example.com", "'*' is only allowed as the whole first label"),
    ("*example.com", "'*' is only allowed"),
    ("*.10.0.0.1", "a wildcard cannot cover an IP address"),
    ("0x7f000001:80", "non-canonical form of 127.0.0.1"),
    ("127.1", "non-canonical form of 127.0.0.1"),
    ("[::1", "unclosed '['"),
    (" api.example.com", "must be a host name"),
    ("", "must be a host name"),
])
def test_parse_policy_refuses_bad_allow_entries_precisely(entry: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_policy([entry], [], {})
    assert f"egress allow entry {entry!r}" in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize(("entry", "message"), [
    ("10.1.2.3/8", "not a valid CIDR"),
    ("internal.example", "names are not allowed here"),
    ("10.0.0.1:99999", "port must be a number"),
])
def test_parse_policy_refuses_bad_allow_private_entries(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match="egress allow_private entry") as info:
        parse_policy([], [entry], {})
    assert message in str(info.value)


@pytest.mark.parametrize(("resolve", "message"), [
    ({"127.0.0.1": ["127.0.0.1"]}, "the key must be a host name"),
    ({"site.test": []}, "needs a non-empty list"),
    ({"site.test": ["site2.test"]}, "is not an IP address in canonical form"),
    ({"site.test": ["0x7f000001"]}, "is not an IP address in canonical form"),
    ({"bad host": ["127.0.0.1"]}, "not a valid DNS name"),
])
def test_parse_policy_refuses_bad_resolve_entries(resolve: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ValueError, match="egress resolve entry") as info:
        parse_policy([], [], resolve)
    assert message in str(info.value)


def test_parse_policy_refuses_wrong_container_types() -> None:
    with pytest.raises(ValueError, match="must be lists"):
        parse_policy("api.example.com", [], {})  # type: ignore[arg-type]


# --- name decisions -------------------------------------------------------------------------

POLICY = parse_policy(["api.example.com", "*.example.org", "*.example.net:8443", "db.example.com:5432",
                       "203.0.113.5:443", "[2001:db8::1]:443"], [], {})


@pytest.mark.parametrize(("host", "port", "rule"), [
    ("api.example.com", 443, None),
    ("API.EXAMPLE.COM.", 80, None),
    ("api.example.com", 22, RULE_HOST),  # default ports are 80 and 443 only
    ("www.api.example.com", 443, RULE_HOST),  # an exact entry does not cover subdomains
    ("sub.example.org", 443, None),
    ("a.b.example.org", 80, None),
    ("example.org", 443, RULE_HOST),  # `*.example.org` does not match the apex
    ("evilexample.org", 443, RULE_HOST),
    ("x.example.net", 8443, None),
    ("x.example.net", 443, RULE_HOST),  # an explicit port replaces the defaults
    ("db.example.com", 5432, None),
    ("db.example.com", 443, RULE_HOST),
    ("203.0.113.5", 443, None),
    ("203.0.113.5", 80, RULE_IP_LITERAL),
    ("203.0.113.6", 443, RULE_IP_LITERAL),
    ("2001:db8::1", 443, None),
    ("[2001:DB8:0::1]", 443, None),
    ("0xcb.0.113.5", 443, RULE_IP_LITERAL),  # a non-canonical spelling of an allowlisted address
    ("3405803781", 443, RULE_IP_LITERAL),
    ("0x7f000001", 80, RULE_IP_LITERAL),
    ("127.1", 80, RULE_IP_LITERAL),
    ("999.1.1.1", 80, RULE_IP_LITERAL),
    ("bad host", 80, "egress.bad-request"),
])
def test_decide_name(host: str, port: int, rule: str | None) -> None:
    assert POLICY.decide_name(host, port) == rule


def test_star_allows_any_name_but_never_an_ip_literal() -> None:
    policy = parse_policy(["*"], [], {})
    assert policy.decide_name("anything.example", 443) is None
    assert policy.decide_name("anything.example", 22) == RULE_HOST
    assert policy.decide_name("198.51.100.1", 443) == RULE_IP_LITERAL


def test_wrong_port_reason_says_so() -> None:
    rule, why = POLICY.explain_name("api.example.com", 8080)
    assert rule == RULE_HOST
    assert "not for port 8080" in why


# --- address vetting ------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"),
    ("127.9.9.9", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("fd12::1", "private"),
    ("169.254.169.254", "cloud-metadata"),
    ("169.254.170.2", "cloud-metadata"),
    ("100.100.100.200", "cloud-metadata"),
    ("168.63.129.16", "cloud-metadata"),  # Azure: a global address, caught by the metadata list
    ("fd00:ec2::254", "cloud-metadata"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("100.64.1.1", "cgnat"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("203.0.113.5", "reserved"),
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
    ("::127.0.0.1", "loopback"),  # IPv4-compatible
    ("64:ff9b::a9fe:a9fe", "cloud-metadata"),  # NAT64 of 169.254.169.254
    ("64:ff9b::a01:203", "private"),  # NAT64 of 10.1.2.3
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("::ffff:100.64.0.1", "cgnat"),
])
def test_non_public_addresses_are_refused_by_kind(address: str, kind: str) -> None:
    rule, why = POLICY.vet_address(address, 443, NO_HOST_ADDRS)
    assert rule == f"egress.resolved-to-{kind}"
    assert why


@pytest.mark.parametrize("address", ["1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert POLICY.vet_address(address, 443, NO_HOST_ADDRS)[0] is None
    assert classify_address(ipaddress.ip_address(address)) == (None, "")


def test_host_own_address_is_refused() -> None:
    own = frozenset({ipaddress.ip_address("1.1.1.1")})
    rule, why = POLICY.vet_address("1.1.1.1", 443, own)
    assert rule == "egress.resolved-to-host-address"
    assert "own host" in why


def test_6to4_form_of_a_host_address_is_refused() -> None:
    own = frozenset({ipaddress.ip_address("8.8.8.8")})
    six_to_four = "2002:808:808::1"  # 6to4 for 8.8.8.8: public, unless 8.8.8.8 is this host
    assert POLICY.vet_address(six_to_four, 443, NO_HOST_ADDRS)[0] is None
    rule, why = POLICY.vet_address(six_to_four, 443, own)
    assert rule == "egress.resolved-to-host-address"
    assert "embeds 8.8.8.8" in why
    # The other embedding forms are refused whatever the host's addresses (not globally routable).
    for other in ("64:ff9b::808:808", "::ffff:8.8.8.8", "2001:0:4136:e378:8000:63bf:f7f7:f7f7"):
        assert POLICY.vet_address(other, 443, own)[0] is not None
        assert POLICY.vet_address(other, 443, NO_HOST_ADDRS)[0] is not None


def test_allow_private_exempts_exactly_what_it_names() -> None:
    policy = parse_policy([], ["127.0.0.1:8080", "10.0.0.0/8", "::1"], {})
    assert policy.vet_address("127.0.0.1", 8080, NO_HOST_ADDRS)[0] is None
    assert policy.vet_address("127.0.0.1", 8081, NO_HOST_ADDRS)[0] == "egress.resolved-to-loopback"
    assert policy.vet_address("::ffff:127.0.0.1", 8080, NO_HOST_ADDRS)[0] == "egress.resolved-to-loopback"
    assert policy.vet_address("10.200.0.1", 5432, NO_HOST_ADDRS)[0] is None
    assert policy.vet_address("::1", 1234, NO_HOST_ADDRS)[0] is None
    assert policy.vet_address("172.16.0.1", 443, NO_HOST_ADDRS)[0] == "egress.resolved-to-private"
    # an exemption also wins over the host-address check: that is how tests reach loopback servers
    own = frozenset({ipaddress.ip_address("127.0.0.1")})
    assert policy.vet_address("127.0.0.1", 8080, own)[0] is None


def test_garbage_from_a_resolver_is_refused() -> None:
    assert POLICY.vet_address("not-an-ip", 443, NO_HOST_ADDRS)[0] == "egress.resolved-to-invalid"


def test_host_addresses_enumerates_this_machine() -> None:
    found = host_addresses()
    assert ipaddress.ip_address("127.0.0.1") in found
    with open("/proc/net/if_inet6", encoding="ascii") as fh:
        if any(line.split()[-1] == "lo" for line in fh):
            assert ipaddress.ip_address("::1") in found


def test_policy_is_immutable_and_validated_on_direct_construction() -> None:
    policy = EgressPolicy(("site.test",), (), {"site.test": ("127.0.0.1",)})
    assert policy.pinned("site.test") == ("127.0.0.1",)
    with pytest.raises(ValueError, match="egress allow entry"):
        EgressPolicy(("http://x",))
    with pytest.raises(AttributeError):
        policy.allow = ()  # type: ignore[misc]


def test_decision_as_dict_round_trips() -> None:
    d = EgressDecision("srv", "site.test", 443, "CONNECT", "127.0.0.1", True, "egress.allowed", "ok")
    assert d.as_dict()["host"] == "site.test"
    assert EgressDecision(**d.as_dict()) == d


# --- resolver -------------------------------------------------------------------------------

class _Recorder:
    def __init__(self, answers: dict[str, list[str]], delay: float = 0.05) -> None:
        self.answers = answers
        self.delay = delay
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        await asyncio.sleep(self.delay)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.answers[host])


async def test_resolver_single_flight_under_concurrency() -> None:
    rec = _Recorder({"pkg.test": ["127.0.0.1", "::1"]})
    resolver = Resolver(lookup=rec)
    results = await asyncio.gather(*(resolver.resolve("pkg.test", 443) for _ in range(50)))
    assert rec.calls == ["pkg.test"]
    assert all(r == ["127.0.0.1", "::1"] for r in results)


async def test_resolver_caches_for_ttl_then_asks_again() -> None:
    now = [1000.0]
    rec = _Recorder({"pkg.test": ["127.0.0.1"]}, delay=0)
    resolver = Resolver(lookup=rec, ttl=30, clock=lambda: now[0])
    await resolver.resolve("pkg.test", 443)
    now[0] += 29
    await resolver.resolve("pkg.test", 443)
    assert rec.calls == ["pkg.test"]
    now[0] += 2
    await resolver.resolve("pkg.test", 443)
    assert rec.calls == ["pkg.test", "pkg.test"]


async def test_resolver_does_not_cache_failures() -> None:
    rec = _Recorder({}, delay=0)
    resolver = Resolver(lookup=rec)
    for _ in range(2):
        with pytest.raises(ResolveError, match=r"nx\.test does not resolve"):
            await resolver.resolve("nx.test", 443)
    assert rec.calls == ["nx.test", "nx.test"]


async def test_resolver_times_out() -> None:
    rec = _Recorder({"slow.test": ["127.0.0.1"]}, delay=5)
    resolver = Resolver(lookup=rec, timeout=0.1)
    with pytest.raises(ResolveError, match=r"timed out after 0\.1 s"):
        await resolver.resolve("slow.test", 443)


async def test_resolver_keeps_going_when_one_waiter_gives_up() -> None:
    rec = _Recorder({"pkg.test": ["127.0.0.1"]}, delay=0.1)
    resolver = Resolver(lookup=rec)
    first = asyncio.ensure_future(resolver.resolve("pkg.test", 443))
    second = asyncio.ensure_future(resolver.resolve("pkg.test", 443))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second == ["127.0.0.1"]
    assert rec.calls == ["pkg.test"]


async def test_resolver_cache_is_bounded() -> None:
    rec = _Recorder({f"h{i}.test": ["127.0.0.1"] for i in range(5)}, delay=0)
    resolver = Resolver(lookup=rec, max_entries=2)
    for i in range(5):
        await resolver.resolve(f"h{i}.test", 443)
    await resolver.resolve("h4.test", 443)
    await resolver.resolve("h0.test", 443)
    assert rec.calls.count("h4.test") == 1  # still cached
    assert rec.calls.count("h0.test") == 2  # evicted


async def test_default_lookup_numeric_host_needs_no_dns() -> None:
    assert await Resolver().resolve("127.0.0.1", 80) == ["127.0.0.1"]
