"""RFC 7662 token introspection, for opaque tokens (or every token, if so configured).

With `introspect = "always"` every request asks the IdP: no answer is reused, by this module or by
the authenticator's token cache, so a revoked token is refused from the next request on.

The IdP is asked with client authentication (HTTP Basic, RFC 6749 s2.3.1). An answer counts only
if it says `"active": true`, names our issuer (when it names one), lists one of our audiences
in `aud` (required: without it, a token for another resource would pass, the RFC 8707 hole) and
is not past its `exp`/before its `nbf`.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from mcpward.auth.errors import Rejected, Unavailable
from mcpward.auth.fetch import Fetcher
from mcpward.auth.jwt_bearer import Verified, principal_from, token_scopes
from mcpward.auth.settings import OAuthSettings


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

    async def verify(self, token: str) -> Verified:
        self.calls += 1
        try:
            answer = await self.fetcher.post_form(self.url, {"token": token, "token_type_hint": "access_token"},
                                                  self._auth)
        except Unavailable as exc:
            raise Unavailable(f"token introspection failed ({exc.description})") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("active"), bool):
            raise Unavailable("token introspection answered without an \"active\" boolean")
        return self.check(answer)

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
