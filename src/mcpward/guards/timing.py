"""An example guard: measures each call and logs the slow ones. Shows the hook shape."""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from mcpward.guards.base import Call, Guard
from mcpward.protocol.jsonrpc import JsonObj

log = logging.getLogger("mcpward.guards.timing")


class TimingGuard(Guard):
    name = "timing"

    def __init__(self, slow_seconds: float = 5.0) -> None:
        self.slow_seconds = slow_seconds
        self.count: dict[str, int] = defaultdict(int)
        self.total_seconds: dict[str, float] = defaultdict(float)

    async def on_result(self, call: Call, result: JsonObj) -> JsonObj | None:
        elapsed = time.perf_counter() - call.started
        key = f"{call.server}/{call.target}" if call.server else call.method
        self.count[key] += 1
        self.total_seconds[key] += elapsed
        if elapsed >= self.slow_seconds:
            log.warning("slow call: %s %s took %.2fs", call.method, key, elapsed)
        return None  # observe only: the result passes through untouched
