"""The egress proxy with real clients through a real loopback listener.

Origins are tiny HTTP and TLS servers on 127.0.0.1; the policy reaches them through the
`resolve` map ("site.test" -> 127.0.0.1) plus an `allow_private` exemption for their ports.
Every other name resolves through a recording lookup, and every dial goes through a
recording function that connects only to 127.0.0.1: a bug that dialled a refused address
would show up in `dials` and could still not send a packet anywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mcpward.sandbox.egress import EgressProxy, dial_tcp
from mcpward.sandbox.egress_policy import EgressDecision, Resolver, parse_policy
from tests.conftest import free_port, need_node

BIG = b"x" * 5000


# --- origins ---------------------------------------------------------------------------------

async def _origin(served: dict[str, tuple[bytes, str]], reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    """Answers a path in `served` with its content; every other request with JSON describing exactly
    what arrived (line, headers, body)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = [line.split(":", 1) for line in lines[1:]]
        length = next((int(v) for n, v in headers if n.lower() == "content-length"), 0)
        body = await reader.readexactly(length) if length else b""
        path = lines[0].split(" ")[1]
        content_type = "application/json"
        if path in served:
            payload, content_type = served[path]
        elif path == "/big":
            payload = BIG
        else:
            payload = json.dumps({"line": lines[0], "headers": [[n, v.strip()] for n, v in headers],
                                  "body": body.decode()}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nKeep-Alive: timeout=5\r\n"
                     b"Connection: keep-alive\r\nContent-Length: %d\r\n\r\n" % (content_type.encode(), len(payload))
                     + payload)
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@dataclass
class Origins:
    http_port: int
    tls_port: int
    cert_path: Path  # the CA that signed the TLS origin's certificate: what a client trusts
    client_ctx: ssl.SSLContext
    served: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # path -> (content, content type)


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
                 ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("site.test"), x509.DNSName("pkg.test")]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _self_signed(tmp: Path) -> tuple[Path, Path, Path]:
    """A test CA and the origin's certificate signed by it: (CA, origin chain, origin key), the shape a
    real registry presents (a CA certificate serving as the server's own is refused by strict clients)."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("mcpward test CA", ca_key, "mcpward test CA", ca_key, ca=True)
    leaf = _certificate("site.test", key, "mcpward test CA", ca_key, ca=False)
    ca_path, chain_path, key_path = tmp / "ca.pem", tmp / "chain.pem", tmp / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, chain_path, key_path


@pytest.fixture
async def origins(tmp_path: Path) -> AsyncIterator[Origins]:
    cert_path, chain_path, key_path = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(chain_path, key_path)
    served: dict[str, tuple[bytes, str]] = {}
    plain = await asyncio.start_server(functools.partial(_origin, served), "127.0.0.1", 0)
    tls = await asyncio.start_server(functools.partial(_origin, served), "127.0.0.1", 0, ssl=server_ctx)
    client_ctx = ssl.create_default_context(cafile=str(cert_path))
    try:
        yield Origins(plain.sockets[0].getsockname()[1], tls.sockets[0].getsockname()[1], cert_path, client_ctx,
                      served)
    finally:
        for srv in (plain, tls):
            srv.close()


# --- the proxy under test -----------------------------------------------------------------------

@dataclass
class Harness:
    proxy: EgressProxy
    port: int
    decisions: list[EgressDecision] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)
    dials: list[tuple[str, int]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def last(self) -> EgressDecision:
        return self.decisions[-1]


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@pytest.fixture
async def make_proxy() -> AsyncIterator[Callable[..., Any]]:
    made: list[EgressProxy] = []

    async def build(allow: list[str], allow_private: list[str], resolve: dict[str, list[str]],
                    dns: dict[str, list[str]] | None = None, hang: frozenset[str] = frozenset(),
                    on_decision: Callable[[EgressDecision], None] | None = None, **kw: Any) -> Harness:
        harness: Harness

        async def lookup(host: str, port: int) -> list[str]:
            harness.lookups.append(host)
            await asyncio.sleep(0.05)  # long enough for concurrent requests to pile up on one lookup
            if dns is None or host not in dns:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return dns[host]

        async def dial(address: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            harness.dials.append((address, port))
            if address in hang:
                await asyncio.sleep(3600)
            if address != "127.0.0.1":  # the test machine answers on other addresses: never go there
                raise ConnectionRefusedError(111, "test dialler only reaches 127.0.0.1")
            return await dial_tcp(address, port)

        sock = _listener()
        proxy = EgressProxy("srv-test", parse_policy(allow, allow_private, resolve), Resolver(lookup=lookup),
                            on_decision or (lambda d: harness.decisions.append(d)), dial=dial,
                            host_addrs=frozenset({ipaddress.ip_address("1.1.1.1")}), **kw)
        harness = Harness(proxy, sock.getsockname()[1])
        await proxy.start(sock)
        made.append(proxy)
        return harness

    yield build
    for proxy in made:
        await proxy.close()


async def _site_proxy(make_proxy: Callable[..., Any], origins: Origins, **kw: Any) -> Harness:
    """site.test on both origin ports, reachable through the resolve map."""
    ports = [origins.http_port, origins.tls_port]
    harness: Harness = await make_proxy(
        [f"site.test:{p}" for p in ports], [f"127.0.0.1:{p}" for p in ports], {"site.test": ["127.0.0.1"]}, **kw)
    return harness


async def _raw(port: int, data: bytes, *, until_eof: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        async with asyncio.timeout(5):
            return await (reader.read() if until_eof else reader.readuntil(b"\r\n\r\n"))
    finally:
        writer.close()


async def _settled(h: Harness) -> None:
    """Wait until the proxy has noticed that every client went away."""
    async with asyncio.timeout(5):
        while h.proxy.active_tunnels:
            await asyncio.sleep(0.02)


def _status(response: bytes) -> tuple[int, str | None]:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    error = next((line.split(":", 1)[1].strip() for line in head[1:] if line.lower().startswith("x-proxy-error:")),
                 None)
    return int(head[0].split(" ")[1]), error


# --- real clients --------------------------------------------------------------------------

async def test_httpx_connect_and_plain_http(make_proxy: Callable[..., Any], origins: Origins) -> None:
    h = await _site_proxy(make_proxy, origins)
    async with httpx.AsyncClient(proxy=h.url, verify=origins.client_ctx, trust_env=False) as client:
        tls = await client.get(f"https://site.test:{origins.tls_port}/secure?x=1")
        plain = await client.post(f"http://site.test:{origins.http_port}/form", content=b"hello")
    assert tls.status_code == 200 and tls.json()["line"] == "GET /secure?x=1 HTTP/1.1"
    assert plain.json()["line"] == "POST /form HTTP/1.1" and plain.json()["body"] == "hello"
    assert [(d.method, d.host, d.address, d.allowed, d.rule) for d in h.decisions] == [
        ("CONNECT", "site.test", "127.0.0.1", True, "egress.allowed"),
        ("POST", "site.test", "127.0.0.1", True, "egress.allowed"),
    ]
    assert h.lookups == []  # the resolve map answered; DNS was never asked
    await _settled(h)


async def test_urllib_proxy_handler(make_proxy: Callable[..., Any], origins: Origins) -> None:
    h = await _site_proxy(make_proxy, origins)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": h.url, "https": h.url}),
        urllib.request.HTTPSHandler(context=origins.client_ctx))

    def fetch(url: str) -> dict[str, Any]:
        with opener.open(url, timeout=10) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result

    plain = await asyncio.to_thread(fetch, f"http://site.test:{origins.http_port}/u")
    tls = await asyncio.to_thread(fetch, f"https://site.test:{origins.tls_port}/t")
    assert plain["line"] == "GET /u HTTP/1.1"
    assert tls["line"] == "GET /t HTTP/1.1"
    assert [d.allowed for d in h.decisions] == [True, True]


async def _run(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_through_the_proxy(make_proxy: Callable[..., Any], origins: Origins) -> None:
    h = await _site_proxy(make_proxy, origins)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    rc, out, err = await _run(["curl", "-sS", "-x", h.url, "--cacert", str(origins.cert_path),
                               f"https://site.test:{origins.tls_port}/c"], env)
    assert rc == 0, err
    assert json.loads(out)["line"] == "GET /c HTTP/1.1"
    rc, out, err = await _run(["curl", "-sS", "-x", h.url, f"http://site.test:{origins.http_port}/p"], env)
    assert rc == 0, err
    sent = dict((n.lower(), v) for n, v in json.loads(out)["headers"])
    assert sent["connection"] == "close" and "proxy-connection" not in sent
    # a refusal: curl reports the CONNECT failure and the proxy names the rule
    rc, _, err = await _run(["curl", "-sS", "-x", h.url, "https://evil.test/"], env)
    assert rc != 0 and "403" in err
    assert h.last().rule == "egress.host-not-allowlisted" and h.lookups == []


async def test_node_fetch_with_node_use_env_proxy(make_proxy: Callable[..., Any], origins: Origins) -> None:
    node = need_node()
    version = subprocess.run([str(node), "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major, minor = (int(x) for x in version.lstrip("v").split(".")[:2])
    if (major, minor) < (22, 21):
        # Older Node ignores the proxy variables and would resolve site.test itself.
        pytest.skip(f"Node {version} does not honour NODE_USE_ENV_PROXY")
    h = await _site_proxy(make_proxy, origins)
    env = {"PATH": "/usr/bin:/bin", "NODE_USE_ENV_PROXY": "1", "HTTPS_PROXY": h.url, "HTTP_PROXY": h.url,
           "NODE_EXTRA_CA_CERTS": str(origins.cert_path), "NODE_NO_WARNINGS": "1"}
    script = ("Promise.all(process.argv.slice(1).map(u => fetch(u).then(r => r.json())))"
              ".then(a => console.log(JSON.stringify(a))).catch(e => { console.error(String(e.cause || e));"
              " process.exit(3) })")
    rc, out, err = await _run([str(node), "-e", script, f"https://site.test:{origins.tls_port}/n",
                               f"http://site.test:{origins.http_port}/m"], env)
    assert rc == 0, err
    assert [r["line"] for r in json.loads(out)] == ["GET /n HTTP/1.1", "GET /m HTTP/1.1"]
    assert {(d.method, d.port) for d in h.decisions} == {("CONNECT", origins.tls_port),
                                                          ("CONNECT", origins.http_port)}


# --- forwarding details -------------------------------------------------------------------------

async def test_plain_http_is_rewritten_to_origin_form(make_proxy: Callable[..., Any], origins: Origins) -> None:
    h = await _site_proxy(make_proxy, origins)
    request = (f"POST http://Site.Test:{origins.http_port}/path?q=1 HTTP/1.1\r\nHost: evil.example\r\n"
               "Proxy-Authorization: Basic c2VjcmV0LXByb3h5\r\nProxy-Connection: keep-alive\r\n"
               "Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\nX-Keep: 2\r\nAuthorization: Bearer tok-secret-123\r\n"
               "Content-Length: 5\r\n\r\nhello").encode()
    response = await _raw(h.port, request)
    head, body = response.split(b"\r\n\r\n", 1)
    assert _status(response) == (200, None)
    assert b"Connection: close" in head and b"Keep-Alive" not in head and b"keep-alive" not in head
    got = json.loads(body)
    names = [n.lower() for n, _ in got["headers"]]
    assert got["line"] == "POST /path?q=1 HTTP/1.1" and got["body"] == "hello"
    assert dict(got["headers"])["Host"] == f"site.test:{origins.http_port}"
    assert "proxy-authorization" not in names and "proxy-connection" not in names and "x-drop" not in names
    assert ["X-Keep", "2"] in got["headers"] and ["Connection", "close"] in got["headers"]
    # the audit record names the request, never a header value
    assert "secret" not in repr(h.decisions) and "c2VjcmV0" not in repr(h.decisions)


async def test_connect_passes_early_data(make_proxy: Callable[..., Any], origins: Origins) -> None:
    h = await _site_proxy(make_proxy, origins)
    data = (f"CONNECT site.test:{origins.http_port} HTTP/1.1\r\n\r\n"
            "GET /early HTTP/1.1\r\nHost: site.test\r\n\r\n").encode()
    response = await _raw(h.port, data)
    assert response.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK")
    assert b'"line": "GET /early HTTP/1.1"' in response


# --- refusals -----------------------------------------------------------------------------------

@pytest.fixture
async def refusing(make_proxy: Callable[..., Any], origins: Origins) -> Harness:
    p = origins.http_port
    h: Harness = await make_proxy(
        [f"site.test:{p}", f"*.bad.test:{p}", f"nx.test:{p}"],
        [f"127.0.0.1:{p}"],
        {"site.test": ["127.0.0.1"], "meta.bad.test": ["169.254.169.254"], "ten.bad.test": ["10.1.2.3"],
         "mapped.bad.test": ["::ffff:127.0.0.1"], "nat64.bad.test": ["64:ff9b::a9fe:a9fe"],
         "cgnat.bad.test": ["100.64.1.1"], "own.bad.test": ["1.1.1.1"], "azure.bad.test": ["168.63.129.16"],
         "mixed.bad.test": ["10.1.2.3", "::1", "127.0.0.1"]},
        dns={"nx.test": []})
    return h


@pytest.mark.parametrize(("request_text", "status", "rule"), [
    ("CONNECT evil.test:{p} HTTP/1.1\r\n\r\n", 403, "egress.host-not-allowlisted"),
    ("CONNECT site.test:443 HTTP/1.1\r\n\r\n", 403, "egress.host-not-allowlisted"),  # wrong port
    ("CONNECT bad.test:{p} HTTP/1.1\r\n\r\n", 403, "egress.host-not-allowlisted"),  # wildcard skips the apex
    ("CONNECT 127.0.0.1:{p} HTTP/1.1\r\n\r\n", 403, "egress.ip-literal-not-allowlisted"),
    ("CONNECT [::1]:{p} HTTP/1.1\r\n\r\n", 403, "egress.ip-literal-not-allowlisted"),
    ("GET http://0x7f000001:{p}/ HTTP/1.1\r\n\r\n", 403, "egress.ip-literal-not-allowlisted"),
    ("GET http://2130706433:{p}/ HTTP/1.1\r\n\r\n", 403, "egress.ip-literal-not-allowlisted"),
    ("GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\n\r\n", 403, "egress.ip-literal-not-allowlisted"),
    ("CONNECT meta.bad.test:{p} HTTP/1.1\r\n\r\n", 403, "egress.resolved-to-cloud-metadata"),
    ("CONNECT ten.bad.test:{p} HTTP/1.1\r\n\r\n", 403, "egress.resolved-to-private"),
    ("CONNECT mapped.bad.test:{p} HTTP/1.1\r\n\r\n", 403, "egress.resolved-to-loopback"),
    ("CONNECT nat64.bad.test:{p} HTTP/1.1\r\n\r\n", 403, "egress.resolved-to-cloud-metadata"),
    ("GET http://cgnat.bad.test:{p}/ HTTP/1.1\r\n\r\n", 403, "egress.resolved-to-cgnat"),
    ("CONNECT own.bad.test:{p} HTTP/1.1\r\n\r\n", 403, "egress.resolved-to-host-address"),
    ("CONNECT azure.bad.test:{p} HTTP/1.1\r\n\r\n", 403, "egress.resolved-to-cloud-metadata"),
    ("CONNECT nx.test:{p} HTTP/1.1\r\n\r\n", 502, "egress.unresolvable"),
    ("GET / HTTP/1.1\r\nHost: site.test\r\n\r\n", 400, "egress.bad-request"),  # origin-form
    ("GET https://site.test/ HTTP/1.1\r\n\r\n", 400, "egress.bad-request"),
    ("GET http://user:pw@site.test:{p}/ HTTP/1.1\r\n\r\n", 400, "egress.bad-request"),
    ("CONNECT site.test HTTP/1.1\r\n\r\n", 400, "egress.bad-request"),
    ("HELLO\r\n\r\n", 400, "egress.bad-request"),
    ("GET http://site.test:{p}/ HTTP/1.1\r\n folded: x\r\n\r\n", 400, "egress.bad-request"),
    ("POST http://site.test:{p}/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
     "egress.bad-request"),
    ("CONNECT si\u00a7te.test:{p} HTTP/1.1\r\n\r\n", 400, "egress.bad-request"),
])
async def test_refusals(refusing: Harness, origins: Origins, request_text: str, status: int, rule: str) -> None:
    data = request_text.replace("{p}", str(origins.http_port)).encode("latin-1")
    response = await _raw(refusing.port, data)
    assert _status(response) == (status, rule)
    assert rule.encode() in response.split(b"\r\n\r\n", 1)[1]  # the body names the rule too
    decision = refusing.last()
    assert (decision.allowed, decision.rule) == (False, rule)
    assert decision.detail
    assert refusing.dials == []  # nothing was dialled for any refused request
    if rule != "egress.unresolvable":
        assert refusing.lookups == []  # not-listed names and pinned names never reach DNS
    assert "pw" not in repr(decision)


async def test_refused_body_does_not_reveal_the_resolved_address(refusing: Harness, origins: Origins) -> None:
    response = await _raw(refusing.port, f"CONNECT ten.bad.test:{origins.http_port} HTTP/1.1\r\n\r\n".encode())
    assert b"10.1.2.3" not in response
    assert refusing.last().address == "10.1.2.3"  # the operator's audit record has it


async def test_only_vetted_addresses_are_dialled(refusing: Harness, origins: Origins) -> None:
    response = await _raw(refusing.port, f"GET http://mixed.bad.test:{origins.http_port}/m HTTP/1.1\r\n\r\n".encode())
    assert _status(response) == (200, None)
    assert refusing.dials == [("127.0.0.1", origins.http_port)]
    assert refusing.last().address == "127.0.0.1" and "10.1.2.3" in refusing.last().detail


async def test_dial_failure_is_502_and_timeout_504(make_proxy: Callable[..., Any]) -> None:
    closed = free_port()
    h = await make_proxy([f"down.test:{closed}", "slow.test:443"], [f"127.0.0.1:{closed}", "127.0.0.3:443"],
                         {"down.test": ["127.0.0.1"], "slow.test": ["127.0.0.3"]},
                         hang=frozenset({"127.0.0.3"}), connect_timeout=0.2)
    response = await _raw(h.port, f"CONNECT down.test:{closed} HTTP/1.1\r\n\r\n".encode())
    assert _status(response) == (502, "egress.dial-failed")
    assert h.last().address == "127.0.0.1" and not h.last().allowed
    started = time.monotonic()
    response = await _raw(h.port, b"CONNECT slow.test:443 HTTP/1.1\r\n\r\n")
    assert _status(response) == (504, "egress.connect-timeout")
    assert time.monotonic() - started < 3


async def test_too_many_tunnels(make_proxy: Callable[..., Any], origins: Origins) -> None:
    h = await _site_proxy(make_proxy, origins, max_tunnels=2)
    held = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(f"CONNECT site.test:{origins.http_port} HTTP/1.1\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        held.append(writer)
    assert h.proxy.active_tunnels == 2
    response = await _raw(h.port, f"CONNECT site.test:{origins.http_port} HTTP/1.1\r\n\r\n".encode())
    assert _status(response) == (403, "egress.too-many-tunnels")
    for writer in held:
        writer.close()
    await _settled(h)
    response = await _raw(h.port, f"GET http://site.test:{origins.http_port}/again HTTP/1.1\r\n\r\n".encode())
    assert _status(response) == (200, None)  # slots come back when tunnels close


async def test_oversized_header_is_refused(make_proxy: Callable[..., Any], origins: Origins) -> None:
    h = await _site_proxy(make_proxy, origins)
    data = f"GET http://site.test:{origins.http_port}/ HTTP/1.1\r\nX-Big: {'a' * 20000}\r\n\r\n".encode()
    response = await _raw(h.port, data)
    assert _status(response) == (431, "egress.bad-request")
    assert "16 KiB" in h.last().detail and h.dials == []


async def test_slowloris_head_times_out(make_proxy: Callable[..., Any], origins: Origins) -> None:
    h = await _site_proxy(make_proxy, origins, header_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    started = time.monotonic()
    response = b""
    try:
        for ch in b"CONNECT site.test:" * 10:  # a byte at a time, never finishing the head
            writer.write(bytes([ch]))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    response += await reader.read(4096)
            if response:
                break  # stop writing once the proxy answered, or the write would hit a closed socket
        async with asyncio.timeout(3):
            response += await reader.read()
    finally:
        writer.close()
    assert _status(response) == (408, "egress.bad-request")
    assert time.monotonic() - started < 2
    assert "not complete within 0.3 s" in h.last().detail


async def test_idle_tunnel_is_closed(make_proxy: Callable[..., Any], origins: Origins) -> None:
    h = await _site_proxy(make_proxy, origins, idle_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    writer.write(f"CONNECT site.test:{origins.http_port} HTTP/1.1\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    started = time.monotonic()
    async with asyncio.timeout(3):
        assert await reader.read() == b""
    assert 0.2 < time.monotonic() - started < 2
    writer.close()


async def test_byte_budget_cuts_and_then_refuses(make_proxy: Callable[..., Any], origins: Origins) -> None:
    h = await _site_proxy(make_proxy, origins, max_bytes=2000)
    response = await _raw(h.port, f"GET http://site.test:{origins.http_port}/big HTTP/1.1\r\n\r\n".encode())
    assert len(response) < len(BIG)
    assert h.last().rule == "egress.byte-limit" and not h.last().allowed
    assert h.proxy.bytes_relayed <= 2000
    response = await _raw(h.port, f"CONNECT site.test:{origins.http_port} HTTP/1.1\r\n\r\n".encode())
    assert _status(response) == (403, "egress.byte-limit")


async def test_failing_audit_sink_fails_closed(make_proxy: Callable[..., Any], origins: Origins) -> None:
    def broken(decision: EgressDecision) -> None:
        raise RuntimeError("disk full")

    h = await _site_proxy(make_proxy, origins, on_decision=broken)
    response = await _raw(h.port, f"GET http://site.test:{origins.http_port}/x HTTP/1.1\r\n\r\n".encode())
    assert _status(response) == (500, "egress.audit-failed")
    assert b'"line"' not in response  # the origin's answer never reached the sandbox


async def test_fifty_parallel_connects_resolve_once(make_proxy: Callable[..., Any], origins: Origins) -> None:
    p = origins.tls_port
    h = await make_proxy([f"pkg.test:{p}"], [f"127.0.0.1:{p}"], {}, dns={"pkg.test": ["127.0.0.1"]})

    async def one() -> bytes:
        return await _raw(h.port, f"CONNECT pkg.test:{p} HTTP/1.1\r\n\r\n".encode(), until_eof=False)

    heads = await asyncio.gather(*(one() for _ in range(50)))
    assert all(head.startswith(b"HTTP/1.1 200") for head in heads)
    assert h.lookups == ["pkg.test"]
    assert sum(d.allowed for d in h.decisions) == 50


async def test_close_ends_tunnels_and_listener(make_proxy: Callable[..., Any], origins: Origins) -> None:
    h = await _site_proxy(make_proxy, origins)
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    writer.write(f"CONNECT site.test:{origins.http_port} HTTP/1.1\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    await h.proxy.close()
    async with asyncio.timeout(3):
        assert await reader.read() in (b"",)
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", h.port)


async def test_default_dialler_never_resolves_a_name() -> None:
    with pytest.raises(socket.gaierror):
        await dial_tcp("site.test", 80)
