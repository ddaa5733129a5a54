"""Why a credential was refused, before it is turned into an HTTP answer.

`reason` is a stable rule id for the audit log and metrics; `description` is safe to send to the
client and to log: it never contains the token, a key, or a secret.
"""

from __future__ import annotations

from typing import Literal

ErrorCode = Literal["invalid_token", "invalid_request", "insufficient_scope"]


class Rejected(Exception):
    """A credential that does not authenticate (or an identity provider that cannot tell us)."""

    def __init__(self, reason: str, description: str, error: ErrorCode = "invalid_token") -> None:
        super().__init__(description)
        self.reason, self.description, self.error = reason, description, error


class Unavailable(Rejected):
    """The identity provider could not be reached or answered nonsense: fail closed, and log it."""

    def __init__(self, description: str) -> None:
        super().__init__("idp_unavailable", description)
