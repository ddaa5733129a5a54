"""Bearer JWT validation: signature from the issuer's JWKS, then exp/nbf/iat, iss and aud (RFC 8707).

The header is read only to choose a key: the algorithm must be on the configured list (never
"none", never HMAC), must fit the key's type, and must match the JWK's own `alg` when it has one.
Headers that point somewhere else for a key (`jku`, `x5u`, `jwk`) are ignored: keys come only
from the configured issuer.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from jwt.algorithms import get_default_algorithms

from mcpward.auth.errors import Rejected
from mcpward.auth.jwks import JwksCache, key_fits
from mcpward.auth.settings import SUPPORTED_ALGORITHMS, OAuthSettings
from mcpward.gateway.context import Principal

# RFC 9068 access tokens say "at+jwt"; many IdPs say "JWT" or nothing. Anything else (an ID token's
# "id+jwt"? a logout token, a DPoP proof) is another kind of JWT and not a credential for us.
ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/at+jwt", "application/jwt"})
# The claims a Principal carries for the policy and the audit (never the whole token).
KEPT_CLAIMS = ("iss", "aud", "scope", "client_id", "azp", "exp", "iat", "jti")
SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
ALGORITHMS = get_default_algorithms()


@dataclass(frozen=True, slots=True)
class Verified:
    principal: Principal
    scopes: frozenset[str]
    expires_at: float  # wall-clock seconds (the token's exp, or the introspection answer's)


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


def token_scopes(claims: dict[str, Any]) -> frozenset[str]:
    """`scope` (RFC 8693/9068: space-separated string) or `scp` (a list, as some IdPs send)."""
    scope = claims.get("scope")
    if isinstance(scope, str):
        return frozenset(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, list):
        return frozenset(s for s in scp if isinstance(s, str))
    if isinstance(scp, str):
        return frozenset(scp.split())
    return frozenset()


def groups_from(claims: dict[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(g, str) for g in value):
        return tuple(value)
    # Fail closed: a groups claim we cannot read could be hiding a group the policy denies.
    raise Rejected("bad_groups", f"the token's {name!r} claim is not a list of strings")


def _frozen(value: Any) -> Any:
    """Claims inside a frozen Principal must be hashable."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    return value


def principal_from(claims: dict[str, Any], groups_claim: str, scopes: Iterable[str]) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Rejected("no_subject", "the token has no sub claim")
    kept: list[tuple[str, Any]] = [(name, _frozen(claims[name])) for name in KEPT_CLAIMS if name in claims]
    if "client_id" not in claims and isinstance(claims.get("azp"), str):
        kept.append(("client_id", claims["azp"]))  # OIDC's authorized party is the client
    if "scope" not in claims:
        kept.append(("scope", " ".join(sorted(scopes))))
    return Principal(subject=subject, kind="oauth", claims=tuple(kept), groups=groups_from(claims, groups_claim))


def _segment(text: str) -> bytes:
    """Strict base64url (no padding, RFC 7515 s2): the alphabet is checked before decoding."""
    if not SEGMENT.fullmatch(text) or len(text) % 4 == 1:
        raise Rejected("malformed", "the token is not a well-formed JWT")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise Rejected("malformed", "the token is not a well-formed JWT") from None
    if not isinstance(value, dict):
        raise Rejected("malformed", "the token is not a well-formed JWT")
    return value


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejected("bad_claim", f"the token's {name} claim is not a number")
    return float(value)


class JwtValidator:
    """Parses the JWS itself (PyJWT's decoder spends ~100 us per token on checks that add nothing
    here) and uses PyJWT's algorithm objects, backed by `cryptography`, for the signature."""

    def __init__(self, settings: OAuthSettings, jwks: JwksCache, clock: Callable[[], float] = time.time) -> None:
        self.settings, self.jwks, self.clock = settings, jwks, clock
        self._algorithms = frozenset(settings.algorithms)
        self._audience = frozenset(settings.audience)
        self._verifiers = {name: ALGORITHMS[name] for name in settings.algorithms}

    async def verify(self, token: str) -> Verified:
        head_b64, payload_b64, signature_b64 = token.split(".")
        header = _json_object(_segment(head_b64))
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            shown = repr(alg) if alg in SUPPORTED_ALGORITHMS or alg in ("none", "HS256", "HS384", "HS512") \
                else "(unrecognised)"
            raise Rejected("alg_refused", f"signing algorithm {shown} is not accepted")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYP):
            raise Rejected("wrong_typ", "the JWT is not an access token (typ)")
        if "crit" in header:
            raise Rejected("crit_header", "the token has critical header extensions this gateway does not implement")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Rejected("malformed", "the token's kid is not a string")
        signature = _segment(signature_b64)
        claims = _json_object(_segment(payload_b64))
        key = await self.jwks.key_for(kid, alg)
        if not key_fits(alg, key.key) or (key.alg is not None and key.alg != alg):
            raise Rejected("alg_key_mismatch", f"signing algorithm {alg} does not fit the issuer's key {kid!r:.60}")
        signing_input = token[: len(head_b64) + 1 + len(payload_b64)].encode("ascii")
        if not self._verifiers[alg].verify(signing_input, key.key, signature):
            raise Rejected("bad_signature", "the token's signature does not verify")
        # Claims are checked only once the signature holds: before that they are the attacker's text.
        return self._claims(claims)

    def _claims(self, claims: dict[str, Any]) -> Verified:
        now, leeway = self.clock(), self.settings.leeway_seconds
        for required in ("exp", "iss", "aud", "sub"):
            if required not in claims:
                raise Rejected("missing_claim", f"the token has no {required} claim")
        exp = _number(claims, "exp")
        assert exp is not None
        if exp <= now - leeway:
            raise Rejected("expired", "the token has expired")
        nbf, iat = _number(claims, "nbf"), _number(claims, "iat")
        if (nbf is not None and nbf > now + leeway) or (iat is not None and iat > now + leeway):
            raise Rejected("not_yet_valid", "the token is not valid yet (nbf/iat in the future)")
        if claims["iss"] != self.settings.issuer:
            raise Rejected("wrong_issuer", "the token was issued by an issuer this gateway does not accept")
        aud = claims["aud"]
        audiences = (aud,) if isinstance(aud, str) else tuple(a for a in aud if isinstance(a, str)) \
            if isinstance(aud, list) else ()
        if self._audience.isdisjoint(audiences):
            raise Rejected("wrong_audience", "the token was issued for another resource (aud)")
        scopes = token_scopes(claims)
        principal = principal_from(claims, self.settings.groups_claim, scopes)
        return Verified(principal=principal, scopes=scopes, expires_at=exp)
