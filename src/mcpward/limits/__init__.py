"""Rate limits, cost quotas and circuit breakers (`[limits]`; see docs/limits.md)."""

from mcpward.limits.breaker import Breaker, BreakerBoard, Ticket
from mcpward.limits.guard import BreakerGuard, LimitsGuard, guards_from_config
from mcpward.limits.rate import Limiter
from mcpward.limits.refusal import LimitRefusal
from mcpward.limits.settings import BreakerSettings, LimitsSettings, ToolRule, load_settings

__all__ = [
    "Breaker", "BreakerBoard", "BreakerGuard", "BreakerSettings", "LimitRefusal", "Limiter", "LimitsGuard",
    "LimitsSettings", "Ticket", "ToolRule", "guards_from_config", "load_settings",
]
