"""Static API keys for simple setups: `Authorization: Bearer mcpw_...`.

Only the sha256 of a key is configured. Keys are 32 random bytes, so a plain sha256 is as good
as a slow hash here (nobody can guess a preimage of 256 random bits). The lookup hashes the
presented key, finds the entry by digest and confirms it with `hmac.compare_digest`; a miss
does the same comparison against a dummy digest, so hit and miss take the same path.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable

from mcpward.auth.settings import ApiKey
from mcpward.gateway.context import Principal

KEY_PREFIX = "mcpw_"
KEY_BYTES = 32
_DUMMY = "0" * 64


def new_key() -> str:
    """A fresh key: the prefix (so it is recognisable in a leak scanner) and 32 random bytes."""
    return KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).rstrip(b"=").decode("ascii")


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeyStore:
    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._by_digest: dict[str, tuple[str, Principal, frozenset[str]]] = {
            k.sha256: (k.sha256, Principal(subject=k.name, kind="api-key", groups=k.groups), frozenset(k.scopes))
            for k in keys
        }

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, key: str) -> tuple[Principal, frozenset[str]] | None:
        digest = key_digest(key)
        entry = self._by_digest.get(digest)
        expected = entry[0] if entry is not None else _DUMMY
        if hmac.compare_digest(expected, digest) and entry is not None:
            return entry[1], entry[2]
        return None
