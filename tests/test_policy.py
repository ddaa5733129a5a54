"""Cedar authorisation: entities, starting policies, overrides, validation, dry-run, lists, CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cedarpy
import pytest
from typer.testing import CliRunner

from mcpward.cli.policy import policy_app
from mcpward.gateway import config
from mcpward.gateway.config import ConfigError, GatewayConfig
from mcpward.gateway.context import Principal, RequestContext, SilentChannel
from mcpward.guards.base import Call, Listed, Refusal
from mcpward.policy import loader
from mcpward.policy.engine import DEFAULT_DENY, PolicyEngine
from mcpward.policy.entities import (
    EntityBuilder,
    Facts,
    SortedLabels,
    Target,
    claim_values,
    effective_annotations,
)
from mcpward.policy.guard import PolicyGuard, call_target, engine_for, from_config

ALICE = Principal("alice", "local-user", claims=(("roles", ["admin", "dev"]), ("email", "a@example.com")),
                  groups=("eng",))
BOB = Principal("bob", "oauth")
READ_ONLY = {"readOnlyHint": True}
WRITES = {"readOnlyHint": False, "destructiveHint": False}
DESTROYS = {"readOnlyHint": False, "destructiveHint": True}


def make_cfg(tmp_path: Path, policy: dict[str, Any] | None = None, files: dict[str, str] | None = None,
             tools: dict[str, Any] | None = None) -> GatewayConfig:
    for name, text in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    data: dict[str, Any] = {"servers": {"fs": {"command": "x", "tools": tools or {}}, "db": {"command": "y"}}}
    if policy is not None:
        data["policy"] = policy
    return config.parse(data, str(tmp_path / "mcpward.toml"), tmp_path)


def make_engine(tmp_path: Path, **kw: Any) -> PolicyEngine:
    return engine_for(make_cfg(tmp_path, **kw), os_groups=False)


def tool(name: str, claimed: dict[str, Any] | None = None, server: str = "fs", **args: Any) -> Target:
    return Target("Tool", f"{server}__{name}", server, name, claimed=claimed, arguments=args or None)


def allowed(engine: PolicyEngine, target: Target, action: str = "call_tool", who: Principal = ALICE,
            facts: Facts | None = None) -> bool:
    return engine.decide(who, action, target, facts or Facts()).allowed


def ctx(principal: Principal = ALICE, client: str = "claude-code") -> RequestContext:
    return RequestContext(era="modern", protocol_version="2026-07-28", capabilities={},
                          client_info={"name": client, "version": "1.0"}, principal=principal,
                          channel=SilentChannel(), transport="stdio")


# ------------------------------------------------------------------------- entities
def test_effective_annotations_spec_defaults_claims_and_overrides() -> None:
    assert effective_annotations(None, {}) == {"readOnlyHint": False, "destructiveHint": True,
                                              "idempotentHint": False, "openWorldHint": True}
    assert effective_annotations({"readOnlyHint": True}, {})["readOnlyHint"] is True
    # A non-boolean claim is no claim: the (unsafe) default stands.
    assert effective_annotations({"readOnlyHint": "true"}, {})["readOnlyHint"] is False
    assert effective_annotations({"readOnlyHint": True}, {"readOnlyHint": False})["readOnlyHint"] is False


def test_built_entities_conform_to_the_schema() -> None:
    cfg = config.parse({"servers": {"fs": {"command": "x", "tools": {"w": {"labels": ["writes"]}}}}})
    builder = EntityBuilder(cfg.servers, [lambda s, k, n: {"scanned"} if n == "w" else set()])
    entities = [builder.principal(ALICE), builder.principal(BOB), builder.server("fs"),
                builder.resource(tool("w", WRITES, path="/tmp/x", n=3, deep={"a": [1]}), True),
                builder.resource(Target("Prompt", "fs__p", "fs", "p", arguments={"topic": "x"}), True),
                builder.resource(Target("Resource", "file:///{path}", "fs", "file:///{path}", template=True), True)]
    cedarpy.Entities.from_json_str(json.dumps(entities), loader.schema_text())  # raises if any shape is off
    w = entities[3]
    assert w["attrs"]["labels"] == ["scanned", "writes"] and w["attrs"]["destructive"] is False
    assert w["tags"] == {"path": "/tmp/x", "n": "3", "deep": '{"a":[1]}'}
    assert entities[0]["tags"] == {"roles": ["admin", "dev"], "email": ["a@example.com"]}
    assert entities[0]["parents"] == [{"type": "Group", "id": "eng"}]
    assert claim_values(True) == ["true"] and claim_values([1, "x", None]) == ["1", "x"]


def test_local_user_gets_os_groups_and_others_do_not() -> None:
    import grp
    import os
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    primary = grp.getgrgid(os.getgid()).gr_name
    builder = EntityBuilder({})
    parents = {p["id"] for p in builder.principal(Principal(me, "local-user"))["parents"]}
    assert primary in parents
    assert builder.principal(Principal(me, "oauth"))["parents"] == []


# ---------------------------------------------------------------- starting policies
CASES = [  # (tool claims, readonly, standard, permit-all)
    (READ_ONLY, True, True, True),
    (WRITES, False, True, True),
    (DESTROYS, False, False, True),
    (None, False, False, True),  # no annotations: the spec defaults are the destructive reading
    ({"destructiveHint": False}, False, True, True),
]


@pytest.mark.parametrize(("claims", "readonly", "standard", "permit_all"), CASES)
def test_builtin_policies_on_tools(tmp_path: Path, claims: dict[str, Any] | None, readonly: bool,
                                   standard: bool, permit_all: bool) -> None:
    for base, expected in (("readonly", readonly), ("standard", standard), ("permit-all", permit_all)):
        engine = make_engine(tmp_path, policy={"base": base})
        assert allowed(engine, tool("t", claims)) is expected, base


@pytest.mark.parametrize("base", ["readonly", "standard", "permit-all"])
def test_builtin_policies_allow_lists_prompts_resources_and_completion(tmp_path: Path, base: str) -> None:
    engine = make_engine(tmp_path, policy={"base": base})
    prompt = Target("Prompt", "fs__p", "fs", "p")
    resource = Target("Resource", "file:///x", "fs", "file:///x")
    server = Target("Server", "fs", "fs", "fs")
    assert allowed(engine, prompt, "get_prompt") and allowed(engine, resource, "read_resource")
    assert allowed(engine, prompt, "complete") and allowed(engine, resource, "complete")
    for action in ("list_tools", "list_prompts", "list_resources", "list_resource_templates"):
        assert allowed(engine, server, action)


def test_no_policy_table_means_standard(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    assert "standard.permit-non-destructive-tools" in [r.id for r in engine.bundle.rules]
    decision = engine.decide(ALICE, "call_tool", tool("t", DESTROYS), Facts())
    assert (decision.allowed, decision.rule, decision.outcome) == (False, DEFAULT_DENY, "no-permit")


def test_operator_override_wins_over_a_lying_server(tmp_path: Path) -> None:
    liar = {"readOnlyHint": True}
    override = {"delete_all": {"annotations": {"readOnlyHint": False, "destructiveHint": True}}}
    assert allowed(make_engine(tmp_path / "a", policy={"base": "standard"}), tool("delete_all", liar))
    engine = make_engine(tmp_path / "b", policy={"base": "standard"}, tools=override)
    assert not allowed(engine, tool("delete_all", liar))
    assert allowed(engine, tool("delete_all", liar, server="db"))  # the override is per server


def test_destructive_tool_needs_an_explicit_permit_in_operator_files(tmp_path: Path) -> None:
    text = """
@id("team.admins-drop")
permit (principal in Group::"eng", action == Action::"call_tool", resource in Server::"fs")
when { resource.name == "drop" && principal.hasTag("roles") && principal.getTag("roles").contains("admin") };
"""
    engine = make_engine(tmp_path, policy={"files": ["policies/*.cedar"]}, files={"policies/team.cedar": text})
    decision = engine.decide(ALICE, "call_tool", tool("drop", DESTROYS), Facts())
    assert decision.allowed and decision.rule == "team.admins-drop"
    assert not allowed(engine, tool("drop", DESTROYS), who=BOB)
    assert not allowed(engine, tool("drop", DESTROYS, server="db"))


# ----------------------------------------------------- arguments, labels and context
FORBID_ETC = """
@id("team.no-etc")
forbid (principal, action == Action::"call_tool", resource)
when { resource.hasTag("path") && resource.getTag("path") like "/etc/*" };
@id("team.no-exfil")
forbid (principal, action, resource) when { resource has labels && resource.labels.contains("exfil") };
@id("team.ide-only-after-hours")
forbid (principal, action == Action::"call_tool", resource)
when { context.hour >= 20 && context.client != "trusted-ide" };
"""


def test_arguments_labels_and_context_decide(tmp_path: Path) -> None:
    tools = {"send": {"labels": ["exfil"]}}
    engine = make_engine(tmp_path, policy={"files": ["p.cedar"]}, files={"p.cedar": FORBID_ETC}, tools=tools)
    assert engine.bundle.reads_resource_tags and engine.bundle.context_fields == {"hour", "client"}
    noon, night = Facts(at=_at(12)), Facts(at=_at(21))
    decision = engine.decide(ALICE, "call_tool", tool("write", WRITES, path="/etc/passwd"), noon)
    assert not decision.allowed and decision.rule == "team.no-etc" and decision.outcome == "forbidden"
    assert allowed(engine, tool("write", WRITES, path="/tmp/x"), facts=noon)
    assert allowed(engine, tool("write", WRITES), facts=noon)  # no argument: the forbid does not apply
    assert engine.decide(ALICE, "call_tool", tool("send", WRITES), noon).rule == "team.no-exfil"
    # Labels from a provider (the integrity scanner's hook) count the same way.
    engine.builder.label_providers.append(lambda s, kind, name: {"exfil"} if name == "post" else ())
    assert not allowed(engine, tool("post", WRITES), facts=noon)
    # The cache keys on the context fields the policies read: same call, other hour, other answer.
    assert not allowed(engine, tool("write", WRITES), facts=night)
    assert allowed(engine, tool("write", WRITES), facts=Facts(at=_at(21), client="trusted-ide"))
    assert allowed(engine, tool("write", WRITES), facts=noon)


def test_a_remembered_decision_follows_changed_labels_and_claims(tmp_path: Path) -> None:
    # Decisions are cached on a key of what the entity holds, not on the entity's JSON: a label that
    # appears later (the scanner re-judged the tool) or a changed claim must still change the answer.
    engine = make_engine(tmp_path, policy={"files": ["p.cedar"]}, files={"p.cedar": FORBID_ETC})
    risky: set[str] = set()
    engine.builder.label_providers.append(lambda s, kind, name: risky if name == "post" else ())
    noon = Facts(at=_at(12))
    assert allowed(engine, tool("post", READ_ONLY), facts=noon)
    assert allowed(engine, tool("post", READ_ONLY), facts=noon)  # now from the cache
    risky.add("exfil")
    assert engine.decide(ALICE, "call_tool", tool("post", READ_ONLY), noon).rule == "team.no-exfil"
    risky.clear()
    assert allowed(engine, tool("post", READ_ONLY), facts=noon)
    std = make_engine(tmp_path / "std")
    assert allowed(std, tool("rm", READ_ONLY))
    assert not allowed(std, tool("rm", DESTROYS))  # same name, the claim changed: decided again


def test_labels_are_sorted_and_unique_whatever_the_providers_return(tmp_path: Path) -> None:
    # One provider is the fast path: its answer is used as it is only when it says it is sorted.
    engine = make_engine(tmp_path)
    builder = engine.builder
    builder.label_providers.append(lambda s, kind, name: ["risk:b", "risk:a", "risk:b"])
    assert builder.labels(tool("t", READ_ONLY)) == ["risk:a", "risk:b"]
    builder.label_providers[:] = [lambda s, kind, name: SortedLabels(["pin:pinned", "risk:none"])]
    assert builder.labels(tool("t", READ_ONLY)) == ["pin:pinned", "risk:none"]
    builder.label_providers.append(lambda s, kind, name: ("risk:none", "pin:changed"))
    assert builder.labels(tool("t", READ_ONLY)) == ["pin:changed", "pin:pinned", "risk:none"]


def _at(hour: int) -> float:
    import datetime as dt

    return dt.datetime(2026, 3, 4, hour, 30).timestamp()


def test_a_forbid_that_fails_to_evaluate_denies_and_a_failing_permit_does_not_allow(tmp_path: Path) -> None:
    # Long overflow passes validation and fails at evaluation: the forbid might have matched.
    text = """
@id("t.overflowing-forbid")
forbid (principal, action == Action::"call_tool", resource)
when { resource.name == "boom" && context.now * 9223372036854775807 > 0 };
@id("t.overflowing-permit")
permit (principal, action == Action::"call_tool", resource)
when { resource.name == "x" && context.now * 9223372036854775807 > 0 };
"""
    engine = make_engine(tmp_path, policy={"files": ["p.cedar"]}, files={"p.cedar": text})
    boom = engine.decide(ALICE, "call_tool", tool("boom", READ_ONLY), Facts())
    assert (boom.allowed, boom.rule, boom.outcome) == (False, "t.overflowing-forbid", "error") and boom.errors
    x = engine.decide(ALICE, "call_tool", tool("x", DESTROYS), Facts())
    assert (x.allowed, x.rule) == (False, DEFAULT_DENY)
    assert allowed(engine, tool("x", READ_ONLY))  # the builtin permit still allows; the failed one adds nothing


def test_cedar_refusing_a_request_denies_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(tmp_path, policy={"base": "permit-all"})

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("entity parse error")

    monkeypatch.setattr(cedarpy, "is_authorized_batch", refuse)
    decision = engine.decide(ALICE, "call_tool", tool("t", READ_ONLY), Facts())
    assert (decision.allowed, decision.rule, decision.outcome) == (False, "policy.evaluation-error", "error")


def test_decide_many_matches_single_decisions_and_handles_duplicate_ids(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, policy={"base": "readonly"})
    requests = [("call_tool", tool(f"t{i}", READ_ONLY if i % 3 == 0 else WRITES)) for i in range(300)]
    requests += [("read_resource", Target("Resource", "file:///same", s, "file:///same")) for s in ("fs", "db")]
    requests.append(("list_tools", Target("Server", "fs", "fs", "fs")))
    many = engine.decide_many(ALICE, requests, Facts())
    fresh = make_engine(tmp_path, policy={"base": "readonly"})
    assert [d.allowed for d in many] == [fresh.decide(ALICE, a, t, Facts()).allowed for a, t in requests]
    assert sum(d.allowed for d in many[:300]) == 100


# --------------------------------------------------------------------- validation
BAD_POLICIES = [
    ('@id("a")\npermit (principal, action == Action::"call_tool", resource)\nwhen { resource.readOnly };',
     "line 1: does not match the mcpward policy schema: attribute `readOnly` on entity type `Tool` not found"),
    ('@id("a") permit (principal, action, resource);\n\n@id("b") permit (principal, action resource);',
     "line 3: Cedar syntax error: unexpected token `resource`"),
    ("permit (principal, action, resource);", 'line 1: the policy has no @id("...") annotation'),
    ('@id("a") permit (principal, action, resource);\n@id("a") forbid (principal, action, resource);',
     'line 2: duplicate rule id "a" (first used in p.cedar line 1)'),
    ('@id("standard.permit-read") permit (principal, action, resource);', "duplicate rule id"),
    ('@id("policy.mine") permit (principal, action, resource);', "the prefix 'policy.' is reserved"),
    ('@id("a") permit (principal, action == Action::"tools/call", resource);', "unrecognized action"),
    ('@id("a") permit (principal, action, resource) when { context.time > 3 };', "attribute `time` in context"),
    ('@id("a") forbid (principal, action, resource) when { resource.getTag("path") == "x" };',
     "unable to guarantee safety of access to tag"),
    ('@id("a") permit (principal == ?principal, action, resource);', "policy templates"),
    ('@id("a b") permit (principal, action, resource);', "rule id 'a b' must be"),
]


@pytest.mark.parametrize(("text", "message"), BAD_POLICIES)
def test_bad_policies_are_startup_errors_naming_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    cfg = make_cfg(tmp_path, policy={"files": ["p.cedar"]}, files={"p.cedar": text})
    with pytest.raises(ConfigError) as info:
        from_config(cfg)
    assert str(info.value).startswith("p.cedar: ") and message in str(info.value)


@pytest.mark.parametrize(("policy", "message"), [
    ({"base": "strict"}, "policy.base: unknown starting policy 'strict'"),
    ({"mode": "audit"}, "policy.mode: must be 'enforce' or 'dry-run'"),
    ({"files": ["nothing/*.cedar"]}, "policy.files[0]: no file matches 'nothing/*.cedar'"),
    ({"files": ["missing.cedar"]}, "policy.files[0]: no such policy file"),
    ({"base": "none"}, "policy.base: base = \"none\" with no policy files denies everything"),
    ({"bases": "standard"}, "policy.bases: unknown key"),
    ({"files": "p.cedar"}, "policy.files: expected an array"),
])
def test_bad_policy_table(tmp_path: Path, policy: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_config(make_cfg(tmp_path, policy=policy))
    assert message in str(info.value)


def test_statement_splitter_skips_strings_and_comments() -> None:
    text = '// a; comment\n@id("x;y")\npermit (principal, action, resource)\n  when { "a;b" == "a;b" };\n\n' \
           '@id("z") forbid (principal, action, resource);\n'
    assert [line for line, _ in loader.split_statements(text)] == [2, 6]


def test_policy_hash_changes_with_the_policy_text(tmp_path: Path) -> None:
    text = '@id("a") permit (principal, action == Action::"call_tool", resource) when { resource.name == "x" };'
    first = make_engine(tmp_path, policy={"files": ["p.cedar"]}, files={"p.cedar": text}).policy_hash
    again = make_engine(tmp_path, policy={"files": ["p.cedar"]}).policy_hash
    changed = make_engine(tmp_path, policy={"files": ["p.cedar"]}, files={"p.cedar": text.replace('"x"', '"y"')})
    assert first == again != changed.policy_hash and first.startswith("sha256:")
    assert make_engine(tmp_path, policy={"base": "readonly"}).policy_hash != \
        make_engine(tmp_path, policy={"base": "standard"}).policy_hash


def test_permit_all_warns_loudly_at_startup(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "mcpward.policy"):
        guard = from_config(make_cfg(tmp_path, policy={"base": "permit-all"}))
    assert isinstance(guard, PolicyGuard)
    assert any("POLICY permit-all" in r.message for r in caplog.records)


# --------------------------------------------------------------------------- guard
async def test_guard_refuses_with_rule_id_and_no_policy_text(tmp_path: Path) -> None:
    guard = from_config(make_cfg(tmp_path, policy={"base": "readonly"}))
    call = Call(ctx=ctx(), method="tools/call", params={"name": "drop", "arguments": {}}, server="fs",
                target="drop", exposed="fs__drop", definition={"name": "drop", "annotations": WRITES})
    with pytest.raises(Refusal) as info:
        await guard.on_request(call)
    assert info.value.rule == "policy.default-deny"
    assert info.value.message == "call_tool on fs__drop is not permitted for alice"
    error = info.value.to_error()
    assert error.code == -32004 and "refused by policy.default-deny" in error.message and "permit" not in \
        error.message.replace("not permitted", "")
    ok = Call(ctx=ctx(), method="tools/call", params={"name": "r"}, server="fs", target="r", exposed="fs__r",
              definition={"name": "r", "annotations": READ_ONLY})
    assert await guard.on_request(ok) is None
    assert ok.notes["policy"]["rule"] == "readonly.permit-read-only-tools"


async def test_a_tool_never_listed_is_treated_as_unannotated(tmp_path: Path) -> None:
    guard = from_config(make_cfg(tmp_path, policy={"base": "standard"}))
    call = Call(ctx=ctx(), method="tools/call", params={"name": "x"}, server="fs", target="x", exposed="fs__x")
    with pytest.raises(Refusal):
        await guard.on_request(call)


async def test_dry_run_records_would_deny_and_allows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    guard = from_config(make_cfg(tmp_path, policy={"base": "readonly", "mode": "dry-run"}))
    call = Call(ctx=ctx(), method="tools/call", params={"name": "w", "arguments": {"secret": "hunter2"}},
                server="fs", target="w", exposed="fs__w", definition={"name": "w", "annotations": WRITES})
    with caplog.at_level(logging.INFO, "mcpward.audit"):
        assert await guard.on_request(call) is None
        items = [Listed("fs", "w", {"name": "fs__w", "annotations": WRITES})]
        assert await guard.on_list(Call(ctx=ctx(), method="tools/list", params={}), "tools", items) is None
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mcpward.audit"]
    assert [r["event"] for r in records] == ["policy.would-deny", "policy.would-hide"]
    assert records[0]["rule"] == "policy.default-deny" and records[0]["target"] == "fs__w"
    assert records[1]["rules"] == {"policy.default-deny": 1}
    assert "hunter2" not in caplog.text


async def test_lists_are_filtered_by_the_call_decision(tmp_path: Path) -> None:
    text = """
@id("t.hide-db-tools") forbid (principal, action == Action::"list_tools", resource == Server::"db");
@id("t.write-tmp-only") forbid (principal, action == Action::"call_tool", resource)
when { resource.hasTag("path") && !(resource.getTag("path") like "/tmp/*") };
"""
    guard = from_config(make_cfg(tmp_path, policy={"base": "readonly", "files": ["p.cedar"]},
                                 files={"p.cedar": text}))
    items = [Listed("fs", "r", {"name": "fs__r", "annotations": READ_ONLY}),
             Listed("fs", "w", {"name": "fs__w", "annotations": WRITES}),
             Listed("fs", "lying", {"name": "fs__lying", "annotations": {"readOnlyHint": "yes"}}),
             Listed("db", "q", {"name": "db__q", "annotations": READ_ONLY})]
    shown = await guard.on_list(Call(ctx=ctx(), method="tools/list", params={}), "tools", items)
    assert shown is not None and [i.name for i in shown] == ["r"]
    resources = [Listed("fs", "file:///a", {"uri": "file:///a"})]
    assert await guard.on_list(Call(ctx=ctx(), method="resources/list", params={}), "resources", resources) is None
    templates = [Listed("db", "db://{t}", {"uriTemplate": "db://{t}"})]
    assert await guard.on_list(Call(ctx=ctx(), method="resources/templates/list", params={}),
                               "resourceTemplates", templates) is None


@pytest.mark.parametrize(("text", "per_requester"), [
    ('permit (principal, action == Action::"call_tool", resource) when { resource.readOnlyHint };', False),
    ('permit (principal, action, resource) when { context.listing || context.hour < 18 };', False),
    ('permit (principal in Group::"admins", action, resource);', True),
    ('permit (principal, action, resource) when { principal.subject == "alice" };', True),
    ('forbid (principal, action, resource) when { principal.hasTag("contractor") };', True),
    ('permit (principal, action, resource) when { context.client == "claude-code" };', True),
])
def test_a_policy_knows_whether_its_answers_depend_on_who_asks(tmp_path: Path, text: str,
                                                                 per_requester: bool) -> None:
    engine = make_engine(tmp_path, policy={"base": "readonly", "files": ["p.cedar"]},
                         files={"p.cedar": '@id("t.rule")\n' + text})
    assert engine.bundle.per_requester is per_requester


async def test_a_list_is_private_when_another_requester_could_see_less(tmp_path: Path) -> None:
    # Alice (an admin) is hidden nothing, but Bob would be: her list must not be cached for him.
    admins = '@id("t.eng-calls-all")\npermit (principal in Group::"eng", action == Action::"call_tool", resource);'
    guard = from_config(make_cfg(tmp_path, policy={"base": "readonly", "files": ["p.cedar"]},
                                 files={"p.cedar": admins}))
    items = [Listed("fs", "r", {"name": "fs__r", "annotations": READ_ONLY}),
             Listed("fs", "w", {"name": "fs__w", "annotations": WRITES})]
    for_alice = await guard.on_list(Call(ctx=ctx(ALICE), method="tools/list", params={}), "tools", items)
    assert for_alice is not None and [i.name for i in for_alice] == ["r", "w"]  # not None: private
    for_bob = await guard.on_list(Call(ctx=ctx(BOB), method="tools/list", params={}), "tools", items)
    assert for_bob is not None and [i.name for i in for_bob] == ["r"]
    # Under a policy that answers everyone alike, an unfiltered list stays shareable.
    same = from_config(make_cfg(tmp_path / "same", policy={"base": "readonly"}))
    assert await same.on_list(Call(ctx=ctx(ALICE), method="tools/list", params={}), "tools", items[:1]) is None


def test_call_targets_for_each_method() -> None:
    def call(method: str, params: dict[str, Any], target: str = "p") -> Target | None:
        return call_target(Call(ctx=ctx(), method=method, params=params, server="fs", target=target,
                                exposed=f"fs__{target}"))

    prompt = call("prompts/get", {"name": "fs__p", "arguments": {"topic": "x"}})
    assert prompt is not None and (prompt.type, prompt.id, prompt.arguments) == ("Prompt", "fs__p", {"topic": "x"})
    completion = call("completion/complete", {"ref": {"type": "ref/prompt", "name": "p"},
                                              "argument": {"name": "topic", "value": "se"}})
    assert completion is not None and completion.type == "Prompt" and completion.arguments == {"topic": "se"}
    template = call("completion/complete", {"ref": {"type": "ref/resource", "uri": "db://{t}"},
                                            "argument": {"name": "t", "value": "u"}}, target="db://{t}")
    assert template is not None and template.type == "Resource" and template.template
    assert call("resources/read", {"uri": "file:///a"}, target="file:///a") is not None
    assert call("completion/complete", {"ref": {"type": "ref/other"}}) is None


# ----------------------------------------------------------------------------- CLI
runner = CliRunner()


def cli_config(tmp_path: Path, policy: str = 'base = "standard"\nfiles = ["team.cedar"]\n') -> Path:
    (tmp_path / "team.cedar").write_text(
        '@id("team.admins-drop")\npermit (principal in Group::"admins", action == Action::"call_tool", resource)\n'
        'when { resource.name == "drop_table" && context.client == "claude-code" };\n')
    path = tmp_path / "mcpward.toml"
    path.write_text('[servers.notes]\ncommand = "x"\n[servers.notes.tools.delete_all]\n'
                    f'annotations = {{ readOnlyHint = false, destructiveHint = true }}\n[policy]\n{policy}')
    return path


def test_cli_check_prints_rule_ids_and_hash(tmp_path: Path) -> None:
    result = runner.invoke(policy_app, ["check", "-c", str(cli_config(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "standard.permit-non-destructive-tools" in result.output and "team.admins-drop" in result.output
    assert "team.cedar:1" in result.output and "sha256:" in result.output
    (tmp_path / "team.cedar").write_text('@id("x") permit (principal, action, resource) when { resource.nme };')
    bad = runner.invoke(policy_app, ["check", "-c", str(tmp_path / "mcpward.toml")])
    assert bad.exit_code == 2 and "team.cedar: line 1" in bad.output and "`nme`" in bad.output
    assert "Traceback" not in bad.output


def test_cli_explain(tmp_path: Path) -> None:
    cfg = str(cli_config(tmp_path))
    liar = runner.invoke(policy_app, ["explain", "-c", cfg, "--principal", "alice", "--tool", "notes__delete_all",
                                      "--annotation", "readOnlyHint=true"])
    assert liar.exit_code == 1 and "DENY" in liar.output and "policy.default-deny" in liar.output
    assert "readOnlyHint=false (override)" in liar.output
    admin = runner.invoke(policy_app, ["explain", "-c", cfg, "--principal", "alice", "--group", "admins",
                                       "--client", "claude-code", "--tool", "drop_table", "--server", "notes",
                                       "--args", '{"name": "users"}', "--json"])
    assert admin.exit_code == 0, admin.output
    report = json.loads(admin.output)
    assert report["decision"] == "allow" and report["rule"] == "team.admins-drop"
    assert report["resource"]["id"] == "notes__drop_table" and report["arguments"] == ["name"]
    assert report["annotations"]["readOnlyHint"] == {"value": False, "source": "default"}
    for args, message in ((["--tool", "notes__x", "--args", "[1]"], "--args must be a JSON object"),
                          (["--tool", "other__x"], "carries no configured server's prefix"),
                          (["--tool", "notes__x", "--annotation", "readOnly=true"], "unknown annotation"),
                          (["--server", "notes", "--action", "call_tool"], "call_tool does not apply to a server")):
        bad = runner.invoke(policy_app, ["explain", "-c", cfg, *args])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output


def test_cli_policy_tests(tmp_path: Path) -> None:
    cfg = cli_config(tmp_path, 'base = "standard"\nfiles = ["team.cedar"]\ntests = ["cases.toml"]\n')
    (tmp_path / "cases.toml").write_text("""
[[case]]
name = "the liar is caught by the override"
principal = "alice"
tool = "notes__delete_all"
annotations = { readOnlyHint = true }
expect = "deny"
rule = "policy.default-deny"

[[case]]
principal = "alice"
groups = ["admins"]
client = "claude-code"
tool = "notes__drop_table"
arguments = { name = "users" }
expect = "allow"

[[case]]
principal = "bob"
server = "notes"
action = "list_prompts"
at = 2026-03-04T09:00:00
expect = "allow"
""")
    ok = runner.invoke(policy_app, ["test", "-c", str(cfg)])
    assert ok.exit_code == 0, ok.output
    assert "3 passed, 0 failed" in ok.output
    (tmp_path / "wrong.toml").write_text('[[case]]\nprincipal = "bob"\ntool = "notes__drop_table"\nexpect = "allow"\n'
                                         '[[case]]\nprincipal = "bob"\ntool = "notes__r"\nannotations = '
                                         '{ readOnlyHint = true }\nexpect = "allow"\nrule = "team.admins-drop"\n')
    failing = runner.invoke(policy_app, ["test", "-c", str(cfg), str(tmp_path / "wrong.toml")])
    assert failing.exit_code == 1
    assert "case 1" in failing.output and "expected allow, got deny" in failing.output
    assert "case 2" in failing.output and "expected rule team.admins-drop" in failing.output
    (tmp_path / "broken.toml").write_text('[[case]]\nprincipal = "bob"\ntool = "x"\nexpect = "maybe"\n')
    broken = runner.invoke(policy_app, ["test", "-c", str(cfg), str(tmp_path / "broken.toml")])
    assert broken.exit_code == 2 and "case[1].expect" in broken.output and "Traceback" not in broken.output


def test_cli_explain_connect_learns_the_servers_own_annotations(tmp_path: Path) -> None:
    from tests.conftest import FIXTURES, PYTHON

    path = tmp_path / "mcpward.toml"
    path.write_text(f'[servers.notes]\ncommand = "{PYTHON}"\nargs = ["{FIXTURES / "policy_server.py"}"]\n')
    result = runner.invoke(policy_app, ["explain", "-c", str(path), "--principal", "alice", "--tool",
                                        "notes__delete_all", "--connect", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["annotations"]["readOnlyHint"] == {"value": True, "source": "server"}  # the lie, as listed
    assert report["annotations"]["idempotentHint"] == {"value": True, "source": "server"}
    assert report["listed_by_server"] is True and report["rule"] == "standard.permit-non-destructive-tools"


def test_the_worked_example_in_the_docs_loads(tmp_path: Path) -> None:
    import re

    from mcpward.policy import testing

    doc = (Path(__file__).resolve().parent.parent / "docs" / "policy.md").read_text()
    cedar = "\n".join(re.findall(r"```cedar\n(.*?)```", doc, re.S))  # the worked example and the T32 one
    bundle = loader.load_bundle([loader.builtin_source("standard"), loader.PolicySource("team.cedar", cedar)])
    assert {"team.admins-destructive-fs", "team.paths-in-project", "team.egress-tools-ci-only",
            "team.no-model-for-scraper"} <= {r.id for r in bundle.rules}
    (case,) = [t for t in re.findall(r"```toml\n(.*?)```", doc, re.S) if "[[case]]" in t]
    (tmp_path / "cases.toml").write_text(case)
    (loaded,) = testing.load_cases(tmp_path / "cases.toml")
    assert not loaded.expect and loaded.rule == "policy.default-deny"


async def test_subscribing_is_decided_as_reading(tmp_path: Path) -> None:
    own = '@id("read-docs")\npermit (principal, action == Action::"read_resource", resource)\n' \
          'when { resource.server == "fs" };\n'
    guard = PolicyGuard(engine_for(make_cfg(tmp_path, policy={"base": "none", "files": ["own.cedar"]},
                                            files={"own.cedar": own}), os_groups=False))
    for server, allowed_here in (("fs", True), ("db", False)):
        call = Call(ctx=ctx(), method="resources/subscribe", params={"uri": "file:///doc"}, server=server,
                    target="file:///doc", exposed="file:///doc")
        if allowed_here:
            assert await guard.on_request(call) is None
        else:
            with pytest.raises(Refusal) as refused:
                await guard.on_request(call)
            assert refused.value.rule == DEFAULT_DENY


def test_the_local_clock_cache_matches_localtime_across_minutes_and_hours() -> None:
    import time as _time

    from mcpward.policy.entities import local_clock

    for ts in (0.0, 1_700_000_000.5, 1_700_003_599.999, 1_700_003_600.0, 1_711_846_799.0, 1_711_846_800.0):
        local = _time.localtime(ts)
        assert local_clock(ts) == (local.tm_hour, local.tm_wday), ts
