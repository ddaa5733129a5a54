"""Per-principal buckets, per-tool rates and cost quotas on top of the `limits` strategies.

`limits` has no token bucket, so a bucket of `rate` per minute with `burst` is a moving window
of `burst` calls per `ceil(60 * burst / rate)` seconds (see `settings.bucket_window`). When that
window alone cannot promise "at most `rate` in any minute" (it does not divide a minute evenly),
a second moving window of `rate` per minute is added. Quotas are fixed windows of `budget`
units per period, spent `cost` units at a time; the window starts at the first spend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from mcpward.audit import events
from mcpward.limits import refusal
from mcpward.limits.memory import ClockedMemoryStorage
from mcpward.limits.refusal import LimitRefusal
from mcpward.limits.settings import PERIODS, LimitsSettings, ToolRule, bucket_window
from mcpward.limits.storage import describe

log = logging.getLogger("mcpward.limits")
MAX_PLAN_CACHE = 4096  # exposed tool names come from the catalogue; the bound only guards a bug
MAX_CHECK_CACHE = 65536  # prepared keys per (principal, tool)
STORAGE_ERROR_EVERY = 10.0  # seconds between audit records of a storage outage (not one per call)


def bucket_items(namespace: str, rate: int, burst: int) -> tuple[RateLimitItem, ...]:
    window = bucket_window(rate, burst)
    short = RateLimitItemPerSecond(burst, window, namespace=namespace)
    if 60 % window == 0 and burst * (60 // window) <= rate:
        return (short,)
    return (short, RateLimitItemPerMinute(rate, 1, namespace=namespace))


def _part(text: str) -> str:
    """One key component: '/' separates components in `limits` keys, so a principal named
    'a/b' must not share a bucket with principal 'a' calling tool 'b/...'."""
    if "/" in text or "%" in text:
        return text.replace("%", "%25").replace("/", "%2F")
    return text


@dataclass(frozen=True, slots=True)
class _Check:
    moving: bool  # a moving window (bucket, tool rate) or a fixed one (quota)
    item: RateLimitItem
    ident: tuple[str, ...]
    key: str  # item.key_for(*ident), made once: the local path uses it directly
    expiry: int
    cost: int
    rule: str
    what: str  # for the refusal message: names and numbers, never argument values


@dataclass(frozen=True, slots=True)
class ToolPlan:
    rule: ToolRule
    rate_items: tuple[RateLimitItem, ...]
    quota_item: RateLimitItem | None
    rate_what: str
    quota_what: str


class Limiter:
    """Decides one request against every limit that applies to it."""

    def __init__(self, settings: LimitsSettings, storage: Storage, wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.storage = storage
        self.wall = wall  # the clock the Redis windows use, for retry-after
        # In-process storage: one synchronous pass, tests and spends with no await in between, so
        # there is no race to lose and a refused call spends nothing. Redis: the `limits` strategies.
        self.local = storage if isinstance(storage, ClockedMemoryStorage) else None
        self.moving = MovingWindowRateLimiter(storage)
        self.fixed = FixedWindowRateLimiter(storage)
        self.principal_items = bucket_items("p", settings.rate, settings.burst)
        self.exempt = settings.exempt
        self._plans: dict[str, ToolPlan | None] = {}
        self._checks: dict[tuple[str, str | None, bool], tuple[_Check, ...]] = {}
        self._storage_name = describe(settings.storage)
        self._refuse_on_error = settings.on_storage_error == "refuse"
        self._last_storage_record = -STORAGE_ERROR_EVERY
        self._bucket_text = f"{settings.rate} requests per minute, burst {settings.burst}"

    def plan(self, tool: str) -> ToolPlan | None:
        """The most specific `[limits.tools]` rule for an exposed tool name, prepared once per name."""
        try:
            return self._plans[tool]
        except KeyError:
            pass
        found: ToolPlan | None = None
        for rule in self.settings.tools:  # sorted most specific first
            if rule.regex.match(tool):
                found = _prepare(rule)
                break
        if len(self._plans) < MAX_PLAN_CACHE:
            self._plans[tool] = found
        return found

    async def admit(self, principal: str, method: str, tool: str | None, *, bucket: bool = True) -> None:
        """Raises LimitRefusal, or returns when the call may go (and has been counted).

        `bucket=False` leaves out the principal's bucket (the gateway's door counted this request
        already) and checks only the tool's rate and quota."""
        if method in self.exempt or (tool is None and not bucket):
            return
        try:
            checks = self._checks.get((principal, tool, bucket))
            if checks is None:
                checks = self._prepare_checks(principal, tool, bucket)
            if not checks:  # a tool without a rule of its own, its principal counted at the door
                return
            if self.local is not None:
                self._admit_local(self.local, checks)
            else:
                await self._admit_remote(checks)
        except LimitRefusal:
            raise
        except Exception as exc:  # the storage failed: StorageError, timeouts, a dropped connection
            self._storage_failed(exc)

    def _admit_local(self, storage: ClockedMemoryStorage, checks: tuple[_Check, ...]) -> None:
        now = storage.now()  # one reading for every limit of this request: they all see the same instant
        if len(checks) == 1 and checks[0].moving:  # the common case: one window (the bucket, at the door)
            check = checks[0]
            if not storage.window_add_at(check.key, check.item.amount, check.expiry, 1, now):
                self._refuse_local(storage, check, now)
            return
        for check in checks:
            if check.moving:
                used = storage.window_at(check.key, check.expiry, now)[1]
            else:
                used = storage.counter_at(check.key, now)[0]
            if used + check.cost > check.item.amount:
                self._refuse_local(storage, check, now)
        # Every test passed with no await since: the spends cannot fail (nothing else ran in between).
        for check in checks:
            if check.moving:
                storage.window_add_at(check.key, check.item.amount, check.expiry, check.cost, now)
            else:
                storage.counter_add_at(check.key, check.expiry, check.cost, now)

    def _refuse_local(self, storage: ClockedMemoryStorage, check: _Check, now: float) -> None:
        if check.moving:
            reset = storage.window_at(check.key, check.expiry, now)[0] + check.expiry
        else:
            reset = storage.counter_at(check.key, now)[1]
        raise LimitRefusal(check.rule, check.what, reset - now)

    async def _admit_remote(self, checks: tuple[_Check, ...]) -> None:
        if len(checks) == 1 and checks[0].moving:  # one window: hit is test and spend in one
            check = checks[0]
            if not await self.moving.hit(check.item, *check.ident):
                await self._refuse_remote(check)
            return
        # Test everything first, then spend: a call refused by its tool's quota does not use up the
        # principal's bucket, and a call refused by the bucket does not burn budget. A race between
        # test and hit (another replica) is still refused, since hit is atomic in Redis; it may
        # cost the units that call had taken.
        # The tests go out together (one round trip's wait); the spends stay in order, so a refused
        # bucket never reaches the quota.
        passed = await asyncio.gather(*((self.moving if c.moving else self.fixed).test(c.item, *c.ident, cost=c.cost)
                                        for c in checks))
        for check, ok in zip(checks, passed, strict=True):
            if not ok:
                await self._refuse_remote(check)
        for check in checks:
            strategy = self.moving if check.moving else self.fixed
            if not await strategy.hit(check.item, *check.ident, cost=check.cost):
                await self._refuse_remote(check)

    async def _refuse_remote(self, check: _Check) -> None:
        strategy = self.moving if check.moving else self.fixed
        stats = await strategy.get_window_stats(check.item, *check.ident)
        raise LimitRefusal(check.rule, check.what, stats.reset_time - self.wall())

    def _prepare_checks(self, principal: str, tool: str | None, bucket: bool) -> tuple[_Check, ...]:
        who = _part(principal)
        checks = [_check(True, item, (who,), 1, refusal.RATE, self._bucket_text)
                  for item in self.principal_items] if bucket else []
        plan = self.plan(tool) if tool is not None else None
        if plan is not None and tool is not None:
            rule, name = plan.rule, _part(tool)
            checks += [_check(True, item, (who, name), 1, refusal.TOOL_RATE, plan.rate_what.format(tool=tool))
                       for item in plan.rate_items]
            if plan.quota_item is not None:
                ident = (who, name) if rule.per == "principal" else (name,)
                checks.append(_check(False, plan.quota_item, ident, rule.cost, refusal.QUOTA,
                                     plan.quota_what.format(tool=tool)))
        prepared = tuple(checks)
        if len(self._checks) >= MAX_CHECK_CACHE:
            self._checks.clear()  # bounded: many principals only cost a re-preparation
        self._checks[(principal, tool, bucket)] = prepared
        return prepared

    def _storage_failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_storage_record >= STORAGE_ERROR_EVERY:
            self._last_storage_record = now
            action = "refused" if self._refuse_on_error else "allowed"
            # The exception's type only: its text may carry a host name, never needed by a reader here.
            events.record("limits.storage-error", storage=self._storage_name, error=type(exc).__name__,
                          action=action)
            log.warning("limits storage %s unavailable (%s); calls are %s", self._storage_name,
                        type(exc).__name__, action)
        if self._refuse_on_error:
            raise LimitRefusal(refusal.STORAGE_UNAVAILABLE,
                               "the rate-limit storage is unavailable, so no call can be counted", 1.0) from None


def _check(moving: bool, item: RateLimitItem, ident: tuple[str, ...], cost: int, rule: str, what: str) -> _Check:
    return _Check(moving, item, ident, item.key_for(*ident), item.get_expiry(), cost, rule, what)


def _prepare(rule: ToolRule) -> ToolPlan:
    rate_items: tuple[RateLimitItem, ...] = ()
    if rule.rate is not None and rule.burst is not None:
        rate_items = bucket_items("t", rule.rate, rule.burst)
    quota = None
    if rule.budget is not None:
        quota = RateLimitItemPerSecond(rule.budget, PERIODS[rule.period], namespace=f"q-{rule.per}")
    shared = "" if rule.per == "principal" else " shared by all principals"
    # {tool} is filled in per exposed name; braces in a glob cannot reach format() (validated names).
    return ToolPlan(rule=rule, rate_items=rate_items, quota_item=quota,
                    rate_what=f"tool {{tool}}: {rule.rate} requests per minute, burst {rule.burst}",
                    quota_what=f"tool {{tool}}: budget of {rule.budget} units per {rule.period}{shared} "
                               f"spent (a call costs {rule.cost})")
