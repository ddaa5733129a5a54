"""Per-principal buckets, per-tool rates and cost quotas, on the in-process storage with a fake clock."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from mcpward.gateway.config import GatewayConfig
from mcpward.gateway.context import Principal, RequestContext, SilentChannel
from mcpward.guards.base import Call, Guard
from mcpward.limits import LimitRefusal, LimitsGuard, guards_from_config, load_settings
from mcpward.limits.memory import ClockedMemoryStorage
from mcpward.limits.rate import Limiter, bucket_items
from mcpward.protocol import jsonrpc


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def call_for(subject: str, method: str = "tools/call", tool: str | None = "srv__echo",
             kind: str = "api-key") -> Call:
    ctx = RequestContext(era="modern", protocol_version="2025-11-25", capabilities={}, client_info=None,
                         principal=Principal(subject=subject, kind=kind),  # type: ignore[arg-type]
                         channel=SilentChannel(), transport="http")
    return Call(ctx=ctx, method=method, params={"name": tool or "", "arguments": {}}, server="srv",
                target=tool, exposed=tool)


def limits_guard(table: dict[str, Any], clock: FakeClock) -> Guard:
    guards = guards_from_config(GatewayConfig(source="mcpward.toml", limits=table), wall=clock, clock=clock)
    assert [type(g).__name__ for g in guards] == ["LimitsGuard", "BreakerGuard"]
    return guards[0]


async def run(guard: Guard, n: int, **call: Any) -> tuple[int, list[LimitRefusal]]:
    admitted, refused = 0, []
    for _ in range(n):
        try:
            await guard.on_request(call_for(**call))
            admitted += 1
        except LimitRefusal as refusal:
            refused.append(refusal)
    return admitted, refused


async def test_bucket_admits_the_burst_then_refuses_with_the_time_until_a_slot_frees() -> None:
    clock = FakeClock()
    guard = limits_guard({"rate": 100, "burst": 20}, clock)
    admitted, refused = await run(guard, 25, subject="alice")
    assert admitted == 20 and len(refused) == 5
    first = refused[0]
    assert first.rule == "limits.rate"
    # 20 calls per 12 s window (100/min): the oldest of the burst leaves the window 12 s after it came.
    assert first.retry_after == pytest.approx(12.0, abs=0.11)
    error = first.to_error()
    assert error.code == jsonrpc.REFUSED
    assert error.data == {"rule": "limits.rate", "retryAfter": first.retry_after}
    assert "refused by limits.rate" in error.message and "retry after 12.0 s" in error.message

    clock.advance(5)
    _, refused = await run(guard, 1, subject="alice")
    assert refused[0].retry_after == pytest.approx(7.0, abs=0.11)
    clock.advance(7.01)
    admitted, _ = await run(guard, 25, subject="alice")
    assert admitted == 20  # the whole burst is back once the window has passed

    other, _ = await run(guard, 20, subject="bob")
    assert other == 20  # buckets are per principal


async def test_sustained_rate_never_exceeds_rate_per_minute() -> None:
    clock = FakeClock()
    guard = limits_guard({"rate": 100, "burst": 20}, clock)
    admitted_at: list[float] = []
    start = clock.now
    while clock.now < start + 180:  # a client hammering every 100 ms for three minutes
        n, _ = await run(guard, 1, subject="alice")
        if n:
            admitted_at.append(clock.now)
        clock.advance(0.1)
    for i, t in enumerate(admitted_at):
        in_minute = sum(1 for u in admitted_at[i:] if u < t + 60)
        assert in_minute <= 100
    assert len(admitted_at) == 300  # and it does reach the configured rate: 100/min for 3 minutes


async def test_a_window_that_does_not_divide_a_minute_gets_a_second_window() -> None:
    # 7/min with burst 5 -> 5 per 43 s; alone it would allow 10 within 60 s.
    assert len(bucket_items("p", 7, 5)) == 2
    assert len(bucket_items("p", 100, 20)) == 1
    clock = FakeClock()
    guard = limits_guard({"rate": 7, "burst": 5}, clock)
    total = 0
    for _ in range(60):
        n, _ = await run(guard, 5, subject="alice")
        total += n
        clock.advance(0.99)
    assert total == 7


async def test_names_with_slashes_do_not_share_a_bucket() -> None:
    clock = FakeClock()
    guard = limits_guard({"rate": 60, "burst": 1, "tools": {"*": {"rate": 60, "burst": 1}}}, clock)
    assert (await run(guard, 1, subject="a/b", tool="c"))[0] == 1
    # principal 'a' calling tool 'b/c' would build the same key if '/' were not escaped
    assert (await run(guard, 1, subject="a", tool="b/c"))[0] == 1


async def test_exempt_methods_are_not_counted() -> None:
    clock = FakeClock()
    guard = limits_guard({"rate": 5, "burst": 1, "exempt": ["resources/read"]}, clock)
    admitted, _ = await run(guard, 10, subject="alice", method="resources/read", tool=None)
    assert admitted == 10
    admitted, _ = await run(guard, 3, subject="alice", method="prompts/get", tool=None)
    assert admitted == 1


async def test_per_tool_rate_is_per_principal_and_per_tool() -> None:
    clock = FakeClock()
    table = {"rate": 1000, "burst": 100, "tools": {"github__create_*": {"rate": 10, "burst": 5}}}
    guard = limits_guard(table, clock)
    admitted, refused = await run(guard, 8, subject="alice", tool="github__create_issue")
    assert admitted == 5 and refused[0].rule == "limits.tool-rate"
    assert refused[0].retry_after == pytest.approx(30.0, abs=0.11)  # 5 per 30 s = 10/min
    assert "github__create_issue" in refused[0].message
    # another tool matching the same rule has its own bucket; an unmatched tool has only the principal's
    assert (await run(guard, 8, subject="alice", tool="github__create_pr"))[0] == 5
    assert (await run(guard, 8, subject="alice", tool="github__list_issues"))[0] == 8
    assert (await run(guard, 8, subject="bob", tool="github__create_issue"))[0] == 5


async def test_tool_refusal_does_not_use_up_the_principals_bucket() -> None:
    clock = FakeClock()
    table = {"rate": 60, "burst": 12, "tools": {"slow__*": {"rate": 1, "burst": 1}}}
    guard = limits_guard(table, clock)
    admitted, refused = await run(guard, 11, subject="alice", tool="slow__x")
    assert admitted == 1 and all(r.rule == "limits.tool-rate" for r in refused)
    assert (await run(guard, 20, subject="alice", tool="fast"))[0] == 11  # 12 - the one that went


async def test_every_limit_of_a_request_sees_one_clock_reading() -> None:
    class CountingClock(FakeClock):
        reads = 0

        def __call__(self) -> float:
            self.reads += 1
            return self.now

    clock = CountingClock()
    table = {"rate": 7, "burst": 5,  # two principal windows (5 per 43 s and 7 per minute)
             "tools": {"paid__*": {"rate": 3, "burst": 3, "cost": 2, "budget": 5, "period": "day"}}}
    guard = limits_guard(table, clock)
    await run(guard, 1, subject="alice", tool="paid__x")  # prepares the checks
    clock.reads = 0
    admitted, refused = await run(guard, 3, subject="alice", tool="paid__x")
    # Two more fit the budget of 5 at cost 2; the third is refused by the quota with the time left
    # measured from the same reading its tests used.
    assert admitted == 1 and [r.rule for r in refused] == ["limits.quota", "limits.quota"]
    assert clock.reads == 3  # four windows and a quota, tested and spent: one reading per request
    assert refused[0].retry_after == pytest.approx(86400, abs=0.11)


@pytest.mark.parametrize(("budget", "cost"), [(1000, 5), (100, 7), (10, 10), (9, 1)])
async def test_quota_hard_cut_admits_exactly_floor_of_budget_over_cost(budget: int, cost: int) -> None:
    clock = FakeClock()
    table = {"rate": 1_000_000, "burst": 100_000,
             "tools": {"paid__*": {"cost": cost, "budget": budget, "period": "day"}}}
    guard = limits_guard(table, clock)
    # T07: a scripted client fires 1,000 calls; the upstream sees at most the budget.
    admitted, refused = await run(guard, 1000, subject="mallory", tool="paid__search")
    assert admitted == budget // cost
    assert len(refused) == 1000 - budget // cost
    assert {r.rule for r in refused} == {"limits.quota"}
    assert refused[0].retry_after == pytest.approx(86400, abs=0.11)
    assert f"budget of {budget} units per day" in refused[0].message
    clock.advance(86400.5)  # the next period brings a fresh budget
    assert (await run(guard, 1000, subject="mallory", tool="paid__search"))[0] == budget // cost


async def test_quota_per_gateway_is_shared_by_all_principals() -> None:
    clock = FakeClock()
    table = {"rate": 10_000, "burst": 1000,
             "tools": {"llm__complete": {"cost": 3, "budget": 30, "period": "hour", "per": "gateway"},
                       "llm__*": {"budget": 2}}}
    guard = limits_guard(table, clock)
    total = 0
    for subject in ("a", "b", "c", "d"):
        n, refused = await run(guard, 4, subject=subject, tool="llm__complete")
        total += n
    assert total == 10
    assert "shared by all principals" in refused[0].message
    # the less specific rule applies to the other tools, per principal
    assert (await run(guard, 5, subject="a", tool="llm__embed"))[0] == 2
    assert (await run(guard, 5, subject="b", tool="llm__embed"))[0] == 2


async def test_a_refused_quota_call_leaves_the_budget_for_a_cheaper_tool_call() -> None:
    clock = FakeClock()
    table = {"rate": 10_000, "burst": 1000, "tools": {"x": {"cost": 4, "budget": 10, "per": "gateway"}}}
    guard = limits_guard(table, clock)
    admitted, _ = await run(guard, 5, subject="a", tool="x")
    assert admitted == 2
    limiter = guard.limiter  # type: ignore[attr-defined]
    plan = limiter.plan("x")
    assert plan is not None and plan.quota_item is not None
    # 8 of 10 spent: refused calls (which would have taken it to 12) burned nothing
    assert (await limiter.fixed.get_window_stats(plan.quota_item, "x")).remaining == 2


async def test_most_specific_rule_wins_regardless_of_order() -> None:
    cfg = GatewayConfig(source="t.toml", limits={"tools": {
        "*": {"budget": 1}, "gh__create_issue": {"budget": 3}, "gh__*": {"budget": 2}, "gh__create_*": {"budget": 4},
    }})
    limiter = Limiter(load_settings(cfg), ClockedMemoryStorage())
    budgets = {name: limiter.plan(name).rule.budget  # type: ignore[union-attr]
               for name in ("gh__create_issue", "gh__create_pr", "gh__list", "other")}
    assert budgets == {"gh__create_issue": 3, "gh__create_pr": 4, "gh__list": 2, "other": 1}


async def test_memory_storage_forgets_idle_principals() -> None:
    clock = FakeClock()
    storage = ClockedMemoryStorage(clock=clock, sweep_interval=60)
    limiter = Limiter(load_settings(GatewayConfig(limits={"rate": 100, "burst": 20})), storage, wall=clock)
    guard = LimitsGuard(limiter)
    for i in range(500):
        await guard.on_request(call_for(f"user{i}"))
    assert len(storage) == 500
    clock.advance(61)
    await guard.on_request(call_for("late"))
    assert len(storage) == 1


def test_rate_guard_per_request_cost_is_a_few_microseconds() -> None:
    """Measures the rate guard alone on the memory storage (reported in docs/limits.md)."""
    import asyncio

    async def measure() -> tuple[float, float]:
        guard = limits_guard({"rate": 10**6, "burst": 10**5}, FakeClock())
        calls = [call_for(f"user{i % 100}", method="prompts/get", tool=None) for i in range(20_000)]
        for c in calls[:1000]:
            await guard.on_request(c)
        samples = []
        for c in calls[1000:]:
            t = time.perf_counter()
            await guard.on_request(c)
            samples.append(time.perf_counter() - t)
            await asyncio.sleep(0)  # a real server yields between calls; cost must not depend on it
        samples.sort()
        return samples[len(samples) // 2], samples[math.ceil(0.99 * len(samples)) - 1]

    p50, p99 = asyncio.run(measure())
    print(f"\nrate guard (memory storage): p50 {p50 * 1e6:.1f} us, p99 {p99 * 1e6:.1f} us")
    assert p50 < 50e-6  # generous for slow CI; measured ~5 us here


async def test_concurrent_calls_on_memory_storage_spend_exactly_the_budget() -> None:
    import asyncio

    clock = FakeClock()
    table = {"rate": 1_000_000, "burst": 100_000,
             "tools": {"paid": {"cost": 7, "budget": 100, "per": "gateway"}}}
    guard = limits_guard(table, clock)

    async def one(i: int) -> bool:
        try:
            await guard.on_request(call_for(f"user{i % 13}", tool="paid"))
            return True
        except LimitRefusal:
            return False

    outcomes = await asyncio.gather(*(one(i) for i in range(1000)))
    assert sum(outcomes) == 100 // 7  # no race burns units: test and spend happen without an await


# ------------------------------------------------------------------ the door: every request counts
def gateway_with_limits(table: dict[str, Any], clock: FakeClock) -> Any:
    from mcpward.gateway.core import Gateway
    from mcpward.guards.base import GuardChain

    cfg = GatewayConfig(source="mcpward.toml", limits=table)
    return Gateway(cfg, GuardChain(guards_from_config(cfg, wall=clock, clock=clock)))


async def outcome(gateway: Any, ctx: RequestContext, method: str, params: dict[str, Any] | None = None) -> str:
    try:
        await gateway.handle(ctx, method, params or {})
    except jsonrpc.ProtocolError as exc:
        if exc.code == jsonrpc.REFUSED:
            assert exc.data["retryAfter"] > 0
            return str(exc.data["rule"])
        return f"error {exc.code}"
    return "ok"


async def test_lists_and_unknown_names_count_against_the_principals_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    from mcpward.audit import events

    records: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(events, "record", lambda event, **fields: records.append((event, fields)))
    clock = FakeClock()
    gateway = gateway_with_limits({"rate": 3, "burst": 3}, clock)  # 3 per minute
    ctx = call_for("alice").ctx
    got = [await outcome(gateway, ctx, "tools/list"), await outcome(gateway, ctx, "prompts/list"),
           await outcome(gateway, ctx, "tools/call", {"name": "nope__nothing", "arguments": {}})]
    assert got == ["ok", "ok", f"error {jsonrpc.INVALID_PARAMS}"]  # the unknown tool was counted too
    for method in ("tools/list", "prompts/list", "resources/list", "resources/templates/list", "tools/call"):
        assert await outcome(gateway, ctx, method, {"name": "nope__nothing"}) == "limits.rate"
    assert await outcome(gateway, ctx, "nope/nope") == "limits.rate"  # even a method that does not exist
    assert await outcome(gateway, ctx, "server/discover") == "ok"  # exempt, as documented
    assert await outcome(gateway, call_for("bob").ctx, "tools/list") == "ok"  # buckets are per principal
    refusals = [f for e, f in records if e == "refusal"]
    assert [f["method"] for f in refusals] == ["tools/list", "prompts/list", "resources/list",
                                               "resources/templates/list", "tools/call", "nope/nope"]
    assert {f["rule"] for f in refusals} == {"limits.rate"} and refusals[4]["target"] == "nope__nothing"
    # The principal as the request records name it (kind:subject), the subject beside it.
    assert {(f["principal"], f["subject"]) for f in refusals} == {(ctx.principal.key, ctx.principal.subject)}
    assert ctx.principal.key != ctx.principal.subject
    clock.advance(60.1)
    assert await outcome(gateway, ctx, "tools/list") == "ok"


async def test_a_request_counted_at_the_door_is_not_counted_again_by_the_chain() -> None:
    clock = FakeClock()
    table = {"rate": 60, "burst": 4, "tools": {"paid__*": {"budget": 10}}}
    guard = limits_guard(table, clock)
    for _ in range(4):
        call = call_for("alice", tool="paid__x")
        await guard.admit_request(call.ctx, "tools/call", call.params)  # type: ignore[attr-defined]
        await guard.on_request(call)  # the tool's quota only: the bucket was counted at the door
    with pytest.raises(jsonrpc.ProtocolError) as refused:
        await guard.admit_request(call_for("alice").ctx, "tools/list", {})  # type: ignore[attr-defined]
    assert refused.value.data["rule"] == "limits.rate"
    limiter = guard.limiter  # type: ignore[attr-defined]
    plan = limiter.plan("paid__x")
    key = call_for("alice").ctx.principal.key
    assert (await limiter.fixed.get_window_stats(plan.quota_item, key, "paid__x")).remaining == 6
    # A caller that skips the door (a request the gateway did not handle) is still counted whole.
    with pytest.raises(LimitRefusal) as whole:
        await guard.on_request(call_for("alice", tool="paid__x"))
    assert whole.value.rule == "limits.rate"


def test_every_request_counts_end_to_end_over_http(serve_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    import httpx

    from tests.audit_reader import committed
    from tests.conftest import fixture_server, toml_list

    cmd = fixture_server()
    url = serve_gateway(f'[servers.fx]\ncommand = "{cmd[0]}"\nargs = {toml_list(cmd[1:])}\n\n'
                        '[limits]\nrate = 3\nburst = 3\n')
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}

    def post(http: httpx.Client, method: str, params: dict[str, Any]) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                   "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method}
        if "name" in params:
            headers["Mcp-Name"] = params["name"]
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
        return http.post(url, json=body, headers=headers).json()

    with httpx.Client(trust_env=False, timeout=30) as http:
        # An unprefixed name no server has fails before the guard chain ("unknown tool"): counted all the same.
        first = [post(http, "tools/list", {}), post(http, "resources/templates/list", {}),
                 post(http, "tools/call", {"name": "nosuchtool", "arguments": {}})]
        assert "result" in first[0] and "result" in first[1]
        assert first[2]["error"]["code"] == -32602 and "unknown tool" in first[2]["error"]["message"]
        for method, params in (("tools/list", {}), ("prompts/list", {}),
                               ("tools/call", {"name": "nosuchtool", "arguments": {}})):
            error = post(http, method, params)["error"]
            assert error["code"] == -32004 and error["data"]["rule"] == "limits.rate"
            assert error["data"]["retryAfter"] > 0
    rows = [json.loads(r) for r in committed(tmp_path / "mcpward-audit.sqlite", "refusal", 3)]
    assert [(r["rule"], r["method"]) for r in rows] == [
        ("limits.rate", "tools/list"), ("limits.rate", "prompts/list"), ("limits.rate", "tools/call")]
