"""Circuit breakers: open on error rate and on p99, fail fast, one half-open probe, close or reopen."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from mcpward.gateway.config import GatewayConfig
from mcpward.gateway.context import Principal, RequestContext, SilentChannel
from mcpward.guards.base import Call
from mcpward.limits import BreakerGuard, LimitRefusal, guards_from_config
from mcpward.limits.breaker import p99
from mcpward.protocol import jsonrpc

OK: dict[str, Any] = {"content": [{"type": "text", "text": "ok"}]}
TOOL_ERROR: dict[str, Any] = {"content": [{"type": "text", "text": "boom"}], "isError": True}


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_call(tool: str = "srv__flaky", method: str = "tools/call", who: str = "alice") -> Call:
    ctx = RequestContext(era="modern", protocol_version="2025-11-25", capabilities={}, client_info=None,
                         principal=Principal(subject=who, kind="api-key"), channel=SilentChannel(),
                         transport="http")
    return Call(ctx=ctx, method=method, params={"name": tool}, server="srv", target=tool, exposed=tool)


def breaker_guard(clock: FakeClock, **table: Any) -> BreakerGuard:
    cfg = GatewayConfig(source="mcpward.toml", limits={"rate": 1_000_000, "burst": 100_000, **table})
    guard = guards_from_config(cfg, wall=clock, clock=clock)[1]
    assert isinstance(guard, BreakerGuard)
    return guard


async def finish(guard: BreakerGuard, *, latency: float = 0.01, result: dict[str, Any] | None = None,
                 error: jsonrpc.ProtocolError | None = None, gateway_error: bool = False,
                 tool: str = "srv__flaky", who: str = "alice") -> None:
    """One call through the breaker: admitted, then answered `latency` seconds after it started."""
    call = make_call(tool, who=who)
    await guard.on_request(call)
    call.started = time.perf_counter() - latency
    if error is not None:
        if gateway_error:
            call.notes["gateway_error"] = True
        await guard.on_error(call, error)
    else:
        await guard.on_result(call, result if result is not None else OK)


@pytest.fixture
def audit(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    caplog.set_level(logging.INFO, logger="mcpward.audit")
    records: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(json.loads(record.getMessage()))

    handler = Collect()
    logging.getLogger("mcpward.audit").addHandler(handler)
    yield records
    logging.getLogger("mcpward.audit").removeHandler(handler)


def events(records: list[dict[str, Any]], prefix: str = "limits.breaker") -> list[dict[str, Any]]:
    return [r for r in records if r["event"].startswith(prefix)]


async def test_opens_on_error_rate_and_then_fails_fast(audit: list[dict[str, Any]]) -> None:
    clock = FakeClock()
    guard = breaker_guard(clock)
    for _ in range(9):
        await finish(guard)
    await finish(guard, result=TOOL_ERROR)  # 1 of 10 = 10%: not above the threshold
    assert guard.board.state("srv__flaky") == "closed"
    await finish(guard, result=TOOL_ERROR)  # 2 of 11 = 18%
    assert guard.board.state("srv__flaky") == "open"
    opened = events(audit)
    assert opened[-1]["event"] == "limits.breaker-opened"
    assert opened[-1]["tool"] == "srv__flaky" and opened[-1]["reason"] == "error-rate"
    assert opened[-1]["value"] == pytest.approx(2 / 11, abs=1e-3)

    clock.advance(100)
    started = time.perf_counter()
    with pytest.raises(LimitRefusal) as refused:
        await guard.on_request(make_call())
    assert time.perf_counter() - started < 0.01  # fast: nothing waited on the upstream
    assert refused.value.rule == "limits.breaker-open"
    assert refused.value.retry_after == pytest.approx(200, abs=0.11)
    assert refused.value.to_error().data == {"rule": "limits.breaker-open", "retryAfter": 200.0}
    # other tools are not affected
    await guard.on_request(make_call("srv__other"))


async def test_opens_on_p99_latency(audit: list[dict[str, Any]]) -> None:
    clock = FakeClock()
    guard = breaker_guard(clock, breaker={"min_calls": 100, "p99_seconds": 1.0})
    for _ in range(99):
        await finish(guard, latency=0.05)
    await finish(guard, latency=1.5)  # 1 slow of 100: p99 is the 99th value, still fast
    assert guard.board.state("srv__flaky") == "closed"
    await finish(guard, latency=1.6)  # 2 slow of 101: the 100th value is slow
    assert guard.board.state("srv__flaky") == "open"
    opened = events(audit)[-1]
    assert opened["reason"] == "p99" and opened["value"] >= 1.5 and opened["threshold"] == 1.0


async def test_one_principal_cannot_open_a_breaker_for_everyone() -> None:
    # mallory's calls fail (bad arguments on purpose) or are slow while alice's succeed: the tool works.
    clock = FakeClock()
    guard = breaker_guard(clock, breaker={"min_calls": 10, "p99_seconds": 1.0})
    for _ in range(10):
        await finish(guard)
    for _ in range(40):
        await finish(guard, result=TOOL_ERROR, who="mallory")
        await finish(guard, latency=2.0, who="mallory")
    assert guard.board.state("srv__flaky") == "closed"
    # When the others' calls fail too, the tool is failing: it opens (alice: 1 of 11 is not above 10%, 2 of 12 is).
    await finish(guard, result=TOOL_ERROR)
    assert guard.board.state("srv__flaky") == "closed"
    await finish(guard, result=TOOL_ERROR)
    assert guard.board.state("srv__flaky") == "open"


@pytest.mark.parametrize(("victim_calls", "victim_errors", "attacker_errors"), [(11, 1, 1), (33, 3, 1), (110, 10, 2)])
async def test_a_few_failures_on_top_of_a_normal_window_do_not_open_it(
        victim_calls: int, victim_errors: int, attacker_errors: int) -> None:
    # Third audit round: setting aside only the principal with the most failures let an attacker with
    # fewer failures than a normal, slightly failing user tip the window over the threshold.
    clock = FakeClock()
    guard = breaker_guard(clock)
    for i in range(victim_calls):
        await finish(guard, result=TOOL_ERROR if i >= victim_calls - victim_errors else None, who="bob")
    assert guard.board.state("srv__flaky") == "closed"
    for _ in range(attacker_errors):
        await finish(guard, result=TOOL_ERROR, who="mallory")
    assert guard.board.state("srv__flaky") == "closed"


async def test_a_sole_caller_still_opens_the_breaker() -> None:
    clock = FakeClock()
    guard = breaker_guard(clock)
    for _ in range(9):
        await finish(guard, who="mallory")
    await finish(guard, result=TOOL_ERROR, who="mallory")
    await finish(guard, result=TOOL_ERROR, who="mallory")
    assert guard.board.state("srv__flaky") == "open"  # nobody else to protect: the usual rule


async def test_too_few_samples_give_no_verdict() -> None:
    clock = FakeClock()
    guard = breaker_guard(clock, breaker={"min_calls": 5})
    for _ in range(4):
        await finish(guard, result=TOOL_ERROR)
    assert guard.board.state("srv__flaky") == "closed"
    await finish(guard, result=TOOL_ERROR)
    assert guard.board.state("srv__flaky") == "open"


async def test_old_samples_leave_the_window() -> None:
    clock = FakeClock()
    guard = breaker_guard(clock, breaker={"window_seconds": 10, "min_calls": 4, "error_rate": 0.5})
    for _ in range(2):
        await finish(guard, result=TOOL_ERROR)
    clock.advance(11)  # those errors are history now
    for _ in range(3):
        await finish(guard)
    await finish(guard, result=TOOL_ERROR)
    assert guard.board.state("srv__flaky") == "closed"


async def test_half_open_lets_exactly_one_probe_and_closes_on_success(audit: list[dict[str, Any]]) -> None:
    clock = FakeClock()
    guard = breaker_guard(clock, breaker={"min_calls": 2, "open_seconds": 300})
    await finish(guard, result=TOOL_ERROR)
    await finish(guard, result=TOOL_ERROR)
    assert guard.board.state("srv__flaky") == "open"
    clock.advance(300)
    probe = make_call()
    await guard.on_request(probe)  # the probe goes
    assert guard.board.state("srv__flaky") == "half-open"
    for _ in range(3):
        with pytest.raises(LimitRefusal) as refused:
            await guard.on_request(make_call())
        assert refused.value.rule == "limits.breaker-open" and 0 < refused.value.retry_after <= 1.0
    await guard.on_result(probe, OK)
    assert guard.board.state("srv__flaky") == "closed"
    names = [r["event"] for r in events(audit)]
    assert names == ["limits.breaker-opened", "limits.breaker-half-open", "limits.breaker-closed"]
    for _ in range(5):
        await finish(guard)  # closed again, with a fresh window


async def test_failed_probe_reopens_for_another_period(audit: list[dict[str, Any]]) -> None:
    clock = FakeClock()
    guard = breaker_guard(clock, breaker={"min_calls": 2, "open_seconds": 60, "p99_seconds": 2.0})
    await finish(guard, result=TOOL_ERROR)
    await finish(guard, result=TOOL_ERROR)
    clock.advance(60)
    await finish(guard, latency=2.5)  # the probe answered, but too slowly
    assert guard.board.state("srv__flaky") == "open"
    reopened = events(audit)[-1]
    assert reopened["event"] == "limits.breaker-opened" and reopened["reason"] == "probe-failed"
    assert reopened["failure"] == "slow"
    with pytest.raises(LimitRefusal) as refused:
        await guard.on_request(make_call())
    assert refused.value.retry_after == pytest.approx(60, abs=0.11)


async def test_timeouts_reach_the_breaker_and_it_closes_after_recovery() -> None:
    """T30: a tool that times out trips the breaker; calls fail fast; it closes after recovery."""
    clock = FakeClock()
    guard = breaker_guard(clock, breaker={"min_calls": 3, "open_seconds": 30})
    timeout = jsonrpc.ProtocolError(jsonrpc.REQUEST_TIMEOUT, "upstream did not answer in 60 s")
    for _ in range(3):
        await finish(guard, latency=60, error=timeout, gateway_error=True)
    assert guard.board.state("srv__flaky") == "open"
    with pytest.raises(LimitRefusal):
        await guard.on_request(make_call())
    clock.advance(30)
    await finish(guard, latency=0.02)  # recovered: the probe is quick
    assert guard.board.state("srv__flaky") == "closed"


async def test_client_mistakes_do_not_open_the_breaker() -> None:
    clock = FakeClock()
    guard = breaker_guard(clock, breaker={"min_calls": 3})
    bad_args = jsonrpc.ProtocolError(jsonrpc.INVALID_PARAMS, "missing argument")
    for _ in range(10):
        await finish(guard, error=bad_args)
    assert guard.board.state("srv__flaky") == "closed"
    crash = jsonrpc.ProtocolError(jsonrpc.INTERNAL_ERROR, "upstream crashed")
    await finish(guard, error=crash)  # 1 of 11 failed: 9%
    assert guard.board.state("srv__flaky") == "closed"
    await finish(guard, error=crash)  # 2 of 12: 17%
    assert guard.board.state("srv__flaky") == "open"


async def test_a_lost_probe_frees_its_slot_after_probe_timeout() -> None:
    clock = FakeClock()
    guard = breaker_guard(clock, breaker={"min_calls": 1, "open_seconds": 10, "probe_timeout": 5})
    await finish(guard, result=TOOL_ERROR)
    clock.advance(10)
    await guard.on_request(make_call())  # the probe is cancelled: it never reports
    clock.advance(4)
    with pytest.raises(LimitRefusal):
        await guard.on_request(make_call())
    clock.advance(1.5)
    await finish(guard)  # a new probe goes, and succeeds
    assert guard.board.state("srv__flaky") == "closed"


async def test_late_answers_from_before_the_opening_do_not_close_it() -> None:
    clock = FakeClock()
    guard = breaker_guard(clock, breaker={"min_calls": 2})
    slow_ok = make_call()
    await guard.on_request(slow_ok)  # admitted while closed; answers after the breaker opened
    await finish(guard, result=TOOL_ERROR)
    await finish(guard, result=TOOL_ERROR)
    assert guard.board.state("srv__flaky") == "open"
    await guard.on_result(slow_ok, OK)
    assert guard.board.state("srv__flaky") == "open"


async def test_breaker_settings_per_tool_and_disabled() -> None:
    clock = FakeClock()
    guard = breaker_guard(clock, breaker={"min_calls": 50},
                          tools={"srv__fragile": {"breaker": {"min_calls": 2}},
                                 "srv__wild": {"breaker": {"enabled": False}}})
    for tool in ("srv__fragile", "srv__flaky", "srv__wild"):
        for _ in range(2):
            await finish(guard, result=TOOL_ERROR, tool=tool)
    assert guard.board.state("srv__fragile") == "open"
    assert guard.board.state("srv__flaky") == "closed"  # needs 50 samples
    assert guard.board.state("srv__wild") == "closed"


async def test_only_tool_calls_pass_the_breaker() -> None:
    clock = FakeClock()
    guard = breaker_guard(clock, breaker={"min_calls": 1})
    call = make_call(method="prompts/get")
    await guard.on_request(call)
    await guard.on_result(call, TOOL_ERROR)
    assert guard.board.state("srv__flaky") == "closed"


def test_p99_is_nearest_rank() -> None:
    assert p99([float(x) for x in range(1, 101)]) == 99.0
    assert p99([0.1] * 9 + [5.0]) == 5.0


async def test_calls_refused_by_an_open_breaker_spend_no_quota() -> None:
    clock = FakeClock()
    cfg = GatewayConfig(source="mcpward.toml", limits={
        "rate": 1_000_000, "burst": 100_000, "breaker": {"min_calls": 1, "open_seconds": 10},
        "tools": {"srv__flaky": {"budget": 3, "per": "gateway"}}})
    rate_guard, guard = guards_from_config(cfg, wall=clock, clock=clock)
    assert isinstance(guard, BreakerGuard)

    async def through_both(result: dict[str, Any]) -> str:
        call = make_call()
        try:
            await rate_guard.on_request(call)
            await guard.on_request(call)
        except LimitRefusal as refusal:
            return refusal.rule
        await guard.on_result(call, result)
        return "ok"

    assert await through_both(TOOL_ERROR) == "ok"  # 1 unit spent, and the breaker opens
    assert [await through_both(OK) for _ in range(20)] == ["limits.breaker-open"] * 20
    clock.advance(10)
    assert await through_both(OK) == "ok"  # the probe: 2 units
    assert await through_both(OK) == "ok"  # 3 units
    assert await through_both(OK) == "limits.quota"
