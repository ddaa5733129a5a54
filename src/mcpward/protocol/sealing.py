"""Sealed, opaque tokens the gateway hands to clients: MRTR `requestState` and cursors.

A token is `mcpward1.<payload>.<mac>`: base64url JSON plus an HMAC-SHA256 under a
key that never leaves the process. Clients cannot read meaningfully into it, and
cannot forge, replay it past its expiry, or move it to another principal or request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any

import orjson

from mcpward.protocol import exact

PREFIX = "mcpward1."


class SealError(Exception):
    pass


class Sealer:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def seal(self, payload: dict[str, Any], ttl: float | None = None) -> str:
        if ttl is not None:
            payload = dict(payload, exp=round(time.time() + ttl, 3))
        body = _b64(exact.dumps(payload, option=orjson.OPT_SORT_KEYS))
        return f"{PREFIX}{body}.{self._mac(body)}"

    def unseal(self, token: Any) -> dict[str, Any]:
        if not isinstance(token, str) or not token.startswith(PREFIX):
            raise SealError("not issued by this gateway")
        body, _, mac = token[len(PREFIX):].partition(".")
        if not hmac.compare_digest(mac, self._mac(body)):
            raise SealError("integrity check failed")
        try:
            payload = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, orjson.JSONDecodeError):
            raise SealError("malformed") from None
        if not isinstance(payload, dict):
            raise SealError("malformed")
        exp = payload.get("exp")
        if isinstance(exp, (int, float)) and exp < time.time():
            raise SealError("expired")
        return payload

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:24])


def is_sealed(token: Any) -> bool:
    return isinstance(token, str) and token.startswith(PREFIX)


def digest(value: Any) -> str:
    """A stable digest of a JSON value (key order does not matter)."""
    return _b64(hashlib.sha256(exact.dumps(value, option=orjson.OPT_SORT_KEYS)).digest()[:18])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
