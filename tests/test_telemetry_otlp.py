"""The OTLP exporters' session: one resolution, vetted, and the connection made to that vetted address.

No test here reaches DNS or any address but loopback: `dns` replaces the socket layer's getaddrinfo
with a map, and lets nothing but a loopback literal through. A dial of any other address (the pinned
public address, or a name resolved behind the check's back) stops at that map and is recorded, never
made.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from mcpward.telemetry.otlp_session import OtlpSession
from tests.test_telemetry_tracing import _Sink
from tests.tls_support import self_signed


class Dns:
    """A resolver map (what the session's resolver is given) and the record of what the socket layer was asked."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers  # name -> one answer per call, the last one repeated
        self.asked: list[str] = []  # the session's own resolution
        self.dialled: list[str] = []  # what reached the socket layer (what urllib3 would connect to)

    def resolve(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        answers = self.answers.get(host)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "not in the test's map")
        return answers.pop(0) if len(answers) > 1 else answers[0]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Dns:
    table = Dns({})
    real = socket.getaddrinfo

    def loopback_literals_only(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        text = host.decode() if isinstance(host, bytes) else str(host)
        table.dialled.append(text)
        try:
            loopback = ipaddress.ip_address(text).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise socket.gaierror(socket.EAI_NONAME, "stopped by the test: not a loopback literal")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_literals_only)
    return table


class _Recorder(_Sink):
    """The tracing tests' collector, noting each export's path and Host header."""

    seen: list[tuple[str, str]]

    def do_POST(self) -> None:
        self.seen.append((self.path, self.headers.get("host", "")))
        super().do_POST()


@pytest.fixture
def collector() -> Iterator[tuple[int, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Recorder,), {"seen": seen}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_export_connects_to_the_address_that_was_vetted(dns: Dns) -> None:
    # The name answers a public address, then (a rebinding) the metadata service: one resolution is
    # made, and the connection goes to what it vetted, never to a second answer.
    dns.answers["collector.invalid"] = [["93.184.215.14"], ["169.254.169.254"]]
    session = OtlpSession(False, resolve=dns.resolve)
    with pytest.raises(requests.ConnectionError, match="stopped by the test"):
        session.post("http://collector.invalid/v1/traces", data=b"x", timeout=5)
    assert dns.asked == ["collector.invalid"]
    assert dns.dialled == ["93.184.215.14"]  # the vetted literal; the name never reached the socket layer


@pytest.mark.parametrize("answer", [["169.254.169.254"], ["93.184.215.14", "10.0.0.5"], ["::ffff:169.254.169.254"],
                                    ["127.0.0.1"]])
def test_a_name_with_any_non_public_answer_is_refused_before_any_dial(dns: Dns, answer: list[str]) -> None:
    dns.answers["collector.invalid"] = [answer]
    session = OtlpSession(False, resolve=dns.resolve)
    with pytest.raises(requests.ConnectionError, match=r"OTLP export refused: collector\.invalid resolves to the "
                                                       r"non-public address .*otlp_allow_private"):
        session.post("http://collector.invalid/v1/traces", data=b"x", timeout=5)
    assert dns.dialled == []
    assert not session.trust_env


def test_an_answer_that_is_not_an_address_or_no_answer_is_refused(dns: Dns) -> None:
    dns.answers["collector.invalid"] = [["elsewhere.invalid"]]  # would be resolved again, outside the check
    dns.answers["empty.invalid"] = [[]]
    for host, problem in (("collector.invalid", "which is not an IP address"), ("empty.invalid", "did not resolve"),
                          ("unknown.invalid", "cannot resolve unknown.invalid")):
        with pytest.raises(requests.ConnectionError, match=problem):
            OtlpSession(True, resolve=dns.resolve).post(f"http://{host}/v1/traces", data=b"x", timeout=5)
    assert dns.dialled == []


def test_the_export_reaches_the_pinned_loopback_collector_under_its_name(
        dns: Dns, collector: tuple[int, list[tuple[str, str]]]) -> None:
    port, seen = collector
    dns.answers["collector.invalid"] = [["127.0.0.1"]]
    dns.answers["localhost"] = [["127.0.0.1"]]
    with pytest.raises(requests.ConnectionError, match=r"non-public address 127\.0\.0\.1"):
        OtlpSession(False, resolve=dns.resolve).post(f"http://collector.invalid:{port}/v1/traces", data=b"x",
                                                     timeout=5)
    assert seen == []
    response = OtlpSession(True, resolve=dns.resolve).post(f"http://collector.invalid:{port}/v1/traces", data=b"x",
                                                           timeout=5)
    assert response.status_code == 200
    assert seen == [("/v1/traces", f"collector.invalid:{port}")]  # dialled 127.0.0.1, addressed by name
    # A name that itself means this machine needs no allow: a local collector agent.
    assert OtlpSession(False, resolve=dns.resolve).post(f"http://localhost:{port}/v1/metrics", data=b"x",
                                                        timeout=5).status_code == 200
    assert "collector.invalid" not in dns.dialled and "localhost" not in dns.dialled


def test_proxies_are_never_used(dns: Dns, collector: tuple[int, list[tuple[str, str]]]) -> None:
    port, seen = collector
    dns.answers["collector.invalid"] = [["127.0.0.1"]]
    session = OtlpSession(True, resolve=dns.resolve)
    with pytest.raises(requests.ConnectionError, match="never go through a proxy"):
        session.post("http://collector.invalid/v1/traces", data=b"x", timeout=5,
                     proxies={"http": f"http://127.0.0.1:{port}"})
    assert seen == []


@pytest.mark.parametrize("served_name", ["collector.invalid", "other.invalid"])
def test_tls_checks_the_name_while_dialling_the_pinned_address(dns: Dns, tmp_path: Path, served_name: str) -> None:
    cert, key = self_signed(tmp_path, served_name)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    sni: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: sni.append(name)  # type: ignore[assignment,misc,func-returns-value]
    seen: list[tuple[str, str]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Recorder,), {"seen": seen}))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    dns.answers["collector.invalid"] = [["127.0.0.1"]]
    session = OtlpSession(True, resolve=dns.resolve)
    try:
        url = f"https://collector.invalid:{port}/v1/traces"
        if served_name == "collector.invalid":
            assert session.post(url, data=b"x", verify=str(cert), timeout=5).status_code == 200
            assert seen == [("/v1/traces", f"collector.invalid:{port}")]
        else:  # a certificate for another name: the pinned address does not make it acceptable
            with pytest.raises(requests.exceptions.SSLError):
                session.post(url, data=b"x", verify=str(cert), timeout=5)
            assert seen == []
    finally:
        server.shutdown()
        server.server_close()
    assert sni and set(sni) == {"collector.invalid"}  # SNI carried the name, not 127.0.0.1
