"""The refusal every limit raises: a rule, a reason and when to try again."""

from __future__ import annotations

import math

from mcpward.guards.base import Refusal
from mcpward.protocol import jsonrpc

RATE = "limits.rate"
TOOL_RATE = "limits.tool-rate"
QUOTA = "limits.quota"
BREAKER_OPEN = "limits.breaker-open"
STORAGE_UNAVAILABLE = "limits.storage-unavailable"


class LimitRefusal(Refusal):
    """A limit says not now. `retry_after` (seconds) is when the same call could pass again,
    rounded up to a tenth so a client that waits exactly that long is not refused again."""

    def __init__(self, rule: str, message: str, retry_after: float) -> None:
        super().__init__(rule, message)
        self.retry_after = math.ceil(round(max(0.0, retry_after) * 10, 6)) / 10

    def to_error(self) -> jsonrpc.ProtocolError:
        return jsonrpc.ProtocolError(
            jsonrpc.REFUSED,
            f"refused by {self.rule}: {self.message}; retry after {self.retry_after:.1f} s",
            {"rule": self.rule, "retryAfter": self.retry_after},
        )
