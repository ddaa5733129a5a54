"""Where the authenticator may connect: never to a private address unless allow_private, never by redirect.

Nothing here leaves the machine: names resolve through a map, and the HTTP transport records
requests and answers them itself instead of sending anything. The deadline tests use a real IdP
on 127.0.0.1 that trickles its answer.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mcpward.auth import Authenticator, AuthFailure, fetch, load_settings
from mcpward.gateway.config import parse

RESOURCE = "http://127.0.0.1:8811/mcp"
PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def resolver_for(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"no such host {host}")  # never the system resolver
        return table[host]

    return resolve


class Recorder:
    def __init__(self, answers: dict[str, httpx.Response]) -> None:
        self.answers, self.seen = answers, []  # type: ignore[var-annotated]
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(str(request.url))
        return self.answers.get(str(request.url), httpx.Response(404))


def token(issuer: str) -> str:
    return jwt.encode({"iss": issuer, "aud": RESOURCE, "sub": "x", "exp": 2**31}, PRIVATE_KEY, algorithm="RS256",
                      headers={"kid": "k1"})


def make(oauth: dict[str, object], recorder: Recorder, names: dict[str, list[str]]) -> Authenticator:
    settings = load_settings(parse({"auth": {"oauth": oauth}}, "gw.toml"))
    assert settings is not None
    return Authenticator(settings, transport=recorder.transport, resolver=resolver_for(names))


async def refused(auth: Authenticator, bearer: str) -> AuthFailure:
    with pytest.raises(AuthFailure) as info:
        await auth.authenticate(f"Bearer {bearer}")
    return info.value


async def test_name_resolving_to_loopback_is_refused_before_connecting() -> None:
    recorder = Recorder({})
    auth = make({"issuer": "https://idp.test", "jwks_url": "https://idp.test/jwks"}, recorder,
                {"idp.test": ["127.0.0.1"]})
    try:
        failure = await refused(auth, token("https://idp.test"))
        assert (failure.status, failure.reason) == (401, "auth.idp_unavailable")
        assert "non-public address 127.0.0.1" in failure.description
        assert recorder.seen == []
    finally:
        await auth.close()


async def test_discovered_jwks_uri_on_a_metadata_address_is_refused() -> None:
    metadata = {"issuer": "https://idp.test", "jwks_uri": "https://169.254.169.254/latest/keys"}
    recorder = Recorder({"https://idp.test/.well-known/oauth-authorization-server": httpx.Response(200, json=metadata)})
    auth = make({"issuer": "https://idp.test"}, recorder, {"idp.test": ["93.184.216.34"]})
    try:
        failure = await refused(auth, token("https://idp.test"))
        assert failure.reason == "auth.idp_unavailable" and "169.254.169.254" in failure.description
        assert recorder.seen == ["https://idp.test/.well-known/oauth-authorization-server"]
    finally:
        await auth.close()


async def test_discovery_checks_the_issuer_and_falls_back_to_oidc() -> None:
    oidc = {"issuer": "https://idp.test/tenant", "jwks_uri": "https://idp.test/tenant/keys"}
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(PRIVATE_KEY.public_key(), as_dict=True) | {"kid": "k1"}
    recorder = Recorder({
        # RFC 8414 path insertion first; this one names another issuer, so it is not trusted.
        "https://idp.test/.well-known/oauth-authorization-server/tenant": httpx.Response(
            200, json={"issuer": "https://evil.test", "jwks_uri": "https://evil.test/keys"}),
        "https://idp.test/tenant/.well-known/openid-configuration": httpx.Response(200, json=oidc),
        "https://idp.test/tenant/keys": httpx.Response(200, json={"keys": [jwk]}),
    })
    auth = make({"issuer": "https://idp.test/tenant"}, recorder, {"idp.test": ["93.184.216.34"]})
    try:
        assert (await auth.authenticate(f"Bearer {token('https://idp.test/tenant')}")).subject == "x"
        assert "https://evil.test/keys" not in recorder.seen
    finally:
        await auth.close()


async def test_redirects_are_not_followed() -> None:
    recorder = Recorder({"https://idp.test/jwks": httpx.Response(
        302, headers={"location": "http://169.254.169.254/latest/meta-data/"})})
    auth = make({"issuer": "https://idp.test", "jwks_url": "https://idp.test/jwks"}, recorder,
                {"idp.test": ["93.184.216.34"]})
    try:
        failure = await refused(auth, token("https://idp.test"))
        assert "HTTP 302" in failure.description and recorder.seen == ["https://idp.test/jwks"]
    finally:
        await auth.close()


async def test_oversized_or_non_json_answers_fail_closed() -> None:
    recorder = Recorder({"https://idp.test/jwks": httpx.Response(200, content=b"[" * (2 << 20))})
    auth = make({"issuer": "https://idp.test", "jwks_url": "https://idp.test/jwks"}, recorder,
                {"idp.test": ["93.184.216.34"]})
    try:
        assert "more than" in (await refused(auth, token("https://idp.test"))).description
    finally:
        await auth.close()
    recorder = Recorder({"https://idp.test/jwks": httpx.Response(200, content=b"<html>")})
    auth = make({"issuer": "https://idp.test", "jwks_url": "https://idp.test/jwks"}, recorder,
                {"idp.test": ["93.184.216.34"]})
    try:
        assert "JSON" in (await refused(auth, token("https://idp.test"))).description
    finally:
        await auth.close()


async def test_symmetric_and_private_keys_in_the_jwks_are_never_used() -> None:
    shared = b"s" * 32
    oct_key = {"kty": "oct", "kid": "k1", "k": "cw" * 21 + "cw", "alg": "HS256"}
    # A private key published by mistake (it has "d"): not a verification key we will use.
    private_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(PRIVATE_KEY, as_dict=True) | {"kid": "k2"}
    recorder = Recorder({"https://idp.test/jwks": httpx.Response(200, json={"keys": [oct_key, private_jwk]})})
    auth = make({"issuer": "https://idp.test", "jwks_url": "https://idp.test/jwks"}, recorder,
                {"idp.test": ["93.184.216.34"]})
    try:
        forged = jwt.encode({"iss": "https://idp.test", "aud": RESOURCE, "sub": "x", "exp": 2**31}, shared,
                            algorithm="HS256", headers={"kid": "k1"})
        assert (await refused(auth, forged)).reason == "auth.alg_refused"
        assert (await refused(auth, token("https://idp.test"))).reason == "auth.unknown_key"  # kid k1: oct only
        signed_k2 = jwt.encode({"iss": "https://idp.test", "aud": RESOURCE, "sub": "x", "exp": 2**31}, PRIVATE_KEY,
                               algorithm="RS256", headers={"kid": "k2"})
        assert (await refused(auth, signed_k2)).reason == "auth.unknown_key"
    finally:
        await auth.close()


class Trickle:
    """A loopback IdP that sends its headers (content-length 100000), then one byte a second: each read
    arrives well within httpx's per-read timeout, so only an overall deadline ends the fetch."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n")
            while True:
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.2)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def test_a_trickling_jwks_answer_is_cut_off_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "FETCH_DEADLINE", 1.0)
    async with Trickle() as base:
        settings = load_settings(parse({"auth": {"oauth": {"issuer": base, "jwks_url": f"{base}/jwks",
                                                           "allow_private": True}, "resource": RESOURCE}}, "gw.toml"))
        assert settings is not None
        auth = Authenticator(settings)
        try:
            started = time.monotonic()
            async with asyncio.timeout(10):  # before the deadline this stayed pending for as long as the IdP liked
                failure = await refused(auth, token(base))
            # one deadline: the start's prefetch fails, and the request waiting behind it is not fetched again
            assert time.monotonic() - started < 1.9
            assert failure.reason == "auth.idp_unavailable" and "no complete answer within 1 s" in failure.description
        finally:
            await auth.close()


async def test_trickling_introspection_answers_free_their_slots_at_the_deadline(monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    monkeypatch.setattr(fetch, "FETCH_DEADLINE", 1.0)
    async with Trickle() as base:
        oauth = {"issuer": base, "jwks_url": f"{base}/jwks", "allow_private": True,
                 "introspection_url": f"{base}/introspect", "client_id": "gw", "client_secret": "secret:idp"}
        settings = load_settings(parse({"auth": {"oauth": oauth, "resource": RESOURCE}}, "gw.toml"))
        assert settings is not None
        auth = Authenticator(settings, resolve_secret=lambda ref: "client-secret-value")
        try:
            async def one(i: int) -> str:
                try:
                    await auth.authenticate(f"Bearer opaque-token-{i}")
                except AuthFailure as failure:
                    return failure.reason
                return "accepted"

            started = time.monotonic()
            async with asyncio.timeout(10):
                reasons = await asyncio.gather(*(one(i) for i in range(20)))
            assert time.monotonic() - started < 3.5  # the start's prefetch, then one deadline per wave at most
            assert "accepted" not in reasons
            assert set(reasons) <= {"auth.idp_unavailable", "auth.introspection-busy"}
            assert "auth.idp_unavailable" in reasons
        finally:
            await auth.close()
