"""The two guards of `[limits]`: rate and quota first, then the circuit breaker."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar

from mcpward.audit import events
from mcpward.gateway.config import GatewayConfig
from mcpward.gateway.context import RequestContext
from mcpward.guards.base import Call, Guard, audit_refusal
from mcpward.limits.breaker import BreakerBoard, Ticket
from mcpward.limits.rate import Limiter
from mcpward.limits.refusal import LimitRefusal
from mcpward.limits.settings import BreakerSettings, LimitsSettings, load_settings
from mcpward.limits.storage import describe, make_storage
from mcpward.protocol import jsonrpc
from mcpward.protocol.jsonrpc import JsonObj

log = logging.getLogger("mcpward.limits")
TICKET = "limits.breaker"  # the Call.notes key of the breaker's ticket
# The request whose principal the door (`LimitsGuard.admit_request`) has counted, in this task. The
# rate guard in the chain then checks only the tool's limits, so no request is counted twice. A
# context variable, not a field: it follows the request down its own awaits and nowhere else.
_COUNTED_AT_DOOR: ContextVar[RequestContext | None] = ContextVar("mcpward_limits_door", default=None)
# Errors that say the client asked wrongly or the gateway refused, not that the tool failed: they
# must not open a breaker, or one client sending bad arguments could switch a tool off for all.
NOT_THE_TOOLS_FAULT = frozenset({
    jsonrpc.PARSE_ERROR, jsonrpc.INVALID_REQUEST, jsonrpc.METHOD_NOT_FOUND, jsonrpc.INVALID_PARAMS,
    jsonrpc.REFUSED, jsonrpc.HEADER_MISMATCH, jsonrpc.MISSING_REQUIRED_CLIENT_CAPABILITY,
    jsonrpc.UNSUPPORTED_PROTOCOL_VERSION,
})


class LimitsGuard(Guard):
    """Counts each request against its principal's bucket and, for `tools/call`, the tool's rate
    and quota. Refuses with `LimitRefusal` (a JSON-RPC error carrying `retryAfter`).

    The gateway calls `admit_request` for every request it handles, before any work on it (lists,
    unknown names and refused calls included): that is where the principal's bucket is counted.
    The chain hook then checks only the tool's rate and quota, for calls every other guard let
    through. A request that reaches the chain without the door (a direct caller) is counted whole."""

    name = "limits"

    def __init__(self, limiter: Limiter, board: BreakerBoard | None = None) -> None:
        self.limiter = limiter
        self.board = board

    async def admit_request(self, ctx: RequestContext, method: str, params: JsonObj) -> None:
        """The door: counts the request against its principal's bucket (exempt methods pass), or
        refuses it with the same error and `refusal` record as a refused call."""
        try:
            await self.limiter.admit(ctx.principal.key, method, None)
        except LimitRefusal as refusal:
            named = params.get("uri" if method == "resources/read" else "name") if isinstance(params, dict) else None
            call = Call(ctx=ctx, method=method, params=params, exposed=named if isinstance(named, str) else None)
            audit_refusal(call, refusal.rule)
            raise refusal.to_error() from None
        _COUNTED_AT_DOOR.set(ctx)

    async def on_request(self, call: Call) -> JsonObj | None:
        tool = call.exposed if call.method == "tools/call" else None
        if tool is not None and self.board is not None:
            # The breaker guard comes next and would refuse: refuse here, before the tool's limits
            # are counted, so calls to a broken tool do not use up its rate or budget.
            refused = self.board.blocked(tool)
            if refused is not None:
                raise refused
        counted = _COUNTED_AT_DOOR.get() is call.ctx
        await self.limiter.admit(call.ctx.principal.key, call.method, tool, bucket=not counted)
        return None


class BreakerGuard(Guard):
    """Refuses calls to a tool whose breaker is open; files every outcome of `tools/call`."""

    name = "limits.breaker"

    def __init__(self, board: BreakerBoard) -> None:
        self.board = board

    async def on_request(self, call: Call) -> JsonObj | None:
        if call.method != "tools/call" or call.exposed is None:
            return None
        breaker = self.board.get(call.exposed)
        if breaker is not None:
            call.notes[TICKET] = breaker.admit()
        return None

    async def on_result(self, call: Call, result: JsonObj) -> JsonObj | None:
        self._file(call, result.get("isError") is True)
        return None

    async def on_error(self, call: Call, error: jsonrpc.ProtocolError) -> jsonrpc.ProtocolError | None:
        # The gateway's own failures (timeout, crashed upstream) arrive here too, marked in notes.
        failed = bool(call.notes.get("gateway_error")) or error.code not in NOT_THE_TOOLS_FAULT
        self._file(call, failed)
        return None

    def _file(self, call: Call, error: bool) -> None:
        ticket = call.notes.pop(TICKET, None)
        if not isinstance(ticket, Ticket) or call.exposed is None:
            return
        breaker = self.board.get(call.exposed)
        if breaker is not None:
            breaker.record(ticket, time.perf_counter() - call.started, error, call.ctx.principal.key)


def breaker_settings_for(settings: LimitsSettings, limiter: Limiter) -> Callable[[str], BreakerSettings]:
    def settings_for(tool: str) -> BreakerSettings:
        plan = limiter.plan(tool)
        return plan.rule.breaker if plan is not None else settings.breaker

    return settings_for


def guards_from_config(cfg: GatewayConfig, resolve_secret: Callable[[str], str] | None = None, *,
                       wall: Callable[[], float] | None = None,
                       clock: Callable[[], float] | None = None) -> list[Guard]:
    """[LimitsGuard, BreakerGuard], or [] when `[limits] enabled = false`.

    `wall` is the clock of the rate windows (memory storage only; Redis windows use time.time),
    `clock` the monotonic clock of the breakers: tests pass fakes to move time without sleeping.
    """
    settings = load_settings(cfg, resolve_secret)
    if not settings.enabled:
        log.warning("[limits] enabled = false: no rate limits, quotas or circuit breakers")
        return []
    if settings.on_storage_error == "allow":
        log.warning("[limits] on_storage_error = \"allow\": while %s is unavailable, calls pass uncounted",
                    describe(settings.storage))
        events.record("limits.fail-open-configured", storage=describe(settings.storage))
    wall_clock = wall or time.time
    storage = make_storage(settings, wall_clock)
    limiter = Limiter(settings, storage, wall=wall_clock if not settings.uses_redis else time.time)
    board = BreakerBoard(breaker_settings_for(settings, limiter), clock or time.monotonic)
    return [LimitsGuard(limiter, board), BreakerGuard(board)]
