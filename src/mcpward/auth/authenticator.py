"""Who is calling the HTTP front: one `authenticate()` per request, fast when the token is known.

A token that validated once is kept (by its sha256, in a bounded LRU) until its `exp` or for at
most 60 s, so a client's repeated calls cost a hash and a dict lookup; scopes are still checked
on every call because they depend on the method. Refused tokens are not cached here; the
introspector remembers the IdP's refusals and caps its calls (introspection.py), since an opaque
token is the one thing an unauthenticated client can make the gateway ask the IdP about.
Every refusal carries a rule id (`reason`) and a description safe to show; the token never
appears in either, nor in the audit record (which holds only a short hash prefix, enough to
correlate a replay).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx

from mcpward.audit import events
from mcpward.auth.api_keys import KEY_PREFIX, ApiKeyStore
from mcpward.auth.errors import Rejected, Unavailable
from mcpward.auth.fetch import Fetcher
from mcpward.auth.introspection import Introspector
from mcpward.auth.jwks import JwksCache
from mcpward.auth.jwt_bearer import JwtValidator, Verified, looks_like_jwt
from mcpward.auth.metadata import metadata_document, metadata_paths, metadata_url
from mcpward.auth.settings import TOKEN_CACHE_SECONDS, ApiKey, AuthSettings
from mcpward.gateway.config import Resolver, system_resolver
from mcpward.gateway.context import Principal
from mcpward.transport.vetted_dial import PinningUnavailable, pinned_transport

log = logging.getLogger("mcpward.auth")
# RFC 6750 s2.1 b64token.
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_TOKEN = 16 * 1024
CACHE_ENTRIES = 10_000
# RFC 6750 s3: error_description is %x20-21 / %x23-5B / %x5D-7E; anything else is replaced.
_UNSAFE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


class AuthSetupError(Exception):
    """The authenticator cannot be made ready (the introspection secret does not resolve)."""


class AuthFailure(Exception):
    """A refused request. `www_authenticate()` is the header for the answer; nothing here is secret."""

    def __init__(self, status: int, error: str | None, description: str, scope: str | None, *,
                 reason: str, resource_metadata: str, credential: str = "none", token_id: str | None = None,
                 principal: str | None = None) -> None:
        super().__init__(f"{status} {error or 'unauthenticated'}: {description}")
        self.status, self.error, self.description, self.scope = status, error, description, scope
        self.reason = reason  # the rule id, e.g. "auth.expired", "auth.wrong_audience"
        self.resource_metadata = resource_metadata
        self.credential = credential  # "none", "bearer" or "api-key"
        self.token_id = token_id  # 12 hex digits of the token's sha256: correlates a replay, reveals nothing
        self.principal = principal  # the principal's key when known (a 403), else None

    def www_authenticate(self) -> str:
        parts = [f'resource_metadata="{self.resource_metadata}"']
        if self.scope:
            parts.append(f'scope="{self.scope}"')
        if self.error is not None:
            # RFC 6750 s3.1: a request with no credentials at all gets no error code.
            parts.append(f'error="{self.error}"')
            parts.append(f'error_description="{_UNSAFE.sub("?", self.description)}"')
        return "Bearer " + ", ".join(parts)


class Authenticator:
    def __init__(self, settings: AuthSettings, resolve_secret: Callable[[str], str] | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None, resolver: Resolver = system_resolver,
                 clock: Callable[[], float] = time.time) -> None:
        """`transport`, `resolver` and `clock` exist for tests (record instead of send, fake DNS, time travel)."""
        self.settings = settings
        self._resolve_secret, self._transport, self._resolver, self._clock = resolve_secret, transport, resolver, clock
        self.metadata_paths: tuple[str, ...] = metadata_paths(settings.resource)
        self.resource_metadata = metadata_url(settings.resource)
        self._metadata = metadata_document(settings)
        self._api_keys = ApiKeyStore(settings.api_keys)
        self._cache: OrderedDict[bytes, Verified] = OrderedDict()
        oauth = settings.oauth
        required = frozenset(oauth.required_scopes) if oauth else frozenset()
        # Precomputed per method: the scopes a call needs and the challenge text naming them.
        self._need_default = required
        self._need: dict[str, frozenset[str]] = {
            method: required | frozenset(scopes) for method, scopes in (oauth.method_scopes.items() if oauth else ())
        }
        self._scoped_methods = frozenset(m for m, need in self._need.items() if need != required)
        self._scope_text: dict[frozenset[str], str | None] = {
            need: " ".join(sorted(need)) or None for need in (required, *self._need.values())
        }
        self._client: httpx.AsyncClient | None = None
        self._jwt: JwtValidator | None = None
        self._introspector: Introspector | None = None
        self._start_lock = asyncio.Lock()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._start_lock:
            if self._client is not None:
                return
            oauth = self.settings.oauth
            transport = self._transport
            if transport is None:
                # Every connection to the IdP dials the address it resolved and vetted (no second lookup
                # for a rebinding DNS answer to slip into); Fetcher.check only gives the early, clear error.
                try:
                    transport = pinned_transport(allow_private=bool(oauth and oauth.allow_private),
                                                 resolver=self._resolver)
                except PinningUnavailable as exc:
                    raise AuthSetupError(f"{self.settings.source}: auth: {exc}") from None
            client = httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(5.0), follow_redirects=False,
                                       transport=transport, headers={"user-agent": "mcpward-auth"})
            try:
                if oauth is not None:
                    fetcher = Fetcher(client, allow_private=oauth.allow_private, resolver=self._resolver)
                    jwks = JwksCache(fetcher, oauth.issuer, oauth.jwks_url, oauth.jwks_cache_seconds, clock=self._clock)
                    self._jwt = JwtValidator(oauth, jwks, clock=self._clock)
                    if oauth.introspection_url is not None:
                        secret = await self._client_secret(oauth.client_secret or "")
                        self._introspector = Introspector(oauth, fetcher, secret, clock=self._clock)
            except BaseException:
                await client.aclose()
                raise
            self._client = client
        if self._jwt is not None and self.settings.oauth and self.settings.oauth.introspect == "opaque":
            await self._jwt.jwks.prefetch()

    async def _client_secret(self, ref: str) -> str:
        if self._resolve_secret is None:
            raise AuthSetupError(f"{self.settings.source}: auth.oauth.client_secret: no secret resolver is available "
                                 f"to resolve {ref}")
        try:
            value = await asyncio.to_thread(self._resolve_secret, ref)
        except Exception as exc:  # the resolver's errors name the reference, never the value
            raise AuthSetupError(f"{self.settings.source}: auth.oauth.client_secret: {exc}") from None
        if not value:
            raise AuthSetupError(f"{self.settings.source}: auth.oauth.client_secret: {ref} is empty")
        return value

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        self._cache.clear()

    # --- the per-request path ----------------------------------------------------------------

    async def authenticate(self, authorization: str | None, method: str | None = None) -> Principal:
        need = self._need.get(method, self._need_default) if method is not None else self._need_default
        if not authorization:
            raise self._refuse(401, None, "missing", "authentication required: send Authorization: Bearer <token>",
                               need, "none")
        if authorization[:7].lower() != "bearer ":
            raise self._refuse(401, None, "wrong_scheme", "use the Bearer authentication scheme", need, "none")
        token = authorization[7:].strip()
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        verified = self._cache.get(digest)
        if verified is not None and verified.expires_at > self._clock():
            self._cache.move_to_end(digest)
        else:
            if verified is not None:
                del self._cache[digest]  # expired: a refused re-check must not leave it behind
            verified = await self._verify(token, digest, need)
        if need and not need <= verified.scopes:
            missing = " ".join(sorted(need - verified.scopes))
            raise self._refuse(403, "insufficient_scope", "insufficient_scope",
                               f"this request needs scope {missing}", need, "bearer", digest, verified.principal)
        return verified.principal

    async def _verify(self, token: str, digest: bytes, need: frozenset[str]) -> Verified:
        credential = "api-key" if token.startswith(KEY_PREFIX) else "bearer"
        if not token or len(token) > MAX_TOKEN or not B64TOKEN.fullmatch(token):
            raise self._refuse(400, "invalid_request", "malformed", "the bearer token is empty, too long or not "
                               "RFC 6750 token characters", need, credential, digest)
        try:
            if self._client is None:
                await self.start()
            verified = await self._check(token, credential)
        except Unavailable as exc:
            log.warning("auth: refusing a request because %s", exc.description)
            raise self._refuse(401, "invalid_token", exc.reason, exc.description, need, credential, digest) from None
        except Rejected as exc:
            status = 400 if exc.error == "invalid_request" else 401
            raise self._refuse(status, exc.error, exc.reason, exc.description, need, credential, digest) from None
        except AuthSetupError as exc:
            log.error("auth: %s", exc)
            raise self._refuse(401, "invalid_token", "setup", "authentication is not available (see the gateway log)",
                               need, credential, digest) from None
        except Exception as exc:  # a library choking on hostile input must not become a 500 or a traceback
            log.error("auth: unexpected %s while validating a token; refused", type(exc).__name__)
            raise self._refuse(401, "invalid_token", "error", "the token could not be validated", need, credential,
                               digest) from None
        now = self._clock()
        verified = Verified(verified.principal, verified.scopes, min(verified.expires_at, now + TOKEN_CACHE_SECONDS))
        if verified.expires_at > now:
            self._cache[digest] = verified
            if len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        # Once per token (a cache miss), not per call: who got in, with which client, under which token id.
        events.record("auth.accepted", principal=verified.principal.key, credential=credential,
                      token_id=digest[:6].hex(), client=dict(verified.principal.claims).get("client_id"))
        return verified

    async def _check(self, token: str, credential: str) -> Verified:
        if credential == "api-key":
            found = self._api_keys.lookup(token)
            if found is None:
                raise Rejected("unknown_api_key", "the API key is not valid")
            # An API key does not expire; the cache entry still lives only TOKEN_CACHE_SECONDS, so a
            # key removed from the config (after a reload) stops working within that time.
            return Verified(principal=found[0], scopes=found[1], expires_at=float("inf"))
        oauth = self.settings.oauth
        if oauth is None or self._jwt is None:
            raise Rejected("no_oauth", "this gateway accepts only its own API keys")
        if oauth.introspect == "always" or not looks_like_jwt(token):
            if self._introspector is None:
                raise Rejected("not_jwt", "the token is not a JWT and token introspection is not configured")
            return await self._introspector.verify(token)
        return await self._jwt.verify(token)

    def _refuse(self, status: int, error: str | None, reason: str, description: str, need: frozenset[str],
                credential: str, digest: bytes | None = None, principal: Principal | None = None) -> AuthFailure:
        # Not recorded here: the HTTP front records the refusal once, with the source address it knows.
        scope = self._scope_text.get(need) if need else None
        return AuthFailure(status, error, description, scope, reason=f"auth.{reason}",
                           resource_metadata=self.resource_metadata, credential=credential,
                           token_id=digest[:6].hex() if digest else None,
                           principal=principal.key if principal else None)

    def replace_api_keys(self, keys: tuple[ApiKey, ...]) -> None:
        """Use `keys` from now on (a reload). Every remembered verification is dropped too, so a removed
        key stops working at once rather than when its cache entry expires."""
        self._api_keys = ApiKeyStore(keys)
        self.settings = dataclasses.replace(self.settings, api_keys=keys)
        self._cache.clear()

    def scoped(self, method: str) -> bool:
        """Whether `method` needs scopes beyond those every request needs (step-up)."""
        return method in self._scoped_methods

    # --- metadata ----------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """The RFC 9728 document (a fresh copy: callers may serialise or extend it)."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self._metadata.items()}

    @property
    def cached_tokens(self) -> int:
        return len(self._cache)
