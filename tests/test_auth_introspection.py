"""RFC 7662 introspection against the real issuer fixture: active, inactive, revoked, audience, client auth."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from mcpward.auth import Authenticator, AuthFailure, AuthSetupError, load_settings
from mcpward.gateway.config import parse
from tests.fixtures.issuer import CLIENT_ID, CLIENT_SECRET, RESOURCE, Clock, Issuer, oauth_table, running_issuer

SECRET_REF = "secret:idp-client"


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with running_issuer() as running:
        running.default_audience = RESOURCE
        yield running


def resolve(ref: str) -> str:
    assert ref == SECRET_REF
    return CLIENT_SECRET


def make(issuer: Issuer, clock: Clock | None = None, resolver: Any = resolve, **oauth: Any) -> Authenticator:
    table = oauth_table(issuer, introspection_url=f"{issuer.url}/introspect", client_id=CLIENT_ID,
                        client_secret=SECRET_REF, **oauth)
    settings = load_settings(parse({"auth": table}, "gw.toml"))
    assert settings is not None
    return Authenticator(settings, resolver, clock=clock or Clock())


async def refused(auth: Authenticator, token: str) -> AuthFailure:
    with pytest.raises(AuthFailure) as info:
        await auth.authenticate(f"Bearer {token}")
    assert token not in str(info.value) and token not in info.value.www_authenticate()
    return info.value


async def test_active_opaque_token_and_its_cache(issuer: Issuer) -> None:
    clock = Clock()
    auth = make(issuer, clock, introspection_cache_seconds=20)
    try:
        token = issuer.issue_opaque(sub="bob", groups=["ops"], scope="mcp:tools")
        principal = await auth.authenticate(f"Bearer {token}")
        assert (principal.kind, principal.subject, principal.groups) == ("oauth", "bob", ("ops",))
        assert dict(principal.claims)["scope"] == "mcp:tools"
        await auth.authenticate(f"Bearer {token}")
        assert issuer.introspected == [token]  # the second call came from the cache
        # Revoked at the IdP: still cached until the cache lifetime ends, then refused.
        issuer.revoke(token)
        clock.advance(21)
        assert (await refused(auth, token)).reason == "auth.inactive"
        assert issuer.introspected == [token, token]
    finally:
        await auth.close()


async def test_unknown_token_is_inactive(issuer: Issuer) -> None:
    auth = make(issuer)
    try:
        failure = await refused(auth, "opq-never-issued")
        assert (failure.status, failure.error, failure.reason) == (401, "invalid_token", "auth.inactive")
    finally:
        await auth.close()


@pytest.mark.parametrize(("claims", "reason"), [
    ({"aud": "https://other.example/mcp"}, "auth.wrong_audience"),
    ({"aud": None}, "auth.wrong_audience"),
    ({"iss": "https://idp.other.example"}, "auth.wrong_issuer"),
    ({"exp": int(time.time()) - 300}, "auth.expired"),
    ({"nbf": int(time.time()) + 300}, "auth.not_yet_valid"),
    ({"sub": None}, "auth.no_subject"),
])
async def test_active_answers_still_checked(issuer: Issuer, claims: dict[str, Any], reason: str) -> None:
    auth = make(issuer)
    try:
        assert (await refused(auth, issuer.issue_opaque(**claims))).reason == reason
    finally:
        await auth.close()


async def test_cache_never_outlives_exp(issuer: Issuer) -> None:
    clock = Clock()
    auth = make(issuer, clock, introspection_cache_seconds=60, leeway_seconds=0)
    try:
        token = issuer.issue_opaque(exp=int(time.time()) + 5)
        await auth.authenticate(f"Bearer {token}")
        clock.advance(6)
        assert (await refused(auth, token)).reason == "auth.expired"
        assert len(issuer.introspected) == 2
    finally:
        await auth.close()


async def test_jwts_still_validated_locally_in_opaque_mode(issuer: Issuer) -> None:
    auth = make(issuer)
    try:
        assert (await auth.authenticate(f"Bearer {issuer.mint(sub='carol')}")).subject == "carol"
        assert issuer.introspected == []
    finally:
        await auth.close()


async def test_always_mode_sends_jwts_to_introspection(issuer: Issuer) -> None:
    auth = make(issuer, introspect="always")
    try:
        jwt_token = issuer.mint()
        assert (await refused(auth, jwt_token)).reason == "auth.inactive"  # the IdP does not list it as active
        assert issuer.introspected == [jwt_token] and "/jwks" not in issuer.hits
    finally:
        await auth.close()


async def test_wrong_client_secret_fails_closed(issuer: Issuer) -> None:
    auth = make(issuer, resolver=lambda ref: "not-the-secret")
    try:
        failure = await refused(auth, issuer.issue_opaque())
        assert (failure.status, failure.reason) == (401, "auth.idp_unavailable")
        assert "HTTP 401" in failure.description and "not-the-secret" not in failure.description
    finally:
        await auth.close()


async def test_secret_that_does_not_resolve(issuer: Issuer) -> None:
    def broken(ref: str) -> str:
        raise LookupError(f"{ref}: no such secret")

    auth = make(issuer, resolver=broken)
    with pytest.raises(AuthSetupError, match=r"auth\.oauth\.client_secret: secret:idp-client: no such secret"):
        await auth.start()
    failure = await refused(auth, issuer.issue_opaque())
    assert failure.reason == "auth.setup"
    no_resolver = make(issuer, resolver=None)
    with pytest.raises(AuthSetupError, match="no secret resolver"):
        await no_resolver.start()


async def test_outage_fails_closed(issuer: Issuer) -> None:
    auth = make(issuer)
    try:
        await auth.start()
        issuer.down = True
        failure = await refused(auth, issuer.issue_opaque())
        assert failure.reason == "auth.idp_unavailable" and "introspection failed" in failure.description
    finally:
        await auth.close()


async def test_always_mode_caches_nothing_so_revocation_counts_at_once(issuer: Issuer) -> None:
    clock = Clock()
    auth = make(issuer, clock, introspect="always")
    try:
        token = issuer.issue_opaque(sub="bob", scope="mcp:tools")
        for _ in range(3):
            assert (await auth.authenticate(f"Bearer {token}")).subject == "bob"
        assert issuer.introspected == [token] * 3  # every request asked the IdP
        assert auth.cached_tokens == 0
        issuer.revoke(token)
        assert (await refused(auth, token)).reason == "auth.inactive"  # no clock advance: the very next request
    finally:
        await auth.close()


def test_always_mode_refuses_a_cache_lifetime(issuer: Issuer) -> None:
    from mcpward.gateway.config import ConfigError

    with pytest.raises(ConfigError, match=r"introspection_cache_seconds: must be 0 \(or absent\)"):
        make(issuer, introspect="always", introspection_cache_seconds=20)
    settings = load_settings(parse({"auth": oauth_table(issuer, introspection_url=f"{issuer.url}/introspect",
                                                        client_id=CLIENT_ID, client_secret=SECRET_REF,
                                                        introspect="always", introspection_cache_seconds=0)},
                                   "gw.toml"))
    assert settings is not None and settings.oauth is not None
    assert settings.oauth.introspection_cache_seconds == 0


class FrozenClock(Clock):
    """Time that moves only when the test says so: the per-second cap then admits an exact number."""

    def __init__(self) -> None:
        super().__init__()
        self.start = time.time()

    def __call__(self) -> float:
        return self.start + self.offset


async def test_junk_tokens_cost_at_most_the_rate_cap_of_idp_calls(issuer: Issuer) -> None:
    clock = FrozenClock()
    auth = make(issuer, clock, introspection_rate=5)
    try:
        await auth.start()
        reasons = [(await refused(auth, f"junk-{i:03d}")).reason for i in range(40)]
        assert len(issuer.introspected) == 5  # the bucket holds one second's worth, and no time passed
        assert reasons == ["auth.inactive"] * 5 + ["auth.introspection-busy"] * 35
        busy = await refused(auth, "junk-100")
        assert (busy.status, busy.error) == (401, "invalid_token") and "try again" in busy.description
        # A junk token the IdP already called inactive is refused from memory, even with the bucket empty.
        for _ in range(50):
            assert (await refused(auth, "junk-000")).reason == "auth.inactive"
        assert len(issuer.introspected) == 5
        # One second later the bucket has refilled: new tokens are asked about again, at most 5 of them.
        clock.advance(1)
        good = issuer.issue_opaque(sub="bob")
        assert (await auth.authenticate(f"Bearer {good}")).subject == "bob"
        for i in range(10):
            await refused(auth, f"later-{i}")
        assert len(issuer.introspected) == 10
        # The memory of a refusal lasts 30 s, then the IdP is asked again (the token may be active now).
        clock.advance(31)
        assert (await refused(auth, "junk-000")).reason == "auth.inactive"
        assert issuer.introspected[-1] == "junk-000" and len(issuer.introspected) == 11
    finally:
        await auth.close()


async def test_in_flight_cap_refuses_without_asking_the_idp(issuer: Issuer) -> None:
    import asyncio

    auth = make(issuer, introspection_rate=1000, introspection_concurrency=2)
    try:
        await auth.start()
        tokens = [f"flood-{i}" for i in range(10)]
        results = await asyncio.gather(*(auth.authenticate(f"Bearer {t}") for t in tokens), return_exceptions=True)
        reasons = sorted(r.reason for r in results if isinstance(r, AuthFailure))
        assert len(reasons) == 10
        assert reasons == ["auth.inactive"] * 2 + ["auth.introspection-busy"] * 8
        assert len(issuer.introspected) == 2  # the other eight never reached the IdP
    finally:
        await auth.close()


async def test_not_yet_valid_and_outages_are_not_remembered(issuer: Issuer) -> None:
    clock = FrozenClock()
    auth = make(issuer, clock)
    try:
        early = issuer.issue_opaque(nbf=int(time.time()) + 300)
        assert (await refused(auth, early)).reason == "auth.not_yet_valid"
        assert (await refused(auth, early)).reason == "auth.not_yet_valid"
        assert issuer.introspected == [early, early]  # its nbf will pass: asked again each time
        issuer.down = True
        assert (await refused(auth, "junk-outage")).reason == "auth.idp_unavailable"
        issuer.down = False
        assert (await refused(auth, "junk-outage")).reason == "auth.inactive"  # an outage proves nothing
    finally:
        await auth.close()


def test_introspection_caps_are_checked_at_load(issuer: Issuer) -> None:
    from mcpward.gateway.config import ConfigError

    with pytest.raises(ConfigError, match=r"introspection_rate: must be between 1 and 10000"):
        make(issuer, introspection_rate=0)
    with pytest.raises(ConfigError, match=r"introspection_concurrency: must be between 1 and 1000"):
        make(issuer, introspection_concurrency=5000)
