"""The policy guard's fast path for a remembered tool-call permit (engine.cached_tool_call).

A repeated permitted `tools/call` is answered from the decision cache without building the Target
and the Facts. It must find exactly what a full decision stored, and never answer for anything a
full decision would read differently: labels (pin state), claims, principal, context, arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mcpward.gateway import config
from mcpward.gateway.context import Principal, RequestContext, SilentChannel
from mcpward.guards.base import Call, Refusal
from mcpward.policy import guard as guard_module
from mcpward.policy.engine import PolicyEngine
from mcpward.policy.entities import Facts, SortedLabels, Target
from mcpward.policy.guard import PolicyGuard, engine_for

ENG = Principal("carol", "oauth", groups=("eng",))
OTHER = Principal("dave", "oauth")
READ_ONLY = {"readOnlyHint": True}
DESTROYS = {"readOnlyHint": False, "destructiveHint": True}
TEAM = """
@id("team.eng-only")
forbid (principal, action == Action::"call_tool", resource) unless { principal in Group::"eng" };
@id("team.no-quarantined")
forbid (principal, action, resource) when { resource has labels && resource.labels.contains("pin:changed") };
@id("team.ide-only")
forbid (principal, action == Action::"call_tool", resource) when { context.client == "rogue" };
@id("team.no-etc")
forbid (principal, action == Action::"call_tool", resource)
when { resource.hasTag("path") && resource.getTag("path") like "/etc/*" };
"""


def make_guard(tmp_path: Path, files: dict[str, str] | None = None, tools: dict[str, Any] | None = None) -> PolicyGuard:
    policy: dict[str, Any] = {"base": "standard"}
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
        policy["files"] = [name]
    cfg = config.parse({"servers": {"fs": {"command": "x", "tools": tools or {}}}, "policy": policy},
                       str(tmp_path / "mcpward.toml"), tmp_path)
    return PolicyGuard(engine_for(cfg, os_groups=False))


def ctx(principal: Principal = ENG, client: str = "claude-code") -> RequestContext:
    return RequestContext(era="modern", protocol_version="2026-07-28", capabilities={},
                          client_info={"name": client, "version": "1.0"}, principal=principal,
                          channel=SilentChannel(), transport="stdio")


def tool_call(name: str = "read", claimed: dict[str, Any] | None = None, *, context: RequestContext | None = None,
              arguments: dict[str, Any] | None = None) -> Call:
    return Call(ctx=context or ctx(), method="tools/call", params={"name": name, "arguments": arguments or {}},
                server="fs", target=name, exposed=f"fs__{name}",
                definition={"name": name, "annotations": READ_ONLY if claimed is None else claimed})


async def rule_of(guard: PolicyGuard, call: Call) -> str:
    try:
        await guard.on_request(call)
    except Refusal as exc:
        return exc.rule
    return str(call.notes["policy"]["rule"])


async def test_a_remembered_permit_is_found_without_building_target_or_facts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    guard = make_guard(tmp_path)
    first = tool_call()
    assert await guard.on_request(first) is None
    expected = first.notes["policy"]

    def not_needed(*_args: Any, **_kw: Any) -> Any:
        raise AssertionError("a remembered permit was decided again")

    monkeypatch.setattr(guard_module, "call_target", not_needed)
    monkeypatch.setattr(Facts, "of", not_needed)
    again = tool_call()
    assert await guard.on_request(again) is None
    assert again.notes["policy"] == expected == {"rule": expected["rule"], "allowed": True,
                                                  "hash": guard.engine.policy_hash}


def _fast(engine: PolicyEngine, principal: Principal, target: Target, context: RequestContext) -> Any:
    return engine.cached_tool_call(principal, target.id, target.server, target.name, target.claimed,
                                   bool(target.arguments), context)


@pytest.mark.parametrize("claimed", [None, READ_ONLY, DESTROYS, {"readOnlyHint": "true"}, {"other": 1}, []])
@pytest.mark.parametrize("provider", ["none", "sorted", "unsorted"])
def test_the_fast_lookup_finds_the_key_a_full_decision_stored(tmp_path: Path, claimed: Any, provider: str) -> None:
    guard = make_guard(tmp_path, {"team.cedar": TEAM}, tools={"tagged": {"labels": ["ops"]}})
    engine = guard.engine
    if provider == "sorted":
        engine.builder.label_providers.append(lambda s, kind, name: SortedLabels(["pin:pinned", "risk:none"]))
    elif provider == "unsorted":
        engine.builder.label_providers.append(lambda s, kind, name: ["risk:none", "pin:pinned", "risk:none"])
    context = ctx()
    for name in ("read", "tagged"):
        target = Target("Tool", f"fs__{name}", "fs", name, claimed=claimed)
        assert _fast(engine, ENG, target, context) is None  # nothing remembered yet
        decision = engine.decide(ENG, "call_tool", target, Facts.of(context))
        assert _fast(engine, ENG, target, context) is decision
        # An equal principal built anew (another request of the same party) finds it too.
        assert _fast(engine, Principal("carol", "oauth", groups=("eng",)), target, context) is decision
        assert _fast(engine, OTHER, target, context) is None
        assert _fast(engine, ENG, target, ctx(client="rogue")) is None  # the policy reads the client


async def test_the_fast_path_never_answers_for_what_a_full_decision_reads_differently(tmp_path: Path) -> None:
    guard = make_guard(tmp_path, {"team.cedar": TEAM})
    state = SortedLabels(["pin:pinned"])
    labels = {"read": state}
    guard.add_label_provider(lambda s, kind, name: labels.get(name, SortedLabels()))
    permit = "standard.permit-non-destructive-tools"
    assert await rule_of(guard, tool_call()) == permit
    assert await rule_of(guard, tool_call()) == permit  # remembered
    labels["read"] = SortedLabels(["pin:changed"])  # the integrity guard re-judged the tool
    assert await rule_of(guard, tool_call()) == "team.no-quarantined"
    labels["read"] = state
    assert await rule_of(guard, tool_call()) == permit
    # Another principal, the same principal with another group, another client, another claim.
    assert await rule_of(guard, tool_call(context=ctx(OTHER))) == "team.eng-only"
    assert await rule_of(guard, tool_call(context=ctx(Principal("carol", "oauth")))) == "team.eng-only"
    assert await rule_of(guard, tool_call(context=ctx(client="rogue"))) == "team.ide-only"
    assert await rule_of(guard, tool_call(claimed=DESTROYS)) == "policy.default-deny"
    # A policy reading the arguments: each call with arguments is decided on its own entity.
    assert await rule_of(guard, tool_call(arguments={"path": "/tmp/x"})) == permit
    assert await rule_of(guard, tool_call(arguments={"path": "/etc/passwd"})) == "team.no-etc"
    assert await rule_of(guard, tool_call()) == permit


async def test_a_principal_with_unhashable_claims_is_decided_every_time(tmp_path: Path) -> None:
    # Claims holding a list cannot key a cache: such a principal is never remembered by identity either,
    # so a claim changed in place (the list is mutable) is seen.
    interns = ('@id("team.no-interns")\nforbid (principal, action, resource) when '
               '{ principal.hasTag("roles") && principal.getTag("roles").contains("intern") };')
    guard = make_guard(tmp_path, {"team.cedar": interns})
    roles = ["dev"]
    who = Principal("erin", "oauth", claims=(("roles", roles),))
    assert await rule_of(guard, tool_call(context=ctx(who))) == "standard.permit-non-destructive-tools"
    roles.append("intern")
    assert await rule_of(guard, tool_call(context=ctx(who))) == "team.no-interns"
