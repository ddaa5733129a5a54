"""RFC 7662 token introspection, for opaque tokens (or every token, if so configured).

With `introspect = "always"` every request asks the IdP: no answer is reused, by this module or by
the authenticator's token cache, so a revoked token is refused from the next request on.

The IdP is asked with client authentication (HTTP Basic, RFC 6749 s2.3.1). An answer counts only
if it says `"active": true`, names our issuer (when it names one), lists one of our audiences
in `aud` (required: without it, a token for another resource would pass, the RFC 8707 hole) and
is not past its `exp`/before its `nbf`.

Introspection is the one thing an unauthenticated client can make the gateway ask the IdP for, so it
is bounded (issue 6): a token refused on the IdP's answer is remembered by its sha256 for
REFUSED_CACHE_SECONDS (bounded LRU), so repeating a junk token costs nothing; and calls to the IdP
are capped per second (`introspection_rate`, a token bucket) and in flight
(`introspection_concurrency`). Over a cap the token is refused with `introspection-busy` without
asking the IdP, so a flood of junk tokens cannot burn the gateway's IdP quota (after which the IdP's
429s would lock everyone out). A cached token skips all of this.
"""

from __future__ import annotations

import hashlib
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from mcpward.auth.errors import ErrorCode, Rejected, Unavailable
from mcpward.auth.fetch import Fetcher
from mcpward.auth.jwt_bearer import Verified, principal_from, token_scopes
from mcpward.auth.settings import OAuthSettings

REFUSED_CACHE_SECONDS = 30.0
REFUSED_CACHE_ENTRIES = 10_000
# Refusals that can turn into acceptance soon are not remembered: `nbf` passes by itself.
_NOT_REMEMBERED = frozenset({"not_yet_valid"})


class Introspector:
    def __init__(self, settings: OAuthSettings, fetcher: Fetcher, client_secret: str,
                 clock: Callable[[], float] = time.time) -> None:
        assert settings.introspection_url is not None and settings.client_id is not None
        self.settings, self.fetcher, self.clock = settings, fetcher, clock
        self.url = settings.introspection_url
        # RFC 6749 s2.3.1: client id and secret are form-urlencoded before they go into Basic auth.
        self._auth = (urllib.parse.quote(settings.client_id, safe=""), urllib.parse.quote(client_secret, safe=""))
        self._audience = frozenset(settings.audience)
        self.calls = 0
        # sha256(token) -> (until, reason, description, error) of a refusal the IdP's answer caused.
        self._refused: OrderedDict[bytes, tuple[float, str, str, ErrorCode]] = OrderedDict()
        self._rate = float(settings.introspection_rate)
        self._allowance = self._rate  # the token bucket: calls allowed now (at most one second's worth)
        self._refilled = clock()
        self._in_flight = 0

    async def verify(self, token: str) -> Verified:
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        now = self.clock()
        remembered = self._refused.get(digest)
        if remembered is not None:
            until, reason, description, error = remembered
            # Also dropped when the clock stepped back (until - now > the lifetime): never kept longer.
            if 0 < until - now <= REFUSED_CACHE_SECONDS:
                raise Rejected(reason, description, error)
            del self._refused[digest]
        self._admit(now)
        self.calls += 1
        self._in_flight += 1
        try:
            answer = await self.fetcher.post_form(self.url, {"token": token, "token_type_hint": "access_token"},
                                                  self._auth)
        except Unavailable as exc:
            raise Unavailable(f"token introspection failed ({exc.description})") from None
        finally:
            self._in_flight -= 1
        if not isinstance(answer, dict) or not isinstance(answer.get("active"), bool):
            raise Unavailable("token introspection answered without an \"active\" boolean")
        try:
            return self.check(answer)
        except Unavailable:
            raise  # a malformed answer says nothing about the token: not remembered
        except Rejected as exc:
            if exc.reason not in _NOT_REMEMBERED:
                self._remember(digest, exc, self.clock())
            raise

    def _admit(self, now: float) -> None:
        """Take one call from the per-second bucket and check the in-flight cap; Rejected if over either."""
        # A clock that stepped back refills nothing (max 0); the bucket holds at most one second's worth.
        self._allowance = min(self._rate, self._allowance + max(0.0, now - self._refilled) * self._rate)
        self._refilled = now
        if self._in_flight >= self.settings.introspection_concurrency or self._allowance < 1.0:
            raise Rejected("introspection-busy", "too many tokens to introspect right now; try again shortly")
        self._allowance -= 1.0

    def _remember(self, digest: bytes, exc: Rejected, now: float) -> None:
        self._refused[digest] = (now + REFUSED_CACHE_SECONDS, exc.reason, exc.description, exc.error)
        self._refused.move_to_end(digest)
        if len(self._refused) > REFUSED_CACHE_ENTRIES:
            self._refused.popitem(last=False)

    def check(self, answer: dict[str, Any]) -> Verified:
        if answer["active"] is not True:
            raise Rejected("inactive", "the token is not active (revoked, expired or unknown)")
        now, leeway = self.clock(), self.settings.leeway_seconds
        exp = _number(answer, "exp")
        if exp is not None and exp + leeway <= now:
            raise Rejected("expired", "the token has expired")
        nbf = _number(answer, "nbf")
        if nbf is not None and nbf - leeway > now:
            raise Rejected("not_yet_valid", "the token is not valid yet (nbf in the future)")
        iss = answer.get("iss")
        if iss is not None and iss != self.settings.issuer:
            raise Rejected("wrong_issuer", "the token was issued by an issuer this gateway does not accept")
        aud = answer.get("aud")
        audiences = {aud} if isinstance(aud, str) else {a for a in aud if isinstance(a, str)} \
            if isinstance(aud, list) else set()
        if not audiences & self._audience:
            raise Rejected("wrong_audience", "the token was issued for another resource (aud)"
                           if audiences else "the introspection answer names no audience (aud)")
        scopes = token_scopes(answer)
        principal = principal_from(answer, self.settings.groups_claim, scopes)
        if self.settings.introspect == "always":
            # No reuse at all, so a revocation counts from the next request. An answer that is already
            # expired by any clock reading is kept by no cache: the authenticator caches only answers
            # whose expiry is ahead of its clock (even if the wall clock steps back meanwhile).
            return Verified(principal=principal, scopes=scopes, expires_at=float("-inf"))
        ttl = self.settings.introspection_cache_seconds
        expires = now + ttl if exp is None else min(exp, now + ttl)
        return Verified(principal=principal, scopes=scopes, expires_at=expires)


def _number(answer: dict[str, Any], name: str) -> float | None:
    value = answer.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unavailable(f"token introspection answered a non-numeric {name}")
    return float(value)
