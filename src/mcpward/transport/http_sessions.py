"""Room for legacy HTTP sessions: idle expiry, a gateway-wide cap, and a cap per principal.

`initialize` is exempt from the rate limits (a client must be able to start), and each one opens
a session that lives until it has been idle for SESSION_IDLE_SECONDS. Without a cap per principal
one principal could fill the gateway-wide cap and lock every other principal out; with it, a
principal at its cap ([gateway] max_sessions_per_principal) is refused alone (429, `limits.sessions`)
and the others keep their room.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from mcpward.gateway.context import Principal
from mcpward.protocol import jsonrpc
from mcpward.transport.http_checks import HttpRejection

if TYPE_CHECKING:
    from mcpward.transport.http_front import LegacySession, RefusalAudit

SESSION_IDLE_SECONDS = 30 * 60
MAX_SESSIONS = 1000
# Default of [gateway] max_sessions_per_principal: more than any one client opens; 32 principals are needed
# to fill the gateway. Without [auth] every local client is `anonymous`, one principal: they share it.
MAX_SESSIONS_PER_PRINCIPAL = 32
PER_PRINCIPAL_RULE = "limits.sessions"
GATEWAY_RULE = "http.sessions"


class SessionRoom:
    """Decides whether a new legacy session may open. Sessions still being initialised count too
    (`reserve`), so a burst of concurrent `initialize` requests cannot overshoot either cap."""

    def __init__(self, sessions: dict[str, LegacySession], refusals: RefusalAudit,
                 clock: Callable[[], float] = time.monotonic, per_principal: int = MAX_SESSIONS_PER_PRINCIPAL,
                 total: int = MAX_SESSIONS) -> None:
        self.sessions = sessions
        self.refusals = refusals
        self.clock = clock
        self.per_principal = per_principal
        self.total = total
        self._pending: Counter[str] = Counter()

    @contextlib.contextmanager
    def reserve(self, principal: Principal, remote: str | None) -> Iterator[None]:
        """Hold one slot for `principal` while its `initialize` runs; raises HttpRejection when full."""
        key = principal.key
        self._expire()
        owned = [s for s in self.sessions.values() if s.owner == key]
        if len(owned) + self._pending[key] >= self.per_principal:
            oldest = min((s.last_seen for s in owned), default=self.clock())
            retry = max(1, math.ceil(SESSION_IDLE_SECONDS - (self.clock() - oldest)))
            self.refusals.refused(PER_PRINCIPAL_RULE, 429, remote, principal=key, method="initialize",
                                  detail=f"{self.per_principal} open sessions")
            message = (f"refused by {PER_PRINCIPAL_RULE}: this principal has {self.per_principal} open sessions; "
                       "close one (DELETE) or let one expire")
            raise HttpRejection(429, jsonrpc.error(None, jsonrpc.REFUSED, message,
                                                   {"rule": PER_PRINCIPAL_RULE, "retryAfter": retry}),
                                headers=[(b"retry-after", str(retry).encode())])
        if len(self.sessions) + sum(self._pending.values()) >= self.total:
            self.refusals.refused(GATEWAY_RULE, 503, remote, principal=key, method="initialize",
                                  detail=f"{self.total} open sessions")
            raise HttpRejection(503, jsonrpc.error(None, jsonrpc.OVERLOADED,
                                                   f"refused by {GATEWAY_RULE}: too many sessions; retry later",
                                                   {"rule": GATEWAY_RULE}),
                                headers=[(b"retry-after", b"30")])
        self._pending[key] += 1
        try:
            yield
        finally:
            self._pending[key] -= 1
            if self._pending[key] <= 0:
                del self._pending[key]

    def _expire(self) -> None:
        now = self.clock()
        for session_id, session in list(self.sessions.items()):
            if now - session.last_seen > SESSION_IDLE_SECONDS and not session.streaming and not session.conn.running:
                del self.sessions[session_id]
                session.conn.close()
