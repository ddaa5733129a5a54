"""SSRF screening of URL-kind arguments. DNS is always an injected map: no real lookups."""

from __future__ import annotations

import asyncio

import pytest

from mcpward.guards.ip_forms import Ambiguous, describe_non_public, parse_inet_aton
from mcpward.guards.url_screen import UrlScreen, static_resolver
from tests.tripwire import tripwire

PUBLIC = "93.184.215.14"
MAP = {"example.com": [PUBLIC], "docs.example.com": [PUBLIC], "rebind.example.com": ["127.0.0.1"],
       "mixed.example.com": [PUBLIC, "10.1.2.3"], "v6.example.com": ["::ffff:169.254.169.254"],
       "evil.nip.io": [PUBLIC], "cgnat.example.com": ["100.64.1.1"], "intranet.example.com": ["192.168.1.10"],
       "localhost": ["127.0.0.1"]}


def screen(**kw: object) -> UrlScreen:
    return UrlScreen(static_resolver(MAP), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/", "http://169.254.170.2/v2/credentials/",
    "http://127.0.0.1/", "http://127.0.0.1:2375/containers/json", "https://127.127.127.127", "http://10.0.0.1/",
    "http://192.168.1.1/", "http://172.16.0.1/", "http://100.64.0.1/", "http://100.100.100.200/latest/meta-data/",
    "http://192.0.0.192/latest/", "http://0.0.0.0:80", "http://[::]/", "http://[::1]/", "http://[fd00:ec2::254]/",
    "http://[fe80::1%25eth0]/", "http://[::ffff:169.254.169.254]/", "http://[::ffff:a9fe:a9fe]/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]/", "http://[::169.254.169.254]/", "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:a9fe:a9fe::1]/", "http://224.0.0.1/", "http://198.18.0.1/",
])
async def test_non_public_ip_literals_refused(url: str) -> None:
    found = await screen().check(url)
    assert found is not None and found.rule == "args.url.non-public", found


@pytest.mark.parametrize("url", [
    "http://0x7f000001/", "http://2130706433/", "http://0177.0.0.1/", "http://127.1/", "http://127.0.1",
    "http://0xA9FEA9FE", "http://0251.0376.0251.0376", "http://0x7f.1/", "http://7147006462/",
    "http://425.510.425.510/", "http://0x41414141A9FEA9FE/", "http://o177.0.0.1/", "http://1.2.3.4.5/",
    "http://08.0.0.1/",  # not valid octal: ambiguous either way
    "http://%31%32%37.0.0.1/", "http://\uff11\uff12\uff17.0.0.1/",  # percent-encoded and fullwidth digits
])
async def test_ip_encodings_refused_as_ambiguous_or_non_public(url: str) -> None:
    found = await screen().check(url)
    assert found is not None and found.rule == "args.url.non-public", found


@pytest.mark.parametrize("url", [
    "http://localhost/", "http://LOCALHOST.:8080/", "http://ip6-localhost/", "http://metadata/computeMetadata/v1/",
    "http://metadata.google.internal/computeMetadata/v1/", "http://instance-data/latest/", "http://foo/images/json",
    "http://rancher-metadata/", "http://svc.default.svc.cluster.local/", "http://db.internal/", "http://x.localhost/",
    "http://169.254.169.254.nip.io/", "http://app-127-0-0-1.sslip.io/", "http://a9fea9fe.nip.io/",
    "http://anything.localtest.me/", "http://lvh.me/", "http://10.0.0.5.nip.io/",
])
async def test_local_metadata_and_wildcard_names_refused_without_dns(url: str) -> None:
    asked: list[str] = []

    async def resolver(host: str) -> list[str]:
        asked.append(host)
        return [PUBLIC]

    found = await UrlScreen(resolver).check(url)
    assert found is not None and found.rule == "args.url.non-public", found
    assert asked == []  # decided by the name alone


async def test_wildcard_name_without_an_ip_is_still_resolved() -> None:
    assert await screen().check("http://evil.nip.io/") is None  # the map says public
    found = await screen().check("http://other.nip.io/")
    assert found is not None and found.rule == "args.url.unresolvable"


@pytest.mark.parametrize(("url", "address"), [
    ("http://rebind.example.com/", "127.0.0.1"), ("https://mixed.example.com/x", "10.1.2.3"),
    ("http://v6.example.com/", "::ffff:a9fe:a9fe"), ("http://cgnat.example.com/", "100.64.1.1"),
])
async def test_names_resolving_to_non_public_addresses_refused(url: str, address: str) -> None:
    found = await screen().check(url)
    assert found is not None and found.rule == "args.url.non-public"
    assert f"resolves to {address}" in found.message


async def test_unresolvable_names_fail_closed() -> None:
    found = await screen().check("https://no-such-name.example.org/")
    assert found is not None and found.rule == "args.url.unresolvable"

    async def broken(host: str) -> list[str]:
        raise OSError("DNS server unreachable")

    found = await UrlScreen(broken).check("https://example.com/")
    assert found is not None and found.rule == "args.url.unresolvable"

    async def empty(host: str) -> list[str]:
        return []

    found = await UrlScreen(empty).check("https://example.com/")
    assert found is not None and found.rule == "args.url.unresolvable"


async def test_slow_resolution_times_out_and_refuses() -> None:
    async def slow(host: str) -> list[str]:
        await asyncio.sleep(5)
        return [PUBLIC]

    loop = asyncio.get_running_loop()
    start = loop.time()
    found = await UrlScreen(slow, resolve_timeout=0.1).check("https://example.com/")
    assert found is not None and found.rule == "args.url.unresolvable"
    assert loop.time() - start < 2


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "file://\\/\\/etc/passwd", "gopher://127.0.0.1:25/_", "dict://127.0.0.1:6379/info",
    "ftp://example.com/x", "ldap://localhost:11211/", "jar:http://example.com!/", "netdoc:///etc/passwd",
    "php://filter/resource=index.php", "redis://cache.example.com:6379/0",
    "sftp://example.com:11111/", "javascript:alert(1)", "C:\\Windows\\win.ini", "tftp://example.com/x",
])
async def test_dangerous_schemes_refused(url: str) -> None:
    found = await screen().check(url)
    assert found is not None and found.rule == "args.url.scheme", found


@pytest.mark.parametrize(("url", "rule"), [
    ("ph\tp://filter/resource=index.php", "args.url.scheme"), ("gopher\n://127.0.0.1:25/_", "args.url.scheme"),
    ("fi\r\nle:///etc/passwd", "args.url.scheme"), ("ht\ttp://169.254.169.254/latest", "args.url.non-public"),
    ("\x00 http://10.0.0.1/", "args.url.non-public"), ("http://127.0.\t0.1/", "args.url.non-public"),
])
async def test_a_url_is_read_as_url_parsers_read_it(url: str, rule: str) -> None:
    # WHATWG parsers (and Python's urllib) drop tab and newlines anywhere and controls at the ends.
    found = await screen().check(url)
    assert found is not None and found.rule == rule, found


async def test_opaque_schemes_pass_but_their_literal_hosts_and_embedded_urls_are_checked() -> None:
    # MCP resource URIs use schemes of their own; they are not fetched over the network by name.
    assert await screen().check("test://static/resource/1") is None
    assert await screen().check("github://owner/repo/README.md") is None
    for url in ("custom://127.0.0.1/x", "custom://169.254.169.254/latest", "custom://0x7f000001/",
                "custom:x?next=http://169.254.169.254/"):
        found = await screen().check(url)
        assert found is not None and found.rule == "args.url.non-public", (url, found)
    found = await screen(schemes=("http", "https")).check(
        "data:text/html,<script>fetch('http://169.254.169.254')</script>")
    assert found is not None and found.rule == "args.url.non-public", found


async def test_operator_can_allow_a_scheme_and_embedded_urls_are_still_screened() -> None:
    s = screen(schemes=("http", "https", "data"))
    assert await s.check("data:text/html,<img src='https://docs.example.com/a.png'>") is None
    found = await s.check("data:text/html,<img src='http://169.254.169.254/latest/meta-data/'>")
    assert found is not None and found.rule == "args.url.non-public"


@pytest.mark.parametrize("url", [
    "https://docs.example.com/r?next=http://127.0.0.1/admin",
    "https://docs.example.com/r?next=http%3A%2F%2F169.254.169.254%2Flatest",
    "https://docs.example.com/r?next=http%253A%252F%252F10.0.0.1%252F",
    "https://docs.example.com/r?u=gopher://example.com/",
    "see http://rebind.example.com/ for details",
])
async def test_urls_embedded_in_a_url_value_are_screened(url: str) -> None:
    assert await screen().check(url) is not None


@pytest.mark.parametrize("url", [
    "http://127.1.1.1:80\\@127.2.2.2:80/", "http://127.1.1.1:80\\@@127.2.2.2:80/",
    "http://example.com@127.0.0.1/", "http://127.0.0.1#@example.com/", "http://example.com\\@127.0.0.1/",
    "http:/\\127.0.0.1/", "http:127.0.0.1/",
])
async def test_every_parser_reading_is_checked(url: str) -> None:
    found = await screen().check(url)
    assert found is not None and found.rule == "args.url.non-public", found


@pytest.mark.parametrize("url", [
    "http://[::", "http://[0:0:0:0:0:ffff:127.0.0.1", "https://127.0.0.1!/", "http://example.com:99999/",
    "http://example.com:port/", "http:///", "http://exa mple.com/", "http://example.com@docs.example.com@127.0.0.1/",
])
async def test_malformed_authorities_refused(url: str) -> None:
    found = await screen().check(url)
    assert found is not None and found.rule in ("args.url.malformed", "args.url.non-public"), found


@pytest.mark.parametrize("url", [
    "https://example.com/", "http://example.com:8080/path?q=1#frag", "https://docs.example.com/a/../b",
    "https://93.184.215.14/", "https://user@example.com/", "HTTPS://EXAMPLE.COM/", "https://example.com./",
    "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/",
])
async def test_public_urls_allowed(url: str) -> None:
    assert await screen().check(url) is None


@pytest.mark.parametrize(("value", "refused"), [
    ("maybe-finance/maybe", False), ("webarena.pdf", False), ("docs.example.com/page", False), ("", False),
    ("169.254.169.254/latest/meta-data", True), ("localhost:8080/admin", True), ("0x7f000001/", True),
    ("metadata.google.internal/computeMetadata/v1/", True), ("//127.0.0.1/x", True),
])
async def test_values_without_a_scheme_get_literal_checks_only(value: str, refused: bool) -> None:
    asked: list[str] = []

    async def resolver(host: str) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    found = await UrlScreen(resolver).check(value)
    assert (found is not None) is refused, found
    if not value.startswith("//"):
        assert asked == []  # a scheme-less value never triggers DNS


async def test_allow_private_keeps_metadata_refused() -> None:
    s = screen(allow_private=True)
    assert await s.check("http://10.0.0.1/") is None
    assert await s.check("http://127.0.0.1:8080/") is None
    assert await s.check("http://localhost/") is None
    assert await s.check("http://intranet.example.com/") is None
    for url in ("http://169.254.169.254/", "http://metadata.google.internal/", "http://[fd00:ec2::254]/",
                "http://100.100.100.200/", "http://[::ffff:169.254.169.254]/"):
        found = await s.check(url)
        assert found is not None and found.rule == "args.url.non-public", url


async def test_resolution_is_cached() -> None:
    asked: list[str] = []

    async def resolver(host: str) -> list[str]:
        asked.append(host)
        return [PUBLIC]

    s = UrlScreen(resolver)
    for _ in range(3):
        assert await s.check("https://example.com/") is None
    assert asked == ["example.com"]
    s0 = UrlScreen(resolver, cache_seconds=0)
    await s0.check("https://example.com/")
    await s0.check("https://example.com/")
    assert asked == ["example.com"] * 3


async def test_the_screen_never_connects_to_the_target() -> None:
    """A loopback listener stands in for the target: screening its URL must not touch it."""
    with tripwire() as (port, connections):
        s = UrlScreen(static_resolver({"target.example.com": ["127.0.0.1"]}))
        for url in (f"http://127.0.0.1:{port}/", f"http://target.example.com:{port}/", f"http://localhost:{port}/"):
            assert await s.check(url) is not None
    assert connections == []


def test_inet_aton_forms() -> None:
    assert str(parse_inet_aton("0x7f000001")) == "127.0.0.1"
    assert str(parse_inet_aton("2130706433")) == "127.0.0.1"
    assert str(parse_inet_aton("0177.0.0.1")) == "127.0.0.1"
    assert str(parse_inet_aton("127.1")) == "127.0.0.1"
    assert str(parse_inet_aton("169.16689662")) == "169.254.169.254"
    assert parse_inet_aton("example.com") is None
    for bad in ("7147006462", "256.1.1.1", "09.1.1.1"):
        with pytest.raises(Ambiguous):
            parse_inet_aton(bad)


def test_non_public_reasons() -> None:
    import ipaddress

    assert describe_non_public(ipaddress.ip_address("8.8.8.8")) is None
    assert "metadata" in (describe_non_public(ipaddress.ip_address("169.254.169.254")) or "")
    assert "loopback" in (describe_non_public(ipaddress.ip_address("::ffff:127.0.0.1")) or "")
    assert describe_non_public(ipaddress.ip_address("2606:4700::1111")) is None
