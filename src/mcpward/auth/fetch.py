"""Talking to the identity provider: address checks, size caps, no redirects, JSON only.

The gateway reaches the IdP on its own behalf (metadata, JWKS, introspection). A URL from the
config or from discovered metadata could point inside the network; unless the operator opted in
with `allow_private`, every address must be public. `check` says so early and clearly; the
client's transport (transport/vetted_dial.py) enforces it at every connect, dialling the very
address it vetted, so a DNS answer that changes after `check` cannot redirect the request.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from mcpward.auth.errors import Unavailable
from mcpward.gateway.config import Resolver, is_address_literal, is_non_public_address, resolution_problem
from mcpward.transport.vetted_dial import dial_refusal

MAX_BODY = 1 << 20  # a JWKS or metadata document larger than this is not one we want to parse
HOST_CHECK_SECONDS = 60.0
# The whole fetch (address check, connect, headers, body) must finish within this. httpx's timeout
# is per read, so an IdP that trickles one byte a second would otherwise hold the request (and the
# JWKS lock, or an introspection slot) for as long as it likes.
FETCH_DEADLINE = 10.0


class Fetcher:
    def __init__(self, client: httpx.AsyncClient, *, allow_private: bool, resolver: Resolver,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client, self.allow_private, self.resolver, self.clock = client, allow_private, resolver, clock
        self._checked: dict[tuple[str, int], float] = {}  # host -> until when its addresses were found public

    async def check(self, url: str) -> None:
        """Raise Unavailable unless `url` may be fetched (scheme and, without allow_private, addresses)."""
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("https", "http") or not host:
            raise Unavailable(f"identity provider URL {_show(url)} is not an absolute https URL")
        if self.allow_private:
            return
        if parts.scheme != "https":
            raise Unavailable(f"identity provider URL {_show(url)} is plain http; only https is allowed")
        try:
            port = parts.port or 443
        except ValueError:
            raise Unavailable(f"identity provider URL {_show(url)} has an invalid port") from None
        if is_address_literal(host):
            if is_non_public_address(host.strip("[]")):
                raise Unavailable(f"identity provider address {host} is not public (allow_private is false)")
            return
        now = self.clock()
        if self._checked.get((host, port), 0.0) > now:
            return
        # An early, clear refusal. A name that rebinds after this check is caught at connect time
        # by the pinned transport, so a short cache costs no safety.
        problem = await resolution_problem(host, port, self.resolver)
        if problem is not None:
            raise Unavailable(f"identity provider refused: {problem}")
        self._checked[(host, port)] = now + HOST_CHECK_SECONDS

    async def get_json(self, url: str) -> Any:
        try:
            async with asyncio.timeout(FETCH_DEADLINE):
                await self.check(url)
                request = self.client.build_request("GET", url, headers={"accept": "application/json"})
                return await self._send(request, url)
        except TimeoutError:
            raise Unavailable(f"{_show(url)}: no complete answer within {FETCH_DEADLINE:g} s") from None

    async def post_form(self, url: str, form: dict[str, str], auth: tuple[str, str]) -> Any:
        try:
            async with asyncio.timeout(FETCH_DEADLINE):
                await self.check(url)
                request = self.client.build_request("POST", url, data=form, headers={"accept": "application/json"})
                return await self._send(request, url, httpx.BasicAuth(*auth))
        except TimeoutError:
            raise Unavailable(f"{_show(url)}: no complete answer within {FETCH_DEADLINE:g} s") from None

    async def _send(self, request: httpx.Request, url: str, auth: httpx.Auth | None = None) -> Any:
        shown = _show(url)
        try:
            response = await self.client.send(request, stream=True, auth=auth)
            try:
                if response.status_code != 200:
                    raise Unavailable(f"{shown} answered HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY:
                        raise Unavailable(f"{shown} sent more than {MAX_BODY} bytes")
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            refusal = dial_refusal(exc)
            if refusal is not None:  # the connect-time address rule: its text names host, address and rule
                raise Unavailable(f"identity provider refused: {refusal}") from None
            raise Unavailable(f"cannot reach {shown}: {type(exc).__name__}") from None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise Unavailable(f"{shown} did not answer with JSON") from None


def _show(url: str) -> str:
    """The URL without query (an IdP URL carries no secret, but a query is not ours to log)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))[:200]
