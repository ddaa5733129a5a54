"""The issuer's signing keys: discovery (RFC 8414, then OIDC), a cached JWKS, rotation.

Keys are refetched after `jwks_cache_seconds`. A token signed with a `kid` we do not know
triggers one early refetch (the IdP may have rotated), but at most once per
`UNKNOWN_KID_REFETCH` seconds, so a flood of made-up kids cannot turn into a flood of requests
to the IdP. A failed fetch is not retried for `RETRY_AFTER_FAILURE` seconds for the same reason.
When the cache has expired and the IdP cannot be reached, tokens are refused (fail closed):
serving from stale keys would keep a revoked key valid for as long as the outage lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from mcpward.auth.errors import Rejected, Unavailable
from mcpward.auth.fetch import Fetcher

log = logging.getLogger("mcpward.auth")
UNKNOWN_KID_REFETCH = 30.0
RETRY_AFTER_FAILURE = 5.0
MIN_RSA_BITS = 2048
_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str | None
    alg: str | None  # the JWK's own "alg", when it pins one
    key: PublicKey


def key_fits(alg: str, key: PublicKey) -> bool:
    """Whether `alg` is a signature this key can make: refuses alg/key-type confusion outright."""
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS
    if alg in _CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CURVES[alg])
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def parse_jwks(doc: Any, source: str) -> dict[str | None, list[SigningKey]]:
    """Signing keys by kid. Keys we cannot use (encryption keys, symmetric keys, unknown types) are
    skipped with a log line, so one odd key in the IdP's set does not lock everyone out."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise Unavailable(f"{source} is not a JWK set (no \"keys\" array)")
    out: dict[str | None, list[SigningKey]] = {}
    for i, entry in enumerate(doc["keys"]):
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        kid = kid if isinstance(kid, str) else None
        if entry.get("use", "sig") != "sig" or entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        try:
            key = jwt.PyJWK(entry).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
            log.warning("auth: skipping JWK #%d (kid %r) from %s: %s", i, kid, source, type(exc).__name__)
            continue
        if not isinstance(key, PublicKey):
            continue  # a private key published by mistake, or an unexpected type: not ours to use
        alg = entry.get("alg")
        out.setdefault(kid, []).append(SigningKey(kid=kid, alg=alg if isinstance(alg, str) else None, key=key))
    return out


def metadata_urls(issuer: str) -> tuple[str, str]:
    """RFC 8414 s3.1 (well-known inserted before the issuer's path), then OIDC discovery (appended)."""
    parts = urllib.parse.urlsplit(issuer)
    path = parts.path.rstrip("/")
    rfc8414 = urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/.well-known/oauth-authorization-server{path}",
                                       "", ""))
    oidc = urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"{path}/.well-known/openid-configuration", "", ""))
    return rfc8414, oidc


async def discover(fetcher: Fetcher, issuer: str) -> dict[str, Any]:
    """The issuer's metadata; its `issuer` must equal ours (RFC 8414 s3.3), or it is someone else's."""
    problem: Unavailable | None = None
    for url in metadata_urls(issuer):
        try:
            doc = await fetcher.get_json(url)
        except Unavailable as exc:
            problem = exc
            continue
        if not isinstance(doc, dict) or doc.get("issuer") != issuer:
            problem = Unavailable(f"metadata at {url} does not name issuer {issuer}")
            continue
        return doc
    assert problem is not None
    raise problem


class JwksCache:
    def __init__(self, fetcher: Fetcher, issuer: str, jwks_url: str | None, cache_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fetcher, self.issuer, self.jwks_url = fetcher, issuer, jwks_url
        self.cache_seconds, self.clock = cache_seconds, clock
        self._keys: dict[str | None, list[SigningKey]] | None = None
        self._expires = 0.0
        self._last_fetch = float("-inf")  # the last attempt, successful or not
        self._last_error: Unavailable | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0  # successful fetches, for tests and the doctor

    async def prefetch(self) -> None:
        """Warm the cache at start; an IdP that is down now is logged here and retried per request."""
        with contextlib.suppress(Unavailable):
            await self._refresh(stale=None)

    async def key_for(self, kid: str | None, alg: str) -> SigningKey:
        keys = self._keys
        if keys is None or self.clock() >= self._expires:
            keys = await self._refresh(stale=self._keys)
        found = self._pick(keys, kid, alg)
        if found is None and self.clock() - self._last_fetch >= UNKNOWN_KID_REFETCH:
            keys = await self._refresh(stale=keys, force=True)
            found = self._pick(keys, kid, alg)
        if found is None:
            raise Rejected("unknown_key", "the token's signing key is not in the issuer's key set"
                           if kid is not None else "the token names no key id and the issuer has several keys")
        return found

    @staticmethod
    def _pick(keys: dict[str | None, list[SigningKey]], kid: str | None, alg: str) -> SigningKey | None:
        if kid is not None:
            candidates = keys.get(kid, [])
        else:
            # No kid: acceptable only when exactly one key in the whole set could have signed it.
            candidates = [k for group in keys.values() for k in group]
            candidates = [k for k in candidates if (k.alg is None or k.alg == alg) and key_fits(alg, k.key)]
            return candidates[0] if len(candidates) == 1 else None
        for key in candidates:
            if key.alg is None or key.alg == alg:
                return key
        # The kid exists but pins another algorithm: hand it back so the caller refuses the
        # alg/key mismatch by name rather than calling the key unknown.
        return candidates[0] if candidates else None

    async def _refresh(self, stale: dict[str | None, list[SigningKey]] | None,
                       force: bool = False) -> dict[str | None, list[SigningKey]]:
        async with self._lock:
            # Another request may have refreshed while we waited for the lock.
            if self._keys is not None and self._keys is not stale and self.clock() < self._expires:
                return self._keys
            now = self.clock()
            if self._last_error is not None and now - self._last_fetch < RETRY_AFTER_FAILURE:
                raise Unavailable(self._last_error.description)  # a fresh instance: no growing traceback
            if force and self._keys is not None and now - self._last_fetch < UNKNOWN_KID_REFETCH:
                return self._keys
            self._last_fetch = now
            try:
                url = self.jwks_url or await self._discover_jwks_url()
                keys = parse_jwks(await self.fetcher.get_json(url), url)
            except Unavailable as exc:
                # The pause before the next attempt counts from the failure, not from the start of a
                # fetch that may have taken the whole deadline: a request that waited behind the start's
                # prefetch is refused at once instead of waiting a second deadline.
                self._last_fetch = self.clock()
                log.warning("auth: cannot load the issuer's signing keys: %s", exc.description)
                self._last_error = Unavailable(f"the identity provider's signing keys are unavailable "
                                               f"({exc.description})")
                raise Unavailable(self._last_error.description) from None
            self._last_error = None
            self._keys, self._expires = keys, self.clock() + self.cache_seconds
            self.fetches += 1
            return keys

    async def _discover_jwks_url(self) -> str:
        doc = await discover(self.fetcher, self.issuer)
        url = doc.get("jwks_uri")
        if not isinstance(url, str) or not url:
            raise Unavailable(f"the metadata of {self.issuer} has no jwks_uri")
        self.jwks_url = url  # discovery once; the keys behind it rotate, the URL does not
        return url
