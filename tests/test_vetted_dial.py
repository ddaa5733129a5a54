"""Connect-time pinning of the gateway's own outbound HTTP (transport/vetted_dial.py).

A DNS answer that changes between the early check and the connection (DNS rebinding) must
not send the gateway anywhere it would have refused. Nothing here connects to anything but
127.0.0.1: names resolve through maps inside the test (the system resolver is replaced
where a fallback to it could happen), and wherever a non-loopback address is involved a
recording backend stands in for the network and records the dial instead of making it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

from mcpward.auth import Authenticator, AuthFailure, AuthSetupError, load_settings
from mcpward.gateway import config
from mcpward.gateway.context import Principal, RequestContext, SilentChannel
from mcpward.gateway.upstream import Upstream, UpstreamEvents
from mcpward.guards.interceptors import HookFailure, HttpRunner, SharedClient, from_config
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.transport.base import LinkError
from mcpward.transport.http_link import HttpLink
from mcpward.transport.vetted_dial import (
    RULE_BAD_ANSWER,
    RULE_NON_PUBLIC,
    RULE_UNRESOLVABLE,
    PinningUnavailable,
    VettedBackend,
    address_problem,
    check_pinning,
    dial_refusal,
    pinned_transport,
)
from tests.test_http_link import serve
from tests.tls_support import self_signed

PUBLIC = "93.184.216.34"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "mcpward-test", "version": "0"},
}


@pytest.fixture(autouse=True)
def no_real_dials(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The safety net under every test here: the backend that really opens sockets (what httpx uses
    by default, and what VettedBackend wraps) may dial loopback literals only. Should the pinning
    under test be broken, a dial elsewhere (or a name lookup by the socket layer) is stopped and
    fails the test instead of leaving the machine."""
    stopped: list[str] = []
    real_connect = httpcore.AnyIOBackend.connect_tcp

    async def loopback_only(self: httpcore.AnyIOBackend, host: str, port: int, timeout: float | None = None,
                            local_address: str | None = None,
                            socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                            ) -> httpcore.AsyncNetworkStream:
        if host not in ("127.0.0.1", "::1"):
            stopped.append(f"{host}:{port}")
            raise httpcore.ConnectError(f"test safety net: a real dial to {host}:{port} was stopped")
        return await real_connect(self, host, port, timeout=timeout, local_address=local_address,
                                  socket_options=socket_options)

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", loopback_only)
    yield
    assert stopped == [], f"the code under test tried to dial {stopped} for real"


class Dns:
    """A resolver map; a name with several answers gives the next one on each lookup (the last one
    repeats), which is what a rebinding DNS server does. Unknown names fail: never the system DNS."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers, self.asked = answers, []  # type: ignore[var-annotated]

    async def __call__(self, host: str, port: int) -> list[str]:
        if host not in self.answers:
            raise OSError(f"no such host {host}")
        turn = sum(1 for name, _ in self.asked if name == host)
        self.asked.append((host, port))
        answers = self.answers[host]
        return answers[min(turn, len(answers) - 1)]


class RecordedStream(httpcore.AsyncMockStream):
    """Answers one canned HTTP 200 and records the name TLS would verify and send as SNI."""

    def __init__(self, recorder: Recorder) -> None:
        # Connection: close, so each request needs a new connection (and a new lookup).
        super().__init__([b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                          b"Connection: close\r\n\r\n{}"])
        self.recorder = recorder

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        self.recorder.tls_names.append(server_hostname)
        return self


class Recorder(httpcore.AsyncNetworkBackend):
    """Stands in for the network: records every dial and never opens a socket."""

    def __init__(self, refuse: Iterable[str] = ()) -> None:
        self.dialled: list[tuple[str, int]] = []
        self.tls_names: list[str | None] = []
        self.refuse = set(refuse)  # addresses that "refuse the connection"

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        self.dialled.append((host, port))
        if host in self.refuse:
            raise httpcore.ConnectError(f"{host} refused the connection (recorded)")
        return RecordedStream(self)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def recorded_client(dns: Dns, recorder: Recorder, *, allow_private: bool = False,
                    loopback_ok: bool = False) -> httpx.AsyncClient:
    transport = pinned_transport(allow_private=allow_private, resolver=dns, loopback_ok=loopback_ok, inner=recorder)
    return httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False)


async def refusal_for(url: str, dns: Dns, recorder: Recorder, **kwargs: Any) -> str:
    async with recorded_client(dns, recorder, **kwargs) as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.get(url)
    refusal = dial_refusal(caught.value)
    assert refusal is not None, f"not our refusal: {caught.value!r}"
    return f"{refusal.rule}|{caught.value}"


# ------------------------------------------------------------------------------ the backend
async def test_an_answer_that_changes_after_the_check_is_refused_at_connect(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mcpward.audit")
    dns = Dns({"api.test": [[PUBLIC], ["169.254.169.254"]]})
    assert await config.resolution_problem("api.test", 443, dns) is None  # the early check passes...
    recorder = Recorder()
    found = await refusal_for("https://api.test/keys", dns, recorder)
    rule, message = found.split("|", 1)
    assert rule == RULE_NON_PUBLIC
    assert "api.test resolves to the non-public address 169.254.169.254" in message
    assert "set allow_private = true" in message and f"(rule {RULE_NON_PUBLIC})" in message
    assert recorder.dialled == []  # ...and nothing was dialled after the answer changed
    assert dns.asked == [("api.test", 443), ("api.test", 443)]
    audited = [r.getMessage() for r in caplog.records if '"event":"dial.refused"' in r.getMessage()]
    assert len(audited) == 1 and '"host":"api.test"' in audited[0] and RULE_NON_PUBLIC in audited[0]
    assert "/keys" not in audited[0]  # the host, never the URL's path


async def test_a_public_answer_is_dialled_as_its_literal_and_tls_keeps_the_name() -> None:
    dns, recorder = Dns({"api.test": [[PUBLIC], ["127.0.0.1"]]}), Recorder()
    async with recorded_client(dns, recorder) as http:
        response = await http.get("https://api.test/keys")
    assert response.status_code == 200
    assert recorder.dialled == [(PUBLIC, 443)]  # the vetted address, not the name
    # httpcore passes the URL's host to start_tls: certificate checks and SNI use the name.
    assert recorder.tls_names == ["api.test"]
    assert len(dns.asked) == 1  # resolved once for this connection


async def test_every_new_connection_is_vetted_again() -> None:
    """A reconnect (hours later, for a remote upstream) does not reuse an old verdict."""
    dns, recorder = Dns({"api.test": [[PUBLIC], ["127.0.0.1"]]}), Recorder()
    async with recorded_client(dns, recorder) as http:
        assert (await http.get("https://api.test/one")).status_code == 200
        with pytest.raises(httpx.ConnectError, match=r"non-public address 127\.0\.0\.1"):
            await http.get("https://api.test/two")
    assert recorder.dialled == [(PUBLIC, 443)] and len(dns.asked) == 2


@pytest.mark.parametrize("answer", [
    "127.0.0.1", "::1", "10.0.0.7", "169.254.169.254", "100.100.100.200", "0.0.0.0",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "64:ff9b::a9fe:a9fe",  # NAT64 form of 169.254.169.254
    "2002:a9fe:a9fe::1",  # 6to4 with 169.254.169.254 inside
    "168.63.129.16",  # Azure's wire server: a globally routable metadata address
])
async def test_every_non_public_form_is_refused(answer: str) -> None:
    recorder = Recorder()
    found = await refusal_for("https://api.test/", Dns({"api.test": [[answer]]}), recorder)
    assert found.startswith(f"{RULE_NON_PUBLIC}|") and f"non-public address {answer}," in found
    assert recorder.dialled == []


async def test_one_bad_answer_among_good_ones_refuses_the_name() -> None:
    recorder = Recorder()
    found = await refusal_for("https://api.test/", Dns({"api.test": [[PUBLIC, "10.1.2.3"]]}), recorder)
    assert "non-public address 10.1.2.3" in found and recorder.dialled == []


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://169.254.169.254/latest", False),
    ("https://[::ffff:169.254.169.254]/latest", False),
    ("https://[2002:7f00:1::1]/", False),
    (f"https://{PUBLIC}/x", True),
])
async def test_address_literals_are_vetted_without_a_lookup(url: str, allowed: bool) -> None:
    dns, recorder = Dns({}), Recorder()
    if allowed:
        async with recorded_client(dns, recorder) as http:
            assert (await http.get(url)).status_code == 200
        assert recorder.dialled == [(PUBLIC, 443)]
    else:
        found = await refusal_for(url, dns, recorder)
        assert found.startswith(f"{RULE_NON_PUBLIC}|") and " is the non-public address " in found
        assert recorder.dialled == []
    assert dns.asked == []


async def test_allow_private_still_dials_what_it_resolved() -> None:
    dns, recorder = Dns({"db.lan": [["10.0.0.7"], ["10.0.0.8"]]}), Recorder()
    async with recorded_client(dns, recorder, allow_private=True) as http:
        assert (await http.get("http://db.lan:8080/")).status_code == 200
    assert recorder.dialled == [("10.0.0.7", 8080)] and len(dns.asked) == 1


async def test_vetted_addresses_are_tried_in_order() -> None:
    dns, recorder = Dns({"api.test": [[PUBLIC, "2606:2800:220:1:248:1893:25c8:1946"]]}), Recorder(refuse=[PUBLIC])
    async with recorded_client(dns, recorder) as http:
        assert (await http.get("http://api.test/")).status_code == 200
    assert recorder.dialled == [(PUBLIC, 80), ("2606:2800:220:1:248:1893:25c8:1946", 80)]


async def test_loopback_ok_lets_only_a_loopback_host_reach_loopback() -> None:
    dns = Dns({"localhost": [["127.0.0.1", "::1"]], "evil.test": [["127.0.0.1"]], "sneaky.localhost": [[PUBLIC]]})
    recorder = Recorder()
    async with recorded_client(dns, recorder, loopback_ok=True) as http:
        assert (await http.get("http://localhost:9/")).status_code == 200
        assert (await http.get("http://127.0.0.1:9/")).status_code == 200
    assert recorder.dialled == [("127.0.0.1", 9), ("127.0.0.1", 9)]
    assert "evil.test resolves to the non-public address 127.0.0.1" in await refusal_for(
        "http://evil.test/", dns, Recorder(), loopback_ok=True)
    rebound = Dns({"localhost": [["169.254.169.254"]]})
    assert "169.254.169.254" in await refusal_for("http://localhost/", rebound, Recorder(), loopback_ok=True)


@pytest.mark.parametrize(("answers", "rule", "text"), [
    (None, RULE_UNRESOLVABLE, "cannot resolve api.test"),
    ([], RULE_UNRESOLVABLE, "did not resolve to any address"),
    (["not-an-address"], RULE_BAD_ANSWER, "which is not an IP address"),
])
async def test_lookups_that_give_nothing_usable_fail_closed(answers: list[str] | None, rule: str, text: str) -> None:
    dns = Dns({} if answers is None else {"api.test": [answers]})
    recorder = Recorder()
    found = await refusal_for("https://api.test/", dns, recorder)
    assert found.startswith(f"{rule}|") and text in found and recorder.dialled == []


async def test_a_slow_lookup_is_bounded_by_the_connect_timeout() -> None:
    async def stalls(host: str, port: int) -> list[str]:
        await asyncio.sleep(30)
        return [PUBLIC]

    recorder = Recorder()
    transport = pinned_transport(allow_private=False, resolver=stalls, inner=recorder)
    async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=httpx.Timeout(5, connect=0.2)) as http:
        with pytest.raises(httpx.ConnectTimeout):
            await http.get("https://api.test/")
    assert recorder.dialled == []


# ---------------------------------------------------------------- the httpx shape we rely on
def test_the_transport_really_uses_the_vetted_backend() -> None:
    """If httpx stops keeping an httpcore pool in `_pool`, or httpcore renames its backend, this
    fails (and pinned_transport raises at construction instead of returning an unpinned transport)."""
    transport = pinned_transport(allow_private=False)
    assert type(transport._pool) is httpcore.AsyncConnectionPool
    assert isinstance(transport._pool._network_backend, VettedBackend)


def test_an_unexpected_shape_is_a_startup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Reshaped(httpx.AsyncHTTPTransport):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._pool = object()  # type: ignore[assignment]

    monkeypatch.setattr(httpx, "AsyncHTTPTransport", Reshaped)
    with pytest.raises(PinningUnavailable, match="cannot be pinned"):
        pinned_transport(allow_private=False)


async def test_http_link_and_authenticator_refuse_to_start_unpinned(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(**kwargs: Any) -> httpx.AsyncHTTPTransport:
        raise PinningUnavailable("httpx changed shape")

    monkeypatch.setattr("mcpward.transport.http_link.pinned_transport", unavailable)
    monkeypatch.setattr("mcpward.auth.authenticator.pinned_transport", unavailable)
    with pytest.raises(LinkError, match="httpx changed shape"):
        await HttpLink("https://mcp.test/mcp", {}).open()
    settings = load_settings(config.parse({"auth": {"oauth": {"issuer": "https://idp.test"}}}, "gw.toml"))
    assert settings is not None
    with pytest.raises(AuthSetupError, match="httpx changed shape"):
        await Authenticator(settings).start()
    monkeypatch.setattr("mcpward.transport.vetted_dial.pinned_transport", unavailable)
    check_pinning.cache_clear()
    try:
        with pytest.raises(config.ConfigError, match=r"interceptors\[0\]\.url: httpx changed shape"):
            from_config(config.parse({"interceptors": [{"kind": "http", "when": "before",
                                                        "url": "https://hooks.example.com/x"}]}, "test.toml"))
    finally:
        check_pinning.cache_clear()  # the next caller checks the real shape again


# ------------------------------------------------------------------------------ TLS on loopback
async def https_server(cert: tuple[Path, Path], sni_seen: list[str | None]) -> asyncio.Server:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*cert)
    context.sni_callback = lambda _sock, name, _ctx: sni_seen.append(name)  # type: ignore[assignment,misc,func-returns-value]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the refused handshake
        finally:
            writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)


@pytest.mark.parametrize("served_name", ["name.test", "other.test"])
async def test_tls_verifies_the_name_while_dialling_the_pinned_address(tmp_path: Path, served_name: str) -> None:
    served = self_signed(tmp_path, served_name)
    trusted = ssl.create_default_context(cafile=str(served[0]))  # the server's own cert is the trust anchor
    sni_seen: list[str | None] = []
    server = await https_server(served, sni_seen)
    port = server.sockets[0].getsockname()[1]
    dns = Dns({"name.test": [["127.0.0.1"]]})
    transport = pinned_transport(allow_private=True, resolver=dns, verify=trusted)
    try:
        async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=5) as http:
            if served_name == "name.test":
                response = await http.get(f"https://name.test:{port}/")
                assert (response.status_code, response.text) == (200, "ok")
            else:  # a certificate for another name: the pinned address does not make it acceptable
                with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
                    await http.get(f"https://name.test:{port}/")
    finally:
        server.close()
        await server.wait_closed()
    assert sni_seen == ["name.test"]  # SNI carried the name, not 127.0.0.1
    assert dns.asked == [("name.test", port)]


# --------------------------------------------------------------- a real MCP upstream on loopback
@pytest.fixture(scope="module")
def named_upstream() -> Iterator[tuple[int, list[str]]]:
    """An SDK MCP server on 127.0.0.1 that accepts the Host `mcp.test`; yields its port and the Host
    header of every request it got."""
    mcp = MCPServer("pinned")

    @mcp.tool()
    async def echo(text: str) -> str:
        return text

    security = TransportSecuritySettings(allowed_hosts=["mcp.test:*"], allowed_origins=[])
    inner = mcp.streamable_http_app(host="127.0.0.1", transport_security=security)
    hosts: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            hosts.append(dict(scope["headers"]).get(b"host", b"").decode())
        await inner(scope, receive, send)

    for base in serve(app):
        yield int(base.rsplit(":", 1)[1]), hosts


@pytest.fixture
async def system_dns(monkeypatch: pytest.MonkeyPatch) -> Dns:
    """The loop's getaddrinfo, replaced by a map: what the gateway's default resolver (and anything
    that would resolve behind its back) sees. Unknown names fail instead of reaching real DNS."""
    dns = Dns({})

    async def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        try:
            answers = await dns(host, int(port or 0))
        except OSError:
            raise socket.gaierror(socket.EAI_NONAME, "not in the test's map") from None
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in answers]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    return dns


def context() -> RequestContext:
    return RequestContext(era="modern", protocol_version="2026-07-28", capabilities={}, client_info=None,
                          principal=Principal(subject="alice", kind="api-key"), channel=SilentChannel(),
                          transport="http")


def remote(port: int, **extra: Any) -> tuple[config.GatewayConfig, config.ServerConfig]:
    table = {"url": f"http://mcp.test:{port}/mcp", "allow_http": True, **extra}
    cfg = config.parse({"servers": {"remote": table}}, "test.toml")
    return cfg, cfg.servers["remote"]


async def test_http_link_calls_a_named_upstream_through_the_pin(named_upstream: tuple[int, list[str]]) -> None:
    port, hosts = named_upstream
    dns = Dns({"mcp.test": [["127.0.0.1"]]})
    link = HttpLink(f"http://mcp.test:{port}/mcp", {}, allow_private=True, resolver=dns)
    answers: asyncio.Queue[JsonObj] = asyncio.Queue()
    link.on_message = answers.put_nowait
    await link.open()
    try:
        call = {"name": "echo", "arguments": {"text": "pinned"}, "_meta": MODERN_META}
        await link.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call})
        answer = await asyncio.wait_for(answers.get(), 10)
    finally:
        await link.close()
    assert answer["result"]["structuredContent"] == {"result": "pinned"}
    assert hosts[-1] == f"mcp.test:{port}"  # dialled 127.0.0.1, spoke to mcp.test
    assert dns.asked[0] == ("mcp.test", port)


async def test_upstream_with_allow_private_works_through_the_pin(named_upstream: tuple[int, list[str]],
                                                                 system_dns: Dns) -> None:
    port, hosts = named_upstream
    system_dns.answers["mcp.test"] = [["127.0.0.1"]]
    cfg, server = remote(port, allow_private=True)
    upstream = Upstream(server, cfg, UpstreamEvents())
    try:
        await upstream.start()
        assert upstream.era is not None, upstream.error
        result = await upstream.call(context(), "tools/call", {"name": "echo", "arguments": {"text": "hi"}})
    finally:
        await upstream.stop()
    assert result["structuredContent"] == {"result": "hi"}
    assert hosts and hosts[-1] == f"mcp.test:{port}"


@pytest.mark.parametrize("host", ["mcp.test", "127.0.0.1"])
async def test_http_link_without_allow_private_refuses_loopback(named_upstream: tuple[int, list[str]],
                                                                host: str) -> None:
    # A name that resolves to loopback, and a loopback literal: a link with its defaults (as the
    # launcher makes one for a server without allow_private) dials neither.
    port, hosts = named_upstream
    before = len(hosts)
    link = HttpLink(f"http://{host}:{port}/mcp", {}, resolver=Dns({"mcp.test": [["127.0.0.1"]]}))
    answers: asyncio.Queue[JsonObj] = asyncio.Queue()
    link.on_message = answers.put_nowait
    await link.open()
    try:
        await link.send({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN_META}})
        answer = await asyncio.wait_for(answers.get(), 10)
    finally:
        await link.close()
    assert answer["error"]["message"] == f"upstream connection refused by rule {RULE_NON_PUBLIC}"
    assert "127.0.0.1" not in str(answer)  # the client is not told the inside address
    assert len(hosts) == before


# ------------------------------------------------------------------ the IdP and the interceptors
def signed_token() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    claims = {"iss": "https://idp.test", "aud": "http://127.0.0.1:8811/mcp", "sub": "x", "exp": 2**31}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})


async def test_idp_fetch_is_refused_at_connect_after_the_check_passed() -> None:
    dns, recorder = Dns({"idp.test": [[PUBLIC], ["169.254.169.254"]]}), Recorder()
    settings = load_settings(config.parse(
        {"auth": {"oauth": {"issuer": "https://idp.test", "jwks_url": "https://idp.test/jwks"}}}, "gw.toml"))
    assert settings is not None
    transport = pinned_transport(allow_private=False, resolver=dns, inner=recorder)
    auth = Authenticator(settings, transport=transport, resolver=dns)
    try:
        with pytest.raises(AuthFailure) as caught:
            await auth.authenticate(f"Bearer {signed_token()}")  # a JWT: its keys are fetched
    finally:
        await auth.close()
    failure = caught.value
    assert failure.reason == "auth.idp_unavailable"
    assert "idp.test resolves to the non-public address 169.254.169.254" in failure.description
    assert RULE_NON_PUBLIC in failure.description
    assert recorder.dialled == [] and len(dns.asked) == 2


async def test_the_authenticator_pins_its_own_client(system_dns: Dns) -> None:
    """No transport injected: the authenticator's default client must be the pinned one. If it were
    not, httpx would resolve idp.test itself (through the map: loopback) and say only ConnectError."""
    dns = Dns({"idp.test": [[PUBLIC], ["127.0.0.1"]]})
    system_dns.answers["idp.test"] = [["127.0.0.1"]]
    settings = load_settings(config.parse(
        {"auth": {"oauth": {"issuer": "https://idp.test", "jwks_url": "https://idp.test/jwks"}}}, "gw.toml"))
    assert settings is not None
    auth = Authenticator(settings, resolver=dns)
    try:
        with pytest.raises(AuthFailure) as caught:
            await auth.authenticate(f"Bearer {signed_token()}")
    finally:
        await auth.close()
    assert "idp.test resolves to the non-public address 127.0.0.1" in caught.value.description
    assert system_dns.asked == []


async def test_interceptor_post_is_refused_at_connect_after_the_check_passed() -> None:
    dns, recorder = Dns({"hooks.test": [[PUBLIC], ["169.254.169.254"]]}), Recorder()
    client = SharedClient(network=recorder)
    runner = HttpRunner("https://hooks.test/x", 2.0, client, vet_names=True, resolver=dns)
    try:
        with pytest.raises(HookFailure, match=r"hooks\.test resolves to the non-public address 169\.254\.169\.254"):
            await runner.run(b"{}")
    finally:
        await client.aclose()
    assert recorder.dialled == [] and len(dns.asked) == 2  # the early check, then the connection's own


async def test_interceptor_dials_the_vetted_literal() -> None:
    dns, recorder = Dns({"hooks.test": [[PUBLIC]], "hooks.lan": [["10.0.0.5"]]}), Recorder()
    client = SharedClient(network=recorder)
    try:
        assert await HttpRunner("https://hooks.test/x", 2.0, client, vet_names=True, resolver=dns).run(b"{}") == b"{}"
        private = HttpRunner("http://hooks.lan:8080/x", 2.0, client, vet_names=False, resolver=dns)
        assert await private.run(b"{}") == b"{}"
    finally:
        await client.aclose()
    assert recorder.dialled == [(PUBLIC, 443), ("10.0.0.5", 8080)]
    assert recorder.tls_names == ["hooks.test"]


async def test_webhook_is_refused_at_connect_after_the_check_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    from mcpward.audit import webhook as webhook_mod

    dns, recorder = Dns({"hooks.test": [[PUBLIC], ["169.254.169.254"]]}), Recorder()
    real = webhook_mod.pinned_transport
    monkeypatch.setattr(webhook_mod, "pinned_transport",
                        lambda **kw: real(**kw, inner=recorder))  # the network is the recorder
    hook = webhook_mod.Webhook("https://hooks.test/x", {}, resolver=dns, retries=2, backoff=0.01)
    failures: list[dict[str, Any]] = []
    monkeypatch.setattr(webhook_mod.events, "record", lambda event, **fields: failures.append(fields))
    await hook.start()
    try:
        hook.send({"rule": "rapid_calls", "principal": "p", "detail": "", "evidence": [], "action": "alert"})
        for _ in range(200):
            if hook.failed:
                break
            await asyncio.sleep(0.01)
    finally:
        await hook.close()
    assert hook.failed == 1 and hook.delivered == 0
    assert recorder.dialled == []  # never dialled, and not retried: the rule does not change on a retry
    assert len(dns.asked) == 2  # the early check, then the connection's own lookup
    reason = failures[0]["reason"]
    assert "hooks.test resolves to the non-public address 169.254.169.254" in reason
    assert RULE_NON_PUBLIC in reason


@pytest.mark.parametrize("address", ["64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "::ffff:10.0.0.1", "168.63.129.16"])
def test_the_early_config_checks_use_the_same_rule(address: str) -> None:
    # The config and probe checks agree with the connection's own test (IPv4 inside IPv6 forms,
    # metadata addresses that are globally routable), so neither lets through what the other refuses.
    assert config.is_non_public_address(address)
    assert address_problem("h", address, allow_private=False) is not None
    assert not config.is_non_public_address("93.184.216.34")
